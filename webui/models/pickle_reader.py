"""Torch pickle files (`torch.save`, zip or legacy) read without running code or allocating tensor memory.

The pickle is replayed by the standard library's pure-Python unpickler (its memo is a dict: a hostile memo index
cannot make it allocate) with every global it may call replaced by a stub that records shapes and dtypes, so
reading a header costs what the pickle's own bytes cost, bounded by `ReadBudget` (bytes, opcodes, seconds).
What it accepts is the tensors-and-containers subset of `torch.load(weights_only=True)` (torch/_weights_only_
unpickler.py): the same rebuild functions, minus quantized/sparse/nested tensors, which no model file uses.
Storage sizes are checked against the bytes really present (each zip record; the legacy file's data region),
and every tensor view against its storage, so a loader trusting the pickle never asks for more than the file has.
Formats: torch/serialization.py (`_save`, `_legacy_save`, `_load`, `_legacy_load`).
"""

from __future__ import annotations

import io
import pickle
import struct
import time
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import torch

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch/serialization.py MAGIC_NUMBER
MAX_PICKLE_BYTES = 32 * 2**20  # the pickle part only (a real SDXL checkpoint's is well under 1 MB)
MAX_OPS = 2_000_000  # pickle opcodes (a real checkpoint: ~30 per tensor)
MAX_SECONDS = 20.0  # per file, whatever the disk
MAX_DEPTH = 64  # nesting of dicts and lists in the loaded object
MAX_NODES = 1_000_000  # containers and values visited when flattening
MAX_DIMS = 16
MAX_DIM = 2**48

# torch's legacy storage classes (torch/storage.py `_dtype_to_storage_type_map`): safetensors dtype, bytes each.
STORAGE_TYPES = {
    "DoubleStorage": ("F64", 8),
    "FloatStorage": ("F32", 4),
    "HalfStorage": ("F16", 2),
    "BFloat16Storage": ("BF16", 2),
    "LongStorage": ("I64", 8),
    "IntStorage": ("I32", 4),
    "ShortStorage": ("I16", 2),
    "CharStorage": ("I8", 1),
    "ByteStorage": ("U8", 1),
    "BoolStorage": ("BOOL", 1),
    "ComplexFloatStorage": ("C64", 8),
    "ComplexDoubleStorage": ("C128", 16),
    "UntypedStorage": ("U8", 1),
}
# safetensors' spelling of torch dtypes (safetensors/src/tensor.rs `Dtype`), so headers compare across formats.
DTYPE_NAMES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.complex64: "C64",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
}
_UNSUPPORTED_REBUILDS = {
    "_rebuild_qtensor": "quantized tensors",
    "_rebuild_sparse_tensor": "sparse tensors",
    "_rebuild_nested_tensor": "nested tensors",
    "_rebuild_wrapper_subclass": "tensor subclasses",
    "_rebuild_device_tensor_from_numpy": "numpy arrays",
    "_rebuild_device_tensor_from_cpu_tensor": "device tensors",
}


def dtype_name(dtype: torch.dtype) -> str:
    """safetensors' name for a torch dtype (F16, BF16, F32, ...), torch's own for the rest."""
    return DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


class PickleProblem(Exception):
    """Why a pickle cannot be read; `problem` is the user-facing sentence (files.py adds the path)."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


class PickleRefused(PickleProblem):
    """The pickle asks for a global outside the allow-list: loading it would run code."""

    def __init__(self, global_name: str) -> None:
        super().__init__(f"asks for {global_name}")
        self.global_name = global_name


# Every way the unpickler and zipfile fail on bytes that are not a well-formed pickle.
PARSE_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    struct.error,
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    KeyError,
    IndexError,
    TypeError,
    ValueError,
    AttributeError,
    OverflowError,
    UnicodeDecodeError,
    NotImplementedError,
    RecursionError,
    MemoryError,
)


@dataclass(frozen=True)
class StorageStub:
    """A tensor storage as the pickle names it: `numel` elements of `itemsize` bytes (no data read)."""

    key: str
    dtype: str
    itemsize: int
    numel: int

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize


@dataclass(frozen=True)
class TensorStub:
    """A tensor as the pickle describes it: shape and dtype, and where its elements lie in its storage."""

    shape: tuple[int, ...]
    dtype: str
    storage: StorageStub | None = None  # None: a meta tensor (no data at all)


@dataclass(frozen=True)
class _Dtype:
    name: str
    itemsize: int


@dataclass(frozen=True)
class _StorageType:
    dtype: _Dtype


class _StubDict(dict):
    """OrderedDict/Counter stand-in: a dict that also takes BUILD state (a state dict's `_metadata`)."""


class _TensorType:
    """torch.Tensor / torch.nn.Parameter as `_rebuild_from_type_v2` names them."""


class _ParameterDictStub(Mapping):
    """A pickled torch.nn.ParameterDict (the original textual-inversion repo saves `string_to_param` as one; A1111's
    restricted unpickler and files.py's weights-only load allow it): its module state lands in `__dict__` (BUILD),
    and it reads as the mapping of its `_parameters`."""

    def _items(self) -> Mapping[Any, Any]:
        parameters = self.__dict__.get("_parameters")
        return parameters if isinstance(parameters, Mapping) else {}

    def __getitem__(self, key: Any) -> Any:
        return self._items()[key]

    def __iter__(self) -> Any:
        return iter(self._items())

    def __len__(self) -> int:
        return len(self._items())


@dataclass
class ReadBudget:
    """Bounds on one file's read: pickle bytes, opcodes and wall time."""

    max_bytes: int = MAX_PICKLE_BYTES
    max_ops: int = MAX_OPS
    seconds: float = MAX_SECONDS
    deadline: float = field(init=False)
    ops: int = 0
    used: int = 0

    def __post_init__(self) -> None:
        self.deadline = time.monotonic() + self.seconds

    def op(self) -> None:
        self.ops += 1
        if self.ops > self.max_ops:
            raise PickleProblem(
                f"the pickle has more than {self.max_ops:,} instructions: far more than any model file; "
                "it is damaged or not model weights"
            )
        if not self.ops & 0x3FF:
            self.check_time()

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise PickleProblem(
                f"reading the pickle took more than {self.seconds:g} s: it is built to be slow (or damaged); "
                "download the file again or use a .safetensors version"
            )

    def take(self, count: int) -> int:
        """How many of `count` bytes may still be read (raises once the budget is spent)."""
        left = self.max_bytes - self.used
        if left <= 0:
            raise PickleProblem(
                f"the pickle part is larger than {self.max_bytes // 2**20} MiB: not model weights, or damaged"
            )
        allowed = min(max(count, 0), left)
        self.used += allowed
        return allowed


class _BoundedReader:
    """A file's read/readline for the unpickler that never asks the OS for more than the budget allows."""

    def __init__(self, handle: BinaryIO, budget: ReadBudget) -> None:
        self.handle, self.budget = handle, budget

    def read(self, count: int = -1) -> bytes:
        return self.handle.read(self.budget.take(count if count >= 0 else self.budget.max_bytes))

    def readline(self, limit: int = -1) -> bytes:
        return self.handle.readline(self.budget.take(64 * 1024 if limit < 0 else min(limit, 64 * 1024)))

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _counted(handler: Callable[[Any], None]) -> Callable[[Any], None]:
    def run(self: _HeaderUnpickler) -> None:
        self.budget.op()
        handler(self)

    return run


def _invalid(self: _HeaderUnpickler) -> None:
    raise pickle.UnpicklingError("invalid opcode")


class _HeaderUnpickler(pickle._Unpickler):  # the pure-Python unpickler: dict memo, no C-level allocations
    dispatch = {code: _counted(pickle._Unpickler.dispatch.get(code, _invalid)) for code in range(256)}

    def __init__(self, file: Any, budget: ReadBudget, persistent: Callable[[Any], Any]) -> None:
        super().__init__(file, encoding="utf-8")
        self.budget = budget
        self._persistent = persistent

    def persistent_load(self, pid: Any) -> Any:
        return self._persistent(pid)

    def find_class(self, module: str, name: str) -> Any:
        module = "builtins" if module == "__builtin__" else module
        found = _allowed_global(module, name)
        if found is None:
            raise PickleRefused(f"{module}.{name}")
        return found


def _dims(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple | list) or len(value) > MAX_DIMS:
        raise PickleProblem(f"corrupt pickle: a tensor's {what} is not a list of at most {MAX_DIMS} numbers")
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < MAX_DIM for v in value):
        raise PickleProblem(f"corrupt pickle: a tensor's {what} {tuple(value)!r} holds impossible numbers")
    return tuple(value)


def _view(storage: Any, offset: Any, size: Any, stride: Any, dtype: _Dtype | None = None) -> TensorStub:
    """A tensor over `storage`, checked to lie inside it (torch's `set_` would refuse it anyway, after allocating)."""
    if not isinstance(storage, StorageStub):
        raise PickleProblem("corrupt pickle: a tensor is not backed by a storage record")
    shape, strides = _dims(size, "shape"), _dims(stride, "stride")
    if len(shape) != len(strides) or not isinstance(offset, int) or not 0 <= offset < MAX_DIM:
        raise PickleProblem("corrupt pickle: a tensor's shape, stride and offset do not fit together")
    itemsize = dtype.itemsize if dtype is not None else storage.itemsize
    name = dtype.name if dtype is not None else storage.dtype
    capacity = storage.nbytes // itemsize
    extent = 0 if 0 in shape else offset + 1 + sum((s - 1) * st for s, st in zip(shape, strides, strict=True))
    if extent > capacity:
        raise PickleProblem(
            f"corrupt file: a {name} tensor of shape {list(shape)} needs {extent * itemsize:,} bytes but its "
            f"storage {storage.key!r} holds {storage.nbytes:,}; download the file again"
        )
    return TensorStub(shape, name, storage)


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any) -> TensorStub:
    return _view(storage, offset, size, stride)


def _rebuild_tensor_v2(storage: Any, offset: Any, size: Any, stride: Any, *_rest: Any) -> TensorStub:
    return _view(storage, offset, size, stride)


def _rebuild_tensor_v3(
    storage: Any, offset: Any, size: Any, stride: Any, _grad: Any, _hooks: Any, dtype: Any, *_rest: Any
) -> TensorStub:
    if not isinstance(dtype, _Dtype):
        raise PickleProblem("corrupt pickle: a tensor's dtype is not a torch dtype")
    return _view(storage, offset, size, stride, dtype)


def _rebuild_meta(dtype: Any, size: Any, _stride: Any, *_rest: Any) -> TensorStub:
    if not isinstance(dtype, _Dtype):
        raise PickleProblem("corrupt pickle: a tensor's dtype is not a torch dtype")
    return TensorStub(_dims(size, "shape"), dtype.name)


def _rebuild_parameter(data: Any, *_rest: Any) -> Any:
    return data


def _rebuild_from_type_v2(func: Any, _new_type: Any, args: Any, _state: Any) -> Any:
    if func not in _REBUILDS.values() or not isinstance(args, tuple):
        raise PickleProblem("corrupt pickle: a tensor is rebuilt by something other than torch's rebuild functions")
    return func(*args)


def _encode(text: Any, encoding: Any = "utf-8") -> bytes:  # protocol 2's spelling of bytes
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "ascii"):
        raise PickleProblem("corrupt pickle: a bytes value is encoded in an unexpected way")
    return text.encode(encoding)


def _bytearray(data: Any = b"") -> bytearray:
    if not isinstance(data, bytes | bytearray):  # bytearray(N) would allocate N bytes the file does not hold
        raise PickleProblem("corrupt pickle: it asks for a bytearray allocation instead of holding the bytes")
    return bytearray(data)


_REBUILDS: dict[str, Callable[..., Any]] = {
    "_rebuild_tensor": _rebuild_tensor,
    "_rebuild_tensor_v2": _rebuild_tensor_v2,
    "_rebuild_tensor_v3": _rebuild_tensor_v3,
    "_rebuild_meta_tensor_no_storage": _rebuild_meta,
    "_rebuild_parameter": _rebuild_parameter,
    "_rebuild_parameter_with_state": _rebuild_parameter,
}
_PLAIN: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _StubDict,
    ("collections", "Counter"): _StubDict,
    ("torch", "Size"): tuple,
    ("torch", "device"): str,
    ("torch", "Tensor"): _TensorType,
    ("torch.nn.parameter", "Parameter"): _TensorType,
    ("torch.nn.modules.container", "ParameterDict"): _ParameterDictStub,
    ("torch.nn", "ParameterDict"): _ParameterDictStub,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("_codecs", "encode"): _encode,
    ("builtins", "bytearray"): _bytearray,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
}


def _allowed_global(module: str, name: str) -> Any:
    """The stub for an allow-listed global; None for anything else (which would run code)."""
    if (module, name) in _PLAIN:
        return _PLAIN[(module, name)]
    if module == "torch._utils" and name in _REBUILDS:
        return _REBUILDS[name]
    if module == "torch._utils" and name in _UNSUPPORTED_REBUILDS:
        raise PickleProblem(
            f"it holds {_UNSUPPORTED_REBUILDS[name]} (torch._utils.{name}), which no model file this app reads "
            "uses; convert it to .safetensors"
        )
    if module in ("torch", "torch.storage") and name in STORAGE_TYPES:
        return _StorageType(_Dtype(*STORAGE_TYPES[name]))
    if module == "torch" and not name.startswith("_"):
        dtype = getattr(torch, name, None)
        if isinstance(dtype, torch.dtype):
            return _Dtype(dtype_name(dtype), dtype.itemsize)
    return None


def _storage(pid: Any, legacy: bool) -> StorageStub:
    """A storage from its persistent id: ('storage', type, key, location, numel[, view_metadata])."""
    expected = 6 if legacy else 5
    if not isinstance(pid, tuple) or len(pid) != expected or pid[0] != "storage":
        kind = pid[0] if isinstance(pid, tuple) and pid else type(pid).__name__
        if kind == "module":
            raise PickleRefused("a module's source code")
        raise PickleProblem(f"corrupt pickle: an unknown persistent record {str(kind)[:40]!r}")
    storage_type, key, numel = pid[1], pid[2], pid[4]
    if not isinstance(storage_type, _StorageType):
        raise PickleProblem("corrupt pickle: a storage of an unknown type")
    if not isinstance(key, str) or not isinstance(numel, int) or not 0 <= numel < MAX_DIM:
        raise PickleProblem("corrupt pickle: a storage record with an impossible key or size")
    return StorageStub(key, storage_type.dtype.name, storage_type.dtype.itemsize, numel)


@dataclass
class PickleContents:
    """What a torch pickle file holds: the loaded object (tensors as TensorStub), its storages by key, and the
    pickle protocol of its main pickle (torch.load(weights_only=True) reads only protocols 2 and 3)."""

    obj: Any
    storages: dict[str, StorageStub]
    protocol: int


def read_pickle(handle: BinaryIO, size: int, budget: ReadBudget | None = None) -> PickleContents:
    """Replay a `torch.save` file (zip or legacy) into stubs, checking every storage against the bytes present.

    Raises PickleRefused (a global that would run code), PickleProblem (damage, with the user-facing reason), or
    one of PARSE_ERRORS for bytes the unpickler or zipfile cannot parse.
    """
    budget = budget or ReadBudget()
    head = handle.read(4)
    handle.seek(0)
    if head.startswith(b"PK\x03\x04"):
        return _read_zip(handle, budget)
    return _read_legacy(handle, size, budget)


def _read_zip(handle: BinaryIO, budget: ReadBudget) -> PickleContents:
    archive = zipfile.ZipFile(handle)
    names = [info.filename for info in archive.infolist()]
    data_pkl = next((n for n in names if n == "data.pkl" or n.endswith("/data.pkl")), None)
    if data_pkl is None:
        raise PickleProblem("a zip file without data.pkl: not a torch checkpoint")
    info = archive.getinfo(data_pkl)
    if info.file_size > budget.max_bytes:
        raise PickleProblem(f"its data.pkl is {info.file_size:,} bytes: not model weights, or damaged")
    budget.take(info.file_size)
    prefix = data_pkl[: -len("data.pkl")]
    storages: dict[str, StorageStub] = {}

    def persistent(pid: Any) -> StorageStub:
        stub = storages.get(pid[2]) if isinstance(pid, tuple) and len(pid) > 2 and isinstance(pid[2], str) else None
        if stub is None:
            stub = _storage(pid, legacy=False)
            try:
                present = archive.getinfo(f"{prefix}data/{stub.key}").file_size
            except KeyError:
                raise PickleProblem(
                    f"truncated or corrupt file: the data of storage {stub.key!r} is missing; download it again"
                ) from None
            if present != stub.nbytes:
                raise PickleProblem(
                    f"corrupt file: storage {stub.key!r} should hold {stub.nbytes:,} bytes ({stub.numel:,} × "
                    f"{stub.dtype}) but holds {present:,}; download it again"
                )
            storages[stub.key] = stub
        return stub

    unpickler = _HeaderUnpickler(io.BytesIO(archive.read(data_pkl)), budget, persistent)
    obj = unpickler.load()
    return PickleContents(obj, storages, unpickler.proto)


def _read_legacy(handle: BinaryIO, size: int, budget: ReadBudget) -> PickleContents:
    reader = _BoundedReader(handle, budget)
    storages: dict[str, StorageStub] = {}

    def persistent(pid: Any) -> StorageStub:
        stub = _storage(pid, legacy=True)
        known = storages.setdefault(stub.key, stub)
        if known.numel != stub.numel or known.dtype != stub.dtype:
            raise PickleProblem(f"corrupt pickle: storage {stub.key!r} is declared twice with different sizes")
        return known

    def refuse(_pid: Any) -> Any:
        raise PickleProblem("corrupt pickle: a persistent record outside the tensor data")

    if _HeaderUnpickler(reader, budget, refuse).load() != LEGACY_MAGIC:
        raise PickleProblem("a pickle that is not a torch.save file (no torch magic number)")
    _HeaderUnpickler(reader, budget, refuse).load()  # protocol version
    _HeaderUnpickler(reader, budget, refuse).load()  # sys_info
    unpickler = _HeaderUnpickler(reader, budget, persistent)
    obj = unpickler.load()
    keys = _HeaderUnpickler(reader, budget, refuse).load()
    if not isinstance(keys, list) or set(keys) != set(storages):
        raise PickleProblem("corrupt file: the list of tensor storages does not match the pickle")
    position = handle.tell()
    for key in keys:  # each storage: its element count (8 bytes), then its bytes
        budget.check_time()
        stub = storages[key]
        handle.seek(position)
        count = handle.read(8)
        if len(count) < 8 or position + 8 + stub.nbytes > size:
            raise PickleProblem(
                f"truncated file: the tensor data needs more than the file's {size:,} bytes; the download did not "
                "finish; download it again"
            )
        if struct.unpack("<q", count)[0] != stub.numel:
            raise PickleProblem(f"corrupt file: storage {key!r} has a different size than the pickle says")
        position += 8 + stub.nbytes
    return PickleContents(obj, storages, unpickler.proto)


def flatten_tensors(
    loaded: Any, is_tensor: Callable[[Any], bool], as_mapping: Callable[[Any], Mapping[Any, Any] | None] | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """Dotted tensor keys (a top-level `state_dict` unwrapped) and the top level's scalar values as metadata.
    `as_mapping` turns a container that is not a Mapping (a loaded ParameterDict) into one, or gives None.

    The walk is bounded: each dict once (a pickle's memo can make dicts share children, or contain themselves),
    at most MAX_DEPTH deep and MAX_NODES values in all; raises PickleProblem beyond.
    """
    if not isinstance(loaded, Mapping):
        what = type(loaded).__name__
        raise PickleProblem(f"the pickle holds a {what}, not a dict of tensors; it is not model weights")
    if isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    tensors: dict[str, Any] = {}
    metadata: dict[str, str] = {}
    seen = {id(loaded)}
    stack: list[tuple[Any, str]] = [(iter(loaded.items()), "")]  # depth-first in the file's order
    nodes = 0
    while stack:
        items, prefix = stack[-1]
        entry = next(items, None)
        if entry is None:
            stack.pop()
            continue
        nodes += 1
        if nodes > MAX_NODES:
            raise PickleProblem(f"the pickle holds more than {MAX_NODES:,} values: not a state dict")
        key, value = entry
        name = f"{prefix}{_text(key)}"
        if as_mapping is not None and not isinstance(value, Mapping):
            value = as_mapping(value) or value
        if is_tensor(value):
            tensors[name] = value
        elif isinstance(value, Mapping):
            if id(value) in seen:
                continue  # reached again through the memo: its keys are listed once, under their first path
            seen.add(id(value))
            if len(stack) >= MAX_DEPTH:
                raise PickleProblem(f"the pickle's dicts are nested more than {MAX_DEPTH} deep: not a state dict")
            stack.append((iter(value.items()), name + "."))
        elif not prefix and isinstance(value, str | int | float | bool):
            metadata[name] = _text(value)[:4096]
    return tensors, metadata


def _text(value: Any) -> str:
    """str() that cannot fail: Python refuses to print integers of more than 4300 digits."""
    if isinstance(value, int) and value.bit_length() > 1024:
        return f"<a {value.bit_length()}-bit integer>"
    return str(value)
