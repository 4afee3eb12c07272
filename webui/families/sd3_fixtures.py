"""Tiny random SD3 / SD3.5 models (TINY_SPEC.md) in every layout people keep, for tests and the tiny bench.

Interface widths stay real: 16 latent channels in 2×2 patches, 64-wide attention heads, CLIP-L 768 and CLIP-G
1280 (pooled 2048 into `y_embedder`), T5 4096 into `context_embedder`. Everything else is tiny: two heads
(width 128), two joint blocks, a position grid of 16 × 16 patches, two-layer CLIPs, the one-layer T5 of the
FLUX.1 fixtures, a two-level 16-channel VAE without quant convs with SD3's scaling. The main transformer is
SD3.5 Large-shaped (RMS q/k norms); an SD3.5 Medium-shaped one (a second attention in block 0) and an SD3
Medium-shaped one (no q/k norms) are written as split files too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from webui.families import FamilyDescription, family_of
from webui.families.sd3_keys import HEAD_WIDTH, diffusers_to_original
from webui.models.kinds import Kind, Role, TextEncoderType

HEADS, BLOCKS, GRID = 2, 2, 16
VAE_CHANNELS = (32, 64)
VARIANT_SHAPES = {
    "3.5-large": {"qk_norm": "rms_norm", "dual_attention_layers": ()},
    "3.5-medium": {"qk_norm": "rms_norm", "dual_attention_layers": (0,)},
    "3-medium": {"qk_norm": None, "dual_attention_layers": ()},
}


def _family() -> Any:
    from webui.families import Family

    return Family("sd3")


def build_transformer(variant: str = "3.5-large", seed: int = 0) -> torch.nn.Module:
    from diffusers import SD3Transformer2DModel

    from webui.testing.tiny_models import _build, _component_seed

    def make() -> torch.nn.Module:
        return SD3Transformer2DModel(
            sample_size=32,
            patch_size=2,
            in_channels=16,
            num_layers=BLOCKS,
            attention_head_dim=HEAD_WIDTH,
            num_attention_heads=HEADS,
            joint_attention_dim=4096,
            caption_projection_dim=HEADS * HEAD_WIDTH,
            pooled_projection_dim=2048,
            out_channels=16,
            pos_embed_max_size=GRID,
            **VARIANT_SHAPES[variant],
        )

    from webui.families.flux_fixtures import _round_fp8

    model = _build(make, _component_seed(_family(), seed, f"transformer-{variant}"))
    _round_fp8(model)  # exact in bf16, fp16 and fp8: every file holds the same numbers
    with torch.no_grad():
        for buffer in model.buffers():  # the stored sin-cos position grid too
            buffer.copy_(buffer.to(torch.float8_e4m3fn).to(buffer.dtype))
    return model


def build_vae(seed: int = 0) -> torch.nn.Module:
    from diffusers import AutoencoderKL

    from webui.testing.tiny_models import _build, _component_seed

    latent = _family().description.latent
    return _build(
        lambda: AutoencoderKL(
            latent_channels=16,
            down_block_types=("DownEncoderBlock2D",) * len(VAE_CHANNELS),
            up_block_types=("UpDecoderBlock2D",) * len(VAE_CHANNELS),
            block_out_channels=VAE_CHANNELS,
            layers_per_block=1,
            norm_num_groups=32,
            sample_size=32,
            scaling_factor=latent.scaling_factor,
            shift_factor=latent.shift_factor,
            use_quant_conv=False,
            use_post_quant_conv=False,
        ),
        _component_seed(_family(), seed, "vae"),
    )


def build_components(variant: str = "3.5-large", seed: int = 0, t5: bool = True) -> dict[str, Any]:
    """StableDiffusion3Pipeline components (diffusers' names); the files `write_sd3_family` writes hold seed 0's.
    `t5=False`: without the optional T5 (text_encoder_3 / tokenizer_3 None)."""
    import diffusers
    from transformers import CLIPTextModelWithProjection

    from webui.families.encoders import ENCODERS
    from webui.families.flux_fixtures import build_t5
    from webui.models.derive import bundled_config
    from webui.testing.tiny_models import _build, _component_seed, text_encoder_config
    from webui.testing.tiny_t5_tokenizer import build_tiny_t5_tokenizer
    from webui.testing.tiny_tokenizer import build_tiny_tokenizer

    family = _family()
    config = bundled_config(family, "scheduler")
    scheduler = getattr(diffusers, config.pop("_class_name")).from_config(config)
    clip_l, clip_g = TextEncoderType.CLIP_L, TextEncoderType.OPEN_CLIP_G

    def clip(encoder: TextEncoderType, name: str) -> torch.nn.Module:
        config = text_encoder_config(encoder)
        model = _build(lambda: CLIPTextModelWithProjection(config), _component_seed(family, seed, name))
        with torch.no_grad():
            for param in model.parameters():
                param.copy_(param.half().float())  # the fp16 files hold the same numbers
        return model

    return {
        "transformer": build_transformer(variant, seed),
        "vae": build_vae(seed),
        "text_encoder": clip(clip_l, "clip-l"),
        "tokenizer": build_tiny_tokenizer(ENCODERS[clip_l].pad_token),
        "text_encoder_2": clip(clip_g, "clip-g"),
        "tokenizer_2": build_tiny_tokenizer(ENCODERS[clip_g].pad_token),
        "text_encoder_3": build_t5(seed) if t5 else None,
        "tokenizer_3": build_tiny_t5_tokenizer() if t5 else None,
        "scheduler": scheduler,
    }


def pipeline(components: dict[str, Any]) -> Any:
    """Plain diffusers StableDiffusion3Pipeline over `components` (the reference the engine is compared with)."""
    pipe = _family().description.pipeline.create(components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def write_sd3_family(root: Path, description: FamilyDescription) -> list[Any]:
    """Every SD3 layout of the tiny models under `root` (see the module docstring); returns FixtureFiles."""
    from webui.families.flux_fixtures import T5_TOKENIZER_DIR, t5_file_state
    from webui.models.family_tables import first_family_with_encoder
    from webui.models.ldm_writer import save_single_file, vae_to_ldm
    from webui.testing.tiny import FixtureFile, stem
    from webui.testing.tiny_t5_tokenizer import write_t5_tokenizer

    family = family_of(description)
    name = stem(family)
    files: list[FixtureFile] = []

    def add(relative: str, kind: Kind, layout: str, encoder: TextEncoderType | None = None) -> Path:
        owner = family if encoder is None else first_family_with_encoder(encoder)  # a lone encoder: its first user
        files.append(FixtureFile(relative, kind, owner, layout, encoder))
        return root / relative

    def tensors(relative: str, kind: Kind, layout: str, state: dict, dtype: Any, **kw: Any) -> None:
        save_single_file(state, add(relative, kind, layout, kw.get("encoder")), dtype=dtype)

    write_t5_tokenizer(root / T5_TOKENIZER_DIR)
    parts = build_components()
    original = diffusers_to_original(parts["transformer"].state_dict())
    dm, te = "diffusion_models", "text_encoders"
    tensors(f"{dm}/{name}.safetensors", Kind.UNET, "transformer-original", original, torch.bfloat16)
    diffusers_names = parts["transformer"].state_dict()
    tensors(f"{dm}/{name}-diffusers.safetensors", Kind.UNET, "transformer-diffusers", diffusers_names, torch.float16)
    for variant in ("3.5-medium", "3-medium"):
        state = diffusers_to_original(build_transformer(variant).state_dict())
        tensors(f"{dm}/{name}-{variant}.safetensors", Kind.UNET, "transformer-original", state, torch.bfloat16)

    # Hugging Face names (`text_model.*`, `text_projection.weight`), as ComfyUI's clip_l / clip_g files
    clip_l, clip_g = parts["text_encoder"].state_dict(), parts["text_encoder_2"].state_dict()
    t5 = t5_file_state(parts["text_encoder_3"])
    layouts = ((clip_l, "clip-l", TextEncoderType.CLIP_L), (clip_g, "clip-g", TextEncoderType.OPEN_CLIP_G))
    for state, slug, encoder in layouts:
        tensors(f"{te}/{name}-{slug}.safetensors", Kind.TEXT_ENCODER, slug, state, torch.float16, encoder=encoder)
    tensors(
        f"{te}/{name}-t5xxl-fp16.safetensors",
        Kind.TEXT_ENCODER,
        "t5-fp16",
        t5,
        torch.float16,
        encoder=TextEncoderType.T5,
    )
    vae = parts["vae"]
    ldm_vae = vae_to_ldm(vae.state_dict(), vae.config)
    tensors(f"vae/{name}-vae.safetensors", Kind.VAE, "vae-ldm", ldm_vae, None)

    prefix = {spec.role: spec.checkpoint_prefix for spec in description.roles}
    clips = {  # Stability's single files: the CLIPs in Hugging Face names under `transformer.`, fp16
        **{f"{prefix[Role.TEXT_ENCODER]}transformer.{k}": v.to(torch.float16) for k, v in clip_l.items()},
        **{f"{prefix[Role.TEXT_ENCODER_2]}transformer.{k}": v.to(torch.float16) for k, v in clip_g.items()},
    }
    body = {
        **{f"{prefix[Role.TRANSFORMER]}{k}": v.to(torch.float16) for k, v in original.items()},
        **{f"{prefix[Role.VAE]}{k}": v for k, v in ldm_vae.items()},
    }
    t5_keys = {f"{prefix[Role.TEXT_ENCODER_3]}transformer.{k}": v.to(torch.float16) for k, v in t5.items()}
    tensors(
        f"checkpoints/{name}-incl-clips-t5xxl.safetensors",
        Kind.CHECKPOINT,
        "all-in-one",
        {**body, **clips, **t5_keys},
        None,
    )
    tensors(f"checkpoints/{name}-incl-clips.safetensors", Kind.CHECKPOINT, "all-in-one-no-t5", {**body, **clips}, None)
    folder = add(f"checkpoints/{name}-diffusers", Kind.CHECKPOINT, "diffusers-folder")
    pipeline(parts).save_pretrained(folder, safe_serialization=True)
    return files
