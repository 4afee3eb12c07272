"""Tiny random diffusers components per family (TINY_SPEC.md): real interface widths, tiny everything else.

What differs between families (UNet blocks and widths, text encoders, pipeline class and flags, the
scheduler, the prediction type) is read from the family's description and its `FixtureSpec`.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import torch
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig

from webui.families import DESCRIPTIONS, Family, FamilyDescription, family_of
from webui.families.base import FixtureSpec
from webui.families.encoders import ENCODERS
from webui.models.derive import bundled_config
from webui.models.kinds import Prediction, Role, TextEncoderType
from webui.testing.tiny_tokenizer import MODEL_MAX_LENGTH, build_tiny_tokenizer, tiny_vocab_size

# Families with tiny fixtures, in registration order (a family's LoRA seed follows its place here).
TINY_FAMILIES: tuple[Family, ...] = tuple(family_of(d) for d in DESCRIPTIONS if d.fixtures is not None)
# Those written by the shared UNet-family writer here (the others bring their own writer and builders).
UNET_FAMILIES: tuple[Family, ...] = tuple(f for f in TINY_FAMILIES if f.description.unet is not None)
_CHANNELS = (32, 64)
# The VAE keeps the real 8x latent factor (three downsamplings, as every SD-family VAE): a 512x512 image has a
# 64x64 latent, so the fixtures run at the UI's default size in seconds, and sizes mean what they mean for real.
_VAE_CHANNELS = (32, 32, 64, 64)
_EMBEDDING_STD = 0.02
_NORM_STD = 0.05
_BIAS_STD = 0.02


def fixture_spec(family: Family) -> FixtureSpec:
    """The family's fixture description; a ValueError naming the tiny families when it has none."""
    spec = family.description.fixtures
    if spec is None:
        allowed = ", ".join(f.value for f in TINY_FAMILIES)
        raise ValueError(f"family: no tiny model for {family.value!r} (tiny families: {allowed})")
    return spec


def prediction_of(family: Family) -> Prediction:
    return fixture_spec(family).prediction


def unet_config(family: Family) -> dict[str, Any]:
    """UNet2DConditionModel kwargs: the shared tiny base and the family's FixtureSpec.unet (TINY_SPEC.md)."""
    spec = fixture_spec(family)
    config: dict[str, Any] = {
        "sample_size": 16,
        "in_channels": 4,
        "out_channels": 4,
        "layers_per_block": 1,
        "block_out_channels": _CHANNELS,
        "norm_num_groups": 32,
        **spec.unet,
    }
    facts = family.description.unet
    if facts is not None and facts.head_channels is not None and "attention_head_dim" not in config:
        config["attention_head_dim"] = tuple(max(1, c // facts.head_channels) for c in config["block_out_channels"])
    return config


def vae_config(family: Family) -> dict[str, Any]:
    spec, latent = fixture_spec(family), family.description.latent
    return {
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": latent.channels,
        "down_block_types": ("DownEncoderBlock2D",) * len(_VAE_CHANNELS),
        "up_block_types": ("UpDecoderBlock2D",) * len(_VAE_CHANNELS),
        "block_out_channels": _VAE_CHANNELS,
        "layers_per_block": 1,
        "norm_num_groups": 32,
        "sample_size": 32,
        "scaling_factor": latent.scaling_factor,
        "force_upcast": spec.vae_force_upcast,
    }


def text_encoder_config(encoder: TextEncoderType, vocab_size: int | None = None) -> CLIPTextConfig:
    """2 layers, MLP 64, the real width and head count; token ids as the real configs give them.

    `vocab_size`: the tiny tokenizer's by default; CLIP's 49,408 for a model the bundled tokenizer drives."""
    spec = ENCODERS[encoder]
    # bos 0 / eos 2 / pad 1 are the legacy values every SD text-encoder config carries: with eos 2,
    # CLIP pools at the largest token id, which is <|endoftext|> in the tiny vocab as in the real one.
    return CLIPTextConfig(
        vocab_size=vocab_size or tiny_vocab_size(),
        hidden_size=spec.width,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=spec.heads,
        max_position_embeddings=MODEL_MAX_LENGTH,
        hidden_act=spec.hidden_act,
        projection_dim=spec.projection_dim,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )


def scheduler_for(family: Family) -> Any:
    """The scheduler and values the family's real diffusers repo ships (its bundled config)."""
    import diffusers

    fixture_spec(family)
    config = bundled_config(family, "scheduler")
    scheduler_class = getattr(diffusers, config.pop("_class_name"))
    # from_config, not __init__: real configs carry keys a scheduler class does not take.
    return scheduler_class.from_config(config)


def _tame(module: torch.nn.Module) -> None:
    """Explicit, library-independent init, then rounding to fp16-exact values.

    Matrices get N(0, 1/(3 fan_in)) (torch's default scale, which keeps a 2-layer CLIP and the
    GroupNorm'd UNet/VAE finite), embeddings N(0, 0.02); norm scales 1 + noise and biases small noise,
    so no two tensors are alike and a swapped key always shows. Rounding makes the fp32 diffusers
    folder and the fp16 single files hold identical numbers: every layout gives the same pixels.
    """
    embeddings = {id(m.weight) for m in module.modules() if isinstance(m, torch.nn.Embedding)}
    with torch.no_grad():
        for name, param in module.named_parameters():
            if id(param) in embeddings:
                param.normal_(0.0, _EMBEDDING_STD)
            elif param.ndim >= 2:
                param.normal_(0.0, (3.0 * param[0].numel()) ** -0.5)
            elif name.endswith("weight"):
                param.normal_(1.0, _NORM_STD)
            else:
                param.normal_(0.0, _BIAS_STD)
            param.copy_(param.to(torch.float16).to(torch.float32))


def _build(factory: Callable[[], Any], seed: int) -> Any:
    torch.manual_seed(seed)
    module = factory()
    _tame(module)
    return module.eval()


def _component_seed(family: Family, seed: int, component: str) -> int:
    # Mixing the family in keeps two families' look-alike parts (two VAEs of one config)
    # from getting the same weights; crc32, unlike hash(), is the same in every process.
    return zlib.crc32(f"{family.value}/{seed}/{component}".encode())


def build_tiny_unet(family: Family, seed: int = 0) -> UNet2DConditionModel:
    fixture_spec(family)
    return _build(lambda: UNet2DConditionModel(**unet_config(family)), _component_seed(family, seed, "unet"))


def build_tiny_vae(family: Family, seed: int = 0) -> AutoencoderKL:
    """The VAE `build_tiny_pipeline(family, seed)` holds."""
    fixture_spec(family)
    return _build(lambda: AutoencoderKL(**vae_config(family)), _component_seed(family, seed, "vae"))


def _text_encoder(
    description: FamilyDescription, role: Role, seed: int, vocab_size: int | None = None
) -> torch.nn.Module:
    """The role's CLIP at tiny size, in the class the family's pipeline takes (with projection or not)."""
    spec = description.role(role)
    config = text_encoder_config(spec.encoder, vocab_size)
    return _build(lambda: spec.component_type()(config), seed)


def build_tiny_pipeline(family: Family, seed: int = 0, vocab_size: int | None = None) -> dict[str, Any]:
    """Components for `family` (keys as the diffusers pipeline names them); same seed, same weights.

    `write_tiny_models` writes the weights of seed 0, so `build_tiny_pipeline(family)` is what every
    layout of that family on disk holds. `vocab_size` widens the text encoders' token embeddings (to
    CLIP's 49,408 for use with the bundled tokenizer); the tokenizers returned stay the tiny one.
    """
    fixture_spec(family)
    description = family.description
    components: dict[str, Any] = {
        "unet": build_tiny_unet(family, seed),
        "vae": build_tiny_vae(family, seed),
        "scheduler": scheduler_for(family),
    }
    components.update(dict.fromkeys(description.pipeline.absent))
    for spec in description.text_encoders:
        seed_of = _component_seed(family, seed, spec.role.value)
        components[spec.role.value] = _text_encoder(description, spec.role, seed_of, vocab_size)
        components[spec.tokenizer] = build_tiny_tokenizer(ENCODERS[spec.encoder].pad_token)
    return components


def pipeline_class(family: Family) -> type[DiffusionPipeline]:
    """The diffusers pipeline the family's real repo names in model_index.json."""
    fixture_spec(family)
    return family.description.pipeline.pipeline_class()


def assemble_pipeline(family: Family, components: dict[str, Any]) -> DiffusionPipeline:
    """A diffusers pipeline over `components`, with the init flags the real repo's model_index.json sets."""
    fixture_spec(family)
    pipe = family.description.pipeline.create(components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_pipeline(family: Family, seed: int = 0) -> DiffusionPipeline:
    return assemble_pipeline(family, build_tiny_pipeline(family, seed))
