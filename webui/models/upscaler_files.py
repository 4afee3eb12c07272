"""Upscaler model files (ESRGAN/Real-ESRGAN, SwinIR, DAT, HAT, ...): recognised and loaded through spandrel.

spandrel (the library ComfyUI and Forge use for these files) knows the architectures; this module gives it
tensors that were read safely (`.safetensors`, or a pickle through weights-only unpickling, never spandrel's own
`torch.load`), and recognises a `.safetensors` file from its header alone by running spandrel's detectors on
shape-only (meta) tensors.

spandrel imports torchvision at import time, for two architectures that are not upscalers (LaMa inpainting and
RestoreFormer face restoration). PyPI's torchvision cannot be installed beside a CPU build of torch (it fails to
import, and breaks diffusers with it), so where torchvision is absent or broken a stand-in for the three names
spandrel imports is put in sys.modules while spandrel imports, and taken out again; using either of those
architectures then raises an ImportError saying what is missing. Every upscaling architecture works without it.
"""

from __future__ import annotations

import enum
import importlib
import importlib.machinery
import sys
import types
from pathlib import Path
from typing import Any

import torch

from webui.families import Family
from webui.models.files import TensorHeader, load_tensor_tree
from webui.models.identity import Identity, unknown
from webui.models.kinds import FileFormat, Kind

SPANDREL_HINT = 'pip install --no-deps "spandrel>=0.4.2,<0.5" einops (--no-deps: spandrel asks for torchvision)'
_TORCHVISION_NAMES = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")


class UpscalerLoadError(ValueError):
    """An upscaler file that cannot be used; the message names the file and what to do."""


class _InterpolationMode(enum.Enum):
    """torchvision's enum, as far as spandrel's LaMa module reads it at import time."""

    NEAREST = "nearest"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"


def _torchvision_missing(*_args: Any, **_kwargs: Any) -> Any:
    raise ImportError("this architecture needs torchvision, which cannot be imported here; install a torchvision "
                      "built for this torch")  # fmt: skip


def _torchvision_importable() -> bool:
    try:
        importlib.import_module("torchvision.transforms.functional")
    except (ImportError, RuntimeError, AttributeError):  # RuntimeError: PyPI's build beside a CPU torch
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]  # a half-imported torchvision must not be found by the next import
        return False
    return True


def _torchvision_stand_in() -> dict[str, types.ModuleType]:
    functional = types.ModuleType("torchvision.transforms.functional")
    functional.InterpolationMode = _InterpolationMode  # type: ignore[attr-defined]
    functional.rotate = _torchvision_missing  # type: ignore[attr-defined]
    functional.normalize = _torchvision_missing  # type: ignore[attr-defined]
    transforms = types.ModuleType("torchvision.transforms")
    transforms.functional = functional  # type: ignore[attr-defined]
    package = types.ModuleType("torchvision")
    package.transforms = transforms  # type: ignore[attr-defined]
    modules = dict(zip(_TORCHVISION_NAMES, (package, transforms, functional), strict=True))
    for name, module in modules.items():
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    return modules


def import_spandrel() -> Any:
    """The spandrel module; ImportError says how to install it when it is missing. Where torchvision cannot be
    imported, its stand-in is in sys.modules only while spandrel imports (others, such as diffusers and
    transformers, check whether torchvision is installed and must keep finding that it is not)."""
    if "spandrel" in sys.modules:
        return sys.modules["spandrel"]
    stand_in = {} if _torchvision_importable() else _torchvision_stand_in()
    sys.modules.update(stand_in)
    try:
        return importlib.import_module("spandrel")
    except ModuleNotFoundError as error:
        missing = error.name
        raise ImportError(f"upscaler models need spandrel ({missing} is missing): {SPANDREL_HINT}") from None
    finally:
        for name in stand_in:
            del sys.modules[name]


def canonical_tensors(tree: Any) -> dict[str, torch.Tensor]:
    """The state dict inside a loaded file: unwrapped from `params_ema` / `params` / `model` / ..., prefixes such as
    `module.` removed (spandrel's canonicalize_state_dict), nested dicts flattened to dotted keys."""
    spandrel = import_spandrel()
    state = spandrel.canonicalize_state_dict(dict(tree))
    flat: dict[str, torch.Tensor] = {}

    def walk(mapping: Any, prefix: str) -> None:
        for key, value in mapping.items():
            if isinstance(value, torch.Tensor):
                flat[f"{prefix}{key}"] = value
            elif isinstance(value, dict):
                walk(value, f"{prefix}{key}.")

    walk(state, "")
    return flat


def _architecture(state: dict[str, torch.Tensor]) -> Any | None:
    """spandrel's architecture that detects `state` (meta tensors are enough), or None."""
    spandrel = import_spandrel()
    for support in spandrel.MAIN_REGISTRY.architectures("detection"):
        try:
            if support.detect(state):
                return support.architecture
        except (RuntimeError, ValueError, KeyError, IndexError, TypeError, NotImplementedError):
            continue  # a detector that needs real values: it cannot be this one from shapes alone
    return None


def identify_upscaler(path: Path, header: TensorHeader) -> Identity:
    """What an upscaler folder's file is: its spandrel architecture from the header (safetensors) or the
    weights-only unpickled tensors (a pickle's nesting decides what is a wrapper)."""
    try:
        if header.format is FileFormat.PICKLE:
            state = canonical_tensors(load_tensor_tree(path, device="meta"))
        else:
            state = canonical_tensors({k: torch.empty(s, device="meta") for k, s in header.shapes.items()})
    except ImportError as error:
        return Identity(kind=Kind.UPSCALER, family=Family.UNKNOWN, detail=f"upscaler model; {error}")
    architecture = _architecture(state)
    if architecture is None:
        return unknown(f"in an upscaler folder, but no architecture spandrel {import_spandrel().__version__} knows")
    return Identity(kind=Kind.UPSCALER, family=Family.UNKNOWN, detail=f"{architecture.name} upscaler (spandrel)")


def load_upscaler(path: Path) -> Any:
    """The spandrel ImageModelDescriptor of an upscaler file, on the CPU in eval mode. UpscalerLoadError names the
    file when it is not an upscaler spandrel knows, or is not a super-resolution model."""
    spandrel = import_spandrel()
    state = canonical_tensors(load_tensor_tree(path))
    try:
        descriptor = spandrel.ModelLoader(device="cpu").load_from_state_dict(state)
    except spandrel.UnsupportedModelError:
        raise UpscalerLoadError(
            f"{path}: spandrel {spandrel.__version__} knows no architecture with these keys; use an ESRGAN, "
            "Real-ESRGAN, SwinIR, DAT, HAT, ... upscaler file"
        ) from None
    except (RuntimeError, KeyError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UpscalerLoadError(f"{path}: spandrel could not build it ({first}); the file may be damaged") from None
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise UpscalerLoadError(f"{path}: a {descriptor.architecture.name} model is not an image upscaler")
    return descriptor.eval()
