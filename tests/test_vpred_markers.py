"""NoobAI-style v-prediction markers: `v_pred` sets v-prediction, `ztsnr` turns on the zero-terminal-SNR schedule."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers.schedulers.scheduling_euler_discrete import rescale_zero_terminal_snr
from stripped_headers import ldm_checkpoint

from webui.engine.pipelines import ModelChoice, PipelineManager
from webui.engine.request import GenerationRequest
from webui.engine.samplers import make_scheduler
from webui.engine.txt2img import Engine
from webui.families import Family
from webui.models.files import TensorHeader
from webui.models.identify import identify
from webui.models.kinds import Kind, Prediction
from webui.models.library import open_library
from webui.testing.tiny import write_marked_checkpoints
from webui.ui.families import badge

VPRED, ZTSNR = "tiny-sdxl-vpred", "tiny-sdxl-vpred-ztsnr"


@pytest.fixture(scope="module")
def vpred_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vpred-models")
    files = write_marked_checkpoints(root, Family.SDXL)
    assert [Path(f.path).stem for f in files] == [VPRED, ZTSNR]
    return root


@pytest.fixture(scope="module")
def manager(vpred_dir) -> PipelineManager:
    return PipelineManager(vpred_dir)


@pytest.mark.parametrize(
    ("extra", "prediction", "zero_snr"),
    [({}, None, False), ({"v_pred": (0,)}, Prediction.V, False), ({"v_pred": (0,), "ztsnr": (0,)}, Prediction.V, True)],
    ids=["plain", "v_pred", "v_pred+ztsnr"],
)
def test_real_size_sdxl_header_markers_are_read(extra, prediction, zero_snr):
    identity = identify(TensorHeader(shapes={**ldm_checkpoint(Family.SDXL, False), **extra}, metadata={}))
    assert (identity.kind, identity.family) == (Kind.CHECKPOINT, Family.SDXL)
    assert (identity.prediction, identity.zero_snr) == (prediction, zero_snr)
    assert ("zero terminal SNR (ztsnr)" in identity.detail) is zero_snr


def test_ztsnr_on_a_vae_means_nothing():
    vae = {k: v for k, v in ldm_checkpoint(Family.SDXL, True).items() if k.startswith("first_stage_model.")}
    assert identify(TensorHeader(shapes={**vae, "ztsnr": (0,)}, metadata={})).zero_snr is False


def test_library_lists_the_markers_and_the_badge_shows_them(vpred_dir):
    library = open_library(vpred_dir)
    library.scan()
    plain, marked = library.find(f"{VPRED}.safetensors"), library.find(f"{ZTSNR}.safetensors")
    assert (plain.to_json()["prediction"], plain.to_json()["zero_snr"]) == ("v_prediction", False)
    assert (marked.to_json()["prediction"], marked.to_json()["zero_snr"]) == ("v_prediction", True)
    assert "zero terminal SNR" in marked.detail
    assert badge(plain) == "SDXL · v-pred"
    assert badge(marked) == "SDXL · v-pred · zero-SNR"


def test_ztsnr_checkpoint_gets_a_zero_snr_trailing_v_scheduler(manager, vpred_dir):
    loaded = manager.load(ModelChoice(vpred_dir / f"checkpoints/{ZTSNR}.safetensors"))
    config = loaded.scheduler_config
    assert config["prediction_type"] == "v_prediction"
    assert config["rescale_betas_zero_snr"] is True and config["timestep_spacing"] == "trailing"
    expected_betas = rescale_zero_terminal_snr(
        torch.linspace(config["beta_start"] ** 0.5, config["beta_end"] ** 0.5, 1000, dtype=torch.float32) ** 2
    )
    for sampler in (None, "Euler a", "DPM++ 2M", "DDIM"):
        scheduler = make_scheduler(config, sampler)
        assert scheduler.config.rescale_betas_zero_snr, sampler
        torch.testing.assert_close(scheduler.betas, expected_betas)
        assert scheduler.alphas_cumprod[-1] < 1e-6  # the last training step is pure noise: SNR 0
        scheduler.set_timesteps(4)
        assert int(scheduler.timesteps[0]) == 999, sampler  # "trailing" starts at that last step


def test_ztsnr_sd1_file_gets_a_scheduler_that_can_rescale(manager, vpred_dir):
    (fixture,) = write_marked_checkpoints(vpred_dir, Family.SD1, {"ztsnr": ("ztsnr",)})
    loaded = manager.load(ModelChoice(vpred_dir / fixture.path))
    assert loaded.family is Family.SD1 and loaded.scheduler_config["rescale_betas_zero_snr"] is True
    assert loaded.scheduler_config["_class_name"] == "EulerDiscreteScheduler"  # SD1's own PNDM cannot
    assert make_scheduler(loaded.scheduler_config, None).alphas_cumprod[-1] < 1e-6


def test_v_pred_without_ztsnr_keeps_the_standard_betas(manager, vpred_dir):
    loaded = manager.load(ModelChoice(vpred_dir / f"checkpoints/{VPRED}.safetensors"))
    config = loaded.scheduler_config
    assert config["prediction_type"] == "v_prediction" and not config.get("rescale_betas_zero_snr")
    assert make_scheduler(config, None).alphas_cumprod[-1] > 1e-3  # SD's schedule ends at SNR ≈ 0.0047


def test_zero_snr_model_generates_from_finite_latents(manager, vpred_dir, tmp_path):
    engine = Engine(manager, tmp_path / "outputs")
    choice = ModelChoice(vpred_dir / f"checkpoints/{ZTSNR}.safetensors")
    request = GenerationRequest(model=choice, prompt="a cat", steps=3, width=32, height=32, seed=3, sampler="Euler")
    latents = engine.denoise(manager.load(choice), request, [request.seed])
    assert torch.isfinite(latents).all()  # SNR 0 at the first step must not divide by zero
    (image,) = engine.generate(request).images
    assert image.path.is_file() and "Sampler: Euler" in image.infotext
