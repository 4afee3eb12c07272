"""Names and folders from the wild (issue 13): file names that look like A1111 titles, and symlinked folders that
also hold files linked by name. Every name `models` prints finds its file, from the CLI, the infotext and the
LoRA prompt tags alike.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import wild_inputs as wild

from webui.api.translate import model_choice
from webui.cli import main
from webui.engine.reproduce import request_from_infotext
from webui.models.kinds import Kind
from webui.models.library import open_library
from webui.wiring import build_engine

TITLE_LIKE = "mymix [0123abcd]"


@pytest.fixture
def models(tiny_models_dir, tmp_path) -> Path:
    root = wild.linked_models(tmp_path / "models", tiny_models_dir, ("checkpoints/tiny-sd1.safetensors",))
    sdxl = tiny_models_dir / "checkpoints/tiny-sdxl.safetensors"
    (root / "checkpoints" / f"{TITLE_LIKE}.safetensors").symlink_to(sdxl)
    return root


def _cli_json(capsys, *argv: str):
    assert main(list(argv)) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_a_name_that_looks_like_a_title_is_matched_literally_everywhere(models, tmp_path, capsys):
    listed = {row["name"]: row for row in _cli_json(capsys, "models", "--json", "--models-dir", str(models))}
    assert TITLE_LIKE in listed and listed[TITLE_LIKE]["architecture"] == "sdxl"
    library = open_library(models)
    library.scan()
    path = models / "checkpoints" / f"{TITLE_LIKE}.safetensors"
    assert library.find(TITLE_LIKE, Kind.CHECKPOINT).path == path
    assert library.find(f"{TITLE_LIKE}.safetensors").path == path
    sd1_hash = library.model_hash(models / "checkpoints/tiny-sd1.safetensors")
    assert library.find(f"tiny-sd1 [{sd1_hash}]").path.name == "tiny-sd1.safetensors"  # A1111 titles still resolve
    title_hash = library.model_hash(path)
    assert library.find(f"{TITLE_LIKE} [{title_hash}]").path == path

    api = model_choice(library, {"sd_model_checkpoint": "tiny-sd1", "sd_vae": "Automatic"},
                       {"sd_model_checkpoint": TITLE_LIKE})  # fmt: skip
    assert api.checkpoint == path
    reproduced = request_from_infotext(f"a cat\nSteps: 2, Seed: 1, Size: 32x32, Model: {TITLE_LIKE}", library)
    assert reproduced.values["checkpoint"] == path and not reproduced.missing

    out = tmp_path / "outputs"
    result = _cli_json(
        capsys, "generate", "--models-dir", str(models), "--outputs-dir", str(out), "--checkpoint", TITLE_LIKE,
        "--prompt", "a cat", "--steps", "2", "--width", "32", "--height", "32", "--json",
    )  # fmt: skip
    assert f"Model: {TITLE_LIKE}," in result["images"][0]["infotext"]


def test_a_file_linked_by_name_keeps_its_name_when_a_linked_folder_also_holds_it(models, tiny_models_dir, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "loras").mkdir(parents=True)
    shutil.copyfile(tiny_models_dir / "checkpoints/tiny-sd1.safetensors", elsewhere / "tiny-sd1.safetensors")
    (elsewhere / "loras" / "style.safetensors").symlink_to(tiny_models_dir / "loras/tiny-sd1-kohya.safetensors")
    checkpoints, loras = models / "checkpoints", models / "loras"
    (checkpoints / "a-shared").symlink_to(elsewhere)  # sorts (and is walked) before the file link
    (checkpoints / "linked-sd1.safetensors").symlink_to(elsewhere / "tiny-sd1.safetensors")
    (loras / "sub").symlink_to(elsewhere / "loras")
    (loras / "by-name.safetensors").symlink_to(elsewhere / "loras" / "style.safetensors")
    library = open_library(models)
    entries = library.scan()
    real = [e for e in entries if e.path.resolve() == (elsewhere / "tiny-sd1.safetensors").resolve()]
    assert len(real) == 1  # one file, listed once, under the name of the link that names it
    assert real[0].name == "linked-sd1" and real[0].aliases == ("a-shared/tiny-sd1",)
    for name in ("linked-sd1", "a-shared/tiny-sd1"):
        assert library.find(name, Kind.CHECKPOINT) == real[0], name
    style = library.find("by-name", Kind.LORA)
    assert library.find("sub/style", Kind.LORA) == style

    engine = build_engine(library, tmp_path / "outputs")
    from webui.engine.pipelines import ModelChoice
    from webui.engine.request import GenerationRequest

    request = GenerationRequest(
        model=ModelChoice(library.find("linked-sd1", Kind.CHECKPOINT).path), prompt="a hat <lora:sub/style:0.7>",
        steps=2, width=32, height=32,
    )  # fmt: skip
    report = engine.generate(request).loras[0]
    assert report.error is None and report.applied > 0
