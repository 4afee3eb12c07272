"""Load a transformer denoiser (DiT / MMDiT) from any layout: plain, fp8, ComfyUI scaled fp8 or GGUF-quantised.

The family's `DenoiserLoader` renames the file's keys to diffusers' and derives the config from the renamed
shapes; diffusers' `from_single_file` then builds the model from that state dict and a throwaway config
folder (nothing from the hub). GGUF files keep their quantised tensors (diffusers' GGUFParameter) and run
through diffusers' GGUF quantizer, which dequantises layer by layer at compute time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from webui.families import Family
from webui.models.derive import bundled_config

SCALED_FP8_MARKER = "scaled_fp8"  # ComfyUI's marker key in "scaled fp8" files


def read_gguf_tensors(path: Path, prefix: str = "") -> dict[str, Any]:
    """A GGUF file's tensors under `prefix`, quantised ones as diffusers' GGUFParameter (read by the `gguf`
    package, memory-mapped), F16/F32 ones as plain tensors."""
    from diffusers.models.model_loading_utils import load_gguf_checkpoint

    return {k: v for k, v in load_gguf_checkpoint(str(path)).items() if k.startswith(prefix)}


def is_gguf_state(state: dict[str, Any]) -> bool:
    return any(hasattr(value, "quant_type") for value in state.values())


def fold_scaled_fp8(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """ComfyUI's "scaled fp8" files (fp8 weights, a per-layer `<module>.scale_weight`, the `scaled_fp8`
    marker) as plain weights in `dtype`: weight × scale_weight, markers and `scale_input`s dropped.

    diffusers alone would load the fp8 numbers without their scales: silently wrong (TRAPS.md). Other
    files pass unchanged (plain fp8 is cast by the loader like any other dtype)."""
    if SCALED_FP8_MARKER not in state and not any(k.endswith(".scale_weight") for k in state):
        return state
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key == SCALED_FP8_MARKER or key.endswith((".scale_weight", ".scale_input")):
            continue
        scale = state.get(key.removesuffix(".weight") + ".scale_weight") if key.endswith(".weight") else None
        if scale is not None:
            tensor = (tensor.to(torch.float32) * scale.to(torch.float32)).to(dtype)
        out[key] = tensor
    return out


def _strip_prefix(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    if prefix and any(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def shapes_of(state: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Logical shapes (a GGUFParameter's `quant_shape`, not its byte layout)."""
    return {k: tuple(getattr(v, "quant_shape", None) or v.shape) for k, v in state.items()}


def load_transformer(state: dict[str, Any], family: Family, dtype: torch.dtype) -> torch.nn.Module:
    """The family's transformer from a state dict in its original or diffusers naming (checkpoint prefix
    optional). Raises ValueError (from the family's converter) naming the first key or shape that does not fit."""
    from webui.models.loading import config_folder

    description = family.description
    loader = description.denoiser_loader
    spec = description.denoiser
    if loader is None:
        raise ValueError(f"{family.label} has no transformer loader in its description")
    state = _strip_prefix(state, spec.checkpoint_prefix)
    quantization = None
    if is_gguf_state(state):
        from diffusers import GGUFQuantizationConfig

        quantization = GGUFQuantizationConfig(compute_dtype=dtype)
    else:
        state = fold_scaled_fp8(state, dtype)
    state = loader.converter()(state)
    config = loader.deriver()(shapes_of(state), bundled_config(family, spec.role.value))
    cls = spec.component_type()
    with config_folder(spec.role, config) as folder:
        return cls.from_single_file(
            state,
            config=folder,
            subfolder=spec.role.value,
            local_files_only=True,
            torch_dtype=dtype,
            quantization_config=quantization,
        )
