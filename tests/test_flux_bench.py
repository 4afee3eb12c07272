"""Bench rows of transformer families (FLUX.1), run here at tiny size so a CUDA session can run them at full size."""

from __future__ import annotations

import torch

from webui.bench.dit_figures import dit_families, full_figures, tiny_figures, transformer_step
from webui.families import Family

TINY_SHAPE = {"num_layers": 1, "num_single_layers": 1, "num_attention_heads": 2}


def test_flux_is_benchmarked_as_a_transformer_family():
    assert Family.FLUX in dit_families()


def test_tiny_rows_compare_the_engine_with_plain_flux_pipeline_and_the_prompt_cache(tiny_models_dir):
    figures = tiny_figures(tiny_models_dir, Family.FLUX, steps=2, repeats=1, warmup=0, device="cpu")
    assert figures["latents_max_abs_difference"] < 1e-4  # the same computation
    assert figures["engine_vs_diffusers_speed"] > 0 and figures["prompt_cache_reuse"] > 0
    assert figures["engine_it_s"]["unit"] == "it/s" and len(figures["prompt_encode_cached_s"]["runs"]) == 1


def test_real_shape_step_code_runs_at_tiny_shape_in_bf16_and_fp8():
    """What `bench --size full` runs on CUDA (the released config), here with tiny overrides on the CPU."""
    rows = {
        storage: transformer_step(Family.FLUX, torch.device("cpu"), storage, TINY_SHAPE, (64, 64), 16, repeats=1)
        for storage in ("bf16", "fp8")
    }
    assert all(row["finite"] and row["size"] == "64x64" for row in rows.values())
    assert rows["fp8"]["weights_bytes"] < rows["bf16"]["weights_bytes"]  # norms and embeddings stay bf16
    assert rows["bf16"]["parameters"] == rows["fp8"]["parameters"] > 0
    assert "CUDA" in full_figures(Family.FLUX, torch.device("cpu"))["skipped"]


def test_every_transformer_family_gets_its_tiny_rows(tiny_models_dir):
    """SD3, Chroma and Z-Image: the engine's latents equal their plain pipeline's at the bench's settings."""
    assert {Family.SD3, Family.CHROMA, Family.ZIMAGE} <= set(dit_families())
    for family in (Family.SD3, Family.CHROMA, Family.ZIMAGE):
        figures = tiny_figures(tiny_models_dir, family, steps=1, repeats=1, warmup=0, device="cpu")
        assert figures["latents_max_abs_difference"] < 1e-4, family
