"""Write a .safetensors file one tensor at a time: the header first (from known shapes and dtypes), then the data.

The safetensors format (huggingface/safetensors, docs "Metadata parsing"): 8 bytes little-endian header length N,
N bytes of JSON `{key: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}` padded
with spaces so the data starts 8-byte aligned, then the tensors' little-endian bytes back to back. Every shape
and dtype is known before any data is read (from the inputs' headers), so the header is written first and each
tensor streams after it; the library's own `save_file` needs every tensor in memory at once.

The file is written under a temporary name in the target folder and linked to its name only when complete
(`os.link` fails when the name exists, so nothing is ever overwritten); a failed or interrupted write leaves no
file behind. A disk too small is refused before the first byte, and a full disk while writing (ENOSPC) becomes a
`DiskFullError` naming the file, the bytes needed and what to do.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType, TracebackType

import torch

# safetensors' dtype names (its Rust `Dtype` enum) and the torch dtypes they store.
DTYPES: Mapping[str, torch.dtype] = MappingProxyType(
    {
        "F64": torch.float64,
        "F32": torch.float32,
        "F16": torch.float16,
        "BF16": torch.bfloat16,
        "I64": torch.int64,
        "I32": torch.int32,
        "I16": torch.int16,
        "I8": torch.int8,
        "U8": torch.uint8,
        "BOOL": torch.bool,
        "F8_E4M3": torch.float8_e4m3fn,
        "F8_E5M2": torch.float8_e5m2,
    }
)
NAMES: Mapping[torch.dtype, str] = MappingProxyType({dtype: name for name, dtype in DTYPES.items()})
_ALIGN = 8
_HEADROOM = 16 * 2**20  # free space kept beyond the file's size (filesystem metadata, other writers)


class DiskFullError(OSError):
    """The disk cannot hold the file being written; the message names it, the bytes needed and what to do."""

    def __init__(self, path: Path, needed: int, free: int | None) -> None:
        free_text = "" if free is None else f", {free / 2**30:,.2f} GiB free"
        super().__init__(
            errno.ENOSPC,
            f"{path}: not enough disk space to write it ({needed / 2**30:,.2f} GiB needed{free_text}); nothing "
            "was written: free some space on that disk or write the file to another folder",
        )


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of the file to be written: its key, safetensors dtype name and shape."""

    key: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count * torch.empty((), dtype=DTYPES[self.dtype]).element_size()


def dtype_name(dtype: torch.dtype) -> str:
    """safetensors' name for a torch dtype; ValueError for one it cannot store."""
    try:
        return NAMES[dtype]
    except KeyError:
        raise ValueError(f"dtype: safetensors cannot store {dtype}") from None


def header_bytes(entries: Sequence[TensorEntry], metadata: Mapping[str, str] | None) -> bytes:
    """The length prefix and padded JSON header for `entries` laid out back to back in the given order."""
    header: dict[str, object] = {}
    if metadata:
        for key, value in metadata.items():
            if not isinstance(value, str):
                raise TypeError(f"metadata {key!r} must be a str, got {type(value).__name__}")
        header["__metadata__"] = dict(metadata)
    offset = 0
    for entry in entries:
        if entry.key in header:
            raise ValueError(f"tensor key {entry.key!r} is given twice")
        end = offset + entry.nbytes
        header[entry.key] = {"dtype": entry.dtype, "shape": list(entry.shape), "data_offsets": [offset, end]}
        offset = end
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-(8 + len(raw)) % _ALIGN)
    return struct.pack("<Q", len(raw)) + raw


def aligned_order(entries: Sequence[TensorEntry]) -> list[TensorEntry]:
    """`entries` with wider elements first (stable), so every tensor's data starts aligned to its element size."""
    return sorted(entries, key=lambda e: -torch.empty((), dtype=DTYPES[e.dtype]).element_size())


class StreamingWriter:
    """Writes `entries` (in this order) to `path`: `write(key, tensor)` once per entry, in order, then `commit()`.

    Use as a context manager: leaving it without `commit()` (an error, an interrupt) removes the partial file.
    Raises FileExistsError when `path` exists (before writing anything and again at commit), DiskFullError when
    the disk is too small (before writing, or ENOSPC while writing), ValueError for a tensor that does not match
    its entry."""

    def __init__(self, path: Path, entries: Sequence[TensorEntry], metadata: Mapping[str, str] | None = None) -> None:
        self.path = Path(path)
        self.entries = list(entries)
        self._header = header_bytes(self.entries, metadata)
        self.total_bytes = len(self._header) + sum(e.nbytes for e in self.entries)
        self._next = 0
        self._handle = None
        self._temp: Path | None = None

    def __enter__(self) -> StreamingWriter:
        if self.path.exists():
            raise FileExistsError(f"{self.path} already exists; nothing was overwritten: choose another name")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.path.parent).free
        if free < self.total_bytes + _HEADROOM:
            raise DiskFullError(self.path, self.total_bytes, free)
        handle, name = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".partial")
        self._temp = Path(name)
        give_new_file_mode(handle)
        self._handle = os.fdopen(handle, "wb")
        try:
            self._put(self._header)
        except BaseException:
            self._discard()  # __exit__ does not run when __enter__ fails
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._discard()

    def write(self, key: str, tensor: torch.Tensor) -> None:
        """The next entry's data; `tensor` must have its key, dtype and shape."""
        if self._handle is None:
            raise RuntimeError("StreamingWriter.write outside its `with` block")
        if self._next >= len(self.entries):
            raise ValueError(f"tensor {key!r}: every entry of the header is written already")
        entry = self.entries[self._next]
        if key != entry.key:
            raise ValueError(f"tensor {key!r}: expected {entry.key!r} next (tensors are written in header order)")
        if dtype_name(tensor.dtype) != entry.dtype or tuple(tensor.shape) != entry.shape:
            raise ValueError(
                f"tensor {key!r}: got {dtype_name(tensor.dtype)} {tuple(tensor.shape)}, the header says "
                f"{entry.dtype} {entry.shape}"
            )
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
        self._put(memoryview(data))
        self._next += 1

    def commit(self) -> Path:
        """Flush to disk and give the file its name (never replacing one); returns the path."""
        if self._handle is None or self._temp is None:
            raise RuntimeError("StreamingWriter.commit outside its `with` block")
        if self._next != len(self.entries):
            missing = self.entries[self._next].key
            raise ValueError(
                f"{self.path}: {len(self.entries) - self._next} tensors not written yet ({missing!r} next)"
            )
        try:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
            self._handle = None
            os.link(self._temp, self.path)
        except FileExistsError:
            raise FileExistsError(f"{self.path} appeared while writing; nothing was overwritten") from None
        except OSError as error:
            raise self._translated(error) from None
        self._discard()
        return self.path

    def _put(self, data: bytes | memoryview) -> None:
        try:
            self._handle.write(data)
        except OSError as error:
            raise self._translated(error) from None

    def _translated(self, error: OSError) -> OSError:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            return DiskFullError(self.path, self.total_bytes, _free(self.path.parent))
        return error

    def _discard(self) -> None:
        if self._handle is not None:
            try:
                self._handle.close()
            except OSError:
                pass  # the write already failed (a full disk fails the close's flush too); the file goes below
            self._handle = None
        if self._temp is not None:
            self._temp.unlink(missing_ok=True)
            self._temp = None


def _free(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def give_new_file_mode(descriptor: int) -> None:
    """Give a file made by `tempfile.mkstemp` (always 0600) the mode `open()` would give a new file under this
    process's umask (0644 under the usual 022), so a model written into a shared models/ folder reads like the
    files beside it. Where the umask cannot be read without changing it (no /proc), 022 is assumed."""
    umask = 0o022
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            umask = next((int(line.split()[1], 8) for line in status if line.startswith("Umask:")), umask)
    except (OSError, ValueError):
        pass
    if hasattr(os, "fchmod"):
        os.fchmod(descriptor, 0o666 & ~umask)
