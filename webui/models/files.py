"""Model files on disk: format sniffing from bytes, header reading without tensor data, safe loading."""

from __future__ import annotations

import importlib
import json
import os
import pickle
import re
import stat
import struct
import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch

from webui.models.kinds import FileFormat
from webui.models.pickle_reader import (
    PARSE_ERRORS,
    PickleProblem,
    PickleRefused,
    TensorStub,
    flatten_tensors,
    read_pickle,
)

MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors itself refuses headers above 100 MB
MAX_JSON_BYTES = 4 * 1024 * 1024  # a diffusers model_index.json or scheduler config (real ones: under 2 KB)
HEADER_SECONDS = 20.0  # the time one file's header may take to read, whatever its contents
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
    if head.startswith(b"GGUF"):
        return FileFormat.GGUF
    # Before the bare-pickle test: a safetensors header of 0x0280-0x05ff bytes starts with 80 02..05 too (its
    # little-endian length), while "{" at byte 8 is no pickle opcode.
    if len(head) > 8 and head[8:9] == b"{":
        return FileFormat.SAFETENSORS
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return FileFormat.PICKLE  # legacy torch.save: a bare pickle stream
    return FileFormat.UNKNOWN


def open_regular(path: Path | str) -> BinaryIO:
    """Open a regular file for reading; anything else (a FIFO, a device, a socket, a symlink loop) is refused
    with a ModelFileError without blocking: a FIFO opened normally waits forever for a writer."""
    path = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        descriptor = os.open(path, flags)
    except FileNotFoundError:
        raise ModelFileError(path, "the file does not exist (moved or deleted?); refresh the model list") from None
    except PermissionError:
        raise ModelFileError(
            path, "permission denied: this user cannot read the file; fix its permissions (chmod a+r)"
        ) from None
    except OSError as error:
        raise ModelFileError(path, f"the file cannot be opened ({error.strerror or error}); check it") from None
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            what = "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "not a regular file (a device or socket)"
            raise ModelFileError(path, f"this is {what}, not a model file; remove it or put the real file here")
        os.set_blocking(descriptor, True)
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def _read_head(path: Path, count: int) -> bytes:
    try:
        with open_regular(path) as handle:
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
    with open_regular(path) as handle:
        size = os.fstat(handle.fileno()).st_size
        first = handle.read(8)
    if len(first) < 8:
        raise ModelFileError(path, "truncated file: it ends inside the safetensors header; download it again")
    (length,) = struct.unpack("<Q", first)
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
    with open_regular(path) as handle:
        handle.seek(8)
        raw = handle.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as bad_json:
        return f"corrupt safetensors header: it is not valid JSON ({bad_json}); download the file again"
    except RecursionError:
        return "corrupt safetensors header: its JSON is nested thousands deep (no model file is); download it again"
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
    deadline = time.monotonic() + HEADER_SECONDS
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            shapes: dict[str, tuple[int, ...]] = {}
            dtypes: dict[str, str] = {}
            for number, key in enumerate(handle.keys()):
                if not number % 4096 and time.monotonic() > deadline:
                    raise ModelFileError(path, f"reading its header took more than {HEADER_SECONDS:g} s; it is damaged")
                view = handle.get_slice(key)
                shapes[key] = tuple(view.get_shape())
                dtypes[key] = view.get_dtype()
            metadata = dict(handle.metadata() or {})
    except SafetensorError as error:
        raise ModelFileError(path, _safetensors_problem(path, error)) from None
    return TensorHeader(shapes=shapes, dtypes=dtypes, metadata=metadata, format=FileFormat.SAFETENSORS)


def _torch_load(path: Path, *, mmap: bool, device: str = "cpu") -> Any:
    """torch.load restricted to tensors and plain containers, run only on a file `read_pickle_contents` passed;
    every failure becomes a ModelFileError."""
    try:
        with open_regular(path) as handle:
            return _weights_only_load(path, handle, mmap=mmap, device=device)
    except pickle.UnpicklingError as error:
        raise ModelFileError(path, _refusal_problem(path, _asked_global(error))) from None
    except (*PARSE_ERRORS, RuntimeError, OSError) as error:
        raise ModelFileError(path, _parse_problem(error)) from None


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


def _asked_global(error: Exception) -> str | None:
    found = re.search(r"unsupported global:? (?:GLOBAL )?(\S+)", str(error), re.IGNORECASE)  # both torch wordings
    return found.group(1) if found else None


def _refusal_problem(path: Path, global_name: str | None) -> str:
    needs = f" (it asks for {global_name})" if global_name else ""
    renamed = (
        f"this is a pickle (legacy .ckpt) file named {path.suffix}, and it "
        if path.suffix.lower() in SAFETENSORS_SUFFIXES
        else "this pickle file "
    )
    return (
        f"{renamed}needs code execution to load{needs}: refused for safety, since a pickle can run any "
        f"program; {_CONVERT_HINT}"
    )


def _parse_problem(error: BaseException) -> str:
    """What a parse failure of a torch file means to a user: truncation, damage, or a bomb."""
    text = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
    if isinstance(error, EOFError | struct.error) or "exhausted" in text or "truncated" in text.lower():
        return "truncated file: the pickle ends early; the download did not finish; download it again"
    if isinstance(error, MemoryError | OverflowError):
        return "corrupt pickle: it asks for an impossible amount of memory; it is damaged or hostile; delete it"
    if isinstance(error, RecursionError):
        return "corrupt pickle: it is nested thousands deep, which no model file is; download it again"
    if isinstance(error, zipfile.BadZipFile | zipfile.LargeZipFile | RuntimeError | OSError):
        return f"corrupt or truncated torch file ({text or type(error).__name__}); download it again"
    return f"corrupt pickle ({type(error).__name__}{': ' + text if text else ''}); download the file again"


def read_pickle_contents(path: Path) -> tuple[dict[str, TensorStub], dict[str, str], int]:
    """(tensor stubs by dotted key, top-level scalar metadata, pickle protocol) of a torch pickle file, read
    without running code or allocating tensors (see pickle_reader); raises ModelFileError with the reason."""
    with open_regular(path) as handle:
        size = os.fstat(handle.fileno()).st_size
        try:
            contents = read_pickle(handle, size)
            tensors, metadata = flatten_tensors(contents.obj, lambda value: isinstance(value, TensorStub))
        except PickleRefused as refused:
            raise ModelFileError(path, _refusal_problem(path, refused.global_name)) from None
        except PickleProblem as problem:
            raise ModelFileError(path, problem.problem) from None
        except PARSE_ERRORS as error:
            raise ModelFileError(path, _parse_problem(error)) from None
    if contents.protocol > 3:
        raise ModelFileError(
            path,
            f"it was written with pickle protocol {contents.protocol}, which safe loading "
            f"(torch.load with weights_only=True) cannot read; {_CONVERT_HINT}",
        )
    return tensors, metadata, contents.protocol


def _read_pickle_header(path: Path) -> TensorHeader:
    stubs, metadata, _ = read_pickle_contents(path)
    return TensorHeader(
        shapes={key: stub.shape for key, stub in stubs.items()},
        dtypes={key: stub.dtype for key, stub in stubs.items()},
        metadata=metadata,
        format=FileFormat.PICKLE,
    )


def _tensors_of(loaded: Any, path: Path) -> dict[str, torch.Tensor]:
    """The loaded pickle's tensors by dotted key; a ParameterDict counts as a dict, a Parameter as a plain tensor."""

    def as_mapping(value: Any) -> Mapping[Any, Any] | None:
        return dict(value.items()) if isinstance(value, torch.nn.ParameterDict) else None

    try:
        tensors, _ = flatten_tensors(loaded, lambda value: isinstance(value, torch.Tensor), as_mapping)
    except PickleProblem as problem:
        raise ModelFileError(path, problem.problem) from None
    return {key: value.detach() for key, value in tensors.items()}


def diffusers_weight_files(component: Path) -> list[Path]:
    """A diffusers component folder's weight files: safetensors preferred, full precision before fp16."""
    for suffix in (".safetensors", ".bin"):
        found = sorted(p for p in component.glob(f"*{suffix}") if not p.name.startswith("."))
        if found:
            full = [p for p in found if ".fp16." not in p.name]
            return full or found
    return []


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """A small JSON file that must hold an object (a diffusers index or config); ModelFileError otherwise."""
    with open_regular(path) as handle:
        raw = handle.read(MAX_JSON_BYTES + 1)
    if len(raw) > MAX_JSON_BYTES:
        raise ModelFileError(path, f"{what} is larger than {MAX_JSON_BYTES // 2**20} MiB: not a diffusers file")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFileError(path, f"{what} is not valid JSON ({error}); download it again") from None
    except RecursionError:
        raise ModelFileError(path, f"{what} is JSON nested thousands deep; download it again") from None
    if not isinstance(data, dict):
        raise ModelFileError(path, f"{what} is not a JSON object; download it again")
    return data


def _read_diffusers_header(folder: Path) -> TensorHeader:
    """One header for the whole folder: each component's keys prefixed with its folder name (`unet/...`)."""
    try:
        index = read_json_object(folder / "model_index.json", "model_index.json")
    except ModelFileError as error:
        raise ModelFileError(folder, f"model_index.json cannot be read ({error.problem})") from None
    metadata = {"diffusers.pipeline": str(index.get("_class_name", ""))[:200]}
    scheduler = folder / "scheduler" / "scheduler_config.json"
    if scheduler.is_file():
        try:
            prediction = read_json_object(scheduler, "scheduler_config.json").get("prediction_type")
        except ModelFileError:
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
        read_pickle_contents(path)  # refuses code, bombs and damage before torch.load sees the file
        return _tensors_of(_torch_load(path, mmap=False, device=device), path)
    if fmt is FileFormat.DIFFUSERS:
        raise ModelFileError(
            path, "a diffusers folder is loaded component by component, not as one state dict"
        )
    if fmt is FileFormat.GGUF:
        raise ModelFileError(path, "GGUF (quantised) files cannot be loaded yet; use a .safetensors version")
    raise ModelFileError(path, _unknown_format_problem(path))


def pickle_tensors(path: Path | str, *, mmap: bool = True) -> dict[str, torch.Tensor]:
    """The tensors of a pickle file by dotted key, loaded with torch.load(weights_only=True), memory-mapped where
    the file allows it (a zip-format .ckpt), so a tensor's bytes are read only when it is used."""
    path = Path(path)
    read_pickle_contents(path)  # refuses code, bombs and damage before torch.load sees the file
    return _tensors_of(_torch_load(path, mmap=mmap), path)


def load_tensor_tree(path: Path | str, device: str = "cpu") -> Mapping[str, Any]:
    """A single file's tensors as stored, loaded without running code: safetensors' flat dict, or a pickle's
    mapping as unpickled (weights only), nesting kept. Upscaler files wrap their weights (`params_ema`,
    `params`, `model`) the way BasicSR saves them, and only the nesting tells a wrapper from a key prefix."""
    path = Path(path)
    if sniff_format(path) is FileFormat.PICKLE:
        read_pickle_contents(path)  # refuses code, bombs and damage before torch.load sees the file
        loaded = _torch_load(path, mmap=False, device=device)
        if not isinstance(loaded, Mapping):
            raise ModelFileError(
                path, f"the pickle holds a {type(loaded).__name__}, not a dict of tensors; it is not model weights"
            )
        return loaded
    return load_state_dict(path, device)
