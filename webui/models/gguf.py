"""GGUF (quantised) model files: tensor names, shapes and metadata read from the header only."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

from webui.models.files import ModelFileError, TensorHeader
from webui.models.kinds import FileFormat

MAX_COUNT = 10_000_000  # more tensors or metadata entries than this means a corrupt header
MAX_STRING = 64 * 1024 * 1024

# GGUF metadata value types: struct format of each fixed-size scalar.
_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9
# ggml tensor types, by the names llama.cpp and ComfyUI-GGUF print.
_GGML_TYPES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    6: "Q5_0",
    7: "Q5_1",
    8: "Q8_0",
    9: "Q8_1",
    10: "Q2_K",
    11: "Q3_K",
    12: "Q4_K",
    13: "Q5_K",
    14: "Q6_K",
    15: "Q8_K",
    24: "I8",
    25: "I16",
    26: "I32",
    27: "I64",
    28: "F64",
    30: "BF16",
}


class _Reader:
    def __init__(self, handle: BinaryIO, path: Path) -> None:
        self.handle = handle
        self.path = path

    def take(self, fmt: str) -> int | float | bool:
        size = struct.calcsize(fmt)
        data = self.handle.read(size)
        if len(data) < size:
            raise ModelFileError(
                self.path,
                "truncated GGUF file: the header ends early; the download did not finish; download it again",
            )
        return struct.unpack(fmt, data)[0]

    def count(self) -> int:
        value = int(self.take("<Q"))
        if value > MAX_COUNT:
            raise ModelFileError(
                self.path, f"corrupt GGUF header: it claims {value:,} entries; download it again"
            )
        return value

    def string(self) -> str:
        length = int(self.take("<Q"))
        if length > MAX_STRING:
            raise ModelFileError(
                self.path, f"corrupt GGUF header: a {length:,}-byte string; download it again"
            )
        data = self.handle.read(length)
        if len(data) < length:
            raise ModelFileError(self.path, "truncated GGUF file: the header ends early; download it again")
        return data.decode("utf-8", errors="replace")

    def value(self, kind: int) -> object:
        if kind in _SCALARS:
            return self.take(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item_kind = int(self.take("<I"))
            return [self.value(item_kind) for _ in range(self.count())]
        raise ModelFileError(self.path, f"corrupt GGUF header: unknown value type {kind}; download it again")


def read_gguf_header(path: Path) -> TensorHeader:
    """Tensor shapes (in torch order), ggml types as dtypes, and scalar metadata of a GGUF file."""
    with open(path, "rb") as handle:
        reader = _Reader(handle, path)
        handle.read(4)  # the GGUF magic, already checked by sniff_format
        version = int(reader.take("<I"))
        if version < 2:
            raise ModelFileError(path, f"GGUF version {version} is too old to read; use a newer conversion")
        tensor_count = reader.count()
        metadata: dict[str, str] = {}
        for _ in range(reader.count()):
            key = reader.string()
            value = reader.value(int(reader.take("<I")))
            if not isinstance(value, list):
                metadata[key] = str(value)
        shapes: dict[str, tuple[int, ...]] = {}
        dtypes: dict[str, str] = {}
        for _ in range(tensor_count):
            name = reader.string()
            dims = [int(reader.take("<Q")) for _ in range(int(reader.take("<I")))]
            ggml_type = int(reader.take("<I"))
            reader.take("<Q")  # data offset
            shapes[name] = tuple(reversed(dims))  # ggml lists the innermost dimension first
            dtypes[name] = _GGML_TYPES.get(ggml_type, f"ggml_{ggml_type}")
    return TensorHeader(shapes=shapes, dtypes=dtypes, metadata=metadata, format=FileFormat.GGUF)
