"""Diffusers configs derived from a family's bundled config and what a state dict's shapes show.

Real files and the tiny test models load through these same functions: the bundled config
gives what weights cannot show (activation, GroupNorm groups, attention head rule, scheduler)
and the shapes give the rest (widths, block counts, layer counts, context dim).
"""

from __future__ import annotations

import json
import re
from functools import cache
from importlib import resources
from typing import Any

from webui.families import Family

Shapes = dict[str, tuple[int, ...]]

LDM_UNET_PREFIX = "model.diffusion_model."


class ConfigDerivationError(ValueError):
    """The state dict lacks a key the config derivation needs."""


@cache
def _bundled(family: Family, component: str) -> str:
    folder = resources.files("webui.models") / "configs" / family.value / component
    name = "scheduler_config.json" if component == "scheduler" else "config.json"
    if component.startswith("scheduler"):  # a variant's scheduler: scheduler_schnell/
        name = "scheduler_config.json"
    if component == "tokenizer" or component == "tokenizer_2":
        name = "tokenizer_config.json"
    return (folder / name).read_text()


def bundled_config(family: Family, component: str) -> dict[str, Any]:
    """A fresh copy of the shipped diffusers config for one component of a family."""
    if not family.supported:
        raise ValueError(f"family: {family.label} has no bundled configs (not supported yet)")
    try:
        return json.loads(_bundled(family, component))
    except FileNotFoundError:
        raise ValueError(f"component: {family.label} has no {component!r}") from None


def _need(shapes: Shapes, key: str) -> tuple[int, ...]:
    try:
        return shapes[key]
    except KeyError:
        raise ConfigDerivationError(f"expected tensor {key!r} is missing from the state dict") from None


def _indices(shapes: Shapes, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for key in shapes if (m := rx.match(key))})


def _unet_levels_ldm(shapes: Shapes, p: str) -> list[dict[str, int]]:
    """Per down level: channels, resnet count, transformer depth (0 = no attention), from LDM keys."""
    levels: list[dict[str, int]] = [{"res": 0}]
    for i in _indices(shapes, rf"{re.escape(p)}input_blocks\.(\d+)\.")[1:]:
        if f"{p}input_blocks.{i}.0.op.weight" in shapes:
            levels.append({"res": 0})
            continue
        level = levels[-1]
        level["res"] += 1
        if level["res"] == 1:
            level["channels"] = _need(shapes, f"{p}input_blocks.{i}.0.out_layers.3.weight")[0]
            level["depth"] = len(_indices(shapes, rf"{re.escape(p)}input_blocks\.{i}\.1\.transformer_blocks\.(\d+)\."))
    return levels


def _unet_levels_diffusers(shapes: Shapes) -> list[dict[str, int]]:
    levels = []
    for level in _indices(shapes, r"down_blocks\.(\d+)\."):
        levels.append(
            {
                "res": len(_indices(shapes, rf"down_blocks\.{level}\.resnets\.(\d+)\.")),
                "channels": _need(shapes, f"down_blocks.{level}.resnets.0.conv2.weight")[0],
                "depth": len(
                    _indices(shapes, rf"down_blocks\.{level}\.attentions\.0\.transformer_blocks\.(\d+)\.")
                ),
            }
        )
    return levels


def derive_unet_config(family: Family, shapes: Shapes) -> dict[str, Any]:
    """UNet2DConditionModel config for a state dict in LDM (`model.diffusion_model.*`) or diffusers naming."""
    config = bundled_config(family, "unet")
    ldm = any(key.startswith(LDM_UNET_PREFIX) for key in shapes)
    if ldm:
        p = LDM_UNET_PREFIX
        levels = _unet_levels_ldm(shapes, p)
        conv_in = _need(shapes, f"{p}input_blocks.0.0.weight")
        out_channels = _need(shapes, f"{p}out.2.weight")[0]
        add_key = f"{p}label_emb.0.0.weight"
    else:
        levels = _unet_levels_diffusers(shapes)
        conv_in = _need(shapes, "conv_in.weight")
        out_channels = _need(shapes, "conv_out.weight")[0]
        add_key = "add_embedding.linear_1.weight"
    if not levels or any("channels" not in level for level in levels):
        raise ConfigDerivationError("could not find the UNet's down blocks in the state dict")
    channels = [level["channels"] for level in levels]
    depths = [level["depth"] for level in levels]
    context = next((shape for key, shape in shapes.items() if key.endswith("attn2.to_k.weight")), None)
    proj_in = next((shape for key, shape in shapes.items() if key.endswith(".proj_in.weight")), None)
    if context is None or proj_in is None:
        raise ConfigDerivationError("the UNet has no cross-attention (attn2.to_k / proj_in) weights")
    config.update(
        in_channels=conv_in[1],
        out_channels=out_channels,
        block_out_channels=channels,
        layers_per_block=levels[0]["res"],
        down_block_types=["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depths],
        up_block_types=["CrossAttnUpBlock2D" if d else "UpBlock2D" for d in reversed(depths)],
        transformer_layers_per_block=[max(d, 1) for d in depths],
        cross_attention_dim=context[1],
        use_linear_projection=len(proj_in) == 2,
    )
    head_channels = family.description.unet.head_channels if family.description.unet else None
    if head_channels is not None:  # else the bundled config's fixed head count holds at every level
        config["attention_head_dim"] = [max(1, c // head_channels) for c in channels]
    if add_key in shapes:
        config["projection_class_embeddings_input_dim"] = shapes[add_key][1]
    return config


def derive_vae_config(family: Family, shapes: Shapes) -> dict[str, Any]:
    """AutoencoderKL config for a VAE state dict in LDM (optionally `first_stage_model.`) or diffusers naming."""
    config = bundled_config(family, "vae")
    # diffusers' VAE converter reads the same prefixes (LDM_VAE_KEYS): SD's and ComfyUI's all-in-one FLUX files
    p = next((x for x in ("first_stage_model.", "vae.") if any(k.startswith(x) for k in shapes)), "")
    if f"{p}encoder.down.0.block.0.conv1.weight" in shapes:
        levels = _indices(shapes, rf"{re.escape(p)}encoder\.down\.(\d+)\.")
        channels = [_need(shapes, f"{p}encoder.down.{i}.block.0.conv2.weight")[0] for i in levels]
        per_level = len(_indices(shapes, rf"{re.escape(p)}encoder\.down\.0\.block\.(\d+)\."))
    else:
        levels = _indices(shapes, r"encoder\.down_blocks\.(\d+)\.")
        channels = [_need(shapes, f"encoder.down_blocks.{i}.resnets.0.conv2.weight")[0] for i in levels]
        per_level = len(_indices(shapes, r"encoder\.down_blocks\.0\.resnets\.(\d+)\."))
    if not levels:
        raise ConfigDerivationError("no VAE encoder blocks (encoder.down.* or encoder.down_blocks.*) found")
    quant_conv = f"{p}quant_conv.weight" in shapes
    conv_in = shapes.get(f"{p}decoder.conv_in.weight")
    latent = _need(shapes, f"{p}quant_conv.weight")[0] // 2 if quant_conv else (conv_in[1] if conv_in else 4)
    config.update(
        use_quant_conv=quant_conv,  # FLUX's ae has neither quant conv
        use_post_quant_conv=f"{p}post_quant_conv.weight" in shapes,
        block_out_channels=channels,
        down_block_types=["DownEncoderBlock2D"] * len(channels),
        up_block_types=["UpDecoderBlock2D"] * len(channels),
        layers_per_block=per_level,
        latent_channels=latent,
    )
    latent_format = family.description.latent
    if latent_format is not None:  # the description is the authority on scaling into the denoiser's range
        config["scaling_factor"] = latent_format.scaling_factor
        if latent_format.shift_factor is not None:
            config["shift_factor"] = latent_format.shift_factor
    return config


def derive_clip_config(base: dict[str, Any], shapes: Shapes, *, max_layers: int | None = None) -> dict[str, Any]:
    """CLIPTextConfig dict for HF-named (`text_model.*`, with or without that level) or OpenCLIP-named weights."""
    config = dict(base)
    if any(key.endswith("token_embedding.weight") and "embeddings." not in key for key in shapes):
        token = next(s for k, s in shapes.items() if k.endswith("token_embedding.weight"))
        positions = next(s for k, s in shapes.items() if k.endswith("positional_embedding"))
        layers = _indices(shapes, r".*transformer\.resblocks\.(\d+)\.")
        mlp = next(s for k, s in shapes.items() if k.endswith("resblocks.0.mlp.c_fc.weight"))
        projection = next((s[1] for k, s in shapes.items() if k.endswith("text_projection")), None)
    else:
        token = next((s for k, s in shapes.items() if k.endswith("embeddings.token_embedding.weight")), None)
        if token is None:
            raise ConfigDerivationError("no token embedding (embeddings.token_embedding.weight) found")
        positions = next(s for k, s in shapes.items() if k.endswith("embeddings.position_embedding.weight"))
        layers = _indices(shapes, r".*encoder\.layers\.(\d+)\.")
        mlp = next(s for k, s in shapes.items() if k.endswith("layers.0.mlp.fc1.weight"))
        projection = next((s[0] for k, s in shapes.items() if k.endswith("text_projection.weight")), None)
    count = len(layers) if max_layers is None else min(len(layers), max_layers)
    config.update(
        vocab_size=token[0],
        hidden_size=token[1],
        max_position_embeddings=positions[0],
        num_hidden_layers=count,
        intermediate_size=mlp[0],
    )
    if projection is not None:
        config["projection_dim"] = projection
    return config
