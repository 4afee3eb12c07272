"""The SD3 VAE and FLUX's `ae` have the same shapes: a file that says which it is fits only the families with
its latent scaling, a known mismatch is refused before loading, and the model bar says which scaling decodes."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file

from webui.engine.device import DevicePolicy
from webui.engine.pipeline_fit import ModelLoadError
from webui.engine.pipelines import ModelChoice, PipelineManager
from webui.families import Family
from webui.models.files import read_header
from webui.models.identify import identify
from webui.models.kinds import Kind
from webui.models.ldm_writer import save_single_file

TE = "text_encoders"
SD3_PARTS = {"text_encoder": f"{TE}/tiny-sd3-clip-l.safetensors", "text_encoder_2": f"{TE}/tiny-sd3-clip-g.safetensors"}


@pytest.fixture(scope="module")
def tagged(tiny_models_dir: Path) -> dict[str, Path]:
    """The tiny 16-channel VAE saved three times: untagged, and with Stability's `modelspec.architecture` naming
    FLUX.1 or SD3 (as model sites' files carry it)."""
    state = load_file(tiny_models_dir / "vae/tiny-sd3-vae.safetensors")
    out = {}
    for name, architecture in (("flux", "Flux.1-dev/vae"), ("sd3", "stable-diffusion-v3-medium/vae"), ("none", "")):
        path = tiny_models_dir / f"vae/pairing-{name}.safetensors"
        save_single_file(state, path, metadata={"modelspec.architecture": architecture} if architecture else None)
        out[name] = path
    return out


@pytest.fixture(scope="module")
def manager(tiny_models_dir: Path) -> PipelineManager:
    return PipelineManager(tiny_models_dir, DevicePolicy(device="cpu"))


def sd3(root: Path, vae: Path) -> ModelChoice:
    parts = {k: root / v for k, v in SD3_PARTS.items()}
    return ModelChoice(None, unet=root / "diffusion_models/tiny-sd3.safetensors", vae=vae, **parts)


def flux(root: Path, vae: Path) -> ModelChoice:
    return ModelChoice(None, unet=root / "diffusion_models/tiny-flux-dev.safetensors", vae=vae,
                       text_encoder=root / f"{TE}/tiny-flux-clip-l.safetensors",
                       text_encoder_2=root / f"{TE}/tiny-flux-t5xxl-fp16.safetensors")  # fmt: skip


def test_metadata_narrows_a_16_channel_vae_to_the_families_with_its_scaling(tagged):
    ae = identify(read_header(tagged["flux"]))
    assert (ae.kind, ae.family) == (Kind.VAE, Family.FLUX) and "scaling 0.3611, shift 0.1159" in ae.detail
    assert ae.fits(Family.CHROMA) and ae.fits(Family.ZIMAGE) and not ae.fits(Family.SD3)
    sd3_vae = identify(read_header(tagged["sd3"]))
    assert (sd3_vae.family, sd3_vae.compatible) == (Family.SD3, (Family.SD3,))
    untagged = identify(read_header(tagged["none"]))
    assert all(untagged.fits(f) for f in (Family.FLUX, Family.SD3, Family.CHROMA, Family.ZIMAGE))


def test_a_known_mismatch_is_refused_naming_both_scalings(manager, tiny_models_dir, tagged):
    with pytest.raises(ModelLoadError, match=r"washed out") as refused:
        manager.load(sd3(tiny_models_dir, tagged["flux"]))
    message = str(refused.value)
    assert "1.5305" in message and "0.3611" in message and "Choose a SD3 VAE" in message
    with pytest.raises(ModelLoadError, match=r"washed out"):
        manager.load(flux(tiny_models_dir, tagged["sd3"]))


def test_matching_and_untagged_vaes_load_and_the_bar_says_which_scaling_is_used(manager, tiny_models_dir, tagged):
    for vae in (tagged["sd3"], tagged["none"]):
        loaded = manager.load(sd3(tiny_models_dir, vae))
        assert loaded.pipeline.vae.config.scaling_factor == 1.5305
        assert manager.status()["vae_scaling"] == "VAE scaling 1.5305, shift 0.0609 (SD3)"
    manager.load(flux(tiny_models_dir, tagged["flux"]))
    assert manager.status()["vae_scaling"] == "VAE scaling 0.3611, shift 0.1159 (FLUX.1)"
