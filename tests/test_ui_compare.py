"""The Compare tab: its form (widget values by name → CompareJob) and its /compare endpoint through gradio_client."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from PIL import Image
from ui_server import SMALL, TINY_SD1, running_app

pytestmark = pytest.mark.slow

TINY_SD2 = "tiny-sd2.safetensors"
OUTPUT_NAMES = ("grid", "cells", "result", "progress", "preview", "grid_pick", "left", "right", "slider", "cell_info")


@pytest.fixture(scope="module")
def app(tiny_models_dir, tmp_path_factory):
    with running_app(tiny_models_dir, tmp_path_factory.mktemp("ui-compare")) as running:
        yield running


@pytest.fixture(scope="module")
def client(app, tmp_path_factory):
    from gradio_client import Client

    downloads = tmp_path_factory.mktemp("ui-compare-downloads")
    client = Client(app.url, verbose=False, download_files=str(downloads), analytics_enabled=False)
    yield client
    client.close()


def compare(client, **fields):
    """/compare's outputs by name; fields by name, the rest at their defaults (tiny SD1, 32x32, 2 steps)."""
    values = client.predict(**{"checkpoint": TINY_SD1, **SMALL, **fields}, api_name="/compare")
    return dict(zip(OUTPUT_NAMES, values, strict=False))


def form_values(**fields):
    return {"checkpoint": TINY_SD1, "prompt": "a red hat", **SMALL, "x_axis": "cfg", "x_values": "4, 7", **fields}


def test_form_builds_axes_from_picks_and_csv_text(app):
    from webui.engine.compare_axes import AxisKind
    from webui.ui.compare_form import build_job

    library = app.context.library
    job = build_job(
        form_values(
            x_axis="checkpoint",
            x_pick=[TINY_SD1, TINY_SD2],
            y_axis="prompt-sr",
            y_values='red, "blue, green"',
            z_axis="none",
        ),
        library,
    )
    assert (job.x.kind, job.x.values) == (AxisKind.CHECKPOINT, (TINY_SD1, TINY_SD2))
    assert job.y.values == ("red", "blue, green") and job.z is None
    assert job.base.model.checkpoint.name == TINY_SD1 and job.base.steps == 2
    lora = build_job(form_values(y_axis="lora", y_lora="tiny-sd1-kohya.safetensors", y_values="off, 0.5,"), library)
    assert (lora.y.target, lora.y.values) == ("tiny-sd1-kohya.safetensors", ("off", "0.5"))
    no_bar_model = build_job(form_values(checkpoint=None, x_axis="checkpoint", x_pick=[TINY_SD2]), library)
    assert no_bar_model.base.model.checkpoint.name == TINY_SD2  # as `python -m webui compare`
    with pytest.raises(ValueError, match=r"steps axis \(Y\): no values; write at least one"):
        build_job(form_values(y_axis="steps", y_values=" "), library)


def test_compare_endpoint_takes_fields_by_name(client):
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/compare"]
    names = {p["parameter_name"] for p in api["parameters"]}
    for axis in ("x", "y", "z"):
        assert {f"{axis}_axis", f"{axis}_pick", f"{axis}_values", f"{axis}_lora"} <= names
    assert {"prompt", "negative_prompt", "steps", "cfg_scale", "seed", "width", "height", "sampler"} <= names
    assert {"checkpoint", "vae"} <= names


def test_checkpoints_by_cfg_give_a_saved_grid_and_four_saved_cells(client, app):
    out = compare(
        client,
        prompt="a lighthouse",
        seed=5,
        x_axis="checkpoint",
        x_pick=[TINY_SD1, TINY_SD2],
        y_axis="cfg",
        y_values="1, 7",
    )
    outputs = app.outputs_dir.resolve()
    grids = [Path(p) for p in out["result"]["grids"]]
    assert len(grids) == 1 and grids[0].is_file() and grids[0].is_relative_to(outputs / "grids")
    with Image.open(grids[0]) as grid:
        assert "comparison" in grid.text and grid.text["parameters"].startswith("a lighthouse\n")
    cells = out["result"]["cells"]
    assert [(c["x"], c["y"], c["error"]) for c in cells] == [
        (TINY_SD1, "1", None),
        (TINY_SD2, "1", None),
        (TINY_SD1, "7", None),
        (TINY_SD2, "7", None),
    ]
    for cell in cells:
        path = Path(cell["file"])
        assert path.is_file() and path.is_relative_to(outputs / "txt2img")
        with Image.open(path) as image:
            text = image.text["parameters"]
        assert f"CFG scale: {cell['y']}," in text and f"Model: {Path(cell['x']).stem}," in text and "Seed: 5," in text
    assert len(out["cells"]) == 4 and "4 of 4 cells in" in out["progress"]
    assert Path(out["grid"]).is_file()  # the grid image itself, as the browser gets it


def test_a_bad_value_is_refused_with_the_engine_message_and_a_missing_file_is_an_error_cell(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=r"cfg axis: 'abc': not a number"):
        compare(client, x_axis="cfg", x_values="4, abc")
    out = compare(client, seed=1, x_axis="checkpoint", x_pick=[TINY_SD1, "missing-model.safetensors"])
    done, failed = out["result"]["cells"]
    assert done["error"] is None and "missing-model" in failed["error"] and failed["file"] is None
    assert out["cells"][1]["caption"].startswith("x=missing-model.safetensors: no checkpoint model named")
    assert "1 of 2 cells, 1 failed" in out["progress"]


def test_interrupt_stops_the_job_and_the_grid_keeps_the_finished_cells(client):
    job = client.submit(
        **{"checkpoint": TINY_SD1, **SMALL, "steps": 50}, x_axis="seed", x_values="1, 2, 3", api_name="/compare"
    )
    deadline = time.monotonic() + 120
    while "cell 2/3" not in str(job.outputs()[-1:]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.predict(api_name="/interrupt") == "interrupting…"
    out = dict(zip(OUTPUT_NAMES, job.result(timeout=120), strict=False))
    first, *rest = out["result"]["cells"]
    assert first["error"] is None and rest[-1]["error"] == "interrupted"
    assert len(out["result"]["grids"]) == 1 and "interrupted: " in out["progress"]
