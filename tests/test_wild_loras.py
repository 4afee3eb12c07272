"""LoRA files from the wild (issue 13): LyCORIS LoHa/LoKr, DoRA, per-module ranks, no alpha, bf16, LoCon, short errors.

Each image is compared with a reference pipeline whose weights were patched by the file's own maths
(tests/wild_inputs.py), so "applied" means applied right, not just counted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import wild_inputs as wild

from webui.engine.decode import decode_latents
from webui.engine.lora import LoraSpec, adapter_name
from webui.engine.pipelines import ModelChoice, PipelineManager
from webui.engine.request import GenerationRequest
from webui.engine.txt2img import Engine
from webui.families import Family
from webui.models.loading import Role
from webui.testing.tiny import build_tiny_pipeline

CHECKPOINTS = {Family.SD1: "checkpoints/tiny-sd1.safetensors", Family.SDXL: "checkpoints/tiny-sdxl.safetensors"}
# The reference adds ΔW to the weight; PEFT adds ΔW·x to W·x: the same image up to float rounding.
ATOL = 2e-4


@pytest.fixture(scope="module")
def engine(tiny_models_dir, tmp_path_factory) -> Engine:
    return Engine(PipelineManager(tiny_models_dir), tmp_path_factory.mktemp("outputs"))


@pytest.fixture(scope="module")
def components() -> dict:
    return {family: build_tiny_pipeline(family) for family in CHECKPOINTS}


def _request(models_dir: Path, family: Family, stack=()) -> GenerationRequest:
    choice = ModelChoice(models_dir / CHECKPOINTS[family])
    return GenerationRequest(model=choice, prompt="a red hat", steps=2, width=32, height=32, seed=7, loras=tuple(stack))


def _image(engine: Engine, loaded, request: GenerationRequest) -> np.ndarray:
    latents = engine.denoise(loaded, request, [request.seed])
    vae = engine.manager.cache.get_or_load(loaded.keys[Role.VAE], lambda: pytest.fail("VAE not cached"))
    return loaded.pipeline.image_processor.postprocess(decode_latents(vae, latents), output_type="np")


def pixels(engine: Engine, models_dir: Path, family: Family, stack=()) -> np.ndarray:
    request = _request(models_dir, family, stack)
    loaded = engine.manager.load(request.model)
    specs, missing = engine.lora_stack(request)
    engine.last_reports = missing + engine.loras.apply(loaded.pipeline, loaded.family, specs, engine.fuse_loras)
    return _image(engine, loaded, request)


def reference(models_dir: Path, family: Family, weights: dict[tuple[str, str], torch.Tensor], tmp: Path) -> np.ndarray:
    """The image of a fresh copy of the model whose layers were set to `weights` (no adapters at all)."""
    engine = Engine(PipelineManager(models_dir), tmp)
    request = _request(models_dir, family)
    loaded = engine.manager.load(request.model)
    with torch.no_grad():
        for (component, path), weight in weights.items():
            layer = getattr(loaded.pipeline, component).get_submodule(path)
            layer.weight.copy_(weight.to(layer.weight.dtype))
    return _image(engine, loaded, request)


def _check_against_maths(engine, models_dir, family, path: Path, layers, tmp_path) -> np.ndarray:
    base = pixels(engine, models_dir, family)
    image = pixels(engine, models_dir, family, [LoraSpec(path)])
    report = engine.last_reports[0]
    assert report.error is None, report.error
    assert (report.applied, report.unapplied) == (len(layers), 0)
    assert np.abs(image - base).max() > 1e-2  # the file really changes the image
    expected = reference(models_dir, family, wild.patched_weights(path, layers), tmp_path)
    np.testing.assert_allclose(image, expected, atol=ATOL, rtol=0)
    return image


def test_loha_is_a_switchable_adapter_equal_to_its_own_maths(engine, tiny_models_dir, components, tmp_path):
    layers = wild.kohya_layers(components[Family.SD1], Family.SD1)
    path = wild.save(wild.loha(layers, seed=11), tmp_path / "loha.safetensors", Family.SD1)
    full = _check_against_maths(engine, tiny_models_dir, Family.SD1, path, layers, tmp_path)
    reads = engine.loras.file_reads
    half = pixels(engine, tiny_models_dir, Family.SD1, [LoraSpec(path, 0.5, 0.5)])
    assert not np.allclose(half, full, atol=1e-3)
    assert np.array_equal(pixels(engine, tiny_models_dir, Family.SD1, [LoraSpec(path, 1.0, 1.0)]), full)
    assert np.array_equal(pixels(engine, tiny_models_dir, Family.SD1, [LoraSpec(path, 0.0, 0.0)]),
                          pixels(engine, tiny_models_dir, Family.SD1))
    assert engine.loras.file_reads == reads  # weights switched, the file read once


def test_lokr_whole_and_decomposed_factors_equal_their_maths_on_sdxl(engine, tiny_models_dir, components, tmp_path):
    layers = [layer for layer in wild.kohya_layers(components[Family.SDXL], Family.SDXL) if layer.weight.dim() == 2]
    path = wild.save(wild.lokr(layers, seed=12), tmp_path / "lokr.safetensors", Family.SDXL)
    _check_against_maths(engine, tiny_models_dir, Family.SDXL, path, layers, tmp_path)


def test_dora_magnitude_is_applied_as_the_file_defines_it(engine, tiny_models_dir, components, tmp_path):
    layers = wild.kohya_layers(components[Family.SD1], Family.SD1)
    lora = wild.kohya_lora(layers, seed=13)
    plain = pixels(engine, tiny_models_dir, Family.SD1, [LoraSpec(wild.save(lora, tmp_path / "plain.safetensors"))])
    path = wild.save(wild.with_dora(lora, layers, seed=14), tmp_path / "dora.safetensors", Family.SD1)
    image = _check_against_maths(engine, tiny_models_dir, Family.SD1, path, layers, tmp_path)
    assert np.abs(image - plain).max() > 1e-2  # not the plain LoRA's image with dora_scale dropped


def test_dora_per_input_channel_is_reported_not_applied(engine, tiny_models_dir, components, tmp_path):
    layers = wild.kohya_layers(components[Family.SD1], Family.SD1)
    state = wild.with_dora(wild.kohya_lora(layers, seed=13), layers, seed=14, on_output=False)
    base = pixels(engine, tiny_models_dir, Family.SD1)
    image = pixels(engine, tiny_models_dir, Family.SD1, [LoraSpec(wild.save(state, tmp_path / "old-dora.safetensors"))])
    report = engine.last_reports[0]
    assert report.applied == 0 and report.unapplied == len(layers)
    assert "per input channel" in report.error and len(report.error) < 600
    assert np.array_equal(image, base)


def test_per_module_ranks_give_the_image_of_the_uniform_file(engine, tiny_models_dir, components, tmp_path):
    layers = wild.kohya_layers(components[Family.SD1], Family.SD1)
    uniform = wild.kohya_lora(layers, seed=15)
    expected = pixels(engine, tiny_models_dir, Family.SD1, [LoraSpec(wild.save(uniform, tmp_path / "r4.safetensors"))])
    padded = wild.save(wild.padded_ranks(uniform), tmp_path / "dynamic.safetensors", Family.SD1)
    image = _check_against_maths(engine, tiny_models_dir, Family.SD1, padded, layers, tmp_path)
    np.testing.assert_allclose(image, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("variant", ["no-alpha", "bf16", "locon"])
def test_kohya_variants_equal_their_maths(engine, tiny_models_dir, components, tmp_path, variant):
    """Inputs that were already right (no alpha: scale 1; bf16 tensors; LoCon on 3x3 convs); kept right."""
    layers = wild.kohya_layers(components[Family.SD1], Family.SD1, locon=variant == "locon")
    state = wild.kohya_lora(layers, seed=16, alpha=None if variant == "no-alpha" else 2.0)
    if variant == "bf16":
        state = {key: value.to(torch.bfloat16) for key, value in state.items()}
    path = wild.save(state, tmp_path / f"{variant}.safetensors", Family.SD1)
    _check_against_maths(engine, tiny_models_dir, Family.SD1, path, layers, tmp_path)


def test_a_lora_matching_nothing_gets_a_short_report_with_a_count_and_examples(engine, tiny_models_dir, tmp_path):
    state = {}
    for number in range(300):
        name = f"lora_unet_nowhere_block_{number}_attn1_to_q"
        for part, shape in (("hada_w1_a", (8, 2)), ("hada_w1_b", (2, 8)), ("hada_w2_a", (8, 2)), ("hada_w2_b", (2, 8))):
            state[f"{name}.{part}"] = torch.zeros(shape)
    base = pixels(engine, tiny_models_dir, Family.SD1)
    image = pixels(engine, tiny_models_dir, Family.SD1, [LoraSpec(wild.save(state, tmp_path / "nowhere.safetensors"))])
    report = engine.last_reports[0]
    assert report.applied == 0 and report.unapplied == 300
    assert "300" in report.error and "lora_unet_nowhere_block_" in report.error
    assert len(report.error) < 600
    assert np.array_equal(image, base)


def test_a_loha_and_a_lora_stack_on_the_same_layers_and_fuse_alike(engine, tiny_models_dir, components, tmp_path):
    layers = wild.kohya_layers(components[Family.SD1], Family.SD1)
    loha = wild.save(wild.loha(layers, seed=17, alpha=1.0), tmp_path / "stack-loha.safetensors", Family.SD1)
    lora = wild.save(wild.kohya_lora(layers, seed=18, alpha=1.0), tmp_path / "stack-lora.safetensors", Family.SD1)
    stacked = pixels(engine, tiny_models_dir, Family.SD1, [LoraSpec(loha), LoraSpec(lora)])
    assert [(r.applied, r.unapplied, r.error) for r in engine.last_reports] == [(len(layers), 0, None)] * 2
    both = wild.patched_weights(loha, layers)
    for key, weight in wild.patched_weights(lora, layers).items():
        both[key] = both[key] + weight - next(layer.weight for layer in layers if (layer.component, layer.path) == key)
    np.testing.assert_allclose(stacked, reference(tiny_models_dir, Family.SD1, both, tmp_path), atol=ATOL, rtol=0)
    engine.fuse_loras = True
    try:
        fused = pixels(engine, tiny_models_dir, Family.SD1, [LoraSpec(loha), LoraSpec(lora)])
    finally:
        engine.fuse_loras = False
    np.testing.assert_allclose(fused, stacked, atol=ATOL, rtol=0)


def test_an_adapter_peft_cannot_build_is_removed_whole_and_reported(engine, tiny_models_dir, components, tmp_path,
                                                                    monkeypatch):  # fmt: skip
    from webui.engine import lora_inject

    layers = wild.kohya_layers(components[Family.SD1], Family.SD1)
    path = wild.save(wild.loha(layers, seed=19), tmp_path / "breaks.safetensors", Family.SD1)
    base = pixels(engine, tiny_models_dir, Family.SD1)
    calls = []

    def failing_fill(layer, module, name):  # noqa: ANN001, ANN202
        calls.append(module.name)
        if len(calls) == 3:
            raise RuntimeError("simulated failure inside PEFT")

    monkeypatch.setattr(lora_inject, "_fill", failing_fill)
    image = pixels(engine, tiny_models_dir, Family.SD1, [LoraSpec(path)])
    report = engine.last_reports[0]
    assert report.applied == 0 and "simulated failure" in report.error
    adapters = engine.manager.current.pipeline.get_list_adapters()
    assert all(adapter_name(path) not in names for names in adapters.values())
    assert np.array_equal(image, base)
