"""Convert a legacy pickle checkpoint (.ckpt/.pt/.pth/.bin) or a diffusers folder to .safetensors beside it, without
running any code from it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from webui.models.files import load_state_dict, read_header
from webui.models.kinds import FileFormat
from webui.models.library import ModelEntry


def _owned(tensors: dict[str, Any]) -> dict[str, Any]:
    """Tensors safetensors can write: contiguous, and no two sharing memory (tied weights are copied)."""
    seen: set[int] = set()
    out = {}
    for key, tensor in tensors.items():
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in seen and tensor.numel():
            tensor = tensor.clone()
        seen.add(pointer)
        out[key] = tensor.contiguous()
    return out


def convert_to_safetensors(entry: ModelEntry) -> Path:
    """Write `<stem>.safetensors` next to a pickle file or diffusers folder; never overwrites, never executes a pickle.

    A diffusers folder becomes one fp16 file in its family's single-file layout, streamed tensor by tensor by the
    merger (`python -m webui convert` does the same with more options).

    The pickle is read only through `load_state_dict` (torch.load with weights_only=True), which refuses
    any file that needs code to load. Its scalar metadata (e.g. `global_step`) is kept as text."""
    from safetensors.torch import save_file

    source = entry.path
    if entry.format is FileFormat.DIFFUSERS:
        from webui.merge.merger import merge
        from webui.merge.recipe import MergeMode, MergeRecipe, ModelInput

        recipe = MergeRecipe(MergeMode.NO_INTERPOLATION, ModelInput((source,)))
        return merge(recipe, source.parent / f"{source.name}.safetensors").path
    if entry.format is not FileFormat.PICKLE:
        raise ValueError(
            f"{source.name}: only legacy pickle files (.ckpt, .pt, .pth, .bin) and diffusers folders need "
            f"converting; this one is {entry.format.value}"
        )
    target = source.with_suffix(".safetensors")
    if target.exists():
        raise FileExistsError(f"{target} already exists; nothing was overwritten (move or rename it first)")
    tensors = _owned(load_state_dict(source))
    metadata = {"format": "pt", "converted_from": source.name, **read_header(source).metadata}
    handle, temp_name = tempfile.mkstemp(prefix=".converting-", suffix=".safetensors", dir=source.parent)
    os.close(handle)
    temp = Path(temp_name)
    try:
        save_file(tensors, temp, metadata=metadata)
        os.link(temp, target)  # fails if the name appeared meanwhile: never overwrites
    finally:
        temp.unlink(missing_ok=True)
    return target
