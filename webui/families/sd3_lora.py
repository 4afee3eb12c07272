"""SD3 / SD3.5 LoRAs in the formats trainers write, converted to diffusers/PEFT names with widths from the tensors.

Formats (key examples):
- kohya / sd-scripts (`sd3_train_network.py`): `lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight`,
  `.lora_up.weight`, `.alpha`; CLIP-L as `lora_te1_text_model_encoder_layers_0_self_attn_q_proj`, CLIP-G as
  `lora_te2_*`, T5 as `lora_te3_*`;
- ComfyUI / Stability names with `lora_down` / `lora_up` or PEFT `lora_A` / `lora_B`
  (`diffusion_model.joint_blocks.0.x_block.attn.qkv.lora_down.weight`);
- diffusers / PEFT (`transformer.transformer_blocks.0.attn.to_q.lora_A.weight`, `text_encoder(_2).*`): passed
  through to diffusers' SD3 loader.

Fused qkv projections are split as the weights are (sd3_keys.py): every part keeps the down matrix and takes
its rows of the up matrix; alpha / rank is folded into the down matrix. T5 modules (diffusers' SD3 loader takes
transformer, CLIP-L and CLIP-G LoRAs only) and DoRA magnitudes come back in `skipped`, reported as not applied.
"""

from __future__ import annotations

import re
from typing import Any

from webui.families.base import LoraConversion
from webui.families.flux_keys import split_rows
from webui.families.flux_lora import _factors, _scaled_down, _strip
from webui.families.sd3_keys import BLOCK, TOP

_CLIP_KOHYA = re.compile(r"^lora_te([12])_text_model_encoder_layers_(\d+)_(self_attn_(?:q|k|v|out)_proj|mlp_fc[12])$")
_T5 = ("lora_te3_", "text_encoder_3.", "text_encoders.t5xxl.")
_PASS_THROUGH = ("transformer.", "text_encoder.", "text_encoder_2.")


def _tables() -> tuple[dict[str, tuple[tuple[str, ...], str | None]], dict[str, str]]:
    """(original module name with `{}` for the block -> (diffusers targets, split)), kohya name -> original."""
    table: dict[str, tuple[tuple[str, ...], str | None]] = {}
    for name, targets, split in BLOCK:
        table[f"joint_blocks.{{}}.{name}"] = (tuple(f"transformer_blocks.{{}}.{t}" for t in targets), split)
    for name, targets, split in TOP:
        table[name] = (targets, split)
    kohya = {pattern.replace(".", "_"): pattern for pattern in table}
    return table, kohya


def _module(name: str) -> tuple[str, str | None] | None:
    """(original module pattern, block index) of an original-named or kohya-named module, or None."""
    table, kohya = _tables()
    if name.startswith("lora_unet_"):
        rest = name.removeprefix("lora_unet_")
        match = re.match(r"^joint_blocks_(\d+)_(.+)$", rest)
        if match:
            pattern = kohya.get(f"joint_blocks_{{}}_{match.group(2)}")
            return (pattern, match.group(1)) if pattern else None
        return (kohya[rest], None) if rest in kohya else None
    match = re.match(r"^joint_blocks\.(\d+)\.(.+)$", name)
    pattern, index = (f"joint_blocks.{{}}.{match.group(2)}", match.group(1)) if match else (name, None)
    return (pattern, index) if pattern in table else None


def to_diffusers(state: dict[str, Any]) -> LoraConversion:
    """An SD3 LoRA state dict in any format above as diffusers/PEFT keys (`transformer.*`, `text_encoder(_2).*`).

    `skipped` names what was not converted and why (T5 modules, DoRA magnitudes, unknown keys)."""
    table, _kohya = _tables()
    out: dict[str, Any] = {}
    skipped: list[str] = []
    for name, parts in _factors(state).items():
        if "unknown" in parts:
            skipped.append(f"{name}: not a LoRA factor")
            continue
        if "dora" in parts:
            skipped.append(f"{name}: DoRA (dora_scale) is not applied")
            continue
        if name.startswith(_T5):
            skipped.append(f"{name}: T5 LoRA modules are not applied (diffusers loads the transformer and CLIPs)")
            continue
        if "down" not in parts or "up" not in parts:
            skipped.append(f"{name}: has no down/up (A/B) pair")
            continue
        if name.startswith(_PASS_THROUGH) and _module(_strip(name)) is None:
            out[f"{name}.lora_A.weight"] = _scaled_down(parts)  # diffusers/PEFT names already
            out[f"{name}.lora_B.weight"] = parts["up"]
            continue
        clip = _CLIP_KOHYA.match(name)
        if clip:
            encoder, layer, module = clip.groups()
            path = module.replace("self_attn_", "self_attn.").replace("mlp_", "mlp.")
            component = "text_encoder" if encoder == "1" else "text_encoder_2"
            target = f"{component}.text_model.encoder.layers.{layer}.{path}"
            out[f"{target}.lora_A.weight"] = _scaled_down(parts)
            out[f"{target}.lora_B.weight"] = parts["up"]
            continue
        found = _module(name if name.startswith("lora_unet_") else _strip(name))
        if found is None:
            skipped.append(f"{name}: no SD3 transformer module of that name")
            continue
        pattern, index = found
        targets, split = table[pattern]
        down, up = _scaled_down(parts), parts["up"]
        if split == "swap_if_pre_only":  # a modulation's rows: swapped only in the pre-only (last) context block
            split = "swap" if up.shape[0] == 2 * down.shape[1] else None
        ups = split_rows(up, split, down.shape[1]) if len(targets) > 1 or split == "swap" else [up]
        for target, part in zip(targets, ups, strict=True):
            module = target.format(index) if index is not None else target
            out[f"transformer.{module}.lora_A.weight"] = down
            out[f"transformer.{module}.lora_B.weight"] = part
    return LoraConversion(out, tuple(skipped))
