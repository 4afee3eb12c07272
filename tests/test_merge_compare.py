"""Compare over merges: a checkpoint axis "A, merge 0.3, merge 0.5, B" writes each merge once and reuses it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from webui.engine.compare import CellStatus, run_compare
from webui.engine.compare_axes import Axis, AxisKind, parse_axis
from webui.engine.compare_plan import CompareJob, library_resolver, plan
from webui.engine.pipelines import ModelChoice, PipelineManager
from webui.engine.request import GenerationRequest
from webui.engine.txt2img import Engine
from webui.families import Family
from webui.merge.compare_merges import CompareMerges
from webui.models.files import read_header
from webui.models.ldm_writer import pipeline_to_ldm, save_single_file
from webui.models.library import ModelLibrary
from webui.testing.tiny import TOKENIZER_DIR, build_tiny_pipeline


@pytest.fixture
def library(tiny_models_dir, tmp_path) -> ModelLibrary:
    root = tmp_path / "models"
    (root / "checkpoints").mkdir(parents=True)
    shutil.copy(tiny_models_dir / "checkpoints/tiny-sd1.safetensors", root / "checkpoints/a.safetensors")
    shutil.copytree(tiny_models_dir / TOKENIZER_DIR, root / TOKENIZER_DIR)
    state = pipeline_to_ldm(build_tiny_pipeline(Family.SD1, 1), Family.SD1)
    save_single_file(state, root / "checkpoints/b.safetensors", dtype=torch.float16)
    found = ModelLibrary(root)
    found.scan()
    return found


def test_merge_values_parse_label_and_need_a_checkpoint_on_each_side():
    axis = parse_axis("checkpoint=a,merge 0.3,merge 0.5,b")
    assert axis.labels == ("a", "0.7(a) + 0.3(b)", "0.5(a) + 0.5(b)", "b")
    with pytest.raises(ValueError, match="needs a checkpoint before and after it"):
        Axis(AxisKind.CHECKPOINT, ("a", "merge 0.3"))
    with pytest.raises(ValueError, match="out of range"):
        Axis(AxisKind.CHECKPOINT, ("a", "merge 1.5", "b"))


def test_a_merge_axis_writes_each_merge_once_and_its_images_name_it(library, tmp_path):
    engine = Engine(PipelineManager(library.models_dir), tmp_path / "outputs")
    base = GenerationRequest(
        model=ModelChoice(library.find("a").path), prompt="a red hat", steps=2, width=32, height=32, seed=11
    )
    job = CompareJob(base, parse_axis("checkpoint=a,merge 0,merge 0.5,merge 1,b"))
    merges = CompareMerges(library)
    result = run_compare(engine, job, library_resolver(library), merges=merges)
    assert [c.status for c in result.cells] == [CellStatus.DONE] * 5
    pixels = [np.asarray(Image.open(c.path)) for c in result.cells]
    assert np.array_equal(pixels[1], pixels[0]) and np.array_equal(pixels[3], pixels[4])  # α 0 is A, α 1 is B
    assert not np.array_equal(pixels[2], pixels[0]) and not np.array_equal(pixels[2], pixels[4])
    written = sorted(p.name for p in (library.models_dir / "checkpoints/merges").iterdir())
    assert written == ["0(a) + 1(b).safetensors", "0.5(a) + 0.5(b).safetensors", "1(a) + 0(b).safetensors"]
    half = library.models_dir / "checkpoints/merges/0.5(a) + 0.5(b).safetensors"
    recipe = json.loads(read_header(half).metadata["sd_merge_recipe"])
    assert recipe["interp_method"] == "Weighted sum" and recipe["multiplier"] == 0.5
    assert "Model: 0.5(a) + 0.5(b)," in result.cells[2].infotext
    assert library.find("0.5(a) + 0.5(b)").path == half  # listed without a restart: the infotext's model is found
    made = half.stat().st_mtime_ns
    again = CompareMerges(library)
    cells = plan(CompareJob(base, parse_axis("checkpoint=a,merge 0.5,b")), library_resolver(library), again)
    assert cells[1].request.model.checkpoint == half and again.ensure(half)
    assert half.stat().st_mtime_ns == made  # reused, not merged again


def test_merge_values_without_a_library_are_refused(library):
    base = GenerationRequest(model=ModelChoice(library.find("a").path), prompt="x", steps=2, width=32, height=32)
    with pytest.raises(ValueError, match="merges need the model library"):
        plan(CompareJob(base, parse_axis("checkpoint=a,merge 0.5,b")), library_resolver(library))
