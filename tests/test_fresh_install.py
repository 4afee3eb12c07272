"""A fresh install: one downloaded single-file checkpoint, no models/tokenizers/, an empty Hugging Face home."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import webui
from webui.families import Family
from webui.testing.tiny import write_full_vocab_checkpoint

REPO_ROOT = Path(webui.__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fresh_models(tmp_path_factory) -> Path:
    """`models/checkpoints/` holding an SD1 and an SDXL file with CLIP's full vocabulary, and nothing else."""
    models = tmp_path_factory.mktemp("fresh") / "models"
    for family in (Family.SD1, Family.SDXL):
        write_full_vocab_checkpoint(models / f"checkpoints/downloaded-{family.value}.safetensors", family)
    return models


@pytest.mark.slow
@pytest.mark.parametrize("family", [Family.SD1, Family.SDXL], ids=lambda f: f.value)
def test_generate_works_on_a_fresh_install_with_a_single_file_checkpoint(fresh_models, family, tmp_path):
    hf_home = tmp_path / "empty-hf-home"
    hf_home.mkdir()
    env = {
        **os.environ,
        "HF_HOME": str(hf_home),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("HF_HUB_CACHE", None)
    env.pop("TRANSFORMERS_CACHE", None)
    command = [
        sys.executable, "-m", "webui", "generate",
        "--models-dir", str(fresh_models),
        "--outputs-dir", str(tmp_path / "outputs"),
        "--checkpoint", f"downloaded-{family.value}",
        "--prompt", "a photo of a cat, it’s (masterpiece:1.2), 🐱",
        "--steps", "2", "--width", "64", "--height", "64", "--seed", "5",
        "--json",
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    (image,) = json.loads(done.stdout)["images"]
    with Image.open(image["path"]) as png:
        assert png.size == (64, 64)
        assert f"Model: downloaded-{family.value}" in png.text["parameters"]
    assert not (fresh_models / "tokenizers").exists()
    assert list(hf_home.iterdir()) == []  # nothing was put in the (empty) Hugging Face home
