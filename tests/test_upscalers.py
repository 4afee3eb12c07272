"""Upscalers: A1111's sizes and resize modes, latent modes, and upscaler model files through spandrel."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from webui.engine.second_pass import HiresFix, HiresTarget, first_pass_size, scheduled_steps
from webui.engine.upscaler_models import UpscalerModels, tiled
from webui.engine.upscalers import (
    LATENT_MODES,
    Upscaler,
    enlarge,
    resize_image,
    resolve_upscaler,
    upscale_latents,
    upscaler_names,
)
from webui.families import Family
from webui.models.files import ModelFileError, read_header
from webui.models.kinds import Kind
from webui.models.library import open_library
from webui.models.upscaler_files import identify_upscaler, load_upscaler

ESRGAN_4X = "upscalers/tiny-4x-realesrgan.pth"
ESRGAN_2X = "upscalers/tiny-2x-esrgan.safetensors"


@pytest.mark.parametrize(
    ("hires", "size", "target"),
    [
        (HiresFix(scale=2.0), (512, 768), HiresTarget(1024, 1536)),
        (HiresFix(scale=1.5), (520, 512), HiresTarget(780, 768)),
        (HiresFix(resize_x=1024), (512, 768), HiresTarget(1024, 1536)),
        (HiresFix(resize_y=1000), (512, 768), HiresTarget(666, 1000)),
        # Both sides given: cover them, then crop the latent (A1111's truncate_x / truncate_y).
        (HiresFix(resize_x=1024, resize_y=1024), (512, 768), HiresTarget(1024, 1536, 0, 64)),
        (HiresFix(resize_x=1200, resize_y=600), (512, 512), HiresTarget(1200, 1200, 0, 75)),
    ],
)
def test_hires_target_size_is_a1111s(hires, size, target):
    assert hires.target(*size) == target


def test_old_hires_fix_first_pass_size_and_stretched_hires_steps_are_a1111s():
    assert first_pass_size(1024, 1024) == (512, 512)
    assert first_pass_size(1920, 1080) == (704, 384)  # about 512² pixels, sides rounded up to 64
    assert [scheduled_steps(n, s) for n, s in ((20, 0.7), (10, 0.7), (3, 0.45), (5, 1.0))] == [29, 15, 7, 5]


def test_latent_modes_are_a1111s_and_crop_half_from_each_side():
    latents = torch.arange(16.0).reshape(1, 1, 4, 4)
    nearest = upscale_latents(latents, Upscaler("Latent (nearest)", LATENT_MODES["Latent (nearest)"]),
                              HiresTarget(64, 64, 0, 0, factor=8))  # fmt: skip
    assert torch.equal(nearest, latents.repeat_interleave(2, 2).repeat_interleave(2, 3))
    cropped = upscale_latents(latents, Upscaler("Latent", LATENT_MODES["Latent"]), HiresTarget(64, 64, 3, 1, 8))
    assert cropped.shape == (1, 1, 7, 5)
    assert list(LATENT_MODES) == ["Latent", "Latent (antialiased)", "Latent (bicubic)",
                                  "Latent (bicubic antialiased)", "Latent (nearest)", "Latent (nearest-exact)"]


def test_flow_families_are_offered_pixel_upscalers_only():
    flux = Family.FLUX.description
    names = upscaler_names(flux.second_pass.latent_upscale, ["4x-UltraSharp"])
    assert names == ["None", "Lanczos", "Nearest", "4x-UltraSharp"]
    assert "latent" in flux.second_pass.why_no_latent_upscale(flux.label).lower()
    assert upscaler_names(Family.SD1.description.second_pass.latent_upscale, [])[0] == "Latent"


def test_unknown_upscaler_names_the_field_and_the_choices():
    def nothing(name):
        raise LookupError(f"no {name}")

    with pytest.raises(LookupError, match="hr_upscaler: no upscaler named 'ESRGAN_4x'.*Lanczos"):
        resolve_upscaler("ESRGAN_4x", nothing)


def _gradient(width: int, height: int) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], -1).astype(np.uint8))


def _no_model(_image, _path):
    raise AssertionError("no model runs for a resampler")


def test_resize_modes_are_a1111s():
    source = _gradient(40, 20)  # 2:1 into a square
    lanczos = Upscaler("Lanczos", resample=Image.Resampling.LANCZOS)
    stretched = resize_image("Just resize", source, 16, 16, lanczos, _no_model)
    assert np.array_equal(np.asarray(stretched), np.asarray(source.resize((16, 16), Image.Resampling.LANCZOS)))
    cropped = resize_image("Crop and resize", source, 16, 16, lanczos, _no_model)
    covering = np.asarray(source.resize((32, 16), Image.Resampling.LANCZOS))
    assert np.array_equal(np.asarray(cropped), covering[:, 8:24])  # centred, the overflow cut
    filled = np.asarray(resize_image("Resize and fill", source, 16, 16, lanczos, _no_model))
    inside = np.asarray(source.resize((16, 8), Image.Resampling.LANCZOS))
    assert np.array_equal(filled[4:12], inside)
    # The bars are the edge rows stretched (not black): close to the first row inside.
    assert np.abs(filled[:4].astype(int) - inside[:1].astype(int)).max() <= 8 and filled[:4].max() > 200
    with pytest.raises(ValueError, match="resize_mode"):
        resize_image("Zoom", source, 16, 16, lanczos, _no_model)


def test_a_model_runs_until_the_image_covers_the_target_then_lanczos():
    calls = []

    def doubling(image, _path):
        calls.append(image.size)
        return image.resize((image.width * 2, image.height * 2), Image.Resampling.NEAREST)

    model = Upscaler("2x-model", path=object())  # type: ignore[arg-type]
    result = enlarge(_gradient(10, 10), 70, 70, model, doubling)
    assert calls == [(10, 10), (20, 20), (40, 40)] and result.size == (70, 70)  # three passes at most
    assert enlarge(_gradient(10, 10), 10, 10, model, doubling).size == (10, 10) and len(calls) == 3


def test_tiles_blend_back_to_the_whole_image():
    image = torch.rand(1, 3, 50, 70)

    def pixelwise(x):  # a 3x "model" whose output pixels depend on their input pixel only
        return torch.sigmoid(x * 3 - 1).repeat_interleave(3, 2).repeat_interleave(3, 3)

    whole = pixelwise(image)
    assert torch.allclose(tiled(pixelwise, image, 3, tile=16, overlap=4), whole, atol=1e-6)
    assert torch.allclose(tiled(pixelwise, image, 3, tile=128), whole)


def test_tiny_esrgan_files_are_recognised_and_run_through_spandrel(tiny_models_dir):
    for relative, scale in ((ESRGAN_4X, 4), (ESRGAN_2X, 2)):
        path = tiny_models_dir / relative
        identity = identify_upscaler(path, read_header(path))
        assert identity.kind is Kind.UPSCALER and identity.supported and "ESRGAN" in identity.detail
        model = load_upscaler(path)
        assert model.scale == scale and model.architecture.name == "ESRGAN"
        runner = UpscalerModels(torch.device("cpu"), tile=8, overlap=2)
        out = runner.run(_gradient(12, 10), path)
        assert out.size == (12 * scale, 10 * scale)
        whole = UpscalerModels(torch.device("cpu")).run(_gradient(12, 10), path)
        difference = np.abs(np.asarray(out, dtype=int) - np.asarray(whole, dtype=int))
        assert difference.mean() < 2  # seams blended: tiles agree with the whole image but near their edges


def test_the_library_lists_upscalers_with_their_architecture(tiny_models_dir):
    library = open_library(tiny_models_dir)
    library.scan()
    upscalers = {e.name: e for e in library.entries(Kind.UPSCALER)}
    assert set(upscalers) == {"tiny-4x-realesrgan", "tiny-2x-esrgan"}
    assert all(e.usable and e.problem is None and "ESRGAN" in e.detail for e in upscalers.values())


class _Payload:
    def __reduce__(self):
        return (print, ("pwned",))


def test_a_pickled_upscaler_that_needs_code_is_refused(tmp_path):
    folder = tmp_path / "upscalers"
    folder.mkdir()
    evil = folder / "4x-evil.pth"
    torch.save({"params_ema": {"conv_first.weight": torch.zeros(1)}, "hook": _Payload()}, evil)
    library = open_library(tmp_path)
    (entry,) = library.scan()
    assert not entry.usable and "code execution" in entry.problem
    with pytest.raises(ModelFileError, match="code execution"):
        load_upscaler(evil)
    assert pickle.dumps(1)  # (pickle is imported only to make the payload's intent plain)


def test_spandrel_leaves_no_torchvision_behind_for_diffusers():
    code = (
        "from webui.models.upscaler_files import import_spandrel\n"
        "import importlib.util, sys\n"
        "real = importlib.util.find_spec('torchvision') is not None\n"
        "import_spandrel()\n"
        "assert real or 'torchvision' not in sys.modules\n"
        "from diffusers.utils import is_torchvision_available\n"
        "assert is_torchvision_available() == real\n"
        "from diffusers import StableDiffusionImg2ImgPipeline\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
