"""Z-Image LoRAs in the formats trainers write, converted to diffusers/PEFT names with widths from the tensors.

Formats (key examples):
- kohya-style (sd-scripts, musubi-tuner): `lora_unet_layers_0_attention_qkv.lora_down.weight`, `.lora_up.weight`,
  `.alpha`;
- ComfyUI / original names with `lora_down` / `lora_up` or PEFT `lora_A` / `lora_B`
  (`diffusion_model.layers.0.attention.qkv.lora_down.weight`);
- diffusers / PEFT (`transformer.layers.0.attention.to_q.lora_A.weight`): passed through.

The original names are renamed as zimage_keys.py renames the weights (`attention.out` -> `attention.to_out.0`)
and the fused `attention.qkv` is split: every part keeps the down matrix and takes its third of the up matrix,
alpha / rank folded into the down matrix. Qwen3 (text-encoder) modules and DoRA magnitudes come back in
`skipped`, reported as not applied.
"""

from __future__ import annotations

import re
from typing import Any

from webui.families.base import LoraConversion
from webui.families.flux_keys import split_rows
from webui.families.flux_lora import _factors, _scaled_down, _strip

_BLOCK_MODULES = {  # original module under <blocks>.N. -> (diffusers modules, split)
    "attention.qkv": (("attention.to_q", "attention.to_k", "attention.to_v"), "thirds"),
    "attention.out": (("attention.to_out.0",), None),
    "feed_forward.w1": (("feed_forward.w1",), None),
    "feed_forward.w2": (("feed_forward.w2",), None),
    "feed_forward.w3": (("feed_forward.w3",), None),
    "adaLN_modulation.0": (("adaLN_modulation.0",), None),
}
_BLOCKS = ("layers", "noise_refiner", "context_refiner")
_KOHYA = re.compile(r"^lora_unet_(layers|noise_refiner|context_refiner)_(\d+)_(.+)$")
_DOTTED = re.compile(r"^(layers|noise_refiner|context_refiner)\.(\d+)\.(.+)$")
_TEXT_ENCODER = ("lora_te_", "lora_te1_", "text_encoder.")


def _module(name: str) -> tuple[str, tuple[tuple[str, ...], str | None]] | None:
    """(diffusers module prefix `<blocks>.N.`, (targets, split)) of a kohya- or original-named module, or None."""
    kohya = _KOHYA.match(name)
    if kohya:
        blocks, index, tail = kohya.groups()
        found = {k.replace(".", "_"): v for k, v in _BLOCK_MODULES.items()}.get(tail)
        return (f"{blocks}.{index}.", found) if found else None
    dotted = _DOTTED.match(name)
    if dotted:
        blocks, index, tail = dotted.groups()
        return (f"{blocks}.{index}.", _BLOCK_MODULES[tail]) if tail in _BLOCK_MODULES else None
    return None


def to_diffusers(state: dict[str, Any]) -> LoraConversion:
    """A Z-Image LoRA state dict in any format above as diffusers/PEFT keys (`transformer.*`)."""
    out: dict[str, Any] = {}
    skipped: list[str] = []
    for name, parts in _factors(state).items():
        if "unknown" in parts:
            skipped.append(f"{name}: not a LoRA factor")
            continue
        if "dora" in parts:
            skipped.append(f"{name}: DoRA (dora_scale) is not applied")
            continue
        if name.startswith(_TEXT_ENCODER):
            skipped.append(f"{name}: Qwen3 text-encoder LoRA modules are not applied")
            continue
        if "down" not in parts or "up" not in parts:
            skipped.append(f"{name}: has no down/up (A/B) pair")
            continue
        bare = name if name.startswith("lora_unet_") else _strip(name)
        found = _module(bare)
        if found is None:
            if name.startswith("transformer.") and bare.split(".", 1)[0] in _BLOCKS:
                out[f"{name}.lora_A.weight"] = _scaled_down(parts)  # diffusers/PEFT names already
                out[f"{name}.lora_B.weight"] = parts["up"]
            else:
                skipped.append(f"{name}: no Z-Image transformer module of that name")
            continue
        prefix, (targets, split) = found
        down, up = _scaled_down(parts), parts["up"]
        ups = split_rows(up, split, down.shape[1]) if len(targets) > 1 else [up]
        for target, part in zip(targets, ups, strict=True):
            out[f"transformer.{prefix}{target}.lora_A.weight"] = down
            out[f"transformer.{prefix}{target}.lora_B.weight"] = part
    return LoraConversion(out, tuple(skipped))
