"""Request limits (prompt size, chunks, LoRAs, finite numbers), interrupts at every stage, non-finite output."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from safetensors.torch import load_file, save_file

from webui.engine.decode import NonFiniteOutputError
from webui.engine.device import DevicePolicy
from webui.engine.jobs import JobQueue, JobState
from webui.engine.limits import MAX_LORAS, MAX_PROMPT_CHARS, MAX_PROMPT_CHUNKS, RequestError
from webui.engine.lora import LoraSpec
from webui.engine.pipelines import ModelChoice, PipelineManager
from webui.engine.progress import CancelToken
from webui.engine.request import GenerationRequest
from webui.engine.txt2img import Engine
from webui.models.kinds import Kind
from webui.models.library import open_library

SMALL = {"steps": 2, "width": 32, "height": 32}


@pytest.fixture(scope="module")
def library(tiny_models_dir):
    lib = open_library(tiny_models_dir)
    lib.scan()
    return lib


@pytest.fixture(scope="module")
def engine(tiny_models_dir, library, tmp_path_factory) -> Engine:
    return Engine(
        PipelineManager(tiny_models_dir, DevicePolicy(vae_tiling_min_pixels=64 * 64)),
        tmp_path_factory.mktemp("outputs"),
        hasher=library.model_hash,
        lora_resolver=lambda name: library.find(name, Kind.LORA).path,
    )


def sd1(models) -> ModelChoice:
    return ModelChoice(models / "checkpoints/tiny-sd1.safetensors")


def pngs(engine: Engine) -> set:
    return set(engine.outputs_dir.rglob("*.png"))


@contextmanager
def calls_of(module: torch.nn.Module, then=None) -> Iterator[list]:  # noqa: ANN001
    """Count `module`'s forward calls; `then(count)` runs after each (to cancel a job from inside a stage)."""
    seen: list = []

    def hook(_module, _inputs, _output):  # noqa: ANN001, ANN202
        seen.append(1)
        if then is not None:
            then(len(seen))

    handle = module.register_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


# --- limits: one message for the UI, the CLI and the API (the API makes it a 422 naming the field) ------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"prompt": "a" * (MAX_PROMPT_CHARS + 1)}, "prompt: 32,769 characters; the limit is 32,768"),
        ({"negative_prompt": "cat \ud800"}, "negative_prompt: holds an unpaired surrogate"),
        ({"prompt": "<lora:x>" * (MAX_LORAS + 1)}, f"prompt: {MAX_LORAS + 1} LoRAs (<lora:…> tags and the stack)"),
        ({"prompt": "<lora:x>" * 4_000}, "prompt: 4000 LoRAs"),  # 32,000 characters
        ({"cfg_scale": float("nan")}, "cfg_scale: nan is not a finite number"),
        ({"cfg_scale": float("inf")}, "cfg_scale: inf is not a finite number"),
        ({"steps": float("-inf")}, "steps: -inf is not a finite number"),
    ],
)
def test_requests_beyond_the_limits_are_refused_naming_the_field(tiny_models_dir, fields, message):
    with pytest.raises(RequestError) as refused:
        GenerationRequest(model=sd1(tiny_models_dir), **fields)
    assert str(refused.value).startswith(message), str(refused.value)
    assert refused.value.field == message.split(":")[0]


def test_a_long_real_prompt_is_accepted(tiny_models_dir):
    prompt = ", ".join(["masterpiece, best quality, (detailed face:1.2), <lora:style:0.6>"] * 20)  # ~300 tokens
    assert GenerationRequest(model=sd1(tiny_models_dir), prompt=prompt).prompt == prompt


def test_too_many_prompt_chunks_fail_the_job_as_a_bad_request_before_denoising(engine, tiny_models_dir):
    prompt = " BREAK ".join(["a cat"] * (MAX_PROMPT_CHUNKS + 1))  # each BREAK starts a 75-token chunk
    queue = JobQueue(engine)
    queue.start()
    try:
        unet = engine.manager.load(sd1(tiny_models_dir)).pipeline.unet
        with calls_of(unet) as unet_calls:
            job = queue.submit(GenerationRequest(model=sd1(tiny_models_dir), prompt=prompt, **SMALL), "alice")
            assert job.wait(120)
        assert job.state is JobState.FAILED and job.error_field == "prompt"
        assert job.error.startswith(f"prompt: {MAX_PROMPT_CHUNKS + 1} chunks of 75 tokens") and unet_calls == []
    finally:
        queue.stop(timeout=60)


# --- interrupts: honoured in every stage, not only between denoising steps ---------------------------------------


def test_interrupt_during_prompt_encoding_stops_before_denoising(engine, tiny_models_dir):
    pipeline = engine.manager.load(sd1(tiny_models_dir)).pipeline
    cancel = CancelToken()
    before = pngs(engine)
    with calls_of(pipeline.text_encoder, then=lambda _n: cancel.cancel()) as encodes, calls_of(pipeline.unet) as steps:
        result = engine.generate(GenerationRequest(model=sd1(tiny_models_dir), prompt="hat", **SMALL), cancel=cancel)
    assert result.info["interrupted"] and result.images == ()
    assert len(encodes) == 1 and steps == []  # the negative prompt was never encoded, no step ran
    assert pngs(engine) == before


def test_interrupt_during_lora_loading_stops_before_the_next_file(engine, tiny_models_dir, library, monkeypatch):
    stack = tuple(LoraSpec(library.find(n, Kind.LORA).path) for n in ("tiny-sd1-kohya", "tiny-sd1-peft"))
    cancel = CancelToken()
    real_load = engine.loras._ensure_loaded  # one LoRA file, whichever way it is placed (injected or diffusers')
    reads_before = engine.loras.file_reads

    def load_then_cancel(*args, **kwargs):  # noqa: ANN202
        report = real_load(*args, **kwargs)
        cancel.cancel()
        return report

    monkeypatch.setattr(engine.loras, "_ensure_loaded", load_then_cancel)
    with calls_of(engine.manager.load(sd1(tiny_models_dir)).pipeline.unet) as steps:
        request = GenerationRequest(model=sd1(tiny_models_dir), prompt="hat", loras=stack, **SMALL)
        result = engine.generate(request, cancel=cancel)
    monkeypatch.undo()
    assert result.info["interrupted"] and result.images == () and steps == []
    assert engine.loras.file_reads - reads_before == 1  # the second LoRA file was never read
    after = engine.generate(GenerationRequest(model=sd1(tiny_models_dir), prompt="hat", loras=stack, **SMALL))
    assert [r.error for r in after.loras] == [None, None] and len(after.images) == 1  # the next request is whole


def test_interrupt_during_tiled_decoding_stops_at_the_next_tile_and_saves_nothing(engine, tiny_models_dir):
    loaded = engine.manager.load(sd1(tiny_models_dir))
    vae = loaded.pipeline.vae
    sizes = (vae.tile_sample_min_size, vae.tile_latent_min_size)
    vae.tile_sample_min_size, vae.tile_latent_min_size = 32, 4  # 64x64 (latents 8x8, the VAE's 8x): several tiles
    cancel = CancelToken()
    before = pngs(engine)
    try:
        with calls_of(vae.decoder, then=lambda _n: cancel.cancel()) as tiles:
            request = GenerationRequest(model=sd1(tiny_models_dir), prompt="hat", steps=2, width=64, height=64)
            result = engine.generate(request, cancel=cancel)
    finally:
        vae.tile_sample_min_size, vae.tile_latent_min_size = sizes
    assert result.info["interrupted"] and result.images == () and len(tiles) == 1
    assert pngs(engine) == before


def test_interrupt_between_batches_keeps_the_finished_batch(engine, tiny_models_dir):
    vae = engine.manager.load(sd1(tiny_models_dir)).pipeline.vae
    cancel = CancelToken()
    with calls_of(vae.decoder, then=lambda _n: cancel.cancel()):
        request = GenerationRequest(model=sd1(tiny_models_dir), prompt="hat", batch_count=3, **SMALL)
        result = engine.generate(request, cancel=cancel)
    assert result.info["interrupted"] and len(result.images) == 1  # decoded before the cancel was seen: kept


# --- non-finite output ----------------------------------------------------------------------------------------


def test_a_nan_checkpoint_fails_naming_the_model_and_writes_no_png(tiny_models_dir, tmp_path):
    state = load_file(tiny_models_dir / "checkpoints" / "tiny-sd1.safetensors")
    broken = {k: torch.full_like(v, float("nan")) if k.startswith("model.diffusion_model.") else v
              for k, v in state.items()}  # fmt: skip
    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    (tmp_path / "models" / "tokenizers").symlink_to(tiny_models_dir / "tokenizers")
    save_file(broken, str(tmp_path / "models" / "checkpoints" / "nan-model.safetensors"))
    engine = Engine(PipelineManager(tmp_path / "models"), tmp_path / "outputs")
    request = GenerationRequest(model=ModelChoice(tmp_path / "models/checkpoints/nan-model.safetensors"), **SMALL)
    with pytest.raises(NonFiniteOutputError) as failed:
        engine.generate(request)
    message = str(failed.value)
    assert "nan-model" in message and "NaN/inf" in message and "LoRA" in message
    assert "--precision fp32" not in message  # it ran in fp32 (the CPU's precision): no advice to switch to fp32
    assert list((tmp_path / "outputs").rglob("*.png")) == []
