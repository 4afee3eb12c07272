"""Load one pipeline component (UNet, VAE, text encoder) from any file layout, offline.

Every path goes through diffusers' own single-file loaders with a config folder written
from the family's bundled config adjusted to the file's shapes, so nothing asks the hub
and real files and the tiny test models take the same code path.
"""

from __future__ import annotations

import importlib
import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from webui.families import Family
from webui.families.encoders import ENCODER_BY_WIDTH, ENCODERS
from webui.models.derive import (
    LDM_UNET_PREFIX,
    Shapes,
    bundled_config,
    derive_clip_config,
    derive_unet_config,
    derive_vae_config,
)
from webui.models.kinds import Role, TextEncoderType

__all__ = ["ComponentLoadError", "ComponentSource", "Role", "checkpoint_prefix", "load_component", "read_tensors"]


class ComponentLoadError(ValueError):
    """A component could not be built from a file; the message names the file and the reason."""


def checkpoint_prefix(family: Family, role: Role) -> str:
    """Where `role` sits inside the family's original single-file checkpoint (from its description)."""
    description = family.description
    if not description.has(role) or not description.role(role).checkpoint_prefix:
        raise ComponentLoadError(f"a {family.label} checkpoint has no {role.label}")
    return description.role(role).checkpoint_prefix


_HF_PREFIX = "cond_stage_model.transformer."  # where diffusers' CLIP loader reads Hugging Face CLIP names
_OPEN_CLIP_ROOTS = (
    "token_embedding.",
    "positional_embedding",
    "transformer.resblocks.",
    "ln_final.",
    "text_projection",
)


@dataclass(frozen=True)
class ComponentSource:
    """Where a component's weights are: a whole file, a prefix inside a checkpoint, or a diffusers subfolder."""

    path: Path
    prefix: str = ""  # keys inside a single-file checkpoint; "" = the whole file

    def describe(self) -> str:
        return f"{self.path}" + (f" ({self.prefix}*)" if self.prefix else "")


def read_tensors(path: Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """Tensors whose key starts with `prefix`; safetensors reads only those bytes, pickles load safely."""
    from webui.models.files import load_state_dict, sniff_format
    from webui.models.kinds import FileFormat

    fmt = sniff_format(path)
    if fmt is FileFormat.GGUF:
        from webui.models.loading_dit import read_gguf_tensors

        return read_gguf_tensors(path, prefix)
    if fmt is FileFormat.SAFETENSORS:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys() if key.startswith(prefix)}
    return {key: value for key, value in load_state_dict(path).items() if key.startswith(prefix)}


@contextmanager
def config_folder(role: Role, config: dict[str, Any]) -> Iterator[str]:
    """A throwaway local diffusers-layout folder holding one component's config."""
    with tempfile.TemporaryDirectory(prefix="webui-config-") as folder:
        sub = Path(folder) / role.value
        sub.mkdir()
        (sub / "config.json").write_text(json.dumps(config))
        yield folder


def _shapes(state: dict[str, torch.Tensor]) -> Shapes:
    return {key: tuple(value.shape) for key, value in state.items()}


def _normalise_unet(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if any(key.startswith("input_blocks.") for key in state):  # LDM names without the checkpoint prefix
        return {LDM_UNET_PREFIX + key: value for key, value in state.items()}
    return state


def _strip_to_open_clip_root(key: str) -> str | None:
    for root in _OPEN_CLIP_ROOTS:
        at = key.find(root)
        if at == 0 or (at > 0 and key[at - 1] == "."):
            return key[at:]
    return None


def _normalise_text_encoder(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], TextEncoderType]:
    """Re-key any text-encoder layout into the LDM form diffusers' CLIP loader recognises."""
    open_clip = any(key.endswith("positional_embedding") for key in state)
    if open_clip:
        rooted = {root: value for key, value in state.items() if (root := _strip_to_open_clip_root(key))}
        width = rooted["token_embedding.weight"].shape[1]
        kind = _known(ENCODER_BY_WIDTH.get(width), width)
        prefix = ENCODERS[kind].ldm_prefix  # where diffusers' CLIP loader looks for this architecture
        return {prefix + key: value for key, value in rooted.items()}, kind
    hf: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        at = key.find("text_model.")
        if at >= 0:
            key = key[at:]
        elif key.startswith(("embeddings.", "encoder.", "final_layer_norm.")):
            key = "text_model." + key
        elif not key.endswith("text_projection.weight"):
            continue  # position_ids buffers and the like
        else:
            key = "text_projection.weight"
        hf[_HF_PREFIX + key] = value
    token = hf.get(_HF_PREFIX + "text_model.embeddings.token_embedding.weight")
    if token is None:
        raise ComponentLoadError("no text-encoder weights (token embedding) found")
    width = token.shape[1]
    return hf, _known(ENCODER_BY_WIDTH.get(width), width)


def _known(kind: TextEncoderType | None, width: int) -> TextEncoderType:
    if kind is None:
        known = ", ".join(f"{spec.label} ({spec.width})" for spec in ENCODERS.values() if spec.width)
        raise ComponentLoadError(f"text encoder of width {width} is none of {known}")
    return kind


def load_component(
    source: ComponentSource, role: Role, family: Family, dtype: torch.dtype = torch.float32
) -> torch.nn.Module:
    """Build one component on the CPU in `dtype`. Raises ComponentLoadError naming the file and the reason."""
    try:
        if source.path.is_dir():
            return _load_from_diffusers_folder(source.path, role, dtype)
        state = read_tensors(source.path, source.prefix)
        if not state:
            where = f" under {source.prefix!r}" if source.prefix else ""
            raise ComponentLoadError(f"no {role.label} weights{where}")
        if not source.prefix:
            state = _without_component_prefix(state, role, family)
        if role is Role.UNET:
            return _load_unet(state, family, dtype)
        if role is Role.TRANSFORMER:
            from webui.models.loading_dit import load_transformer

            return load_transformer(state, family, dtype)
        if role is Role.VAE:
            return _load_vae(state, family, dtype)
        encoder = ENCODERS[expected_text_encoder(family, role)]
        if encoder.loader is not None:  # not a CLIP: the architecture's own loader (T5, Qwen3)
            module, _, function = encoder.loader.partition(":")
            load = getattr(importlib.import_module(module), function)
            return load(state, bundled_config(family, role.value), dtype)
        return _load_text_encoder(state, role, family, dtype)
    except ComponentLoadError as error:
        raise ComponentLoadError(f"{source.describe()}: {error}") from error
    except (ValueError, KeyError, RuntimeError, OSError, AssertionError) as error:
        raise ComponentLoadError(f"{source.describe()}: cannot load the {role.label}: {error}") from error


def _without_component_prefix(
    state: dict[str, torch.Tensor], role: Role, family: Family
) -> dict[str, torch.Tensor]:
    """A lone component file whose keys sit under a prefix identification accepts (`vae.encoder...`, as some
    tools save a VAE) loses that prefix, so it loads as it was listed; the family's own single-file prefix
    (`first_stage_model.`), which the loaders read themselves, stays."""
    from webui.families.base import Part
    from webui.models.identify import classify, split_components
    from webui.models.kinds import Kind

    description = family.description
    if not description.has(role):
        return state
    spec = description.role(role)
    wanted = {Part.DENOISER: Kind.UNET, Part.VAE: Kind.VAE, Part.TEXT_ENCODER: Kind.TEXT_ENCODER}[spec.part]
    for prefix, _hint, group in split_components(_shapes(state)):
        component = classify(group)
        if component is not None and component.kind is wanted:
            if prefix in ("", spec.checkpoint_prefix):
                return state
            return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
    return state


def _load_unet(state: dict[str, torch.Tensor], family: Family, dtype: torch.dtype) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    state = _normalise_unet(state)
    config = derive_unet_config(family, _shapes(state))
    with config_folder(Role.UNET, config) as folder:
        return UNet2DConditionModel.from_single_file(
            state, config=folder, subfolder="unet", local_files_only=True, torch_dtype=dtype
        )


def _load_vae(state: dict[str, torch.Tensor], family: Family, dtype: torch.dtype) -> torch.nn.Module:
    from diffusers import AutoencoderKL

    from webui.models.loading_dit import fold_scaled_fp8

    state = fold_scaled_fp8(state, dtype)
    config = derive_vae_config(family, _shapes(state))
    with config_folder(Role.VAE, config) as folder:
        return AutoencoderKL.from_single_file(
            state, config=folder, subfolder="vae", local_files_only=True, torch_dtype=dtype
        )


def _load_text_encoder(
    state: dict[str, torch.Tensor], role: Role, family: Family, dtype: torch.dtype
) -> torch.nn.Module:
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm

    from webui.models.loading_dit import fold_scaled_fp8

    state, kind = _normalise_text_encoder(fold_scaled_fp8(state, dtype))
    expected = expected_text_encoder(family, role)
    if kind is not expected:
        found, wanted = ENCODERS[kind].label, ENCODERS[expected].label
        raise ComponentLoadError(
            f"this text encoder is {found}, but {family.label} models take {wanted} as their {role.label}: "
            f"choose a file that holds {wanted}, or the checkpoint's own"
        )
    spec = family.description.role(role)
    base = bundled_config(family, role.value)
    max_layers = base["num_hidden_layers"] if spec.truncate_to_config_layers else None
    config = derive_clip_config(base, _shapes(state), max_layers=max_layers)
    projection = _HF_PREFIX + "text_projection.weight"
    hf_layout = any(key.startswith(_HF_PREFIX) for key in state)
    if spec.component_class.endswith("WithProjection") and hf_layout and projection not in state:
        # A CLIP-L saved without its projection (FLUX.1's clip_l.safetensors) serving a family that reads the
        # projected pooled output (SD3): identity, as ComfyUI does, rather than weights left unset.
        width = config["hidden_size"]
        if config.get("projection_dim", width) != width:
            dim = config["projection_dim"]
            raise ComponentLoadError(f"no text_projection.weight, and projection_dim {dim} is not the width {width}")
        state = {**state, projection: torch.eye(width, dtype=dtype)}
    with config_folder(role, config) as folder:
        return create_diffusers_clip_model_from_ldm(
            spec.component_type(), state, subfolder=role.value, config=folder, torch_dtype=dtype, local_files_only=True
        )


def expected_text_encoder(family: Family, role: Role) -> TextEncoderType:
    """Which encoder architecture a family needs in a text-encoder slot."""
    description = family.description
    encoder = description.role(role).encoder if description.has(role) else None
    if encoder is None:
        raise ComponentLoadError(f"{family.label} has no {role.label}")
    return encoder


def _load_from_diffusers_folder(folder: Path, role: Role, dtype: torch.dtype) -> torch.nn.Module:
    """A diffusers folder carries its own configs; they are authoritative for it. The class its
    model_index.json names must be one some registered family uses for a role."""
    from webui.families import DESCRIPTIONS

    index = json.loads((folder / "model_index.json").read_text())
    library_class = index.get(role.value, [None, None])[1]
    classes = {spec.component_class.rpartition(".")[2]: spec for d in DESCRIPTIONS for spec in d.roles}
    if library_class not in classes:
        raise ComponentLoadError(f"model_index.json has no loadable {role.label} (found {library_class!r})")
    return classes[library_class].component_type().from_pretrained(
        folder, subfolder=role.value, torch_dtype=dtype, local_files_only=True
    )
