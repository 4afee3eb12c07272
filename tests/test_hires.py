"""Second passes against plain diffusers: the hires pass, the refiner hand-off and img2img, on the tiny fixtures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from webui.cli import main
from webui.engine.pipelines import ModelChoice
from webui.engine.progress import CancelToken
from webui.engine.reproduce import request_from_infotext
from webui.engine.request import GenerationRequest
from webui.engine.second_pass import HiresFix, Img2Img, Refiner
from webui.models.library import open_library
from webui.wiring import build_engine

SEED = 21


@pytest.fixture(scope="module")
def library(tiny_models_dir):
    lib = open_library(tiny_models_dir)
    lib.scan()
    return lib


@pytest.fixture(scope="module")
def engine(library, tmp_path_factory):
    return build_engine(library, tmp_path_factory.mktemp("outputs"))


def sd1(models) -> ModelChoice:
    return ModelChoice(models / "checkpoints/tiny-sd1.safetensors")


def pixels(image_or_path) -> np.ndarray:
    image = image_or_path if isinstance(image_or_path, Image.Image) else Image.open(image_or_path)
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def plain(loaded, class_name: str, **overrides):
    """A stock diffusers pipeline of `class_name` over the loaded model's modules, with a fresh scheduler."""
    import inspect

    import diffusers

    cls = getattr(diffusers, class_name)
    accepted = inspect.signature(cls.__init__).parameters
    components = {k: v for k, v in loaded.pipeline.components.items() if k in accepted}
    scheduler_class = getattr(diffusers, loaded.scheduler_config["_class_name"])
    components["scheduler"] = scheduler_class.from_config(loaded.scheduler_config)
    pipeline = cls(**{**components, **overrides})
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def generators(seed: int = SEED) -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(seed)]


def encoded(loaded, image: Image.Image) -> torch.Tensor:
    """The image's latents as the second pass starts from them: the posterior's mean, scaled."""
    tensor = loaded.pipeline.image_processor.preprocess(image)
    with torch.no_grad():
        mean = loaded.pipeline.vae.encode(tensor).latent_dist.mode()
    return mean * loaded.pipeline.vae.config.scaling_factor


@pytest.mark.parametrize("upscaler", ["Lanczos", "Latent (bicubic antialiased)"])
def test_hires_pass_equals_plain_diffusers_img2img_at_the_target_on_the_upscaled_first_pass(
    engine, tiny_models_dir, upscaler
):
    hires = HiresFix(upscaler=upscaler, scale=2.0, denoising_strength=0.6, steps=4)
    request = GenerationRequest(model=sd1(tiny_models_dir), prompt="red hat", steps=3, width=32, height=32,
                                seed=SEED, hires=hires)  # fmt: skip (4x4 latents over the VAE's 8x, then 8x8)
    result = engine.generate(request)
    (image,) = result.images
    loaded = engine.manager.current
    first = plain(loaded, "StableDiffusionPipeline")
    run = {"prompt": "red hat", "guidance_scale": 7.0, "width": 32, "height": 32, "generator": generators()}
    if upscaler == "Lanczos":
        low = first(num_inference_steps=3, output_type="pil", **run).images[0]
        start = encoded(loaded, low.resize((64, 64), Image.Resampling.LANCZOS))
    else:
        latents = first(num_inference_steps=3, output_type="latent", **run).images
        start = torch.nn.functional.interpolate(latents, size=(8, 8), mode="bicubic", antialias=True)
    second = plain(loaded, "StableDiffusionImg2ImgPipeline")
    # A1111 runs all 4 hires steps, on a schedule stretched by the strength: 7 steps of which the last 60 % run.
    expected = second(prompt="red hat", image=start, strength=0.6, num_inference_steps=7, guidance_scale=7.0,
                      generator=generators(), output_type="pil").images[0]  # fmt: skip
    assert Image.open(image.path).size == (64, 64)
    assert np.abs(pixels(image.path) - pixels(expected)).max() <= 1
    assert f"Hires upscaler: {upscaler}" in image.infotext and "Size: 32x32" in image.infotext
    assert "Denoising strength: 0.6" in image.infotext and "Hires upscale: 2" in image.infotext


def test_refiner_hand_off_equals_diffusers_denoising_end_then_denoising_start(engine, tiny_models_dir):
    refiner_path = tiny_models_dir / "checkpoints/tiny-sdxl-refiner.safetensors"
    request = GenerationRequest(
        model=ModelChoice(tiny_models_dir / "checkpoints/tiny-sdxl.safetensors"), prompt="red hat", steps=4,
        width=32, height=32, seed=SEED, refiner=Refiner(refiner_path, switch_at=0.5),
    )  # fmt: skip
    (image,) = engine.generate(request).images
    base = engine.manager.current
    refiner = engine.manager.load_companion(ModelChoice(refiner_path))
    engine.manager.release_companions()
    latents = plain(base, "StableDiffusionXLPipeline")(
        prompt="red hat", num_inference_steps=4, guidance_scale=7.0, width=32, height=32, generator=generators(),
        denoising_end=0.5, output_type="latent",
    ).images  # fmt: skip
    # stabilityai's refiner repo sets these in model_index.json, so from_pretrained gives them too.
    flags = {"requires_aesthetics_score": True, "force_zeros_for_empty_prompt": False}
    expected = plain(refiner, "StableDiffusionXLImg2ImgPipeline", **flags)(
        prompt="red hat", image=latents, num_inference_steps=4, guidance_scale=7.0, generator=generators(),
        denoising_start=0.5, output_type="pil",
    ).images[0]  # fmt: skip
    assert np.abs(pixels(image.path) - pixels(expected)).max() <= 1
    assert "Refiner: tiny-sdxl-refiner [" in image.infotext and "Refiner switch at: 0.5" in image.infotext
    alone = engine.generate(GenerationRequest(**{**vars(request), "refiner": None})).images[0]
    assert not np.array_equal(pixels(alone.path), pixels(image.path))  # the refiner really finished it


def test_img2img_at_strength_zero_returns_the_input(engine, tiny_models_dir):
    source = Image.fromarray(np.random.default_rng(3).integers(0, 256, (24, 24, 3), dtype=np.uint8))
    request = GenerationRequest(model=sd1(tiny_models_dir), prompt="x", steps=3, width=24, height=24, seed=SEED,
                                img2img=Img2Img((source,), denoising_strength=0.0))  # fmt: skip
    (image,) = engine.generate(request).images
    assert np.array_equal(pixels(image.path), pixels(source))
    assert "Denoising strength: 0," in image.infotext and image.path.parent.parent.name == "img2img"


def test_img2img_equals_plain_diffusers_img2img_on_the_fitted_input(engine, tiny_models_dir):
    source = Image.fromarray(np.random.default_rng(4).integers(0, 256, (40, 60, 3), dtype=np.uint8))
    request = GenerationRequest(
        model=sd1(tiny_models_dir), prompt="blue", steps=4, width=32, height=32, seed=SEED, sampler="Euler a",
        img2img=Img2Img((source,), resize_mode="Crop and resize", denoising_strength=0.5),
    )  # fmt: skip
    (image,) = engine.generate(request).images
    loaded = engine.manager.current
    # A1111's "Crop and resize": scale to cover 32x32 (48x32 here), paste centred, the overflow cropped.
    fitted = Image.new("RGB", (32, 32))
    fitted.paste(source.resize((48, 32), Image.Resampling.LANCZOS), box=(-8, 0))
    second = plain(loaded, "StableDiffusionImg2ImgPipeline")
    from diffusers import EulerAncestralDiscreteScheduler

    second.scheduler = EulerAncestralDiscreteScheduler.from_config(loaded.scheduler_config)
    expected = second(prompt="blue", image=encoded(loaded, fitted), strength=0.5, num_inference_steps=4,
                      generator=generators(), output_type="pil").images[0]  # fmt: skip
    # The encoded latents are equal bit for bit (test below the engine: encode_images vs `encoded`); the images
    # differ by at most 4 of 255 (mean 0.48) since the tiny VAE got its real three 2x levels, which amplify float
    # rounding (Euler and Euler a alike). Not explained further yet: the lead's note on issue 18 says so.
    difference = np.abs(pixels(image.path) - pixels(expected))
    assert difference.max() <= 6 and difference.mean() <= 1.0


def test_hires_progress_counts_both_passes_and_interrupt_keeps_the_first_pass(engine, tiny_models_dir):
    seen = []
    hires = HiresFix(upscaler="Latent", scale=1.5, steps=4, denoising_strength=0.5)
    request = GenerationRequest(model=sd1(tiny_models_dir), prompt="x", steps=3, width=16, height=16, hires=hires,
                                sampler="Euler")
    engine.generate(request, progress=seen.append)
    assert [(p.step, p.steps) for p in seen] == [(s, 7) for s in range(1, 8)]  # 3, then all 4 hires steps
    cancel = CancelToken()
    stopped = engine.generate(request, progress=lambda p: p.step == 2 and cancel.cancel(), cancel=cancel)
    (image,) = stopped.images
    assert stopped.info["interrupted"] and Image.open(image.path).size == (16, 16)  # no hires pass after it


def test_a_hires_image_is_reproduced_from_its_infotext(engine, library, tiny_models_dir, tmp_path, capsys):
    hires = HiresFix(
        upscaler="tiny-2x-esrgan", resize_x=40, resize_y=24, steps=2, denoising_strength=0.45, sampler="Euler",
        prompt="red hat, detailed", cfg_scale=5.0,
    )  # fmt: skip
    request = GenerationRequest(model=sd1(tiny_models_dir), prompt="red hat", steps=3, width=24, height=16,
                                seed=SEED, subseed=5, subseed_strength=0.3, hires=hires)  # fmt: skip
    (original,) = engine.generate(request).images
    assert Image.open(original.path).size == (40, 24)
    text = original.infotext
    for key in ("Hires resize: 40x24", "Hires steps: 2", "Hires upscaler: tiny-2x-esrgan", "Hires sampler: Euler",
                'Hires prompt: "red hat, detailed"', "Hires CFG Scale: 5", "Denoising strength: 0.45"):  # fmt: skip
        assert key in text, key
    reproduction = request_from_infotext(text, library)
    assert reproduction.request is not None and reproduction.request.hires == hires
    code = main(["generate", "--models-dir", str(tiny_models_dir), "--outputs-dir", str(tmp_path),
                 "--infotext", str(original.path), "--json"])  # fmt: skip
    assert code == 0
    (again,) = json.loads(capsys.readouterr().out)["images"]
    assert again["infotext"] == original.infotext
    assert np.array_equal(pixels(again["path"]), pixels(original.path))


def test_each_family_says_how_its_second_pass_runs_and_the_pipelines_agree():
    import inspect

    from webui.families import DESCRIPTIONS

    for description in DESCRIPTIONS:
        second = description.second_pass
        if description.supported:
            assert second.img2img is not None, description.id
        if second.img2img is not None:
            takes = inspect.signature(second.img2img.pipeline_class().__call__).parameters
            assert {"image", "strength"} <= set(takes), description.id
            assert ("denoising_start" in takes) == second.handoff, description.id
        if second.handoff and description.txt2img and description.pipeline is not None:
            assert "denoising_end" in inspect.signature(description.pipeline.pipeline_class().__call__).parameters


def test_a1111_hires_infotext_is_read_as_a1111_reads_it(library):
    text = (
        "a castle\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 5, Size: 512x768, "
        "Model: tiny-sd1, Denoising strength: 0.45, Hires upscale: 1.5, Hires steps: 12, "
        "Hires upscaler: Latent (bicubic antialiased), Hires sampler: Euler a, Hires schedule type: Exponential, "
        'Hires prompt: "a castle, detailed", Version: v1.10.1'
    )
    request = request_from_infotext(text, library).request
    assert request.hires == HiresFix(
        upscaler="Latent (bicubic antialiased)", scale=1.5, steps=12, denoising_strength=0.45, sampler="Euler a",
        schedule="Exponential", prompt="a castle, detailed",
    )  # fmt: skip
    assert (request.width, request.height) == (512, 768)
    # img2img's infotext has a denoising strength but no Hires keys: no Hires. fix.
    plain = request_from_infotext("x\nSteps: 3, Seed: 1, Size: 32x32, Model: tiny-sd1, Denoising strength: 0.5",
                                  library)  # fmt: skip
    assert plain.request.hires is None and plain.values["denoising_strength"] == 0.5


@pytest.mark.parametrize(
    ("pass_size", "final", "first", "resize"),
    [("512x512", "1024x1024", (512, 512), (1024, 1024)), ("0x0", "1024x768", (640, 448), (1024, 768))],
)
def test_old_first_pass_size_becomes_size_and_hires_resize_as_a1111_derives_it(library, pass_size, final, first,
                                                                             resize):  # fmt: skip
    text = f"x\nSteps: 3, Seed: 1, Size: {final}, Model: tiny-sd1, Denoising strength: 0.6, "
    text += f"First pass size: {pass_size}"
    reproduction = request_from_infotext(text, library)
    request = reproduction.request
    assert (request.width, request.height) == first
    assert (request.hires.resize_x, request.hires.resize_y) == resize and request.hires.denoising_strength == 0.6
    assert any("First pass size" in note for note in reproduction.notes)


def test_refiner_keys_name_the_checkpoint_by_its_a1111_title(library):
    entry = library.find("tiny-sdxl-refiner", None)
    title = f"tiny-sdxl-refiner [{library.model_hash(entry.path)}]"
    text = f"x\nSteps: 4, Seed: 1, Size: 32x32, Model: tiny-sdxl, Refiner: {title}, Refiner switch at: 0.6"
    request = request_from_infotext(text, library).request
    assert request.refiner == Refiner(entry.path, 0.6)
    missing = request_from_infotext(text.replace(title, "gone [0123456789]"), library)
    assert missing.request is None and "refiner gone [0123456789]" in missing.missing


def test_bad_second_pass_values_name_their_field(tiny_models_dir):
    for kwargs, field in (({"scale": 9}, "hr_scale"), ({"denoising_strength": 1.2}, "denoising_strength"),
                          ({"sampler": "Eulr"}, "hr_sampler_name"), ({"upscaler": " "}, "hr_upscaler")):  # fmt: skip
        with pytest.raises(ValueError, match=field):
            HiresFix(**kwargs)
    with pytest.raises(ValueError, match="refiner_switch_at"):
        Refiner(tiny_models_dir, 0.0)
    with pytest.raises(ValueError, match="resize_mode"):
        Img2Img((Image.new("RGB", (8, 8)),), resize_mode="Zoom")
    with pytest.raises(ValueError, match="enable_hr"):
        GenerationRequest(model=sd1(tiny_models_dir), hires=HiresFix(), img2img=Img2Img((Image.new("RGB", (8, 8)),)))


def test_the_refiner_is_refused_clearly_where_it_cannot_hand_off(engine, tiny_models_dir):
    refiner = Refiner(tiny_models_dir / "checkpoints/tiny-sdxl-refiner.safetensors", 0.5)
    with pytest.raises(ValueError, match="refiner_checkpoint: .* cannot stop part-way"):
        engine.generate(GenerationRequest(model=sd1(tiny_models_dir), steps=2, width=16, height=16, refiner=refiner))
    xl = ModelChoice(tiny_models_dir / "checkpoints/tiny-sdxl.safetensors")
    wrong = Refiner(tiny_models_dir / "checkpoints/tiny-sd1.safetensors", 0.5)
    with pytest.raises(ValueError, match="refiner_checkpoint: .* cannot finish"):
        engine.generate(GenerationRequest(model=xl, steps=2, width=16, height=16, refiner=wrong))
    # The refiner itself runs img2img (it refines an existing image).
    source = Image.new("RGB", (32, 32), (90, 120, 200))
    refine = GenerationRequest(model=ModelChoice(refiner.checkpoint), prompt="x", steps=2, width=32, height=32,
                               img2img=Img2Img((source,), denoising_strength=0.5))  # fmt: skip
    assert len(engine.generate(refine).images) == 1
