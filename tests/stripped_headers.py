"""Stripped headers (key -> shape, no weights) of real-size and tiny models, built on the meta device."""

from __future__ import annotations

import json
import os
import struct
from functools import cache
from pathlib import Path
from typing import Any

import torch

from webui.families import Family
from webui.models.derive import bundled_config

Shapes = dict[str, tuple[int, ...]]
FAMILIES = (Family.SD1, Family.SD2, Family.SDXL, Family.SDXL_REFINER)

# Tiny variants as TINY_SPEC.md describes them: real interface widths, everything else shrunk.
_TINY_UNET = {
    Family.SD1: dict(cross_attention_dim=768, attention_head_dim=8),
    Family.SD2: dict(cross_attention_dim=1024, use_linear_projection=True, attention_head_dim=(1, 1)),
    Family.SDXL: dict(
        cross_attention_dim=2048,
        projection_class_embeddings_input_dim=2816,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
    ),
    Family.SDXL_REFINER: dict(
        cross_attention_dim=1280,
        projection_class_embeddings_input_dim=2560,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
    ),
}


def _unet_config(family: Family, tiny: bool) -> dict[str, Any]:
    config = {k: v for k, v in bundled_config(family, "unet").items() if not k.startswith("_")}
    if not tiny:
        return config
    xl = family in (Family.SDXL, Family.SDXL_REFINER)
    down = ("DownBlock2D", "CrossAttnDownBlock2D") if xl else ("CrossAttnDownBlock2D", "DownBlock2D")
    up = ("CrossAttnUpBlock2D", "UpBlock2D") if xl else ("UpBlock2D", "CrossAttnUpBlock2D")
    config.update(block_out_channels=(32, 64), down_block_types=down, up_block_types=up, layers_per_block=1)
    config.update(_TINY_UNET[family])
    if xl:
        config.update(
            transformer_layers_per_block=(1, 2), attention_head_dim=(1, 1), use_linear_projection=True
        )
    return config


def _text_config(family: Family, name: str, tiny: bool) -> dict[str, Any]:
    config = bundled_config(family, name)
    if tiny:
        config.update(num_hidden_layers=2, intermediate_size=64, vocab_size=1000)
    return config


@cache
def components(family: Family, tiny: bool = False) -> dict[str, torch.nn.Module]:
    """A pipeline's unet, vae and text encoder(s) with no weights (meta device)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    out: dict[str, torch.nn.Module] = {}
    with torch.device("meta"):
        out["unet"] = UNet2DConditionModel(**_unet_config(family, tiny))
        vae = {k: v for k, v in bundled_config(family, "vae").items() if not k.startswith("_")}
        if tiny:
            vae.update(
                block_out_channels=(32, 64),
                down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2,
                layers_per_block=1,
            )
        out["vae"] = AutoencoderKL(**vae)
        for name in ("text_encoder", "text_encoder_2"):
            try:
                config = _text_config(family, name, tiny)
            except ValueError:
                continue  # the family has no such encoder
            cls = CLIPTextModelWithProjection if name == "text_encoder_2" else CLIPTextModel
            out[name] = cls(CLIPTextConfig(**config))
    return out


def shapes_of(state: dict[str, torch.Tensor]) -> Shapes:
    return {key: tuple(value.shape) for key, value in state.items()}


@cache
def diffusers_shapes(family: Family, name: str, tiny: bool = False) -> Shapes:
    """One component's diffusers / transformers-5 state-dict shapes."""
    return shapes_of(components(family, tiny)[name].state_dict())


@cache
def ldm_checkpoint(family: Family, tiny: bool = False) -> Shapes:
    """A single-file checkpoint in the original LDM layout."""
    from webui.models.ldm_writer import pipeline_to_ldm

    return shapes_of(pipeline_to_ldm(components(family, tiny), family))


def with_prefix(prefix: str, shapes: Shapes) -> Shapes:
    return {prefix + key: shape for key, shape in shapes.items()}


def under(prefix: str, shapes: Shapes) -> Shapes:
    """The keys under `prefix`, with it stripped."""
    return {key[len(prefix) :]: shape for key, shape in shapes.items() if key.startswith(prefix)}


def kohya_lora(
    module_shapes: Shapes, prefix: str, *, only: tuple[str, ...] = ("attn",), rank: int = 4
) -> Shapes:
    """Kohya LoRA keys for every Linear/1x1 weight whose name contains one of `only`."""
    out: Shapes = {}
    for key, shape in module_shapes.items():
        if not key.endswith(".weight") or len(shape) not in (2, 4) or not any(o in key for o in only):
            continue
        if "norm" in key:
            continue
        module = prefix + key.removesuffix(".weight").replace(".", "_")
        out[f"{module}.lora_down.weight"] = (rank, shape[1], *shape[2:])
        out[f"{module}.lora_up.weight"] = (shape[0], rank, *([1, 1] if len(shape) == 4 else []))
        out[f"{module}.alpha"] = ()
    return out


def peft_lora(
    module_shapes: Shapes, prefix: str, *, only: tuple[str, ...] = ("attn",), rank: int = 4
) -> Shapes:
    """diffusers/PEFT LoRA keys (`<prefix><module>.lora_A.weight`) for the matching Linear weights."""
    out: Shapes = {}
    for key, shape in module_shapes.items():
        if key.endswith(".weight") and len(shape) == 2 and any(o in key for o in only) and "norm" not in key:
            module = prefix + key.removesuffix(".weight")
            out[f"{module}.lora_A.weight"] = (rank, shape[1])
            out[f"{module}.lora_B.weight"] = (shape[0], rank)
    return out


_DTYPE_BYTES = {"F16": 2, "BF16": 2, "F32": 4, "I64": 8}


def header_only_bytes(
    shapes: Shapes, metadata: dict[str, str] | None = None, dtype: str = "F16"
) -> tuple[bytes, int]:
    """(the 8-byte length + JSON header, size of the data area) of a safetensors file with these shapes."""
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for key, shape in shapes.items():
        count = 1
        for dim in shape:
            count *= dim
        size = count * _DTYPE_BYTES[dtype]
        header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw, offset


def write_header_only(
    path: Path, shapes: Shapes | tuple[bytes, int], metadata: dict[str, str] | None = None, dtype: str = "F16"
) -> Path:
    """A valid safetensors file with these shapes whose data area is a hole (sparse: no disk used).

    Real-size headers can be scanned without gigabytes of weights; reading any tensor gives zeros.
    `shapes` may also be what header_only_bytes returned, to write many copies quickly.
    """
    head, data_size = shapes if isinstance(shapes, tuple) else header_only_bytes(shapes, metadata, dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(head)
        handle.truncate(len(head) + data_size)
    return path


def sparse_files_supported(folder: Path) -> bool:
    """Whether `folder`'s filesystem stores holes without allocating them (else real-size files are real)."""
    probe = folder / ".sparse-probe"
    with open(probe, "wb") as handle:
        handle.truncate(64 * 2**20)
    used = os.stat(probe).st_blocks * 512
    probe.unlink()
    return used < 2**20
