"""The one adapter: widget values map onto GenerationRequest by name, whatever their order; reproduction back."""

from __future__ import annotations

import inspect
import random

import gradio as gr
import pytest

from webui.engine.reproduce import request_from_infotext
from webui.engine.request import GenerationRequest
from webui.models.library import ModelNotFoundError, open_library
from webui.ui import adapter
from webui.ui.choices import FROM_CHECKPOINT, NO_CHECKPOINT

VALUES = {
    "prompt": "a cat",
    "negative_prompt": "blurry",
    "steps": 12.0,  # sliders and numbers arrive as floats
    "cfg_scale": 6,
    "width": 64.0,
    "height": 32,
    "seed": 5.0,
    "batch_size": 2.0,
    "batch_count": 1,
    "sampler": "Euler",
    "schedule": "Karras",
    "clip_skip": 2.0,
    "checkpoint": "tiny-sd1.safetensors",
    "unet": FROM_CHECKPOINT,
    "text_encoder": FROM_CHECKPOINT,
    "text_encoder_2": FROM_CHECKPOINT,
    "vae": "tiny-sd1-vae-alt.safetensors",
    "lora_1": "tiny-sd1-kohya.safetensors",
    "lora_1_unet_weight": 0.5,
    "lora_1_te_weight": 0.25,
    "lora_1_enabled": False,
    "lora_2": None,
    "lora_2_unet_weight": 1.0,
    "lora_2_te_weight": 1.0,
    "lora_2_enabled": True,
}


@pytest.fixture(scope="module")
def library(tiny_models_dir):
    lib = open_library(tiny_models_dir)
    lib.scan()
    return lib


def test_every_request_field_has_a_name_and_unknown_names_fail(library):
    parts = ("model", "loras", "hires", "refiner", "img2img")  # built from several widgets each
    fields = {f for f in GenerationRequest.__dataclass_fields__ if f not in parts}
    assert set(adapter.REQUEST_FIELDS) == fields
    assert {"enable_hr", "hr_upscaler", "denoising_strength", "refiner_checkpoint", "init_image"} <= adapter.KNOWN_NAMES
    with pytest.raises(KeyError, match="stepz"):
        adapter.build_request({**VALUES, "stepz": 3}, library)


def test_values_map_by_name_in_any_order(library, tiny_models_dir):
    items = list(VALUES.items())
    random.Random(0).shuffle(items)
    request = adapter.build_request(dict(items), library)
    assert request == adapter.build_request(VALUES, library)
    assert (request.steps, request.width, request.height, request.seed, request.batch_size) == (12, 64, 32, 5, 2)
    assert isinstance(request.steps, int) and request.cfg_scale == 6.0 and request.clip_skip == 2
    assert (request.sampler, request.schedule) == ("Euler", "Karras")
    assert request.model.checkpoint == tiny_models_dir / "checkpoints" / "tiny-sd1.safetensors"
    assert request.model.vae == tiny_models_dir / "vae" / "tiny-sd1-vae-alt.safetensors"
    assert request.model.unet is None and request.model.text_encoder is None
    (lora,) = request.loras
    assert lora.path.name == "tiny-sd1-kohya.safetensors"
    assert (lora.unet_weight, lora.te_weight, lora.enabled) == (0.5, 0.25, False)


def test_no_sampler_is_the_models_own_and_bad_values_name_their_field(library):
    assert adapter.build_request({**VALUES, "sampler": None, "schedule": "Automatic"}, library).sampler is None
    with pytest.raises(ValueError, match="steps: 2.5 is not a whole number"):
        adapter.build_request({**VALUES, "steps": 2.5}, library)
    with pytest.raises(ValueError, match="width: 8 is out of range"):
        adapter.build_request({**VALUES, "width": 8}, library)
    with pytest.raises(LookupError, match="styles: no styles file"):
        adapter.build_request({**VALUES, "styles": ["anime"]}, library)
    with pytest.raises(ValueError, match="checkpoint: none chosen"):
        adapter.build_request({**VALUES, "checkpoint": None}, library)
    with pytest.raises(ModelNotFoundError, match="no-such-vae"):
        adapter.build_request({**VALUES, "vae": "no-such-vae"}, library)


def test_handler_takes_widget_names_as_parameters_and_stays_a_generator():
    seen = []

    def run(values, request):
        seen.append((values, request))
        yield values["prompt"]

    handler = adapter.by_name(["prompt", "steps"], run)
    parameters = inspect.signature(handler).parameters
    assert list(parameters) == ["prompt", "steps", "request"]
    assert all(p.default is None for p in parameters.values())
    assert handler.__annotations__["request"] is gr.Request
    assert inspect.isgeneratorfunction(handler)
    assert list(handler("hi", 3, "req")) == ["hi"]
    assert seen == [({"prompt": "hi", "steps": 3}, "req")]


def test_errors_become_gr_error_with_the_engine_message():
    with pytest.raises(gr.Error, match="width: 36 is not a multiple of 8"), adapter.shown_in_ui("Generation"):
        raise ValueError("width: 36 is not a multiple of 8")
    with pytest.raises(gr.Error, match="RuntimeError: boom"), adapter.shown_in_ui("Generation"):
        raise RuntimeError("boom")


def test_reproduction_fills_fields_model_components_and_stack_loras(library):
    text = (
        "a fox <lora:tiny-sd1-peft:0.6>\nNegative prompt: rain\n"
        "Steps: 3, Sampler: Euler, Schedule type: Karras, CFG scale: 5, Seed: 42, Size: 32x48, "
        "Model hash: 0000000000, Model: tiny-sd1, VAE: tiny-sd1-vae-alt.safetensors, Clip skip: 2, "
        'Lora hashes: "tiny-sd1-peft: 0123456789ab, tiny-sd1-kohya: 0123456789ab", Version: webui 0.1.0'
    )
    values = adapter.values_from_reproduction(request_from_infotext(text, library), text, library)
    assert values["prompt"] == "a fox <lora:tiny-sd1-peft:0.6>" and values["negative_prompt"] == "rain"
    assert (values["steps"], values["cfg_scale"], values["seed"], values["clip_skip"]) == (3, 5.0, 42, 2)
    assert (values["width"], values["height"], values["sampler"], values["schedule"]) == (32, 48, "Euler", "Karras")
    assert values["checkpoint"] == "tiny-sd1.safetensors"
    assert values["vae"] == "tiny-sd1-vae-alt.safetensors" and values["unet"] == FROM_CHECKPOINT
    # the prompt's tag stays in the prompt; the stack-only LoRA fills row 1
    assert values["lora_1"] == "tiny-sd1-kohya.safetensors" and values["lora_2"] is None
    request = adapter.build_request(values, library)
    assert request.steps == 3 and request.model.vae is not None and len(request.loras) == 1


def test_png_info_of_a_modular_flux_image_restores_the_transformer_its_encoders_and_guidance(library):
    text = (
        "a fox\nSteps: 4, Sampler: Euler, CFG scale: 1, Distilled CFG Scale: 2.5, Seed: 7, Size: 32x32, "
        "Model hash: 0000000000, Model: tiny-flux-dev, VAE: tiny-flux-ae.safetensors, UNet: tiny-flux-dev.safetensors, "
        "Text encoder: tiny-flux-clip-l.safetensors, Text encoder 2: tiny-flux-t5xxl-fp16.safetensors, Version: webui"
    )
    reproduction = request_from_infotext(text, library)
    assert reproduction.missing == [] and reproduction.request is not None
    values = adapter.values_from_reproduction(reproduction, text, library)
    assert values["checkpoint"] == NO_CHECKPOINT and values["distilled_guidance"] == 2.5
    assert values["unet"] == "tiny-flux-dev.safetensors" and values["vae"] == "tiny-flux-ae.safetensors"
    assert values["text_encoder_2"] == "tiny-flux-t5xxl-fp16.safetensors"
    request = adapter.build_request(values, library)
    assert request.model.checkpoint is None and request.distilled_guidance == 2.5 and request.cfg_scale == 1.0


HIRES_WIDGETS = {
    "enable_hr": True,
    "hr_upscaler": "tiny-4x-realesrgan",
    "hr_scale": 1.5,
    "hr_resize_x": 0.0,
    "hr_resize_y": 0.0,
    "hr_second_pass_steps": 6.0,
    "denoising_strength": 0.4,
    "hr_sampler_name": "Use same sampler",
    "hr_scheduler": "Use same scheduler",
    "hr_cfg": 0,  # the slider's 0: the first pass's
    "hr_prompt": "",
    "hr_negative_prompt": "",
    "refiner_checkpoint": "None",
    "refiner_switch_at": 0.8,
}


def test_hires_and_refiner_widgets_build_the_second_pass_and_come_back_from_infotext(library):
    from webui.engine.second_pass import HiresFix, Refiner

    request = adapter.build_request({**VALUES, **HIRES_WIDGETS}, library)
    assert request.hires == HiresFix(upscaler="tiny-4x-realesrgan", scale=1.5, steps=6, denoising_strength=0.4)
    assert request.refiner is None and request.img2img is None
    off = adapter.build_request({**VALUES, **HIRES_WIDGETS, "enable_hr": False}, library)
    assert off.hires is None
    refiner = library.find("tiny-sdxl-refiner", None)
    chosen = {**VALUES, **HIRES_WIDGETS, "refiner_checkpoint": "tiny-sdxl-refiner.safetensors"}
    chosen["refiner_switch_at"] = 0.7
    assert adapter.build_request(chosen, library).refiner == Refiner(refiner.path, 0.7)
    text = (
        "a cat\nSteps: 3, Seed: 1, Size: 32x32, Model: tiny-sd1, Denoising strength: 0.4, Hires upscale: 1.5, "
        "Hires steps: 6, Hires upscaler: tiny-4x-realesrgan, Version: x"
    )
    values = adapter.values_from_reproduction(request_from_infotext(text, library), text, library)
    assert {k: values[k] for k in ("enable_hr", "hr_upscaler", "hr_scale", "hr_second_pass_steps")} == {
        "enable_hr": True, "hr_upscaler": "tiny-4x-realesrgan", "hr_scale": 1.5, "hr_second_pass_steps": 6,
    }  # fmt: skip
    assert values["hr_sampler_name"] == "Use same sampler" and values["refiner_checkpoint"] == "None"


def test_img2img_values_carry_the_input_image_and_name_a_missing_one(library):
    from PIL import Image

    from webui.ui.img2img_tab import request_values

    tab = {"img2img_prompt": "a dog", "img2img_negative_prompt": "", "img2img_width": 24, "img2img_height": 16,
           "init_image": Image.new("RGB", (10, 10)), "resize_mode": "Resize and fill",
           "img2img_denoising_strength": 0.3}  # fmt: skip
    request = adapter.build_request(request_values({**VALUES, **HIRES_WIDGETS, **tab}), library)
    assert request.prompt == "a dog" and (request.width, request.height) == (24, 16)
    assert request.hires is None and request.refiner is None  # img2img takes neither
    assert request.img2img.resize_mode == "Resize and fill" and request.img2img.denoising_strength == 0.3
    with pytest.raises(ValueError, match="init_image"):
        adapter.build_request(request_values({**VALUES, **tab, "init_image": None}), library)


def test_a_users_mistake_is_one_log_line_and_a_bug_keeps_its_traceback(library, caplog):
    """No model, a refused component (through the queue), an out-of-range setting: one warning line each, no
    traceback, from the UI or the queue; an unexpected error is logged with its traceback."""
    import logging

    from webui.engine.jobs import JobQueue
    from webui.engine.pipelines import ModelLoadError
    from webui.models.kinds import Role
    from webui.ui import runner

    def refused(_engine, _progress, _cancel):
        raise ModelLoadError("tiny-sd2-open-clip-h.safetensors: SD1.x models take CLIP-L", Role.TEXT_ENCODER)

    queue = JobQueue(engine=None)
    queue.start()
    caplog.set_level(logging.INFO)
    try:
        mistakes = {
            "Generation": lambda: adapter.model_choice({"checkpoint": None}, library),
            "Loading the model": lambda: runner.call(queue, refused, "me", "load"),
            "Saving settings": lambda: (_ for _ in ()).throw(ValueError("RAM for cached models (GB): -5 < 0")),
        }
        for action, mistake in mistakes.items():
            caplog.clear()
            with pytest.raises(gr.Error), adapter.shown_in_ui(action):
                mistake()
            records = [r for r in caplog.records if r.levelno >= logging.WARNING]
            assert len(records) == 1 and records[0].exc_info is None, (action, records)
            assert records[0].getMessage().startswith(f"{action} failed: ")
        caplog.clear()
        with pytest.raises(gr.Error), adapter.shown_in_ui("Generation"):
            raise RuntimeError("boom")
        assert [r.exc_info is not None for r in caplog.records if r.levelno >= logging.WARNING] == [True]
    finally:
        queue.stop(timeout=10)
