"""Per-key plans from diffusers / Hugging Face component names to the original single-file ("LDM") layout.

A plan says, for every single-file key of one component, which component keys make it and how: copied,
reshaped (the VAE's mid-block attention: Linear weights in diffusers, 1x1 convolutions in LDM files), transposed
(OpenCLIP's `text_projection`), stacked on dim 0 (OpenCLIP's `in_proj`: q, k, v) or its halves swapped (a
transformer's final modulation, stored (shift, scale) in one naming and (scale, shift) in the other). It is built
from names and shapes alone, so the LDM writer applies it to tensors in memory, the merger to tensors read one at
a time from disk, and the LoRA bake-in inverts it (`KeySource.split`) to patch one single-file tensor through the
component modules it came from. The renaming tables are the inverse of diffusers' own single-file converters
(`diffusers.loaders.single_file_utils`: `DIFFUSERS_TO_LDM_MAPPING`, `convert_ldm_unet_checkpoint`,
`convert_ldm_vae_checkpoint`, `convert_open_clip_checkpoint`); tests/test_ldm_writer.py checks the round trip.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType
from typing import Any

import torch

from webui.families.base import CheckpointLayout

Shapes = Mapping[str, tuple[int, ...]]

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
_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
# Buffers that Hugging Face models may carry but that are not weights in any OpenCLIP file.
_DERIVED_BUFFERS = ("embeddings.position_ids",)


class Op(str, Enum):
    """How a single-file tensor is made from its component tensors."""

    COPY = "copy"
    RESHAPE = "reshape"  # one tensor, to `KeySource.shape`
    TRANSPOSE = "transpose"  # one 2-D tensor, transposed
    STACK = "stack"  # several tensors concatenated on dim 0
    SWAP = "swap"  # one tensor with the two halves of dim 0 exchanged (FLUX's final (shift, scale) modulation)


@dataclass(frozen=True)
class KeySource:
    """The component keys one single-file tensor is made of, and how (`op`); `shape` is the RESHAPE target."""

    keys: tuple[str, ...]
    op: Op = Op.COPY
    shape: tuple[int, ...] | None = None

    def build(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        """The single-file tensor from the component tensors of `keys`, in that order."""
        if self.op is Op.STACK:
            return torch.cat(list(parts), dim=0)
        (tensor,) = parts
        if self.op is Op.RESHAPE:
            return tensor.reshape(self.shape)
        if self.op is Op.TRANSPOSE:
            return tensor.t().contiguous()
        if self.op is Op.SWAP:
            return _swapped(tensor)
        return tensor

    def split(self, tensor: torch.Tensor, shapes: Sequence[tuple[int, ...]]) -> list[torch.Tensor]:
        """The inverse of `build`: the component tensors (of `shapes`, in `keys` order) a single-file tensor holds."""
        if self.op is Op.STACK:
            return list(torch.split(tensor, [shape[0] for shape in shapes], dim=0))
        if self.op is Op.RESHAPE:
            return [tensor.reshape(shapes[0])]
        if self.op is Op.TRANSPOSE:
            return [tensor.t()]
        if self.op is Op.SWAP:
            return [_swapped(tensor)]
        return [tensor]

    def result_shape(self, shapes: Shapes) -> tuple[int, ...]:
        """The single-file tensor's shape, from the component keys' shapes."""
        parts = [tuple(shapes[key]) for key in self.keys]
        if self.op is Op.STACK:
            return (sum(shape[0] for shape in parts), *parts[0][1:])
        if self.op is Op.RESHAPE:
            return tuple(self.shape)
        if self.op is Op.TRANSPOSE:
            return tuple(reversed(parts[0]))
        return parts[0]


Plan = dict[str, KeySource]


def _swapped(tensor: torch.Tensor) -> torch.Tensor:
    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


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
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

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


def unet_plan(unet_config: Mapping[str, Any], shapes: Shapes) -> Plan:
    """UNet2DConditionModel keys -> LDM `input_blocks/middle_block/output_blocks` names; shapes unchanged."""
    return {ldm: KeySource((key,)) for key, ldm in unet_ldm_key_map(unet_config, shapes).items()}


def vae_plan(vae_config: Mapping[str, Any], shapes: Shapes) -> Plan:
    """AutoencoderKL keys -> LDM `encoder.down.N.block.M` / `decoder.up.N` names, attention as 1x1 convs."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

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

    plan: Plan = {}
    for key, shape in shapes.items():
        ldm_key = _rename(key, exact, rules, "vae_to_ldm")
        if ".mid.attn_1." in ldm_key and ldm_key.endswith(".weight") and len(shape) == 2:
            plan[ldm_key] = KeySource((key,), Op.RESHAPE, (*shape, 1, 1))  # LDM stores these as 1x1 convolutions
        else:
            plan[ldm_key] = KeySource((key,))
    return plan


def without_text_model(key: str) -> str:
    """A CLIP key without the `text_model.` level (transformers 5 dropped it; files made before carry it)."""
    return key.removeprefix("text_model.")


def hf_clip_plan(keys: Iterable[str]) -> Plan:
    """CLIPTextModel keys (with or without `text_model.`) -> `text_model.*`, as LDM files store CLIP-L."""
    plan: Plan = {}
    for key in keys:
        if key.startswith("text_projection."):
            raise ValueError(
                f"clip_l_to_ldm: {key!r} has no place in the LDM CLIP-L layout; pass a CLIPTextModel state dict"
            )
        plan[f"text_model.{without_text_model(key)}"] = KeySource((key,))
    return plan


HF_TRANSFORMER_ROOT = "transformer."  # where the HF_TRANSFORMER layout puts transformers' names
_CLIP_ROOTS = ("text_model.", "embeddings.", "final_layer_norm.", "encoder.layers.")
_TIED = ("encoder.embed_tokens.weight",)  # T5's input embedding: `shared.weight` again (tied), not stored


def hf_transformer_plan(keys: Iterable[str]) -> Plan:
    """A text encoder in transformers' names -> `transformer.` + those names, as ComfyUI's single files keep
    them: CLIP with `text_model.` (transformers 4 names, its `text_projection` beside), T5 as is (`shared.weight`,
    `encoder.block.N...`; the tied `encoder.embed_tokens.weight` left out, as the distributed files do)."""
    keys = list(keys)
    clip = any(key.startswith(_CLIP_ROOTS) for key in keys) and not any(
        key.startswith("encoder.block.") for key in keys
    )
    plan: Plan = {}
    for key in keys:
        if key in _TIED:
            continue
        name = key if not clip or key.startswith("text_projection") else f"text_model.{without_text_model(key)}"
        plan[HF_TRANSFORMER_ROOT + name] = KeySource((key,))
    return plan


def open_clip_plan(keys: Iterable[str]) -> Plan:
    """Hugging Face CLIP text keys -> OpenCLIP names (q/k/v stacked, projection transposed), no prefix."""
    plan: Plan = {}
    qkv: dict[str, dict[str, str]] = {}
    for key in keys:
        name = without_text_model(key)
        if name in _DERIVED_BUFFERS:
            continue
        if name == "text_projection.weight":
            plan["text_projection"] = KeySource((key,), Op.TRANSPOSE)
        elif name in _OPEN_CLIP_TOP_NAMES:
            plan[_OPEN_CLIP_TOP_NAMES[name]] = KeySource((key,))
        elif name.startswith("encoder.layers."):
            index, rest = name[len("encoder.layers.") :].split(".", 1)
            block = f"transformer.resblocks.{index}."
            module, param = rest.rsplit(".", 1)
            if module in _QKV:
                qkv.setdefault(f"{block}attn.in_proj_{param}", {})[module[-6]] = key
            elif module in _OPEN_CLIP_LAYER_NAMES:
                plan[f"{block}{_OPEN_CLIP_LAYER_NAMES[module]}.{param}"] = KeySource((key,))
            else:
                raise ValueError(f"open_clip_to_ldm: no OpenCLIP name for encoder key {key!r}")
        else:
            raise ValueError(f"open_clip_to_ldm: no OpenCLIP name for key {key!r}")
    for ldm_key, parts in qkv.items():
        if sorted(parts) != ["k", "q", "v"]:
            raise ValueError(f"open_clip_to_ldm: {ldm_key} needs q, k and v projections, found only {sorted(parts)}")
        plan[ldm_key] = KeySource((parts["q"], parts["k"], parts["v"]), Op.STACK)
    return plan


# The layouts component_plan lays out from names and shapes alone (a transformer's original names need its family).
PLANNED = frozenset(
    {
        CheckpointLayout.LDM_UNET,
        CheckpointLayout.LDM_VAE,
        CheckpointLayout.HF_CLIP,
        CheckpointLayout.OPEN_CLIP,
        CheckpointLayout.HF_TRANSFORMER,
    }
)


def component_plan(layout: CheckpointLayout, config: Mapping[str, Any] | None, shapes: Shapes) -> Plan:
    """The plan of one component in the single-file `layout` (keys relative to its checkpoint prefix).

    `config` is the component's diffusers config (the UNet and VAE layouts need it; None for text encoders)."""
    if layout is CheckpointLayout.LDM_UNET:
        return unet_plan(_needs(config, layout), shapes)
    if layout is CheckpointLayout.LDM_VAE:
        return vae_plan(_needs(config, layout), shapes)
    if layout is CheckpointLayout.HF_CLIP:
        return hf_clip_plan(shapes)
    if layout is CheckpointLayout.OPEN_CLIP:
        return open_clip_plan(shapes)
    if layout is CheckpointLayout.HF_TRANSFORMER:
        return hf_transformer_plan(shapes)
    raise ValueError(f"component_to_ldm: no single-file writer for layout {layout.value!r}")


def _needs(config: Mapping[str, Any] | None, layout: CheckpointLayout) -> Mapping[str, Any]:
    if config is None:
        raise ValueError(f"component_plan: the {layout.value} layout needs the component's diffusers config")
    return config


def apply_plan(plan: Plan, read: Callable[[str], torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every single-file tensor of `plan`, each built from the component tensors `read(key)` returns."""
    return {ldm_key: source.build([read(key) for key in source.keys]) for ldm_key, source in plan.items()}


def shapes_of(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in state.items()}
