"""GGUF (quantised) model files: tensor names, shapes and metadata read by the `gguf` package, data untouched.

`gguf.GGUFReader` memory-maps the file and parses the header; tensor data is only mapped, never read here.
Whatever a malformed file makes the reader raise (a truncated download, a corrupt count) becomes one
ModelFileError with advice, so a bad file is one entry with a problem in the scan, never a crash.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from webui.models.files import ModelFileError, TensorHeader, open_regular
from webui.models.kinds import FileFormat


def read_gguf_header(path: Path) -> TensorHeader:
    """Tensor shapes (in torch order), ggml types as dtypes (`Q8_0`, `F16`), and scalar/string metadata.

    Raises ModelFileError naming the file when the gguf package cannot parse it."""
    import gguf

    with open_regular(path) as handle:  # regular files only: a FIFO would block (files.open_regular)
        return _read(path, handle, gguf)


def _read(path: Path, handle: object, gguf: Any) -> TensorHeader:
    try:
        reader = gguf.GGUFReader(handle, "r")  # numpy maps the open file; tensor data past its end raises
        shapes: dict[str, tuple[int, ...]] = {}
        dtypes: dict[str, str] = {}
        for tensor in reader.tensors:
            # ggml lists the innermost dimension first; torch the outermost
            shapes[tensor.name] = tuple(reversed([int(d) for d in tensor.shape]))
            dtypes[tensor.name] = tensor.tensor_type.name
        metadata: dict[str, str] = {}
        for key, field in reader.fields.items():
            if key.startswith("GGUF.") or not field.types or field.types[0] == gguf.GGUFValueType.ARRAY:
                continue
            metadata[key] = str(field.contents())
    except (ValueError, IndexError, KeyError, OSError, OverflowError, MemoryError, TypeError) as error:
        raise ModelFileError(
            path,
            f"corrupt or truncated GGUF file ({type(error).__name__}: {error}); the download did not finish or "
            "the file is damaged: download it again",
        ) from error
    return TensorHeader(shapes=shapes, dtypes=dtypes, metadata=metadata, format=FileFormat.GGUF)
