"""txt2img engine: seeds and batches, progress and interrupt, infotext golden strings and reproduction."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from webui.cli import main
from webui.engine.infotext import format_infotext, parse_infotext
from webui.engine.lora import LoraSpec
from webui.engine.pipelines import ModelChoice, PipelineManager
from webui.engine.progress import CancelToken
from webui.engine.reproduce import request_from_infotext
from webui.engine.request import GenerationRequest
from webui.engine.txt2img import Engine
from webui.models.kinds import Kind
from webui.models.library import open_library


@pytest.fixture(scope="module")
def library(tiny_models_dir):
    lib = open_library(tiny_models_dir)
    lib.scan()
    return lib


@pytest.fixture(scope="module")
def engine(tiny_models_dir, library, tmp_path_factory) -> Engine:
    return Engine(
        PipelineManager(tiny_models_dir),
        tmp_path_factory.mktemp("outputs"),
        hasher=library.model_hash,
        lora_resolver=lambda name: library.find(name, Kind.LORA).path,
    )


def sd1(models) -> ModelChoice:
    return ModelChoice(models / "checkpoints/tiny-sd1.safetensors")


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_infotext_golden_string_and_parse_back():
    text = format_infotext(
        "a cat, (sitting:1.2)\nsecond line",
        "blurry",
        {
            "Steps": 20,
            "Sampler": "DPM++ 2M",
            "Schedule type": "Karras",
            "CFG scale": 7.0,
            "Seed": 1,
            "Size": "512x512",
            "Model hash": "abcdef1234",
            "Model": "my model",
            "VAE": None,
            "Clip skip": 2,
            "Lora hashes": "a: 0123456789ab, b: ba9876543210",
            "Version": "webui 0.1.0",
        },
    )
    assert text == (
        "a cat, (sitting:1.2)\nsecond line\nNegative prompt: blurry\n"
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x512, "
        'Model hash: abcdef1234, Model: my model, Clip skip: 2, Lora hashes: "a: 0123456789ab, b: ba9876543210", '
        "Version: webui 0.1.0"
    )
    prompt, negative, params = parse_infotext(text)
    assert prompt == "a cat, (sitting:1.2)\nsecond line" and negative == "blurry"
    assert params["Lora hashes"] == "a: 0123456789ab, b: ba9876543210" and params["CFG scale"] == "7"


def test_a1111_infotext_with_legacy_sampler_name_reproduces_fields(library):
    text = (
        "masterpiece, <lora:tiny-sd1-kohya:0.7>\nNegative prompt: lowres\n"
        "Steps: 12, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 99, Size: 32x48, "
        "Model hash: 0000000000, Model: tiny-sd1, Clip skip: 2, Version: v1.7.0"
    )
    reproduction = request_from_infotext(text, library)
    request = reproduction.request
    assert request is not None and reproduction.missing == []
    assert (request.sampler, request.schedule, request.steps, request.cfg_scale) == ("DPM++ 2M", "Karras", 12, 6.5)
    assert (request.seed, request.width, request.height, request.clip_skip) == (99, 32, 48, 2)
    assert request.model.checkpoint.name == "tiny-sd1.safetensors"
    assert request.prompt == "masterpiece, <lora:tiny-sd1-kohya:0.7>" and request.negative_prompt == "lowres"


def test_missing_model_is_reported_not_guessed(library):
    reproduction = request_from_infotext("x\nSteps: 3, Sampler: Euler, Seed: 1, Model: not-here", library)
    assert reproduction.request is None and any("not-here" in m for m in reproduction.missing)
    assert reproduction.values["steps"] == 3


def test_batch_image_equals_the_same_seed_generated_alone(engine, tiny_models_dir):
    batch = engine.generate(
        GenerationRequest(model=sd1(tiny_models_dir), prompt="red hat", steps=2, width=32, height=32, seed=10,
                          batch_size=2, batch_count=2)
    )  # fmt: skip
    assert [i.seed for i in batch.images] == [10, 11, 12, 13]
    alone = engine.generate(
        GenerationRequest(model=sd1(tiny_models_dir), prompt="red hat", steps=2, width=32, height=32, seed=12)
    )
    # The same seed, the same image: equal up to float rounding, since a CPU runs a batch of 2 through kernels
    # blocked differently from a batch of 1 (one 8-bit level at a few pixels); another seed differs everywhere.
    difference = np.abs(pixels(batch.images[2].path).astype(int) - pixels(alone.images[0].path).astype(int))
    assert difference.max() <= 1 and (difference > 0).mean() < 0.01
    other = np.abs(pixels(batch.images[0].path).astype(int) - pixels(batch.images[1].path).astype(int))
    assert other.mean() > 5
    names = [i.path.name for i in batch.images]
    assert names == sorted(names) and len(set(names)) == 4  # numbered, never overwriting


def test_every_sampler_through_the_engine_is_deterministic(engine, tiny_models_dir):
    from webui.engine.samplers import SAMPLER_NAMES

    for sampler in SAMPLER_NAMES:
        request = GenerationRequest(
            model=sd1(tiny_models_dir), prompt="red hat", steps=2, width=32, height=32, seed=3, sampler=sampler
        )
        first, second = engine.generate(request), engine.generate(request)
        assert np.array_equal(pixels(first.images[0].path), pixels(second.images[0].path)), sampler
        assert f"Sampler: {sampler}," in first.images[0].infotext


def test_progress_reports_every_step_with_previews(engine, tiny_models_dir):
    seen = []
    request = GenerationRequest(
        model=sd1(tiny_models_dir), prompt="hat", steps=4, width=32, height=32, batch_count=2, sampler="Euler"
    )
    engine.generate(request, progress=seen.append, preview_every=2)
    assert [(p.batch, p.step) for p in seen] == [(b, s) for b in range(2) for s in range(1, 5)]
    assert seen[-1].fraction == 1.0 and seen[-1].eta_seconds == 0
    previews = [p.preview for p in seen if p.preview is not None]
    assert len(previews) == 4 and previews[0].size == (32 // 8, 32 // 8)  # one preview pixel per latent pixel


def test_interrupt_stops_within_one_step_keeps_finished_and_partial_images_and_the_engine_goes_on(
    engine, tiny_models_dir
):
    cancel = CancelToken()
    steps_seen = []

    def on_progress(progress):
        steps_seen.append((progress.batch, progress.step))
        if progress.batch == 1 and progress.step == 2:
            cancel.cancel()

    request = GenerationRequest(model=sd1(tiny_models_dir), prompt="hat", steps=6, width=32, height=32, batch_count=3)
    result = engine.generate(request, progress=on_progress, cancel=cancel)
    # Batch 0 finished; batch 1 comes back half denoised, as A1111 returns its partial image; batch 2 never ran.
    assert result.info["interrupted"] and len(result.images) == 2
    assert steps_seen[-1] == (1, 2)  # no step ran after the one that asked to stop
    again = engine.generate(GenerationRequest(model=sd1(tiny_models_dir), prompt="hat", steps=2, width=32, height=32))
    assert len(again.images) == 1 and not again.info["interrupted"]


def test_reproduce_round_trip_gives_the_same_image(engine, library, tiny_models_dir, tmp_path, capsys):
    original = engine.generate(
        GenerationRequest(
            model=ModelChoice(
                tiny_models_dir / "checkpoints/tiny-sd1.safetensors",
                vae=tiny_models_dir / "vae/tiny-sd1-vae-alt.safetensors",
            ),
            prompt="a (red:1.3) hat <lora:tiny-sd1-kohya:0.6>",
            negative_prompt="blurry",
            steps=3,
            width=32,
            height=40,
            seed=77,
            sampler="Euler a",
            clip_skip=2,
            loras=(LoraSpec(tiny_models_dir / "loras/tiny-sd1-peft.safetensors", 0.5, 0.25),),
        )
    ).images[0]
    assert "VAE: tiny-sd1-vae-alt.safetensors" in original.infotext and "Lora hashes" in original.infotext
    assert 'LoRA stack: "tiny-sd1-peft: 0.5/0.25"' in original.infotext
    code = main(["generate", "--models-dir", str(tiny_models_dir), "--outputs-dir", str(tmp_path),
                 "--infotext", str(original.path), "--json"])  # fmt: skip
    assert code == 0
    import json

    (again,) = json.loads(capsys.readouterr().out)["images"]
    assert again["infotext"] == original.infotext
    assert np.array_equal(pixels(again["path"]), pixels(original.path))


def test_cli_flags_build_the_request(library, tiny_models_dir):
    import argparse

    from webui.commands.generate import add_request_arguments, request_from_args

    parser = argparse.ArgumentParser()
    add_request_arguments(parser)
    args = parser.parse_args(
        ["--checkpoint", "tiny-sd1", "--lora", "tiny-sd1-kohya:0.5:0.25", "--sampler", "DPM++ 2M", "--schedule",
         "Karras", "--batch-size", "2", "--batch-count", "3", "--clip-skip", "2", "--prompt", "x"]
    )  # fmt: skip
    request = request_from_args(args, library)
    (lora,) = request.loras
    assert (lora.path.name, lora.unet_weight, lora.te_weight) == ("tiny-sd1-kohya.safetensors", 0.5, 0.25)
    assert (request.batch_size, request.batch_count, request.clip_skip) == (2, 3, 2)
    distilled = request_from_args(parser.parse_args(["--checkpoint", "tiny-sd1", "--distilled"]), library)
    assert (distilled.steps, distilled.cfg_scale, distilled.sampler) == (4, 1.0, "Euler a")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("width", 100000, "width"), ("height", 8, "height"), ("steps", 0, "steps"), ("steps", 1001, "steps"),
     ("sampler", "Eulr", "Euler"), ("cfg_scale", 101.0, "cfg_scale"), ("schedule", "Fancy", "schedule"),
     ("subseed_strength", 1.5, "subseed_strength"), ("eta", -1.0, "eta")],
)  # fmt: skip
def test_bad_request_fields_are_named(tiny_models_dir, field, value, message):
    with pytest.raises(ValueError, match=message):
        GenerationRequest(model=sd1(tiny_models_dir), **{field: value})


def test_the_sdxl_refiner_loads_but_txt2img_refuses_it_clearly(engine, tiny_models_dir):
    refiner = ModelChoice(tiny_models_dir / "checkpoints/tiny-sdxl-refiner.safetensors")
    assert engine.manager.load(refiner).family.value == "sdxl_refiner"
    with pytest.raises(ValueError, match="refiner"):
        engine.generate(GenerationRequest(model=refiner, prompt="x", steps=2, width=32, height=32))
