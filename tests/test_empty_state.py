"""The empty state's words: which folder takes which files (absolute paths), and Generate's one message."""

from __future__ import annotations

import shutil

import pytest

from webui.models.library import open_library
from webui.ui import adapter, empty_state


def test_empty_library_panel_names_every_folder_by_absolute_path(tmp_path):
    library = open_library(tmp_path / "models")
    library.scan()
    assert empty_state.library_is_empty(library)
    text = empty_state.empty_state_html(library)
    root = (tmp_path / "models").resolve()
    for folder in ("checkpoints", "diffusion_models", "text_encoders", "vae", "loras", "embeddings", "tokenizers"):
        assert f"{root / folder}/" in text
    assert str(root / "extra_model_paths.toml") in text and "preset = &quot;a1111&quot;" in text  # HTML-escaped


def test_generate_without_any_model_says_where_to_put_one(tmp_path):
    library = open_library(tmp_path / "models")
    library.scan()
    expected = r"^No model yet: put a checkpoint \(\.safetensors\) in .*/models/checkpoints/"
    with pytest.raises(ValueError, match=expected):
        adapter.model_choice({"checkpoint": None}, library)


def test_a_unet_alone_is_not_the_empty_state_and_unusable_files_are_counted(tmp_path, tiny_models_dir):
    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    (models / "checkpoints" / "broken.safetensors").write_bytes(b"not a model")
    library = open_library(models)
    library.scan()
    assert empty_state.library_is_empty(library)
    assert "1 file(s) found but not usable" in empty_state.empty_state_html(library)
    (models / "diffusion_models").mkdir()
    shutil.copy(tiny_models_dir / "diffusion_models/tiny-sd1-unet.safetensors", models / "diffusion_models")
    library.refresh()
    assert not empty_state.library_is_empty(library)
    with pytest.raises(ValueError, match="checkpoint: none chosen"):  # a UNet exists: pick it in Components
        adapter.model_choice({"checkpoint": None}, library)
