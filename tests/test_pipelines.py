"""Pipeline manager: every layout gives plain diffusers' pixels; caching, swapping, eviction, refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from webui.engine.decode import _decode, decode_latents
from webui.engine.pipelines import ModelChoice, ModelLoadError, PipelineManager
from webui.engine.request import GenerationRequest
from webui.engine.txt2img import Engine
from webui.families import Family
from webui.models.kinds import Kind, TextEncoderType
from webui.models.loading import Role
from webui.testing.tiny import tiny_pipeline

PROMPT = "a red hat on a table"
SEED = 1234
FAMILIES = {Family.SD1: "tiny-sd1", Family.SD2: "tiny-sd2", Family.SDXL: "tiny-sdxl"}


def request_for(choice: ModelChoice, **changes) -> GenerationRequest:
    values = dict(model=choice, prompt=PROMPT, negative_prompt="blurry", steps=3, width=32, height=32, seed=SEED)
    values.update(changes)
    return GenerationRequest(**values)


def engine_pixels(engine: Engine, choice: ModelChoice, **changes) -> tuple[np.ndarray, torch.Tensor]:
    """(decoded image as numpy, latents) for one image through the engine's own code path."""
    request = request_for(choice, **changes)
    loaded = engine.manager.load(choice)
    latents = engine.denoise(loaded, request, [request.seed])
    vae_item = engine.manager.cache.get_or_load(loaded.keys[Role.VAE], lambda: pytest.fail("VAE not cached"))
    image = loaded.pipeline.image_processor.postprocess(decode_latents(vae_item, latents), output_type="np")
    return image, latents


def plain_diffusers_pixels(family: Family) -> np.ndarray:
    """The same weights through a plain diffusers pipeline, nothing of ours involved."""
    pipe = tiny_pipeline(family)
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        prompt=PROMPT,
        negative_prompt="blurry",
        num_inference_steps=3,
        guidance_scale=7.0,
        width=32,
        height=32,
        generator=torch.Generator("cpu").manual_seed(SEED),
        output_type="np",
    ).images


@pytest.fixture
def engine(tiny_models_dir, tmp_path) -> Engine:
    return Engine(PipelineManager(tiny_models_dir), tmp_path / "outputs")


def layouts(models, manifest, family: Family) -> dict[str, ModelChoice]:
    """One choice per on-disk layout of the family's weights (the manifest says which file is which)."""
    files = [((f.layout, f.kind, f.text_encoder), models / f.path) for f in manifest if f.family is family]
    checkpoints = {layout: path for (layout, kind, _), path in files if kind is Kind.CHECKPOINT}

    def one(layout: str, kind: Kind, encoder: TextEncoderType | None = None) -> Path:
        matches = [p for (lay, k, enc), p in files if lay == layout and k is kind and encoder in (None, enc)]
        return min(matches, key=lambda p: len(p.name))  # the family's own file, not e.g. the "-alt" VAE

    encoders = {
        Family.SD1: {"text_encoder": (TextEncoderType.CLIP_L,)},
        Family.SD2: {"text_encoder": (TextEncoderType.OPEN_CLIP_H,)},
        Family.SDXL: {"text_encoder": (TextEncoderType.CLIP_L,), "text_encoder_2": (TextEncoderType.OPEN_CLIP_G,)},
    }[family]
    split_te = {role: one("text-encoder-hf", Kind.TEXT_ENCODER, enc[0]) for role, enc in encoders.items()}
    choices = {layout: ModelChoice(path) for layout, path in checkpoints.items()}
    choices["split-components"] = ModelChoice(
        None, unet=one("unet-diffusers", Kind.UNET), vae=one("vae-ldm", Kind.VAE), **split_te
    )
    choices["ldm-unet-over-checkpoint"] = ModelChoice(
        checkpoints["ldm-single-file"], unet=one("unet-ldm", Kind.UNET)
    )
    if any(lay == "text-encoder-ldm" for (lay, _, _), _ in files):
        role = next(iter(encoders))
        ldm_te = {role: one("text-encoder-ldm", Kind.TEXT_ENCODER, encoders[role][0])}
        choices["ldm-text-encoder-over-checkpoint"] = ModelChoice(checkpoints["ldm-single-file"], **ldm_te)
    if any(lay == "vae-diffusers" for (lay, _, _), _ in files):
        choices["diffusers-vae-over-checkpoint"] = ModelChoice(
            checkpoints["ldm-single-file"], vae=one("vae-diffusers", Kind.VAE)
        )
    assert {"ldm-single-file", "pickle", "diffusers-folder"} <= set(choices), choices
    return choices


@pytest.mark.parametrize("family", list(FAMILIES), ids=lambda f: f.value)
def test_every_layout_gives_plain_diffusers_pixels(family, engine, tiny_models_dir, tiny_manifest):
    expected = plain_diffusers_pixels(family)
    assert np.isfinite(expected).all() and expected.std() > 0.01
    for name, choice in layouts(tiny_models_dir, tiny_manifest, family).items():
        image, _ = engine_pixels(engine, choice)
        np.testing.assert_allclose(image, expected, atol=1e-5, err_msg=f"{family.value} {name}")


def test_vae_swap_changes_the_image_but_not_the_latents(engine, tiny_models_dir):
    checkpoint = tiny_models_dir / "checkpoints/tiny-sd1.safetensors"
    base_image, base_latents = engine_pixels(engine, ModelChoice(checkpoint))
    swapped = ModelChoice(checkpoint, vae=tiny_models_dir / "vae/tiny-sd1-vae-alt.safetensors")
    loads_before = engine.manager.cache.loads
    image, latents = engine_pixels(engine, swapped)
    assert engine.manager.cache.loads == loads_before + 1  # only the new VAE was read
    assert torch.equal(latents, base_latents)
    assert np.abs(image - base_image).max() > 0.05


def test_switching_back_to_a_cached_model_reads_nothing(engine, tiny_models_dir, monkeypatch):
    import webui.models.loading as loading

    reads = []
    real_read = loading.read_tensors
    monkeypatch.setattr(loading, "read_tensors", lambda *a, **k: reads.append(a) or real_read(*a, **k))
    first = ModelChoice(tiny_models_dir / "checkpoints/tiny-sd1.safetensors")
    second = ModelChoice(tiny_models_dir / "checkpoints/tiny-sd2.safetensors")
    engine.manager.load(first)
    engine.manager.load(second)
    reads.clear()
    loads = engine.manager.cache.loads
    loaded = engine.manager.load(first)
    assert reads == [] and engine.manager.cache.loads == loads and loaded.loaded_from_disk == []


def test_two_choices_sharing_a_vae_file_hold_it_once(engine, tiny_models_dir):
    vae = tiny_models_dir / "vae/tiny-sd1-vae-alt.safetensors"
    engine.manager.load(ModelChoice(tiny_models_dir / "checkpoints/tiny-sd1.safetensors", vae=vae))
    engine.manager.load(ModelChoice(tiny_models_dir / "checkpoints/tiny-sd1.ckpt", vae=vae))
    vaes = [s for s in engine.manager.cache.stats() if s.role == "vae"]
    assert len(vaes) == 1


def test_mismatched_component_is_refused_and_the_previous_model_still_generates(engine, tiny_models_dir):
    sd1 = ModelChoice(tiny_models_dir / "checkpoints/tiny-sd1.safetensors")
    engine.manager.load(sd1)
    wrong_te = ModelChoice(sd1.checkpoint, text_encoder=tiny_models_dir / "text_encoders/tiny-sdxl-clip-g.safetensors")
    with pytest.raises(ModelLoadError, match="tiny-sdxl-clip-g.*(OpenCLIP-bigG|CLIP-L)"):
        engine.manager.load(wrong_te)
    wrong_unet = ModelChoice(sd1.checkpoint, unet=tiny_models_dir / "diffusion_models/tiny-sdxl-unet.safetensors")
    with pytest.raises(ModelLoadError, match="SD1"):
        engine.manager.load(wrong_unet)
    assert engine.manager.current.choice == sd1
    result = engine.generate(request_for(sd1))
    assert result.images[0].path.is_file()


def test_a_broken_file_is_refused_with_its_name(engine, tiny_models_dir, tmp_path):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ModelLoadError, match="broken.safetensors"):
        engine.manager.load(ModelChoice(broken))


def test_fp16_vae_that_gives_nan_is_decoded_again_in_fp32(engine, tiny_models_dir):
    loaded = engine.manager.load(ModelChoice(tiny_models_dir / "checkpoints/tiny-sd1.safetensors"))
    item = engine.manager.cache.get_or_load(loaded.keys[Role.VAE], lambda: pytest.fail("not cached"))
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    vae = item.module
    with torch.no_grad():  # activations that overflow half precision (max 65504) but are fine in fp32
        vae.post_quant_conv.weight.mul_(3e4)
        vae.post_quant_conv.bias.mul_(3e4)
    expected = decode_latents(item, latents)
    vae.to(torch.float16)
    assert not torch.isfinite(_decode(vae, latents)).all()  # plain fp16 decoding really breaks
    image = decode_latents(item, latents)
    assert torch.isfinite(image).all()
    assert vae.dtype == torch.float32 and "vae-fp32" in item.flags
    torch.testing.assert_close(image, expected, atol=1e-3, rtol=1e-3)
    assert torch.equal(decode_latents(item, latents), image)  # remembered: stays fp32


def test_a_model_larger_than_the_budget_does_not_evict_its_own_parts_while_loading(tiny_models_dir):
    from webui.engine.cache import ComponentCache

    choice = ModelChoice(tiny_models_dir / "checkpoints/tiny-sd1.safetensors")
    manager = PipelineManager(tiny_models_dir, cache=ComponentCache({"cpu": 1}))  # far under one model
    manager.load(choice)
    assert manager.cache.loads == 3  # UNet, VAE, text encoder: all kept, the budget notwithstanding
    manager.load(choice)
    assert manager.cache.loads == 3  # and nothing is read again
