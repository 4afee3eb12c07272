"""Tiny LoRAs (kohya sd-scripts and diffusers/PEFT layouts) and textual-inversion embeddings."""

from __future__ import annotations

import json
from typing import Any

import torch

from webui.families import DESCRIPTIONS, Family, family_of
from webui.families.encoders import ENCODERS
from webui.models.ldm_writer import unet_ldm_key_map

RANK = 4
ALPHA = 2.0
TRIGGER = "tinytrigger"
EMBEDDING_VECTORS = 2
# Modules kohya's networks.lora wraps: every Linear / 1x1 conv inside a Transformer2DModel,
# and CLIP's attention and MLP projections.
_KOHYA_UNET_LEAVES = (
    "proj_in",
    "proj_out",
    "attn1.to_q",
    "attn1.to_k",
    "attn1.to_v",
    "attn1.to_out.0",
    "attn2.to_q",
    "attn2.to_k",
    "attn2.to_v",
    "attn2.to_out.0",
    "ff.net.0.proj",
    "ff.net.2",
)
_KOHYA_TE_LEAVES = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.out_proj",
    "mlp.fc1",
    "mlp.fc2",
)
# What diffusers' own LoRA training scripts target.
_PEFT_UNET_LEAVES = ("to_q", "to_k", "to_v", "to_out.0")
_PEFT_TE_LEAVES = ("q_proj", "k_proj", "v_proj", "out_proj")
# Families whose fixtures include LoRAs and embeddings (their descriptions say how kohya names them).
LORA_FAMILIES = tuple(family_of(d) for d in DESCRIPTIONS if d.fixtures is not None and d.fixtures.loras)


def _check_family(family: Family) -> None:
    if family not in LORA_FAMILIES:
        allowed = ", ".join(f.value for f in LORA_FAMILIES)
        raise ValueError(f"family: no tiny LoRA / embedding for {family.value!r} (only {allowed})")


def _targets(module: torch.nn.Module, leaves: tuple[str, ...], inside: str = "") -> list[tuple[str, torch.nn.Module]]:
    return [
        (name, child)
        for name, child in module.named_modules()
        if isinstance(child, torch.nn.Linear | torch.nn.Conv2d) and name.endswith(leaves) and inside in name
    ]


def _pair(layer: torch.nn.Module, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(down, up) for one layer, as fp16 like trained files; up is nonzero so the LoRA shows."""
    if isinstance(layer, torch.nn.Conv2d):
        fan_in, fan_out, tail = layer.in_channels, layer.out_channels, (1, 1)
    else:
        fan_in, fan_out, tail = layer.in_features, layer.out_features, ()
    down = torch.randn((RANK, fan_in, *tail), generator=generator) * fan_in**-0.5
    up = torch.randn((fan_out, RANK, *tail), generator=generator) * (0.5 * RANK**-0.5)
    return down.to(torch.float16), up.to(torch.float16)


def _text_model_name(name: str) -> str:
    # Real LoRAs were trained on transformers 4, whose CLIP module paths start with `text_model.`.
    return name if name.startswith("text_model.") else f"text_model.{name}"


def _encoders(components: dict[str, Any], family: Family) -> list[tuple[str, torch.nn.Module]]:
    """(kohya prefix, module) for each text encoder the family has."""
    return [(prefix, components[role.value]) for role, prefix in family.description.lora.kohya_text_encoders]


def kohya_lora(
    components: dict[str, Any], family: Family, seed: int, unet_only: bool = False
) -> dict[str, torch.Tensor]:
    """A LoRA named as kohya sd-scripts names it (`lora_unet_*`, `lora_te*_*`, down/up/alpha)."""
    _check_family(family)
    generator = torch.Generator().manual_seed(seed)
    unet = components["unet"]
    out: dict[str, torch.Tensor] = {}

    def add(name: str, layer: torch.nn.Module) -> None:
        out[f"{name}.lora_down.weight"], out[f"{name}.lora_up.weight"] = _pair(layer, generator)
        out[f"{name}.alpha"] = torch.tensor(ALPHA, dtype=torch.float16)

    targets = _targets(unet, _KOHYA_UNET_LEAVES, inside="attentions.")
    if family.description.lora.kohya_unet_names == "ldm":
        # sd-scripts trains some families on its own LDM-named UNet: input_blocks_4_1_transformer_blocks_...
        ldm = unet_ldm_key_map(unet.config, [f"{name}.weight" for name, _ in targets])
        targets = [(ldm[f"{name}.weight"].removesuffix(".weight"), layer) for name, layer in targets]
    for name, layer in targets:
        add("lora_unet_" + name.replace(".", "_"), layer)
    if not unet_only:
        for prefix, encoder in _encoders(components, family):
            for name, layer in _targets(encoder, _KOHYA_TE_LEAVES):
                add(prefix + _text_model_name(name).replace(".", "_"), layer)
    return out


def kohya_metadata(family: Family, output_name: str, unet_only: bool = False) -> dict[str, str]:
    """The `ss_*` header fields sd-scripts writes (the ones tools read)."""
    _check_family(family)
    metadata = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(RANK),
        "ss_network_alpha": str(ALPHA),
        "ss_base_model_version": family.description.lora.base_model_version,
        "ss_output_name": output_name,
        "ss_tag_frequency": json.dumps({"10_dataset": {TRIGGER: 12, "red hat": 3}}),
        "ss_num_train_images": "12",
        "ss_training_comment": "tiny random LoRA for tests",
        "ss_network_train_unet_only": str(unet_only),
    }
    metadata.update(family.description.lora.metadata)
    return metadata


def peft_lora(components: dict[str, Any], family: Family, seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """LoRA layers per pipeline component in diffusers/PEFT naming (`lora_A` / `lora_B`).

    Returns {"unet_lora_layers": ..., "text_encoder_lora_layers": ..., ...}: the keyword arguments of
    the pipeline's `save_lora_weights`, so the file on disk is exactly what diffusers writes.
    """
    _check_family(family)
    generator = torch.Generator().manual_seed(seed)

    def layers(module: torch.nn.Module, leaves: tuple[str, ...], rename: Any) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for name, layer in _targets(module, leaves):
            down, up = _pair(layer, generator)
            out[f"{rename(name)}.lora_A.weight"], out[f"{rename(name)}.lora_B.weight"] = down, up
        return out

    result = {"unet_lora_layers": layers(components["unet"], _PEFT_UNET_LEAVES, str)}
    encoders = {"text_encoder": "text_encoder_lora_layers", "text_encoder_2": "text_encoder_2_lora_layers"}
    for component, argument in encoders.items():
        if components.get(component) is not None:
            result[argument] = layers(components[component], _PEFT_TE_LEAVES, _text_model_name)
    return result


def embedding(family: Family, seed: int) -> dict[str, torch.Tensor]:
    """A textual-inversion file's tensors: A1111's `emb_params`, or one named tensor per text encoder where
    the family's embeddings are keyed so (`clip_l` + `clip_g`)."""
    generator = torch.Generator().manual_seed(seed)

    def vectors(width: int) -> torch.Tensor:
        return (torch.randn((EMBEDDING_VECTORS, width), generator=generator) * 0.02).to(torch.float16)

    _check_family(family)
    description = family.description
    if description.embedding is None:
        return {"emb_params": vectors(ENCODERS[description.encoder_types[0]].width)}
    return {key: vectors(ENCODERS[description.role(role).encoder].width) for role, key in description.embedding.keys}
