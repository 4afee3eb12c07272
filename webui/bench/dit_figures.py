"""Bench figures of transformer (DiT) families such as FLUX.1: engine vs plain diffusers, prompt-cache reuse,
and on CUDA a real-shape random transformer step in bf16 and in fp8 storage where the GPU's memory allows.

`tiny` runs the family's tiny fixtures (a transformer file, its text encoders, its VAE) through the engine and
through the stock diffusers pipeline class over the same modules; `full` builds the released architecture
from the bundled config with random weights straight on the device (no file: 12 B weights) and times one
denoiser forward at the family's native size, text length and batch 1.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from webui.bench.stats import Case, Stat, interleaved, synchronize
from webui.engine.conditioning_pipeline import EmbeddingCache, encode_with_pipeline
from webui.engine.device import DevicePolicy
from webui.engine.memory import module_bytes
from webui.engine.memory_plan import store_in_fp8
from webui.families import DESCRIPTIONS, Family, family_of
from webui.models.kinds import Kind

PROMPT = "a photo of a red fox in the snow, detailed"
SEED = 1
FULL_STEPS_TIMED = 3
# Bytes per weight needed on the GPU beyond the weights (activations at 1024², the rest of CUDA's pool).
_HEADROOM = 4 * 2**30


def dit_families() -> tuple[Family, ...]:
    """Families with a transformer denoiser whose description asks for benchmark runs."""
    return tuple(family_of(d) for d in DESCRIPTIONS if d.denoiser_loader is not None and d.bench is not None)


def tiny_choice(models_dir: Path, family: Family) -> Any:
    """The family's split tiny fixtures as a model choice: its first transformer file, one file per text
    encoder role (by architecture), its VAE (from the fixture manifest)."""
    from webui.engine.pipelines import ModelChoice
    from webui.testing.tiny import read_manifest

    files = [f for f in read_manifest(models_dir) if f.family is family or f.kind is Kind.TEXT_ENCODER]
    denoiser = next(f for f in files if f.family is family and f.kind is Kind.UNET)
    latent = family.description.latent  # a family may share another's VAE files (Chroma, Z-Image: FLUX's `ae`)
    vaes = [f for f in read_manifest(models_dir) if f.kind is Kind.VAE and f.family.description.latent == latent]
    vae = next((f for f in vaes if f.family is family), None) or vaes[0]
    parts: dict[str, Path] = {"unet": models_dir / denoiser.path, "vae": models_dir / vae.path}
    for spec in family.description.text_encoders:
        match = next(f for f in files if f.kind is Kind.TEXT_ENCODER and f.text_encoder is spec.encoder)
        parts[spec.role.value] = models_dir / match.path
    return ModelChoice(None, **parts)


def tiny_figures(models_dir: Path, family: Family, steps: int, repeats: int, warmup: int, device: str) -> dict:
    """`engine_vs_diffusers_speed` (it/s ratio, text encoding included in both) and `prompt_cache_reuse`
    (encoding a prompt seen before vs a new one) over the family's tiny fixtures."""
    from webui.engine.pipelines import PipelineManager
    from webui.engine.request import GenerationRequest
    from webui.engine.txt2img import Engine

    engine = Engine(PipelineManager(models_dir, DevicePolicy(device=device)), models_dir / "bench-outputs")
    choice = tiny_choice(models_dir, family)
    loaded = engine.manager.load(choice)
    request = GenerationRequest(choice, prompt=PROMPT, steps=steps, cfg_scale=1.0, width=64, height=64, seed=SEED)
    description = family.description
    plain = description.pipeline.create({**loaded.pipeline.components})
    plain.set_progress_bar_config(disable=True)
    guidance = engine.distilled_guidance(loaded, request)
    variant = description.variant(loaded.model_variant)
    max_length = variant.max_sequence_length if variant is not None and variant.max_sequence_length else None
    max_length = max_length or description.conditioning.max_sequence_length
    results: dict[str, torch.Tensor] = {}

    def run_engine() -> None:
        engine.prompt_cache.clear()  # text encoding is part of both timings
        results["engine"] = engine.denoise(loaded, request, [SEED])

    def run_plain() -> None:
        kwargs = {description.pipeline.guidance_argument: guidance} if guidance is not None else {}
        kwargs[description.pipeline.cfg_argument] = request.cfg_scale - description.pipeline.cfg_offset
        results["plain"] = plain(
            prompt=PROMPT,
            num_inference_steps=steps,
            width=request.width,
            height=request.height,
            generator=[torch.Generator("cpu").manual_seed(SEED)],
            max_sequence_length=max_length,
            output_type="latent",
            **kwargs,
        ).images

    stats = interleaved({"engine": Case(run_engine), "plain": Case(run_plain)}, repeats, warmup)
    engine_its, plain_its = stats["engine"].per(steps, "it/s"), stats["plain"].per(steps, "it/s")
    cache = EmbeddingCache()

    def encode(prompt: str) -> None:
        encode_with_pipeline(
            loaded.pipeline,
            prompt,
            "",
            encode=description.conditioning.encoder(),
            use_negative=False,
            max_length=max_length,
            cache=cache,
        )

    encode(PROMPT)
    prompts = iter(f"{PROMPT} {i}" for i in range(10_000))
    reuse = interleaved({"new": Case(lambda: encode(next(prompts))), "cached": Case(lambda: encode(PROMPT))}, repeats)
    difference = (results["engine"].float() - results["plain"].float()).abs().max().item()
    return {
        "model": f"{family.value} tiny fixtures ({loaded.model_variant or 'no variant'})",
        "engine_vs_diffusers_speed": engine_its.median / plain_its.median,
        "engine_it_s": engine_its.to_json(),
        "diffusers_it_s": plain_its.to_json(),
        "latents_max_abs_difference": difference,
        "prompt_cache_reuse": reuse["new"].median / reuse["cached"].median,
        "prompt_encode_new_s": reuse["new"].to_json(),
        "prompt_encode_cached_s": reuse["cached"].to_json(),
        "measured": f"{steps} steps at 64x64 from prompt text to latents; reuse = new prompt / cached prompt time",
    }


def random_transformer(family: Family, device: torch.device, dtype: torch.dtype, overrides: dict | None = None):
    """The family's transformer from its bundled config (plus `overrides`), random weights made on `device`."""
    from webui.models.derive import bundled_config

    spec = family.description.denoiser
    config = {k: v for k, v in bundled_config(family, spec.role.value).items() if not k.startswith("_")}
    config.update(overrides or {})
    with torch.device("meta"):
        model = spec.component_type()(**config)
    model = model.to_empty(device=device).to(dtype)
    generator = torch.Generator(device).manual_seed(SEED)
    with torch.no_grad():
        for param in model.parameters():
            fan_in = param[0].numel() if param.ndim >= 2 else 1
            param.normal_(0.0, (3.0 * fan_in) ** -0.5 if param.ndim >= 2 else 0.02, generator=generator)
    return model.eval()


def transformer_step(
    family: Family,
    device: torch.device,
    storage: str,
    overrides: dict | None = None,
    size: tuple[int, int] | None = None,
    text_tokens: int = 512,
    repeats: int = FULL_STEPS_TIMED,
) -> dict[str, Any]:
    """Seconds per denoiser forward of a random real-shape (or `overrides`-shaped) transformer at `size`,
    stored in bf16 or fp8 (`storage`), computing in bf16; skipped with the reason when memory does not allow."""
    dtype = torch.bfloat16
    width, height = size or family.description.defaults.sizes[0]
    parameters = _parameters(family, overrides)
    needed = parameters * (1 if storage == "fp8" else 2) + _HEADROOM
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        if needed > free:
            return {"skipped": f"needs about {needed / 2**30:.0f} GiB of free GPU memory, {free / 2**30:.0f} free"}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model = random_transformer(family, device, dtype, overrides)
    if storage == "fp8":
        store_in_fp8(model, dtype)
    config = model.config
    tokens = (width // 16) * (height // 16)  # 8x VAE, 2x2 packing
    generator = torch.Generator(device).manual_seed(SEED)
    inputs = {
        "hidden_states": torch.randn(1, tokens, config.in_channels, generator=generator, device=device, dtype=dtype),
        "encoder_hidden_states": torch.randn(
            1, text_tokens, config.joint_attention_dim, generator=generator, device=device, dtype=dtype
        ),
        "pooled_projections": torch.randn(
            1, config.pooled_projection_dim, generator=generator, device=device, dtype=dtype
        ),
        "timestep": torch.tensor([0.5], device=device, dtype=dtype),
        "img_ids": torch.zeros(tokens, 3, device=device, dtype=dtype),
        "txt_ids": torch.zeros(text_tokens, 3, device=device, dtype=dtype),
        "guidance": torch.tensor([3.5], device=device, dtype=dtype) if config.guidance_embeds else None,
    }
    runs = []
    with torch.inference_mode():
        model(**inputs)  # warm-up (kernels, allocator)
        for _ in range(repeats):
            synchronize()
            started = time.perf_counter()
            out = model(**inputs).sample
            synchronize()
            runs.append(time.perf_counter() - started)
    result = {
        "storage": storage,
        "parameters": parameters,
        "weights_bytes": module_bytes(model),
        "s_per_it": Stat(tuple(runs)).to_json(),
        "size": f"{width}x{height}",
        "text_tokens": text_tokens,
        "finite": bool(torch.isfinite(out).all().item()),
    }
    if device.type == "cuda":
        result["peak_gpu_bytes"] = torch.cuda.max_memory_allocated(device)
    del model, out
    return result


def _parameters(family: Family, overrides: dict | None) -> int:
    from webui.models.derive import bundled_config

    spec = family.description.denoiser
    config = {k: v for k, v in bundled_config(family, spec.role.value).items() if not k.startswith("_")}
    config.update(overrides or {})
    with torch.device("meta"):
        return sum(p.numel() for p in spec.component_type()(**config).parameters())


def full_figures(family: Family, device: torch.device) -> dict[str, Any]:
    """The real-shape transformer in bf16 and in fp8 storage on CUDA (each where memory allows)."""
    if device.type != "cuda":
        return {"skipped": "real-shape transformer steps are measured on CUDA only (12 B weights)"}
    figures = {storage: transformer_step(family, device, storage) for storage in ("bf16", "fp8")}
    bf16, fp8 = figures["bf16"], figures["fp8"]
    if "s_per_it" in bf16 and "s_per_it" in fp8:
        figures["fp8_vs_bf16_speed"] = bf16["s_per_it"]["median"] / fp8["s_per_it"]["median"]
        figures["fp8_vs_bf16_weights"] = fp8["weights_bytes"] / bf16["weights_bytes"]
    return figures
