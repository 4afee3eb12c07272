"""GGUF (quantised) model files: tensor names, shapes and metadata read from the header only."""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path
from typing import BinaryIO

from webui.models.files import HEADER_SECONDS, ModelFileError, TensorHeader, open_regular
from webui.models.kinds import FileFormat

MAX_COUNT = 10_000_000  # more tensors or metadata entries than this means a corrupt header
MAX_STRING = 64 * 1024 * 1024
MAX_NESTING = 8  # arrays of arrays; real files nest at most once
MAX_DIMS = 4  # GGML_MAX_DIMS in ggml.h
DEFAULT_ALIGNMENT = 32  # GGUF_DEFAULT_ALIGNMENT, overridden by general.alignment

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
# (elements per block, bytes per block) of each ggml type: gguf-py's GGML_QUANT_SIZES (gguf/constants.py).
_BLOCKS = {
    0: (1, 4),
    1: (1, 2),
    2: (32, 18),
    3: (32, 20),
    6: (32, 22),
    7: (32, 24),
    8: (32, 34),
    9: (32, 40),
    10: (256, 84),
    11: (256, 110),
    12: (256, 144),
    13: (256, 176),
    14: (256, 210),
    15: (256, 292),
    24: (1, 1),
    25: (1, 2),
    26: (1, 4),
    27: (1, 8),
    28: (1, 8),
    30: (1, 2),
}


class _Reader:
    def __init__(self, handle: BinaryIO, path: Path) -> None:
        self.handle = handle
        self.path = path
        self.deadline = time.monotonic() + HEADER_SECONDS

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
        if time.monotonic() > self.deadline:
            raise ModelFileError(self.path, f"reading its header took more than {HEADER_SECONDS:g} s; it is damaged")
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

    def value(self, kind: int, depth: int = 0) -> object:
        if kind in _SCALARS:
            return self.take(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY and depth < MAX_NESTING:
            item_kind = int(self.take("<I"))
            return [self.value(item_kind, depth + 1) for _ in range(self.count())]
        if kind == _ARRAY:
            raise ModelFileError(self.path, "corrupt GGUF header: arrays nested too deep; download it again")
        raise ModelFileError(self.path, f"corrupt GGUF header: unknown value type {kind}; download it again")


def read_gguf_header(path: Path) -> TensorHeader:
    """Tensor shapes (in torch order), ggml types as dtypes, and scalar metadata of a GGUF file.

    Raises ModelFileError for a damaged header, or tensor data reaching past the end of the file (truncation)."""
    with open_regular(path) as handle:
        size = os.fstat(handle.fileno()).st_size
        reader = _Reader(handle, path)
        handle.read(4)  # the GGUF magic, already checked by sniff_format
        version = int(reader.take("<I"))
        if version < 2:
            raise ModelFileError(path, f"GGUF version {version} is too old to read; use a newer conversion")
        tensor_count = reader.count()
        metadata: dict[str, str] = {}
        alignment = DEFAULT_ALIGNMENT
        for _ in range(reader.count()):
            key = reader.string()
            value = reader.value(int(reader.take("<I")))
            if key == "general.alignment" and isinstance(value, int) and value > 0:
                alignment = value
            if not isinstance(value, list):
                metadata[key] = str(value)
        shapes: dict[str, tuple[int, ...]] = {}
        dtypes: dict[str, str] = {}
        data_end = 0
        for _ in range(tensor_count):
            name = reader.string()
            ndims = int(reader.take("<I"))
            if ndims > MAX_DIMS:
                raise ModelFileError(path, f"corrupt GGUF header: a tensor with {ndims} dimensions; download it again")
            dims = [int(reader.take("<Q")) for _ in range(ndims)]
            ggml_type = int(reader.take("<I"))
            offset = int(reader.take("<Q"))
            shapes[name] = tuple(reversed(dims))  # ggml lists the innermost dimension first
            dtypes[name] = _GGML_TYPES.get(ggml_type, f"ggml_{ggml_type}")
            data_end = max(data_end, offset + _nbytes(dims, ggml_type))
        data_start = -(-handle.tell() // alignment) * alignment
    if data_start + data_end > size:
        raise ModelFileError(
            path,
            f"truncated GGUF file: the tensors need {data_start + data_end:,} bytes but the file has {size:,}; "
            "the download did not finish; download it again",
        )
    return TensorHeader(shapes=shapes, dtypes=dtypes, metadata=metadata, format=FileFormat.GGUF)


def _nbytes(dims: list[int], ggml_type: int) -> int:
    """Bytes of one tensor's data (0 for a type whose block size is not known here)."""
    count = 1
    for dim in dims:
        count *= dim
    per_block, block_bytes = _BLOCKS.get(ggml_type, (1, 0))
    return -(-count // per_block) * block_bytes
