"""FLUX.1's second passes against plain diffusers: img2img and Hires. fix through FluxImg2ImgPipeline, pixel-space
upscalers only, and the refusals (latent upscaling, the refiner) naming their field."""

from __future__ import annotations

import inspect
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image

from webui.engine.device import DevicePolicy
from webui.engine.limits import RequestError
from webui.engine.pipelines import ModelChoice, PipelineManager
from webui.engine.progress import CancelToken
from webui.engine.request import GenerationRequest
from webui.engine.second_pass import RESIZE_MODES, HiresFix, Img2Img, Refiner, scheduled_steps
from webui.engine.txt2img import Engine

PROMPT = "a photo of a cat in a garden"
SEED, STEPS, SIZE, GUIDANCE = 7, 3, 32, 3.5  # GUIDANCE: FLUX.1 dev's default distilled guidance
DM, TE = "diffusion_models", "text_encoders"


@pytest.fixture(scope="module")
def engine(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Engine:
    manager = PipelineManager(tiny_models_dir, DevicePolicy(device="cpu"))
    return Engine(manager, tmp_path_factory.mktemp("flux-second-out"))


def dev(root: Path) -> ModelChoice:
    return ModelChoice(
        None,
        unet=root / DM / "tiny-flux-dev.safetensors",
        text_encoder=root / TE / "tiny-flux-clip-l.safetensors",
        text_encoder_2=root / TE / "tiny-flux-t5xxl-fp16.safetensors",
        vae=root / "vae/tiny-flux-ae.safetensors",
    )


def request(root: Path, **fields) -> GenerationRequest:
    settings = {"prompt": PROMPT, "steps": STEPS, "cfg_scale": 1.0, "width": SIZE, "height": SIZE, "seed": SEED}
    return GenerationRequest(dev(root), sampler=None, **{**settings, **fields})


def plain(loaded, class_name: str):
    """A stock diffusers pipeline of `class_name` over the loaded model's modules, with a fresh scheduler."""
    cls = getattr(diffusers, class_name)
    accepted = inspect.signature(cls.__init__).parameters
    components = {k: v for k, v in loaded.pipeline.components.items() if k in accepted}
    scheduler_class = getattr(diffusers, loaded.scheduler_config["_class_name"])
    components["scheduler"] = scheduler_class.from_config(loaded.scheduler_config)
    pipeline = cls(**{**dict.fromkeys(("image_encoder", "feature_extractor")), **components})
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def encoded(loaded, image: Image.Image) -> torch.Tensor:
    """The image's latents as a second pass starts from them: the posterior's mean, shifted and scaled."""
    vae = loaded.pipeline.vae
    tensor = loaded.pipeline.image_processor.preprocess(image).to(vae.dtype)
    with torch.no_grad():
        mean = vae.encode(tensor).latent_dist.mode()
    return (mean - vae.config.shift_factor) * vae.config.scaling_factor


def pixels(image_or_path) -> np.ndarray:
    image = image_or_path if isinstance(image_or_path, Image.Image) else Image.open(image_or_path)
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def noise_image(size: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(3).integers(0, 256, (size, size, 3), dtype=np.uint8))


def test_flux_img2img_equals_plain_flux_img2img_pipeline_on_the_encoded_input(engine, tiny_models_dir):
    source = noise_image(SIZE)
    img2img = Img2Img((source,), denoising_strength=0.6)
    (image,) = engine.generate(request(tiny_models_dir, steps=4, img2img=img2img)).images
    loaded = engine.manager.current
    expected = plain(loaded, "FluxImg2ImgPipeline")(
        PROMPT, image=encoded(loaded, source), strength=0.6, num_inference_steps=4, guidance_scale=GUIDANCE,
        width=SIZE, height=SIZE, generator=[torch.Generator("cpu").manual_seed(SEED)], output_type="pil",
    ).images[0]  # fmt: skip
    assert pixels(expected).std() > 5, "the reference image is flat: the comparison would prove nothing"
    assert np.abs(pixels(image.path) - pixels(expected)).max() <= 1
    assert "Denoising strength: 0.6" in image.infotext and "Distilled CFG Scale: 3.5" in image.infotext


def test_flux_hires_equals_plain_flux_then_lanczos_then_flux_img2img_at_the_target(engine, tiny_models_dir):
    hires = HiresFix(upscaler="Lanczos", scale=2.0, denoising_strength=0.6, steps=2)
    (image,) = engine.generate(request(tiny_models_dir, hires=hires)).images
    loaded = engine.manager.current
    low = plain(loaded, "FluxPipeline")(
        PROMPT, num_inference_steps=STEPS, guidance_scale=GUIDANCE, width=SIZE, height=SIZE,
        generator=[torch.Generator("cpu").manual_seed(SEED)], output_type="pil",
    ).images[0]  # fmt: skip
    start = encoded(loaded, low.resize((2 * SIZE, 2 * SIZE), Image.Resampling.LANCZOS))
    expected = plain(loaded, "FluxImg2ImgPipeline")(
        PROMPT, image=start, strength=0.6, num_inference_steps=scheduled_steps(2, 0.6), guidance_scale=GUIDANCE,
        width=2 * SIZE, height=2 * SIZE, generator=[torch.Generator("cpu").manual_seed(SEED)], output_type="pil",
    ).images[0]  # fmt: skip
    assert Image.open(image.path).size == (2 * SIZE, 2 * SIZE)
    assert pixels(expected).std() > 5, "the reference image is flat: the comparison would prove nothing"
    assert np.abs(pixels(image.path) - pixels(expected)).max() <= 1
    assert "Hires upscaler: Lanczos" in image.infotext and f"Size: {SIZE}x{SIZE}" in image.infotext


def test_flux_hires_previews_unpack_at_the_target_and_interrupt_keeps_the_first_pass(engine, tiny_models_dir):
    hires = HiresFix(upscaler="Nearest", scale=2.0, denoising_strength=0.5, steps=2)
    seen: list[tuple[int, int, tuple[int, int] | None]] = []

    def progress(update) -> None:
        seen.append((update.step, update.steps, None if update.preview is None else update.preview.size))

    engine.generate(request(tiny_models_dir, hires=hires), progress=progress, preview_every=1)
    assert [(step, total) for step, total, _size in seen] == [(s, 5) for s in range(1, 6)]  # 3 steps, then 2 hires
    sizes = [size for _step, _total, size in seen]
    assert sizes[3:] == [(2 * sizes[0][0], 2 * sizes[0][1])] * 2 and sizes[:3] == [sizes[0]] * 3  # the target's
    cancel = CancelToken()

    def stop_after_first_pass(update) -> None:
        if update.step == STEPS:
            cancel.cancel()

    result = engine.generate(request(tiny_models_dir, hires=hires), progress=stop_after_first_pass, cancel=cancel)
    (image,) = result.images
    assert Image.open(image.path).size == (SIZE, SIZE) and result.info["interrupted"]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"hires": HiresFix(upscaler="Latent (bicubic antialiased)")}, "hr_upscaler"),
        ({"img2img": Img2Img((Image.new("RGB", (SIZE, SIZE)),), resize_mode=RESIZE_MODES[3])}, "resize_mode"),
    ],
    ids=["latent-hires", "latent-img2img"],
)
def test_flux_refuses_latent_upscaling_naming_the_field_and_why(engine, tiny_models_dir, fields, field):
    with pytest.raises(RequestError, match="pixel-space upscaler") as raised:
        engine.generate(request(tiny_models_dir, **fields))
    assert raised.value.field == field and "latent upscaling" in str(raised.value)


def test_flux_refuses_the_refiner_naming_the_field(engine, tiny_models_dir):
    refiner = Refiner(tiny_models_dir / "checkpoints/tiny-sdxl-refiner.safetensors", 0.8)
    with pytest.raises(RequestError, match="denoising_end") as raised:
        engine.generate(request(tiny_models_dir, refiner=refiner))
    assert raised.value.field == "refiner_checkpoint"


def test_hires_offers_a_flux_transformer_pixel_space_upscalers_only_and_says_why(tiny_models_dir):
    from types import SimpleNamespace

    from webui.models.library import open_library
    from webui.ui.choices import NO_CHECKPOINT
    from webui.ui.second_pass_widgets import hires_choices

    library = open_library(tiny_models_dir)
    library.scan()
    ctx = SimpleNamespace(library=library)
    names, note = hires_choices(ctx, NO_CHECKPOINT, "tiny-flux-dev.safetensors")
    assert {"None", "Lanczos", "Nearest"} <= set(names) and not [n for n in names if n.startswith("Latent")]
    assert "latent upscaling" in note and "FLUX" in note
    sd_names, sd_note = hires_choices(ctx, "tiny-sd1.safetensors", None)
    assert "Latent" in sd_names and "Lanczos" in sd_names and sd_note == ""
