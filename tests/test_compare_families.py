"""A comparison grid across families in one job (SDXL, FLUX.1, SD3.5): each cell runs with its own family's
semantics (sampler, CFG, distilled guidance) and equals that model's single generation with those settings."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from webui.engine.compare import CellStatus, run_compare
from webui.engine.compare_axes import parse_axis
from webui.engine.compare_plan import CompareJob, library_resolver, plan, with_family_semantics
from webui.engine.device import DevicePolicy
from webui.engine.infotext import parse_infotext
from webui.engine.pipelines import ModelChoice, PipelineManager
from webui.engine.request import GenerationRequest
from webui.engine.txt2img import Engine
from webui.families import Family
from webui.models.library import ModelLibrary

CHECKPOINTS = "checkpoint=tiny-sdxl,tiny-flux-dev-aio,tiny-sd3-incl-clips-t5xxl"
SMALL = {"steps": 2, "width": 32, "height": 32, "seed": 11}


def base(root: Path, **changes) -> GenerationRequest:
    fields = {"prompt": "a red hat", "negative_prompt": "blurry", "cfg_scale": 5.0, "sampler": "DPM++ 2M",
              "schedule": "Karras", **SMALL}  # fmt: skip
    return GenerationRequest(model=ModelChoice(root / "checkpoints/tiny-sdxl.safetensors"), **{**fields, **changes})


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_sdxl_flux_and_sd3_checkpoints_in_one_grid_each_with_its_family_semantics(tiny_models_dir, tmp_path):
    library = ModelLibrary(tiny_models_dir)
    library.scan()
    engine = Engine(PipelineManager(tiny_models_dir, DevicePolicy(device="cpu")), tmp_path)
    job = CompareJob(base(tiny_models_dir), parse_axis(CHECKPOINTS))
    result = run_compare(engine, job, library_resolver(library))
    assert [c.status for c in result.cells] == [CellStatus.DONE] * 3, [c.error for c in result.cells]
    params = [parse_infotext(c.infotext)[2] for c in result.cells]
    assert [(p["Sampler"], p["CFG scale"]) for p in params] == [("DPM++ 2M", "5"), ("Euler", "1"), ("Euler", "3.5")]
    assert params[1]["Distilled CFG Scale"] == "3.5" and "Distilled CFG Scale" not in params[2]
    for cell in result.cells:  # each cell is what a single generation of its model with those settings gives
        single = engine.generate(cell.cell.request)
        assert np.array_equal(pixels(cell.path), pixels(single.images[0].path)), cell.cell.x_label
    (grid,) = result.grids
    assert grid.is_file()


def test_axis_values_win_over_family_defaults(tiny_models_dir):
    library = ModelLibrary(tiny_models_dir)
    library.scan()
    job = CompareJob(base(tiny_models_dir), parse_axis(CHECKPOINTS), parse_axis("cfg=2,6"))
    families = {"tiny-sdxl": (Family.SDXL, None), "tiny-flux-dev-aio": (Family.FLUX, "dev"),
                "tiny-sd3-incl-clips-t5xxl": (Family.SD3, "3.5-large")}  # fmt: skip
    cells = with_family_semantics(job, plan(job, library_resolver(library)),
                                  lambda choice: families[choice.name])  # fmt: skip
    assert [(c.request.sampler, c.request.cfg_scale) for c in cells] == [
        ("DPM++ 2M", 2.0), ("Euler", 2.0), ("Euler", 2.0), ("DPM++ 2M", 6.0), ("Euler", 6.0), ("Euler", 6.0)
    ]
    same = CompareJob(replace(job.base), parse_axis("cfg=2,6"))
    unchanged = plan(same, library_resolver(library))
    assert with_family_semantics(same, unchanged, lambda choice: families[choice.name]) == unchanged
