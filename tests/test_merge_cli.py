"""`python -m webui merge` / `convert`: names from the library, A1111's default names, JSON recipe, refusals."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from webui.cli import main
from webui.families import Family
from webui.models.ldm_writer import pipeline_to_ldm, save_single_file
from webui.models.library import ModelLibrary
from webui.testing.tiny import build_tiny_pipeline


@pytest.fixture
def models(tiny_models_dir, tmp_path):
    """A models dir of its own (the merges land in it): tiny SD1 in three layouts, a second SD1, an SDXL."""
    root = tmp_path / "models"
    (root / "checkpoints").mkdir(parents=True)
    for name in ("tiny-sd1.safetensors", "tiny-sdxl.safetensors", "tiny-sd1.ckpt"):
        shutil.copy(tiny_models_dir / "checkpoints" / name, root / "checkpoints" / name)
    shutil.copytree(tiny_models_dir / "checkpoints/tiny-sd1-diffusers", root / "checkpoints/tiny-sd1-diffusers")
    state = pipeline_to_ldm(build_tiny_pipeline(Family.SD1, 1), Family.SD1)
    save_single_file(state, root / "checkpoints/other.safetensors", dtype=torch.float16)
    return root


def test_merge_by_library_names_lands_in_checkpoints_with_a1111s_name(models, capsys):
    code = main(["merge", "--models-dir", str(models), "tiny-sd1", "other", "--alpha", "0.3", "--blocks", "GRAD_V"])
    assert code == 0
    out = capsys.readouterr().out
    target = models / "checkpoints" / "0.7(tiny-sd1) + 0.3(other).safetensors"
    assert out.splitlines()[0] == str(target) and "SD1.x checkpoint" in out
    library = ModelLibrary(models)
    library.scan()
    assert library.find("0.7(tiny-sd1) + 0.3(other)").family is Family.SD1


def test_a_merge_named_as_a1111_names_it_can_be_merged_again_and_converted(models, capsys):
    assert main(["merge", "--models-dir", str(models), "tiny-sd1", "other", "--alpha", "0.3"]) == 0
    first = models / "checkpoints" / "0.7(tiny-sd1) + 0.3(other).safetensors"  # ' + ' inside the name
    capsys.readouterr()
    by_name = ["merge", "--models-dir", str(models), "0.7(tiny-sd1) + 0.3(other)", "tiny-sd1", "--name", "again"]
    assert main(by_name) == 0, capsys.readouterr().err
    by_path = ["merge", "--models-dir", str(models), str(first), "other", "--alpha", "1", "--name", "by-path"]
    assert main(by_path) == 0, capsys.readouterr().err
    assert load_file(models / "checkpoints/by-path.safetensors").keys() == load_file(first).keys()
    assert main(["convert", "--models-dir", str(models), str(first), "--name", "converted"]) == 0
    assert all((models / "checkpoints" / f"{name}.safetensors").is_file() for name in ("again", "converted"))


def test_merge_json_carries_the_recipe_and_refuses_to_overwrite(models, capsys):
    args = ["merge", "--models-dir", str(models), "tiny-sd1", "other", "tiny-sd1.ckpt", "--name", "mix", "--json"]
    assert main(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["path"] == str(models / "checkpoints/mix.safetensors") and data["kind"] == "checkpoint"
    assert data["recipe"]["interp_method"] == "Add difference" and data["recipe"]["custom_name"] == "mix"
    assert len(data["recipe"]["sd_merge_models"]) == 3
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err


def test_merge_of_two_families_exits_2_naming_both(models, capsys):
    assert main(["merge", "--models-dir", str(models), "tiny-sd1", "tiny-sdxl"]) == 2
    err = capsys.readouterr().err
    assert "tiny-sdxl.safetensors" in err and "tiny-sd1.safetensors" in err and "different families" in err
    assert sorted(p.name for p in (models / "checkpoints").glob("*.safetensors")) == [
        "other.safetensors",
        "tiny-sd1.safetensors",
        "tiny-sdxl.safetensors",
    ]


def test_convert_a_diffusers_folder_to_one_file_beside_it(models, capsys):
    folder = models / "checkpoints/tiny-sd1-diffusers"
    assert main(["convert", "--models-dir", str(models), str(folder), "--precision", "fp16"]) == 0
    target = models / "checkpoints/tiny-sd1-diffusers.safetensors"
    assert capsys.readouterr().out.splitlines()[0] == str(target)
    converted, original = load_file(target), load_file(models / "checkpoints/tiny-sd1.safetensors")
    assert converted.keys() == original.keys() and all(torch.equal(converted[k], original[k]) for k in original)
    assert main(["convert", "--models-dir", str(models), "tiny-sd1.ckpt", "--name", "from-ckpt", "--prune"]) == 0
    assert load_file(models / "checkpoints/from-ckpt.safetensors").keys() == original.keys()


def test_merged_and_converted_files_get_a_new_files_mode_not_mkstemps_0600(models, capsys):
    import os
    import stat

    old = os.umask(0o022)
    try:
        assert main(["merge", "--models-dir", str(models), "tiny-sd1", "other", "--name", "shared"]) == 0
        assert main(["convert", "--models-dir", str(models), "tiny-sd1.ckpt", "--name", "converted"]) == 0
    finally:
        os.umask(old)
    for name in ("shared", "converted"):
        mode = stat.S_IMODE((models / "checkpoints" / f"{name}.safetensors").stat().st_mode)
        assert mode == 0o644, (name, oct(mode))  # as every other file in a shared models/ folder
