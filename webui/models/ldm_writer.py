"""Convert diffusers / Hugging Face state dicts to the original LDM single-file key layout."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING
from safetensors.torch import save_file

from webui.families import DESCRIPTIONS, Family, FamilyDescription
from webui.families.base import CheckpointLayout

StateDict = dict[str, torch.Tensor]

# diffusers ResnetBlock2D child name -> LDM ResBlock child name (UNet).
_UNET_RESNET_NAMES = MappingProxyType(
    {
        "norm1": "in_layers.0",
        "conv1": "in_layers.2",
        "norm2": "out_layers.0",
        "conv2": "out_layers.3",
        "time_emb_proj": "emb_layers.1",
        "conv_shortcut": "skip_connection",
    }
)
# diffusers ResnetBlock2D child name -> LDM ResnetBlock child name (VAE).
_VAE_RESNET_NAMES = MappingProxyType(
    {
        "norm1": "norm1",
        "conv1": "conv1",
        "norm2": "norm2",
        "conv2": "conv2",
        "conv_shortcut": "nin_shortcut",
    }
)
# diffusers Attention child name -> LDM AttnBlock child name (VAE mid block).
_VAE_ATTENTION_NAMES = MappingProxyType(
    {
        "group_norm": "norm",
        "to_q": "q",
        "to_k": "k",
        "to_v": "v",
        "to_out.0": "proj_out",
    }
)
# Hugging Face CLIP encoder-layer child -> OpenCLIP resblock child (q/k/v are handled apart).
_OPEN_CLIP_LAYER_NAMES = MappingProxyType(
    {
        "layer_norm1": "ln_1",
        "layer_norm2": "ln_2",
        "self_attn.out_proj": "attn.out_proj",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
    }
)
_OPEN_CLIP_TOP_NAMES = MappingProxyType(
    {
        "embeddings.token_embedding.weight": "token_embedding.weight",
        "embeddings.position_embedding.weight": "positional_embedding",
        "final_layer_norm.weight": "ln_final.weight",
        "final_layer_norm.bias": "ln_final.bias",
    }
)
# Buffers that Hugging Face models may carry but that are not weights in any LDM file.
_DERIVED_BUFFERS = ("embeddings.position_ids",)

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."


def _resnet_rules(diffusers_prefix: str, ldm_prefix: str, names: Mapping[str, str]) -> list[tuple[str, str]]:
    return [(f"{diffusers_prefix}.{d}.", f"{ldm_prefix}.{ldm}.") for d, ldm in names.items()]


def _rename(key: str, exact: Mapping[str, str], prefixes: Iterable[tuple[str, str]], what: str) -> str:
    if key in exact:
        return exact[key]
    for diffusers_prefix, ldm_prefix in prefixes:
        if key.startswith(diffusers_prefix):
            return ldm_prefix + key[len(diffusers_prefix) :]
    raise ValueError(f"{what}: no LDM name for diffusers key {key!r}; the state dict does not match its config")


def unet_ldm_key_map(unet_config: Mapping[str, Any], keys: Iterable[str]) -> dict[str, str]:
    """Diffusers UNet key -> LDM key (no `model.diffusion_model.` prefix) for the given config."""
    keys = list(keys)
    layers = unet_config["layers_per_block"]
    if not isinstance(layers, int):
        raise ValueError(f"unet_to_ldm: layers_per_block must be one int in the LDM layout, got {layers!r}")
    levels = len(unet_config["block_out_channels"])
    unet_map = DIFFUSERS_TO_LDM_MAPPING["unet"]
    exact = dict(unet_map["layers"])
    if unet_config.get("addition_embed_type") == "text_time":
        exact.update(unet_map["addition_embed_type"])
    if unet_config.get("class_embed_type") in ("timestep", "projection"):
        exact.update(unet_map["class_embed_type"])
    if unet_config.get("num_class_embeds") is not None:
        exact["class_embedding.weight"] = "label_emb.weight"

    rules: list[tuple[str, str]] = []
    for level in range(levels):
        for layer in range(layers):
            block = 1 + level * (layers + 1) + layer
            rules += _resnet_rules(
                f"down_blocks.{level}.resnets.{layer}", f"input_blocks.{block}.0", _UNET_RESNET_NAMES
            )
            rules.append((f"down_blocks.{level}.attentions.{layer}.", f"input_blocks.{block}.1."))
        block = 1 + level * (layers + 1) + layers
        rules.append((f"down_blocks.{level}.downsamplers.0.conv.", f"input_blocks.{block}.0.op."))
    rules += _resnet_rules("mid_block.resnets.0", "middle_block.0", _UNET_RESNET_NAMES)
    rules.append(("mid_block.attentions.0.", "middle_block.1."))
    rules += _resnet_rules("mid_block.resnets.1", "middle_block.2", _UNET_RESNET_NAMES)
    for level in range(levels):
        has_attention = any(k.startswith(f"up_blocks.{level}.attentions.") for k in keys)
        for layer in range(layers + 1):
            block = level * (layers + 1) + layer
            rules += _resnet_rules(f"up_blocks.{level}.resnets.{layer}", f"output_blocks.{block}.0", _UNET_RESNET_NAMES)
            rules.append((f"up_blocks.{level}.attentions.{layer}.", f"output_blocks.{block}.1."))
        last = level * (layers + 1) + layers
        rules.append(
            (f"up_blocks.{level}.upsamplers.0.conv.", f"output_blocks.{last}.{2 if has_attention else 1}.conv.")
        )
    return {key: _rename(key, exact, rules, "unet_to_ldm") for key in keys}


def unet_to_ldm(diffusers_unet_state_dict: Mapping[str, torch.Tensor], unet_config: Mapping[str, Any]) -> StateDict:
    """UNet2DConditionModel weights -> LDM `input_blocks/middle_block/output_blocks` names; shapes unchanged."""
    names = unet_ldm_key_map(unet_config, diffusers_unet_state_dict)
    return {names[k]: v for k, v in diffusers_unet_state_dict.items()}


def vae_to_ldm(diffusers_vae_state_dict: Mapping[str, torch.Tensor], vae_config: Mapping[str, Any]) -> StateDict:
    """AutoencoderKL weights -> LDM `encoder.down.N.block.M` / `decoder.up.N` names, attention as 1x1 convs."""
    exact = dict(DIFFUSERS_TO_LDM_MAPPING["vae"])
    rules: list[tuple[str, str]] = []
    down_levels = len(vae_config["down_block_types"])
    up_levels = len(vae_config["up_block_types"])
    layers = vae_config["layers_per_block"]
    for level in range(down_levels):
        for layer in range(layers):
            rules += _resnet_rules(
                f"encoder.down_blocks.{level}.resnets.{layer}", f"encoder.down.{level}.block.{layer}", _VAE_RESNET_NAMES
            )
        rules.append((f"encoder.down_blocks.{level}.downsamplers.0.conv.", f"encoder.down.{level}.downsample.conv."))
    for level in range(up_levels):
        ldm_level = up_levels - 1 - level
        for layer in range(layers + 1):
            rules += _resnet_rules(
                f"decoder.up_blocks.{level}.resnets.{layer}", f"decoder.up.{ldm_level}.block.{layer}", _VAE_RESNET_NAMES
            )
        rules.append((f"decoder.up_blocks.{level}.upsamplers.0.conv.", f"decoder.up.{ldm_level}.upsample.conv."))
    for part in ("encoder", "decoder"):
        for index in (0, 1):
            rules += _resnet_rules(
                f"{part}.mid_block.resnets.{index}", f"{part}.mid.block_{index + 1}", _VAE_RESNET_NAMES
            )
        for name, ldm in _VAE_ATTENTION_NAMES.items():
            rules.append((f"{part}.mid_block.attentions.0.{name}.", f"{part}.mid.attn_1.{ldm}."))

    out: StateDict = {}
    for key, value in diffusers_vae_state_dict.items():
        ldm_key = _rename(key, exact, rules, "vae_to_ldm")
        if ".mid.attn_1." in ldm_key and ldm_key.endswith(".weight") and value.ndim == 2:
            value = value.reshape(*value.shape, 1, 1)  # LDM stores these as 1x1 convolutions
        out[ldm_key] = value
    return out


def _without_text_model(key: str) -> str:
    # transformers 5 dropped the `text_model.` level from CLIPTextModel; files made before still carry it.
    return key.removeprefix("text_model.")


def hf_clip_keys(hf_state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """CLIPTextModel weights (with or without `text_model.`) -> `text_model.*`, as LDM files store CLIP-L."""
    out: StateDict = {}
    for key, value in hf_state_dict.items():
        if key.startswith("text_projection."):
            raise ValueError(
                f"clip_l_to_ldm: {key!r} has no place in the LDM CLIP-L layout; pass a CLIPTextModel state dict"
            )
        out[f"text_model.{_without_text_model(key)}"] = value
    return out


def clip_l_to_ldm(hf_state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """CLIPTextModel weights (with or without `text_model.`) -> `transformer.text_model.*`."""
    return _prefixed("transformer.", hf_clip_keys(hf_state_dict))


def open_clip_keys(hf_state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Hugging Face CLIP text weights -> OpenCLIP names (q/k/v stacked, projection transposed), no prefix."""
    out: StateDict = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in hf_state_dict.items():
        name = _without_text_model(key)
        if name in _DERIVED_BUFFERS:
            continue
        if name == "text_projection.weight":
            out["text_projection"] = value.t().contiguous()
        elif name in _OPEN_CLIP_TOP_NAMES:
            out[_OPEN_CLIP_TOP_NAMES[name]] = value
        elif name.startswith("encoder.layers."):
            index, rest = name[len("encoder.layers.") :].split(".", 1)
            block = f"transformer.resblocks.{index}."
            module, param = rest.rsplit(".", 1)
            if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                qkv.setdefault(f"{block}attn.in_proj_{param}", {})[module[-6]] = value
            elif module in _OPEN_CLIP_LAYER_NAMES:
                out[f"{block}{_OPEN_CLIP_LAYER_NAMES[module]}.{param}"] = value
            else:
                raise ValueError(f"open_clip_to_ldm: no OpenCLIP name for encoder key {key!r}")
        else:
            raise ValueError(f"open_clip_to_ldm: no OpenCLIP name for key {key!r}")
    for ldm_key, parts in qkv.items():
        if sorted(parts) != ["k", "q", "v"]:
            raise ValueError(f"open_clip_to_ldm: {ldm_key} needs q, k and v projections, found only {sorted(parts)}")
        out[ldm_key] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def open_clip_to_ldm(hf_state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Hugging Face CLIP text weights -> OpenCLIP `model.*` layout (q/k/v stacked, projection transposed)."""
    return _prefixed("model.", open_clip_keys(hf_state_dict))


def component_to_ldm(module: Any, layout: CheckpointLayout) -> StateDict:
    """One component's weights in the single-file layout named (keys relative to its checkpoint prefix)."""
    state = module.state_dict()
    if layout is CheckpointLayout.LDM_UNET:
        return unet_to_ldm(state, module.config)
    if layout is CheckpointLayout.LDM_VAE:
        return vae_to_ldm(state, module.config)
    if layout is CheckpointLayout.HF_CLIP:
        return hf_clip_keys(state)
    if layout is CheckpointLayout.OPEN_CLIP:
        return open_clip_keys(state)
    raise ValueError(f"component_to_ldm: no single-file writer for layout {layout.value!r}")


def _prefixed(prefix: str, state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    return {prefix + k: v for k, v in state_dict.items()}


def pipeline_to_ldm(components: Mapping[str, Any], family: Family) -> StateDict:
    """A pipeline's modules (`unet`, `vae`, text encoders) -> one single-file state dict in the family's
    original layout: each role at its description's checkpoint prefix, in its checkpoint layout."""
    roles = family.description.roles
    if not _writable(family.description):
        supported = ", ".join(d.id for d in DESCRIPTIONS if _writable(d))
        raise ValueError(f"pipeline_to_ldm: family {family.value!r} has no LDM layout here (supported: {supported})")
    for spec in roles:
        if components.get(spec.role.value) is None:
            raise ValueError(f"pipeline_to_ldm: a {family.label} checkpoint needs component {spec.role.value!r}")
    out: StateDict = {}
    for spec in roles:
        state = component_to_ldm(components[spec.role.value], spec.checkpoint_layout)
        out.update(_prefixed(spec.checkpoint_prefix, state))
    return out


def _writable(description: FamilyDescription) -> bool:
    """Whether every role of the family has a single-file layout this writer knows."""
    return bool(description.roles) and all(r.checkpoint_layout is not CheckpointLayout.NONE for r in description.roles)


def save_single_file(
    state_dict: Mapping[str, torch.Tensor],
    path: Path,
    metadata: Mapping[str, str] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write `state_dict` as safetensors at `path` (temp file + rename), optionally cast to `dtype`."""
    for key, value in (metadata or {}).items():
        if not isinstance(value, str):
            raise TypeError(f"save_single_file: metadata {key!r} must be a str, got {type(value).__name__}")
    tensors = {}
    for key, value in state_dict.items():
        value = value.detach()
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        tensors[key] = value.contiguous()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        save_file(tensors, tmp, metadata=dict(metadata) if metadata else None)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
