"""How big models fit small GPUs: fp8 storage of a transformer denoiser, and group offload of every component.

fp8 storage is diffusers' layerwise casting (`enable_layerwise_casting`): weights rest in float8_e4m3fn
(half of bf16) and each layer is cast to the compute dtype just before it runs. It applies to transformer
denoisers only (families with a `DenoiserLoader`), never to GGUF-quantised ones (already small). The policy
says `on`, `off` or `auto`: on CUDA, fp8 when the bf16 transformer would take more than FP8_AUTO_SHARE of the
VRAM budget (the rest holds the VAE, activations and, between prompts, nothing else: the prompt embeddings
are cached, so T5 and CLIP can wait in RAM under offload).

Group offload is diffusers' `apply_group_offloading` (leaf level, CUDA streams where available): every
component rests in RAM and its layers are moved to the GPU as they run, for cards too small for even the
fp8 transformer. Model offload (`--cpu-offload`) moves whole components instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from math import prod
from pathlib import Path
from typing import Any

import torch

from webui.engine.device import FP8_MODES
from webui.families import Family

FP8_STORAGE = torch.float8_e4m3fn
FP8_AUTO_SHARE = 0.6  # a bf16 transformer above this share of the VRAM budget is stored in fp8
_HALF_BYTES = 2


def estimated_bytes(path: Path, prefix: str = "") -> int:
    """Bytes the tensors under `prefix` take in 16-bit precision, from the file's header (a folder: its
    `*.safetensors` files); 0 when nothing can be read. Used before loading, to decide fp8 storage."""
    from webui.models.files import ModelFileError, read_header

    files: Iterable[Path] = sorted(path.rglob("*.safetensors")) if path.is_dir() else [path]
    total = 0
    for file in files:
        try:
            shapes = read_header(file).shapes
        except ModelFileError:
            return 0
        total += sum(prod(shape) for key, shape in shapes.items() if key.startswith(prefix))
    return total * _HALF_BYTES


def wants_fp8(mode: str, family: Family, device: torch.device, bf16_bytes: int, vram_budget: int | None) -> bool:
    """Whether the family's denoiser is stored in fp8 under `mode` (see the module docstring)."""
    if mode not in FP8_MODES:
        raise ValueError(f"fp8_storage: {mode!r} is unknown; use {', '.join(FP8_MODES)}")
    if family.description.denoiser_loader is None or mode == "off":
        return False
    if mode == "on":
        return True
    return device.type == "cuda" and vram_budget is not None and bf16_bytes > FP8_AUTO_SHARE * vram_budget


def store_in_fp8(module: torch.nn.Module, compute_dtype: torch.dtype) -> torch.nn.Module:
    """Layerwise casting: weights stored in fp8, each layer computed in `compute_dtype`. GGUF-quantised
    modules are left as they are."""
    if any(hasattr(p, "quant_type") for p in module.parameters()):
        return module
    module.enable_layerwise_casting(storage_dtype=FP8_STORAGE, compute_dtype=compute_dtype)
    return module


def apply_group_offload(components: Iterable[Any], onload: torch.device) -> None:
    """Leaf-level group offload of each component: resting in RAM, each layer on `onload` while it runs."""
    from diffusers.hooks import apply_group_offloading

    for module in components:
        if isinstance(module, torch.nn.Module):
            apply_group_offloading(
                module,
                onload_device=onload,
                offload_device=torch.device("cpu"),
                offload_type="leaf_level",
                use_stream=onload.type == "cuda",
            )
