"""A1111 generation options in the engine: variation seeds, eta, odd sizes, JPEG/WebP, prompt warnings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from webui.engine.image_metadata import read_image_metadata
from webui.engine.infotext import parse_infotext
from webui.engine.noise import image_noise, initial_noise, slerp
from webui.engine.pipelines import ModelChoice, PipelineManager
from webui.engine.request import GenerationRequest
from webui.engine.samplers import make_scheduler
from webui.engine.txt2img import Engine
from webui.families import Family
from webui.models.derive import bundled_config
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


def request(models, **changes) -> GenerationRequest:
    values = dict(
        model=ModelChoice(models / "checkpoints/tiny-sd1.safetensors"), prompt="a hat", steps=3, width=32, height=32,
        seed=7, sampler="Euler",
    )  # fmt: skip
    return GenerationRequest(**(values | changes))


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


# -- variation seeds ----------------------------------------------------------------------------------------------
def test_slerp_is_a1111s_per_column_spherical_interpolation():
    low, high = image_noise(1, (4, 8, 8)), image_noise(2, (4, 8, 8))
    torch.testing.assert_close(slerp(0.0, low, high), low)
    torch.testing.assert_close(slerp(1.0, low, high), high, rtol=1e-5, atol=1e-5)
    middle = slerp(0.5, low, high)
    # Independent formula: per (channel, column) vector along the height, sin((1-t)Ω)/sin Ω · a + sin(tΩ)/sin Ω · b.
    a, b = low[1, :, 3], high[1, :, 3]
    omega = torch.acos(torch.dot(a / a.norm(), b / b.norm()))
    expected = (torch.sin(0.5 * omega) * a + torch.sin(0.5 * omega) * b) / torch.sin(omega)
    torch.testing.assert_close(middle[1, :, 3], expected)


def test_variation_seed_noise_matches_diffusers_own_noise_at_strength_zero():
    from diffusers.utils.torch_utils import randn_tensor

    generators = [torch.Generator("cpu").manual_seed(s) for s in (3, 4)]
    torch.testing.assert_close(initial_noise([3, 4], (4, 8, 8)), randn_tensor((2, 4, 8, 8), generator=generators))


def test_variation_seeds_blend_the_image_and_are_recorded(engine, tiny_models_dir):
    plain = engine.generate(request(tiny_models_dir))
    varied = engine.generate(request(tiny_models_dir, subseed=99, subseed_strength=0.3, batch_size=2))
    full = engine.generate(request(tiny_models_dir, subseed=99, subseed_strength=1.0))
    other_seed = engine.generate(request(tiny_models_dir, seed=99))
    # A1111: with a variation seed every image keeps the seed; the variation seeds count up.
    assert [i.seed for i in varied.images] == [7, 7] and varied.info["subseeds"] == [99, 100]
    params = parse_infotext(varied.images[1].infotext)[2]
    assert (params["Seed"], params["Variation seed"], params["Variation seed strength"]) == ("7", "100", "0.3")
    assert "Variation seed" not in parse_infotext(plain.images[0].infotext)[2]
    assert np.abs(pixels(varied.images[0].path) - pixels(plain.images[0].path)).max() > 0
    np.testing.assert_array_equal(pixels(full.images[0].path), pixels(other_seed.images[0].path))


# -- eta ---------------------------------------------------------------------------------------------------------
def test_euler_a_at_eta_1_is_diffusers_euler_ancestral():
    import diffusers

    config = bundled_config(Family.SD1, "scheduler")
    ours = make_scheduler(config, "Euler a", eta=1.0 + 1e-12)  # through our eta step, numerically eta 1
    stock = diffusers.EulerAncestralDiscreteScheduler.from_config(config)
    for scheduler in (ours, stock):
        scheduler.set_timesteps(5)
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0)) * stock.init_noise_sigma
    a, b = x.clone(), x.clone()
    for t in stock.timesteps:
        out = 0.1 * a
        a = ours.step(out, t, a, generator=torch.Generator().manual_seed(int(t))).prev_sample
        b = stock.step(0.1 * b, t, b, generator=torch.Generator().manual_seed(int(t))).prev_sample
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_euler_a_at_eta_0_is_euler():
    import diffusers

    config = bundled_config(Family.SD1, "scheduler")
    ours, euler = make_scheduler(config, "Euler a", eta=0.0), diffusers.EulerDiscreteScheduler.from_config(config)
    for scheduler in (ours, euler):
        scheduler.set_timesteps(5)
    torch.testing.assert_close(ours.sigmas, euler.sigmas)
    a = b = torch.ones(1, 4, 4, 4) * euler.init_noise_sigma
    for t in euler.timesteps:
        a = ours.step(0.1 * a, t, a).prev_sample
        b = euler.step(0.1 * b, t, b).prev_sample
    torch.testing.assert_close(a, b)


def test_eta_changes_ancestral_and_ddim_images_and_is_recorded(engine, tiny_models_dir):
    for sampler, key in (("Euler a", "Eta"), ("DDIM", "Eta DDIM")):
        default = engine.generate(request(tiny_models_dir, sampler=sampler))
        changed = engine.generate(request(tiny_models_dir, sampler=sampler, eta=0.5))
        assert np.abs(pixels(changed.images[0].path) - pixels(default.images[0].path)).max() > 0
        assert parse_infotext(changed.images[0].infotext)[2][key] == "0.5"
        assert key not in parse_infotext(default.images[0].infotext)[2]


def test_eta_a_sampler_cannot_take_is_reported(engine, tiny_models_dir):
    result = engine.generate(request(tiny_models_dir, sampler="Euler", eta=0.5))
    assert any(w.startswith("eta: Euler takes no eta") for w in result.info["warnings"])


# -- sizes, formats, warnings ---------------------------------------------------------------------------------
def test_a_size_that_is_no_multiple_of_8_is_generated_as_a1111_does(engine, tiny_models_dir):
    result = engine.generate(request(tiny_models_dir, width=37, height=33))
    with Image.open(result.images[0].path) as image:
        assert image.size == (32, 32)  # A1111: a latent of side // 8
    assert parse_infotext(result.images[0].infotext)[2]["Size"] == "37x33"  # the size asked for, as A1111


@pytest.mark.parametrize(("samples_format", "suffix", "pil"), [("jpg", ".jpg", "JPEG"), ("webp", ".webp", "WEBP")])
def test_jpeg_and_webp_carry_the_infotext_in_exif_as_a1111(engine, tiny_models_dir, samples_format, suffix, pil):
    engine.samples_format = samples_format
    try:
        result = engine.generate(request(tiny_models_dir, prompt="a hat, ünïcode"))
    finally:
        engine.samples_format = "png"
    path = result.images[0].path
    assert path.suffix == suffix
    with Image.open(path) as image:
        assert image.format == pil
        raw = image.getexif().get_ifd(0x8769)[0x9286]
    assert raw[:8] == b"UNICODE\x00" and raw[8:].decode("utf-16-be") == result.images[0].infotext  # piexif's layout
    assert read_image_metadata(path).parameters == result.images[0].infotext


def test_prompt_warnings_and_comments(engine, tiny_models_dir):
    prompt = "a hat <hypernet:x:1> <lora:tiny-sd1-kohya:abc>\n# a note"
    result = engine.generate(request(tiny_models_dir, prompt=prompt))
    warnings = result.info["warnings"]
    assert any(w.startswith("<hypernet:x:1>: 'hypernet' extra networks are not supported") for w in warnings)
    assert any(w.startswith("<lora:tiny-sd1-kohya:abc>: weight 'abc'") for w in warnings)
    assert [r.name for r in result.loras if r.error] == ["<lora:tiny-sd1-kohya:abc>"]  # the report names the tag
    assert parse_infotext(result.images[0].infotext)[0] == "a hat <hypernet:x:1> <lora:tiny-sd1-kohya:abc>\n"


def test_a_comments_lora_tag_is_not_applied(engine, tiny_models_dir):
    result = engine.generate(request(tiny_models_dir, prompt="a hat\n# <lora:tiny-sd1-kohya:1>"))
    assert result.loras == ()


def test_skip_stops_the_current_batch_and_goes_on_with_the_next(engine, tiny_models_dir):
    from webui.engine.progress import CancelToken

    cancel = CancelToken()
    seen = []

    def progress(report):
        seen.append((report.batch, report.step))
        if (report.batch, report.step) == (0, 1):
            cancel.skip()  # A1111's Skip: this batch stops where it is, the next one runs

    result = engine.generate(request(tiny_models_dir, steps=4, batch_count=2), progress=progress, cancel=cancel)
    assert seen == [(0, 1), (1, 1), (1, 2), (1, 3), (1, 4)]
    assert len(result.images) == 2 and not result.info["interrupted"]  # the skipped batch's partial image kept
