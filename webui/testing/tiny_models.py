"""Tiny random diffusers components per family (TINY_SPEC.md): real interface widths, tiny everything else."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from webui.models.kinds import Family, Prediction, TextEncoderType
from webui.testing.tiny_tokenizer import EOS, MODEL_MAX_LENGTH, OPEN_CLIP_PAD, build_tiny_tokenizer, tiny_vocab_size

TINY_FAMILIES = (Family.SD1, Family.SD2, Family.SDXL, Family.SDXL_REFINER)
_CHANNELS = (32, 64)
_XL_TIME_IDS_BASE, _XL_TIME_IDS_REFINER = 6, 5  # size+crop+target size / size+crop+aesthetic score
_EMBEDDING_STD = 0.02
_NORM_STD = 0.05
_BIAS_STD = 0.02


def _check_family(family: Family) -> None:
    if family not in TINY_FAMILIES:
        allowed = ", ".join(f.value for f in TINY_FAMILIES)
        raise ValueError(f"family: no tiny model for {family.value!r} (tiny families: {allowed})")


def prediction_of(family: Family) -> Prediction:
    return Prediction.V if family is Family.SD2 else Prediction.EPSILON


def unet_config(family: Family) -> dict[str, Any]:
    """UNet2DConditionModel kwargs: TINY_SPEC.md's table."""
    _check_family(family)
    config: dict[str, Any] = {
        "sample_size": 16,
        "in_channels": 4,
        "out_channels": 4,
        "layers_per_block": 1,
        "block_out_channels": _CHANNELS,
        "norm_num_groups": 32,
    }
    heads = tuple(max(1, c // 64) for c in _CHANNELS)  # SD2 / SDXL: 64-channel heads
    if family in (Family.SD1, Family.SD2):
        config.update(
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        )
    else:
        config.update(
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2),
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            use_linear_projection=True,
            attention_head_dim=heads,
        )
    if family is Family.SD1:
        config.update(cross_attention_dim=768, attention_head_dim=8)
    elif family is Family.SD2:
        config.update(cross_attention_dim=1024, attention_head_dim=heads, use_linear_projection=True)
        config["upcast_attention"] = True  # as stabilityai/stable-diffusion-2-1 ships it
    elif family is Family.SDXL:
        config.update(cross_attention_dim=2048, projection_class_embeddings_input_dim=1280 + 256 * _XL_TIME_IDS_BASE)
    else:
        config.update(cross_attention_dim=1280, projection_class_embeddings_input_dim=1280 + 256 * _XL_TIME_IDS_REFINER)
    return config


def vae_config(family: Family) -> dict[str, Any]:
    _check_family(family)
    xl = family in (Family.SDXL, Family.SDXL_REFINER)
    return {
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "down_block_types": ("DownEncoderBlock2D",) * len(_CHANNELS),
        "up_block_types": ("UpDecoderBlock2D",) * len(_CHANNELS),
        "block_out_channels": _CHANNELS,
        "layers_per_block": 1,
        "norm_num_groups": 32,
        "sample_size": 32,
        "scaling_factor": 0.13025 if xl else 0.18215,
        "force_upcast": xl,
    }


def text_encoder_config(encoder: TextEncoderType) -> CLIPTextConfig:
    """2 layers, MLP 64, the real width and head count; token ids as the real configs give them."""
    width, heads, act, projection = {
        TextEncoderType.CLIP_L: (768, 12, "quick_gelu", 768),
        TextEncoderType.OPEN_CLIP_H: (1024, 16, "gelu", 512),
        TextEncoderType.OPEN_CLIP_G: (1280, 20, "gelu", 1280),
    }[encoder]
    # bos 0 / eos 2 / pad 1 are the legacy values every SD text-encoder config carries: with eos 2,
    # CLIP pools at the largest token id, which is <|endoftext|> in the tiny vocab as in the real one.
    return CLIPTextConfig(
        vocab_size=tiny_vocab_size(),
        hidden_size=width,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=heads,
        max_position_embeddings=MODEL_MAX_LENGTH,
        hidden_act=act,
        projection_dim=projection,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )


def scheduler_for(family: Family) -> Any:
    """The scheduler and values the family's real diffusers repo ships."""
    _check_family(family)
    common = {
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000,
        "steps_offset": 1,
        "clip_sample": False,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "trained_betas": None,
    }
    # from_config, not __init__: real configs carry keys a scheduler class does not take.
    if family is Family.SD1:
        return PNDMScheduler.from_config({**common, "prediction_type": "epsilon"})
    if family is Family.SD2:
        return DDIMScheduler.from_config({**common, "prediction_type": "v_prediction"})
    xl = {
        "prediction_type": "epsilon",
        "interpolation_type": "linear",
        "sample_max_value": 1.0,
        "timestep_spacing": "leading",
        "use_karras_sigmas": False,
    }
    return EulerDiscreteScheduler.from_config({**common, **xl})


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
    # Mixing the family in keeps two families' look-alike parts (SD1 and SDXL VAEs share a config)
    # from getting the same weights; crc32, unlike hash(), is the same in every process.
    return zlib.crc32(f"{family.value}/{seed}/{component}".encode())


def build_tiny_unet(family: Family, seed: int = 0) -> UNet2DConditionModel:
    _check_family(family)
    return _build(lambda: UNet2DConditionModel(**unet_config(family)), _component_seed(family, seed, "unet"))


def build_tiny_vae(family: Family, seed: int = 0) -> AutoencoderKL:
    """The VAE `build_tiny_pipeline(family, seed)` holds."""
    _check_family(family)
    return _build(lambda: AutoencoderKL(**vae_config(family)), _component_seed(family, seed, "vae"))


def _text_encoder(encoder: TextEncoderType, seed: int) -> CLIPTextModel | CLIPTextModelWithProjection:
    """CLIP-L / OpenCLIP-H as CLIPTextModel; OpenCLIP-bigG with its projection, as SDXL uses it."""
    config = text_encoder_config(encoder)
    model_class = CLIPTextModelWithProjection if encoder is TextEncoderType.OPEN_CLIP_G else CLIPTextModel
    return _build(lambda: model_class(config), seed)


def build_tiny_pipeline(family: Family, seed: int = 0) -> dict[str, Any]:
    """Components for `family` (keys as the diffusers pipeline names them); same seed, same weights.

    `write_tiny_models` writes the weights of seed 0, so `build_tiny_pipeline(family)` is what every
    layout of that family on disk holds.
    """
    _check_family(family)
    components: dict[str, Any] = {
        "unet": build_tiny_unet(family, seed),
        "vae": build_tiny_vae(family, seed),
        "scheduler": scheduler_for(family),
        "text_encoder": None,
        "tokenizer": None,
    }
    if family in (Family.SD1, Family.SDXL):
        components["text_encoder"] = _text_encoder(
            TextEncoderType.CLIP_L, _component_seed(family, seed, "text_encoder")
        )
        components["tokenizer"] = build_tiny_tokenizer(EOS)
    elif family is Family.SD2:
        components["text_encoder"] = _text_encoder(
            TextEncoderType.OPEN_CLIP_H, _component_seed(family, seed, "text_encoder")
        )
        components["tokenizer"] = build_tiny_tokenizer(OPEN_CLIP_PAD)
    if family in (Family.SDXL, Family.SDXL_REFINER):
        components["text_encoder_2"] = _text_encoder(
            TextEncoderType.OPEN_CLIP_G, _component_seed(family, seed, "text_encoder_2")
        )
        components["tokenizer_2"] = build_tiny_tokenizer(OPEN_CLIP_PAD)
    else:
        components["safety_checker"] = None
        components["feature_extractor"] = None
    return components


def pipeline_class(family: Family) -> type[DiffusionPipeline]:
    """The diffusers pipeline the family's real repo names in model_index.json."""
    _check_family(family)
    if family is Family.SDXL_REFINER:
        return StableDiffusionXLImg2ImgPipeline
    return StableDiffusionXLPipeline if family is Family.SDXL else StableDiffusionPipeline


def assemble_pipeline(family: Family, components: dict[str, Any]) -> DiffusionPipeline:
    """A diffusers pipeline over `components`, with the init flags the real repo's model_index.json sets."""
    kwargs: dict[str, Any] = {}
    if family is Family.SDXL_REFINER:
        kwargs = {"requires_aesthetics_score": True, "force_zeros_for_empty_prompt": False}
    elif family in (Family.SD1, Family.SD2):
        kwargs = {"requires_safety_checker": False}
    pipe = pipeline_class(family)(**components, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_pipeline(family: Family, seed: int = 0) -> DiffusionPipeline:
    return assemble_pipeline(family, build_tiny_pipeline(family, seed))
