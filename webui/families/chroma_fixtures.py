"""Tiny random Chroma models (TINY_SPEC.md) in every layout people keep, for tests and the tiny bench.

Interface widths stay real: 16 latent channels packed 2×2 into `img_in` (64), T5 4096 into `txt_in`, 128-wide
heads with rope axes (16, 56, 56), the guidance network's 64 input channels. Everything else is tiny: two heads
(width 256), one double and two single blocks, a two-layer 32-wide guidance network, the one-layer T5 and the
two-level `ae` of the FLUX.1 fixtures. Weights are fp8-exact, so bf16 and fp16 files hold the same numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from webui.families import FamilyDescription, family_of
from webui.models.kinds import Kind


def _family() -> Any:
    from webui.families import Family

    return Family("chroma")


def build_transformer(seed: int = 0) -> torch.nn.Module:
    from diffusers import ChromaTransformer2DModel

    from webui.families.chroma_keys import ROPE_AXES
    from webui.families.flux_fixtures import DOUBLE_BLOCKS, HEADS, SINGLE_BLOCKS, _round_fp8
    from webui.testing.tiny_models import _build, _component_seed

    def make() -> torch.nn.Module:
        return ChromaTransformer2DModel(
            patch_size=1,
            in_channels=64,
            num_layers=DOUBLE_BLOCKS,
            num_single_layers=SINGLE_BLOCKS,
            attention_head_dim=128,
            num_attention_heads=HEADS,
            joint_attention_dim=4096,
            axes_dims_rope=ROPE_AXES,
            approximator_num_channels=64,
            approximator_hidden_dim=32,
            approximator_layers=2,
        )

    model = _build(make, _component_seed(_family(), seed, "transformer"))
    _round_fp8(model)
    return model


def build_components(seed: int = 0) -> dict[str, Any]:
    """ChromaPipeline components (diffusers' names); the files `write_chroma_family` writes hold seed 0's."""
    import diffusers

    from webui.families.flux_fixtures import build_t5, build_vae
    from webui.models.derive import bundled_config
    from webui.testing.tiny_t5_tokenizer import build_tiny_t5_tokenizer

    config = bundled_config(_family(), "scheduler")
    scheduler = getattr(diffusers, config.pop("_class_name")).from_config(config)
    return {
        "transformer": build_transformer(seed),
        "vae": build_vae(seed),  # FLUX.1's `ae`
        "text_encoder": build_t5(seed),
        "tokenizer": build_tiny_t5_tokenizer(),
        "scheduler": scheduler,
    }


def pipeline(components: dict[str, Any]) -> Any:
    """Plain diffusers ChromaPipeline over `components` (the reference the engine is compared with)."""
    pipe = _family().description.pipeline.create(components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def write_chroma_family(root: Path, description: FamilyDescription) -> list[Any]:
    """Every Chroma layout of the tiny models under `root`; returns FixtureFiles. The T5 and `ae` files are
    the FLUX.1 fixtures' (the same weights), as users share them between the two families."""
    from webui.families.chroma_keys import diffusers_to_original
    from webui.families.flux_fixtures import T5_TOKENIZER_DIR, t5_file_state
    from webui.models.ldm_writer import save_single_file, vae_to_ldm
    from webui.testing.tiny import FixtureFile, stem
    from webui.testing.tiny_t5_tokenizer import write_t5_tokenizer

    family = family_of(description)
    name = stem(family)
    files: list[FixtureFile] = []

    def tensors(relative: str, kind: Kind, layout: str, state: dict, dtype: Any) -> None:
        files.append(FixtureFile(relative, kind, family, layout))
        save_single_file(state, root / relative, dtype=dtype)

    write_t5_tokenizer(root / T5_TOKENIZER_DIR)
    parts = build_components()
    original = diffusers_to_original(parts["transformer"].state_dict())
    dm = "diffusion_models"
    tensors(f"{dm}/{name}.safetensors", Kind.UNET, "transformer-bfl", original, torch.bfloat16)
    tensors(f"{dm}/{name}-diffusers.safetensors", Kind.UNET, "transformer-diffusers",
            parts["transformer"].state_dict(), torch.bfloat16)  # fmt: skip
    vae = parts["vae"]
    aio = {  # as ComfyUI saves them
        **{f"model.diffusion_model.{k}": v.to(torch.bfloat16) for k, v in original.items()},
        **{f"text_encoders.t5xxl.transformer.{k}": v.to(torch.bfloat16) for k, v in t5_file_state(
            parts["text_encoder"]).items()},
        **{f"vae.{k}": v for k, v in vae_to_ldm(vae.state_dict(), vae.config).items()},
    }  # fmt: skip
    tensors(f"checkpoints/{name}-aio.safetensors", Kind.CHECKPOINT, "all-in-one", aio, None)
    folder = f"checkpoints/{name}-diffusers"
    files.append(FixtureFile(folder, Kind.CHECKPOINT, family, "diffusers-folder"))
    pipeline(parts).save_pretrained(root / folder, safe_serialization=True)
    return files

