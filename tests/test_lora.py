"""LoRA stack: both layouts on SD1 and SDXL, weight 0 = no LoRA, weight changes read nothing, reports, refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from webui.engine.decode import decode_latents
from webui.engine.lora import LoraSpec, adapter_name, count_lora_modules
from webui.engine.pipelines import ModelChoice, PipelineManager
from webui.engine.request import GenerationRequest
from webui.engine.txt2img import Engine
from webui.models.loading import Role

STEMS = {"sd1": "tiny-sd1", "sdxl": "tiny-sdxl"}


@pytest.fixture(scope="module")
def engine(tiny_models_dir, tmp_path_factory) -> Engine:
    return Engine(PipelineManager(tiny_models_dir), tmp_path_factory.mktemp("outputs"))


def pixels(engine: Engine, checkpoint, stack=(), prompt="a red hat") -> np.ndarray:
    request = GenerationRequest(
        model=ModelChoice(checkpoint), prompt=prompt, steps=2, width=32, height=32, seed=7, loras=tuple(stack)
    )
    loaded = engine.manager.load(request.model)
    specs, missing = engine.lora_stack(request)
    engine.last_reports = missing + engine.loras.apply(loaded.pipeline, loaded.family, specs, engine.fuse_loras)
    latents = engine.denoise(loaded, request, [request.seed])
    vae = engine.manager.cache.get_or_load(loaded.keys[Role.VAE], lambda: pytest.fail("VAE not cached"))
    return loaded.pipeline.image_processor.postprocess(decode_latents(vae, latents), output_type="np")


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
@pytest.mark.parametrize("layout", ["kohya", "peft"])
def test_lora_changes_the_image_weight_zero_and_removal_give_the_base(engine, tiny_models_dir, family, layout):
    checkpoint = tiny_models_dir / f"checkpoints/{STEMS[family]}.safetensors"
    lora = tiny_models_dir / f"loras/{STEMS[family]}-{layout}.safetensors"
    base = pixels(engine, checkpoint)
    with_lora = pixels(engine, checkpoint, [LoraSpec(lora, 1.0, 1.0)])
    report = engine.last_reports[0]
    assert report.error is None and report.applied == count_lora_modules(load_file(lora)) and report.unapplied == 0
    assert np.abs(with_lora - base).max() > 1e-3
    reads = engine.loras.file_reads
    assert np.array_equal(pixels(engine, checkpoint, [LoraSpec(lora, 0.0, 0.0)]), base)
    assert np.array_equal(pixels(engine, checkpoint, [LoraSpec(lora, 1.0, 1.0, enabled=False)]), base)
    half = pixels(engine, checkpoint, [LoraSpec(lora, 0.5, 0.5)])
    assert not np.array_equal(half, with_lora) and not np.array_equal(half, base)
    assert np.array_equal(pixels(engine, checkpoint, [LoraSpec(lora, 1.0, 1.0)]), with_lora)
    assert engine.loras.file_reads == reads  # weight changes and toggles re-read nothing
    assert np.array_equal(pixels(engine, checkpoint), base)  # the next request without LoRAs is the base model


def test_sdxl_unet_only_lora_applies_without_touching_the_text_encoders(engine, tiny_models_dir):
    checkpoint = tiny_models_dir / "checkpoints/tiny-sdxl.safetensors"
    lora = tiny_models_dir / "loras/tiny-sdxl-kohya-unet-only.safetensors"
    base = pixels(engine, checkpoint)
    changed = pixels(engine, checkpoint, [LoraSpec(lora, 1.0, 1.0)])
    assert engine.last_reports[0].applied > 0 and engine.last_reports[0].error is None
    assert np.abs(changed - base).max() > 1e-3
    pipeline = engine.manager.current.pipeline
    name = adapter_name(lora)
    assert name in pipeline.get_list_adapters()["unet"]
    assert name not in pipeline.get_list_adapters().get("text_encoder", [])


def test_unmatched_keys_are_reported_with_examples(engine, tiny_models_dir, tmp_path):
    checkpoint = tiny_models_dir / "checkpoints/tiny-sd1.safetensors"
    state = load_file(tiny_models_dir / "loras/tiny-sd1-kohya.safetensors")
    down = next(k for k in state if k.startswith("lora_unet") and k.endswith(".lora_down.weight"))
    base = down.removesuffix(".lora_down.weight")
    for suffix in (".lora_down.weight", ".lora_up.weight", ".alpha"):
        state["lora_unet_nonexistent_block_attn1_to_q" + suffix] = state[base + suffix].clone()
    odd = tmp_path / "odd-lora.safetensors"
    save_file(state, odd, metadata={"ss_base_model_version": "sd_v1"})
    pixels(engine, checkpoint, [LoraSpec(odd)])
    report = engine.last_reports[0]
    assert report.unapplied == 1 and report.applied == count_lora_modules(state) - 1
    assert any("nonexistent" in example for example in report.examples)


def test_lora_for_another_family_is_refused_and_the_rest_of_the_stack_applies(engine, tiny_models_dir):
    checkpoint = tiny_models_dir / "checkpoints/tiny-sd1.safetensors"
    good = tiny_models_dir / "loras/tiny-sd1-kohya.safetensors"
    wrong = tiny_models_dir / "loras/tiny-sdxl-kohya.safetensors"
    only_good = pixels(engine, checkpoint, [LoraSpec(good)])
    both = pixels(engine, checkpoint, [LoraSpec(wrong), LoraSpec(good)])
    refused, applied = engine.last_reports
    assert "SDXL" in refused.error and "SD1" in refused.error
    assert applied.error is None and applied.applied > 0
    assert np.array_equal(both, only_good)


def test_prompt_lora_tags_join_the_stack_and_the_infotext(tiny_models_dir, tmp_path):
    from webui.models.kinds import Kind
    from webui.models.library import open_library

    library = open_library(tiny_models_dir)
    library.scan()
    engine = Engine(
        PipelineManager(tiny_models_dir),
        tmp_path,
        hasher=library.model_hash,
        lora_resolver=lambda name: library.find(name, Kind.LORA).path,
    )
    checkpoint = ModelChoice(tiny_models_dir / "checkpoints/tiny-sd1.safetensors")
    request = GenerationRequest(
        model=checkpoint, prompt="a red hat <lora:tiny-sd1-kohya:0.8> <lora:no-such-lora>", steps=2, width=32, height=32
    )
    result = engine.generate(request)
    reports = {r.name: r for r in result.loras}
    assert reports["tiny-sd1-kohya"].error is None and reports["tiny-sd1-kohya"].applied > 0
    assert reports["no-such-lora"].error
    infotext = result.images[0].infotext
    assert "<lora:tiny-sd1-kohya:0.8>" in infotext.splitlines()[0]
    lora_hash = library.model_hash(tiny_models_dir / "loras/tiny-sd1-kohya.safetensors")
    assert f'Lora hashes: "tiny-sd1-kohya: {lora_hash}"' in infotext
    assert len(lora_hash) == 12


def test_many_loras_do_not_pile_up_as_adapters(engine, tiny_models_dir, tmp_path):
    checkpoint = tiny_models_dir / "checkpoints/tiny-sd1.safetensors"
    source = load_file(tiny_models_dir / "loras/tiny-sd1-kohya.safetensors")
    for i in range(8):
        path = tmp_path / f"copy-{i}.safetensors"
        save_file({k: v * (1 + i / 10) if k.endswith("up.weight") else v for k, v in source.items()}, path)
        pixels(engine, checkpoint, [LoraSpec(path)])
    present = {n for names in engine.manager.current.pipeline.get_list_adapters().values() for n in names}
    assert len(present) <= engine.loras.keep_inactive + 1
    assert torch.is_tensor(next(iter(source.values())))


def test_fused_loras_match_unfused_and_unfusing_restores_the_weights_exactly(tiny_models_dir, tmp_path):
    engine = Engine(PipelineManager(tiny_models_dir), tmp_path)
    checkpoint = tiny_models_dir / "checkpoints/tiny-sd1.safetensors"
    lora = tiny_models_dir / "loras/tiny-sd1-kohya.safetensors"
    base = pixels(engine, checkpoint)
    unet = engine.manager.current.pipeline.unet
    before = {k: v.clone() for k, v in unet.state_dict().items() if "lora" not in k}
    unfused = pixels(engine, checkpoint, [LoraSpec(lora, 0.7, 0.7)])
    engine.fuse_loras = True
    fused = pixels(engine, checkpoint, [LoraSpec(lora, 0.7, 0.7)])
    assert engine.loras.fused
    np.testing.assert_allclose(fused, unfused, atol=2e-3)
    assert np.array_equal(pixels(engine, checkpoint), base)  # unfused first, then no LoRA: the base model
    after = {k.replace(".base_layer", ""): v for k, v in unet.state_dict().items() if "lora" not in k}
    assert all(torch.equal(before[k], after[k]) for k in before)
