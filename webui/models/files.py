"""Model files on disk: format sniffing from bytes, header reading without tensor data, safe loading."""

from __future__ import annotations

import importlib
import json
import os
import pickle
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch

from webui.models.kinds import FileFormat

MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors itself refuses headers above 100 MB
MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft", ".gguf")
SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
_DIFFUSERS_COMPONENTS = ("unet", "transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3")
# Classes a weights-only load may build beyond tensors and plain containers: named, inert ones that real files
# need. The original textual-inversion repo (rinongal/textual_inversion) saves `string_to_param` as a
# ParameterDict; AUTOMATIC1111's restricted unpickler (modules/safe.py) allows it for that reason.
_INERT_CLASSES = ("torch.nn.ParameterDict",)
_CONVERT_HINT = (
    "re-save it as .safetensors with a tool you trust, or download the .safetensors version of the model"
)


class ModelFileError(Exception):
    """A model file that cannot be read; `problem` says what is wrong and what to do about it."""

    def __init__(self, path: Path | str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)
        self.problem = problem


@dataclass(frozen=True)
class TensorHeader:
    """What a model file declares without reading tensor data: shapes, dtypes and string metadata."""

    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    format: FileFormat = FileFormat.SAFETENSORS


def sniff_format(path: Path | str) -> FileFormat:
    """The storage format from the file's first bytes (a folder with model_index.json is DIFFUSERS).

    Raises ModelFileError for what cannot be a model at all: a missing or unreadable path, an empty
    file, a folder without model_index.json. Unrecognised bytes give FileFormat.UNKNOWN.
    """
    path = Path(path)
    if path.is_dir():
        if (path / "model_index.json").is_file():
            return FileFormat.DIFFUSERS
        raise ModelFileError(
            path,
            "this is a folder, not a model file, and not a diffusers model either (no model_index.json "
            "inside); put the model file itself here, or the whole diffusers folder",
        )
    head = _read_head(path, 16)
    if not head:
        raise ModelFileError(
            path, "the file is empty (0 bytes): the download or copy did not finish; download it again"
        )
    if head.startswith(b"PK\x03\x04"):
        return FileFormat.PICKLE  # torch.save's zip container
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return FileFormat.PICKLE  # legacy torch.save: a bare pickle stream
    if head.startswith(b"GGUF"):
        return FileFormat.GGUF
    if len(head) > 8 and head[8:9] == b"{":
        return FileFormat.SAFETENSORS
    return FileFormat.UNKNOWN


def _read_head(path: Path, count: int) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(count)
    except FileNotFoundError:
        raise ModelFileError(
            path, "the file does not exist (moved or deleted?); refresh the model list"
        ) from None
    except PermissionError:
        raise ModelFileError(
            path, "permission denied: this user cannot read the file; fix its permissions (chmod a+r)"
        ) from None
    except OSError as error:
        raise ModelFileError(
            path, f"the file cannot be read ({error.strerror or error}); check the disk"
        ) from None


def extension_problem(path: Path | str, fmt: FileFormat) -> str | None:
    """A warning when the name promises a safe format the bytes do not deliver, else None."""
    path = Path(path)
    if fmt is FileFormat.PICKLE and path.suffix.lower() in SAFETENSORS_SUFFIXES:
        return (
            f"this is a pickle (legacy .ckpt) file named {path.suffix}: it was opened only with "
            "torch.load(weights_only=True), but other tools trust the name; rename it to .ckpt, or "
            f"{_CONVERT_HINT}"
        )
    return None


def read_header(path: Path | str) -> TensorHeader:
    """Keys, shapes, dtypes and metadata of a model file or diffusers folder; no tensor data is read.

    Raises ModelFileError with a specific problem for every way a file can be broken or unsafe.
    """
    path = Path(path)
    fmt = sniff_format(path)
    if fmt is FileFormat.SAFETENSORS:
        return _read_safetensors_header(path)
    if fmt is FileFormat.PICKLE:
        return _read_pickle_header(path)
    if fmt is FileFormat.DIFFUSERS:
        return _read_diffusers_header(path)
    if fmt is FileFormat.GGUF:
        from webui.models.gguf import read_gguf_header

        return read_gguf_header(path)
    raise ModelFileError(path, _unknown_format_problem(path))


def _unknown_format_problem(path: Path) -> str:
    head = _read_head(path, 16)
    if len(head) < 9:
        return (
            f"the file is only {path.stat().st_size} bytes, too short to be a model: the download did not "
            "finish; download it again"
        )
    text = head.lstrip()[:1]
    if text in (b"<", b"{", b"["):
        return (
            "this is a text file (HTML or JSON), not model weights: the download probably saved an error "
            "page or a link; download the file itself again"
        )
    return (
        f"unknown format (first bytes {head[:8].hex(' ')}): not safetensors, a torch pickle or GGUF; "
        "use a .safetensors file"
    )


def _check_header_length(path: Path) -> tuple[int, int]:
    """(header length, file size), after the checks that need only the first 8 bytes."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
    if length > MAX_HEADER_BYTES:
        raise ModelFileError(
            path,
            f"corrupt safetensors header: it claims {length:,} header bytes (the limit is "
            f"{MAX_HEADER_BYTES:,}); the file is damaged or not safetensors; download it again",
        )
    if 8 + length > size:
        raise ModelFileError(
            path,
            f"truncated file: the header alone should be {length:,} bytes but the file has only "
            f"{size:,}; the download did not finish; download it again",
        )
    return length, size


def _safetensors_problem(path: Path, error: Exception) -> str:
    """Why safetensors rejected a file, in words: run only after it did, so good files are parsed once."""
    length, size = _check_header_length(path)
    with open(path, "rb") as handle:
        handle.seek(8)
        raw = handle.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as bad_json:
        return f"corrupt safetensors header: it is not valid JSON ({bad_json}); download the file again"
    if not isinstance(header, dict):
        return "corrupt safetensors header: it is not a JSON object; download it again"
    data_end = 0
    for key, info in header.items():
        offsets = info.get("data_offsets") if key != "__metadata__" and isinstance(info, dict) else None
        if isinstance(offsets, list) and len(offsets) == 2 and isinstance(offsets[1], int):
            data_end = max(data_end, offsets[1])
    if 8 + length + data_end > size:
        return (
            f"truncated file: the tensors need {8 + length + data_end:,} bytes but the file has only "
            f"{size:,}; the download did not finish; download it again"
        )
    return f"safetensors rejected the file ({error}); download it again"


def _read_safetensors_header(path: Path) -> TensorHeader:
    from safetensors import SafetensorError, safe_open

    _check_header_length(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            shapes: dict[str, tuple[int, ...]] = {}
            dtypes: dict[str, str] = {}
            for key in handle.keys():
                view = handle.get_slice(key)
                shapes[key] = tuple(view.get_shape())
                dtypes[key] = view.get_dtype()
            metadata = dict(handle.metadata() or {})
    except SafetensorError as error:
        raise ModelFileError(path, _safetensors_problem(path, error)) from None
    return TensorHeader(shapes=shapes, dtypes=dtypes, metadata=metadata, format=FileFormat.SAFETENSORS)


def _torch_load(path: Path, *, mmap: bool, device: str = "cpu") -> Any:
    """torch.load restricted to tensors and plain containers; every failure becomes a ModelFileError."""
    try:
        with open(path, "rb") as handle:
            return _weights_only_load(path, handle, mmap=mmap, device=device)
    except pickle.UnpicklingError as error:
        if "Unsupported operand" in str(error):  # not a refusal: the byte stream itself is garbage
            raise ModelFileError(path, "corrupt pickle (invalid opcode); download the file again") from None
        raise ModelFileError(path, _refusal_problem(path, error)) from None
    except EOFError:
        raise ModelFileError(
            path, "truncated file: the pickle ends early; the download did not finish; download it again"
        ) from None
    except (RuntimeError, ValueError, OSError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelFileError(
            path, f"corrupt or truncated torch file ({first_line}); download it again"
        ) from None


def _weights_only_load(path: Path, handle: BinaryIO, *, mmap: bool, device: str) -> Any:
    # torch.load hands any path ending in ".safetensors" to safetensors, by name alone, so a pickle
    # renamed .safetensors is opened through a name without that ending: the open descriptor on
    # Linux (keeps mmap), else the file object (mmap needs a path, so its data is read).
    target: str | BinaryIO = str(path)
    if target.endswith(".safetensors"):
        fd_path = f"/proc/self/fd/{handle.fileno()}"
        target = fd_path if os.path.exists(fd_path) else handle
        mmap = mmap and isinstance(target, str)
    # safe_globals is torch's scoped allow-list; loads in two threads at once may leave ParameterDict allowed
    # for later loads too, which is harmless (it is inert: nothing it holds runs).
    with torch.serialization.safe_globals(_inert_classes()):
        try:
            return torch.load(target, map_location=device, weights_only=True, mmap=mmap)
        except RuntimeError as error:
            if not (mmap and "mmap" in str(error)):
                raise
        handle.seek(0)  # legacy non-zip pickles cannot be memory-mapped
        return torch.load(handle, map_location=device, weights_only=True)


def _inert_classes() -> list[type]:
    """The classes of _INERT_CLASSES, for `torch.serialization.safe_globals` (scoped to one load)."""
    classes = []
    for name in _INERT_CLASSES:
        module, _, attribute = name.rpartition(".")
        classes.append(getattr(importlib.import_module(module), attribute))
    return classes


def _refusal_problem(path: Path, error: Exception) -> str:
    found = re.search(r"unsupported global:? (?:GLOBAL )?(\S+)", str(error), re.IGNORECASE)  # both torch wordings
    needs = f" (it asks for {found.group(1)})" if found else ""
    renamed = (
        f"this is a pickle (legacy .ckpt) file named {path.suffix}, and it "
        if path.suffix.lower() in SAFETENSORS_SUFFIXES
        else "this pickle file "
    )
    return (
        f"{renamed}needs code execution to load{needs}: refused for safety, since a pickle can run any "
        f"program; {_CONVERT_HINT}"
    )


def _tensors_of(loaded: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Flatten a loaded pickle into dotted tensor keys (unwrapping `state_dict`) plus scalar metadata."""
    if not isinstance(loaded, Mapping):
        raise ModelFileError(
            path,
            f"the pickle holds a {type(loaded).__name__}, not a dict of tensors; it is not model weights",
        )
    if isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    tensors: dict[str, torch.Tensor] = {}
    metadata: dict[str, str] = {}

    def walk(mapping: Mapping[Any, Any], prefix: str) -> None:
        for key, value in mapping.items():
            name = f"{prefix}{key}"
            if isinstance(value, torch.Tensor):
                tensors[name] = value.detach()  # a Parameter (from a ParameterDict) becomes a plain tensor
            elif isinstance(value, Mapping):
                walk(value, name + ".")
            elif isinstance(value, torch.nn.ParameterDict):
                walk(dict(value.items()), name + ".")
            elif not prefix and isinstance(value, (str, int, float, bool)):
                metadata[name] = str(value)

    walk(loaded, "")
    return tensors, metadata


def _read_pickle_header(path: Path) -> TensorHeader:
    tensors, metadata = _tensors_of(_torch_load(path, mmap=True), path)
    return TensorHeader(
        shapes={key: tuple(value.shape) for key, value in tensors.items()},
        dtypes={key: _dtype_name(value.dtype) for key, value in tensors.items()},
        metadata=metadata,
        format=FileFormat.PICKLE,
    )


def _dtype_name(dtype: torch.dtype) -> str:
    """safetensors' spelling of a torch dtype (F16, BF16, F32, ...), so headers compare across formats."""
    names = {
        torch.float16: "F16",
        torch.bfloat16: "BF16",
        torch.float32: "F32",
        torch.float64: "F64",
        torch.int64: "I64",
        torch.int32: "I32",
        torch.int16: "I16",
        torch.int8: "I8",
        torch.uint8: "U8",
        torch.bool: "BOOL",
    }
    return names.get(dtype, str(dtype).removeprefix("torch."))


def diffusers_weight_files(component: Path) -> list[Path]:
    """A diffusers component folder's weight files: safetensors preferred, full precision before fp16."""
    for suffix in (".safetensors", ".bin"):
        found = sorted(p for p in component.glob(f"*{suffix}") if not p.name.startswith("."))
        if found:
            full = [p for p in found if ".fp16." not in p.name]
            return full or found
    return []


def _read_diffusers_header(folder: Path) -> TensorHeader:
    """One header for the whole folder: each component's keys prefixed with its folder name (`unet/...`)."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFileError(
            folder, f"model_index.json cannot be read ({error}); download it again"
        ) from None
    metadata = {"diffusers.pipeline": str(index.get("_class_name", ""))}
    scheduler = folder / "scheduler" / "scheduler_config.json"
    if scheduler.is_file():
        try:
            prediction = json.loads(scheduler.read_text()).get("prediction_type")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            prediction = None  # the scheduler config only adds a hint; the weights decide the rest
        if isinstance(prediction, str):
            metadata["diffusers.prediction_type"] = prediction
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, str] = {}
    for name in _DIFFUSERS_COMPONENTS:
        if name not in index or not (folder / name).is_dir():
            continue
        files = diffusers_weight_files(folder / name)
        if not files:
            raise ModelFileError(
                folder,
                f"the diffusers folder has no weights in {name}/ (expected *.safetensors or *.bin); "
                "the download is incomplete; download the missing files",
            )
        for file in files:
            try:
                part = read_header(file)
            except ModelFileError as error:
                raise ModelFileError(folder, f"{name}/{file.name}: {error.problem}") from None
            shapes.update({f"{name}/{key}": shape for key, shape in part.shapes.items()})
            dtypes.update({f"{name}/{key}": dtype for key, dtype in part.dtypes.items()})
    return TensorHeader(shapes=shapes, dtypes=dtypes, metadata=metadata, format=FileFormat.DIFFUSERS)


def load_state_dict(path: Path | str, device: str = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of a single model file, loaded without ever running code from it.

    safetensors goes through safetensors; pickles only through torch.load(weights_only=True), and one
    that needs more is refused with a ModelFileError saying why and how to convert it.
    """
    path = Path(path)
    fmt = sniff_format(path)
    if fmt is FileFormat.SAFETENSORS:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        _check_header_length(path)
        try:
            return load_file(path, device=device)
        except SafetensorError as error:
            raise ModelFileError(path, _safetensors_problem(path, error)) from None
    if fmt is FileFormat.PICKLE:
        tensors, _ = _tensors_of(_torch_load(path, mmap=False, device=device), path)
        return tensors
    if fmt is FileFormat.DIFFUSERS:
        raise ModelFileError(
            path, "a diffusers folder is loaded component by component, not as one state dict"
        )
    if fmt is FileFormat.GGUF:
        raise ModelFileError(path, "GGUF (quantised) files cannot be loaded yet; use a .safetensors version")
    raise ModelFileError(path, _unknown_format_problem(path))
