"""FLUX.1 from the command line: a modular model as --unet/--text-encoder x2/--vae, --guidance, infotext round trip."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from webui.cli import main


def run_json(capsys, *argv: str):
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_modular_flux_with_encoders_in_any_order_guidance_and_infotext_round_trip(tiny_models_dir, tmp_path, capsys):
    common = ("--models-dir", str(tiny_models_dir), "--outputs-dir", str(tmp_path), "--json")
    result = run_json(
        capsys,
        "generate", *common,
        "--unet", "tiny-flux-dev",
        "--text-encoder", "tiny-flux-t5xxl-fp16",  # T5 first: roles come from identification
        "--text-encoder", "tiny-flux-clip-l",
        "--vae", "tiny-flux-ae",
        "--prompt", "a red fox",
        "--guidance", "2.5",
        "--steps", "2", "--width", "32", "--height", "32", "--seed", "11",
    )  # fmt: skip
    (image,) = result["images"]
    infotext = image["infotext"]
    assert "Steps: 2, Sampler: Euler, CFG scale: 1, Distilled CFG Scale: 2.5, Seed: 11" in infotext  # CFG: FLUX's 1
    assert "Model: tiny-flux-dev" in infotext and "Text encoder: tiny-flux-clip-l.safetensors" in infotext
    assert (
        "Text encoder 2: tiny-flux-t5xxl-fp16.safetensors" in infotext and "VAE: tiny-flux-ae.safetensors" in infotext
    )
    assert result["family"] == "flux"
    again = run_json(capsys, "generate", *common, "--infotext", image["path"])
    (copy,) = again["images"]
    assert copy["infotext"] == infotext
    first, second = (np.asarray(Image.open(i["path"])) for i in (image, copy))
    assert np.array_equal(first, second)


def test_family_defaults_apply_when_no_flag_sets_them(tiny_models_dir, tmp_path, capsys):
    result = run_json(
        capsys,
        "generate", "--models-dir", str(tiny_models_dir), "--outputs-dir", str(tmp_path), "--json",
        "--checkpoint", "tiny-flux-dev-aio", "--prompt", "a cat", "--width", "32", "--height", "32", "--steps", "1",
    )  # fmt: skip
    infotext = result["images"][0]["infotext"]
    assert "CFG scale: 1," in infotext and "Distilled CFG Scale: 3.5" in infotext
