"""FLUX.1 LoRAs in every format trainers write, converted to diffusers/PEFT names with widths from the tensors.

Formats (key examples):
- kohya / sd-scripts: `lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight`, `.lora_up.weight`, `.alpha`;
  CLIP-L as `lora_te1_text_model_encoder_layers_0_self_attn_q_proj`, T5 as `lora_te2_*` / `lora_te3_*`;
- ComfyUI / BFL names with `lora_down` / `lora_up` (`diffusion_model.double_blocks.0.img_attn.qkv.lora_down.weight`);
- BFL names with PEFT factors `lora_A` / `lora_B` (diffusers' loader takes nothing from these and says
  nothing: TRAPS.md);
- XLabs: `double_blocks.0.processor.qkv_lora1.down.weight` (image stream; `*_lora2` the text stream);
- diffusers / PEFT: `transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight`: passed through.

Fused BFL projections are split as the weights are (flux_keys.py): every part keeps the same down
matrix and takes its rows of the up matrix, so each diffusers module's delta is exactly its slice of the
fused delta; alpha / rank is folded into the down matrix. T5 keys (diffusers has no T5 LoRA loader) and
DoRA magnitudes (`dora_scale`) are not converted: they come back in `skipped` and are reported as not
applied, never dropped silently.
"""

from __future__ import annotations

import re
from typing import Any

from webui.families.base import LoraConversion
from webui.families.flux_keys import module_map, split_rows

_BFL_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "base_model.model.", "transformer.", "unet.")
_XLABS = re.compile(r"^(double_blocks\.\d+)\.processor\.(qkv|proj)_lora([12])\.(down|up)\.weight$")
_CLIP_KOHYA = re.compile(r"^lora_te1?_text_model_encoder_layers_(\d+)_(self_attn_(?:q|k|v|out)_proj|mlp_fc[12])$")
_T5_KOHYA = ("lora_te2_", "lora_te3_", "text_encoder_2.", "text_encoders.t5xxl.")


def _kohya_names() -> dict[str, str]:
    """kohya module name (dots as underscores) -> BFL module pattern (`{}` for the block index)."""
    return {pattern.replace(".", "_").replace("{}", "{}"): pattern for pattern in module_map()}


def _bfl_module(name: str) -> tuple[str, str | None] | None:
    """(BFL module pattern, block index) of a module name in BFL dotted form, or None."""
    match = re.match(r"^(double_blocks|single_blocks)\.(\d+)\.(.+)$", name)
    pattern, index = (f"{match.group(1)}.{{}}.{match.group(3)}", match.group(2)) if match else (name, None)
    return (pattern, index) if pattern in module_map() else None


def _kohya_module(name: str) -> tuple[str, str | None] | None:
    """(BFL module pattern, block index) of a kohya `lora_unet_*` module name, or None."""
    rest = name.removeprefix("lora_unet_")
    match = re.match(r"^(double_blocks|single_blocks)_(\d+)_(.+)$", rest)
    table = _kohya_names()
    if match:
        kind, index, tail = match.groups()
        pattern = table.get(f"{kind}_{{}}_{tail}")
        return (pattern, index) if pattern else None
    return (table[rest], None) if rest in table else None


def _strip(name: str) -> str:
    for prefix in _BFL_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def _factors(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """module name -> {"down", "up", "alpha", "dora"} from any factor naming."""
    modules: dict[str, dict[str, Any]] = {}
    for key, value in state.items():
        xlabs = _XLABS.match(key)
        if xlabs:
            block, kind, stream, factor = xlabs.groups()
            module = f"{block}.{'img' if stream == '1' else 'txt'}_attn.{kind}"
            modules.setdefault(module, {})[factor] = value
            continue
        for suffix, part in (
            (".lora_down.weight", "down"),
            (".lora_up.weight", "up"),
            (".lora_A.weight", "down"),
            (".lora_B.weight", "up"),
            (".alpha", "alpha"),
            (".dora_scale", "dora"),
        ):
            if key.endswith(suffix):
                modules.setdefault(key[: -len(suffix)], {})[part] = value
                break
        else:
            modules.setdefault(key, {})["unknown"] = value
    return modules


def _scaled_down(parts: dict[str, Any]) -> Any:
    down = parts["down"]
    alpha = parts.get("alpha")
    if alpha is None:
        return down
    return down * (float(alpha) / down.shape[0])


def to_diffusers(state: dict[str, Any]) -> LoraConversion:
    """A FLUX.1 LoRA state dict in any format above as diffusers/PEFT keys (`transformer.*`, `text_encoder.*`).

    `skipped` names what was not converted and why (T5 modules, DoRA magnitudes, unknown keys)."""
    out: dict[str, Any] = {}
    skipped: list[str] = []
    table = module_map()
    for name, parts in _factors(state).items():
        if "unknown" in parts:
            skipped.append(f"{name}: not a LoRA factor")
            continue
        if "dora" in parts:
            skipped.append(f"{name}: DoRA (dora_scale) is not applied")
            continue
        if name.startswith(_T5_KOHYA):
            skipped.append(f"{name}: T5 LoRA modules are not applied (diffusers loads CLIP-L and transformer LoRAs)")
            continue
        if "down" not in parts or "up" not in parts:
            skipped.append(f"{name}: has no down/up (A/B) pair")
            continue
        if name.startswith(("transformer.", "text_encoder.")) and _bfl_module(_strip(name)) is None:
            out[f"{name}.lora_A.weight"] = _scaled_down(parts)  # diffusers/PEFT names already
            out[f"{name}.lora_B.weight"] = parts["up"]
            continue
        clip = _CLIP_KOHYA.match(name)
        if clip:
            layer, module = clip.groups()
            path = module.replace("self_attn_", "self_attn.").replace("mlp_", "mlp.")
            target = f"text_encoder.text_model.encoder.layers.{layer}.{path}"
            out[f"{target}.lora_A.weight"] = _scaled_down(parts)
            out[f"{target}.lora_B.weight"] = parts["up"]
            continue
        found = _kohya_module(name) if name.startswith("lora_unet_") else _bfl_module(_strip(name))
        if found is None:
            skipped.append(f"{name}: no FLUX.1 transformer module of that name")
            continue
        pattern, index = found
        targets, split = table[pattern]
        down, up = _scaled_down(parts), parts["up"]
        width = down.shape[1]  # the block width: the fused projection's input
        ups = split_rows(up, split, width) if len(targets) > 1 or split == "swap" else [up]
        for target, part in zip(targets, ups, strict=True):
            module = target.format(index)
            out[f"transformer.{module}.lora_A.weight"] = down
            out[f"transformer.{module}.lora_B.weight"] = part
    return LoraConversion(out, tuple(skipped))
