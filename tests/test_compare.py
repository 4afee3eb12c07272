"""Comparison grids: planning (pure), run order and loads, cells equal to single generations, error and interrupted
tiles, labels drawn, grid metadata, and the `compare` command."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from webui.cli import main
from webui.engine.compare import CellStatus, run_compare
from webui.engine.compare_axes import Axis, AxisKind, parse_axis
from webui.engine.compare_plan import CompareJob, fix_seeds, library_resolver, plan, run_order
from webui.engine.grid import BACKGROUND, ERROR_BACKGROUND, INTERRUPTED_BACKGROUND, Tile, draw_grid
from webui.engine.lora import LoraSpec
from webui.engine.pipelines import ModelChoice, PipelineManager
from webui.engine.progress import CancelToken
from webui.engine.request import GenerationRequest
from webui.engine.txt2img import Engine
from webui.models.library import ModelLibrary

SMALL = {"steps": 2, "width": 32, "height": 32, "seed": 11}


def fake_resolve(kind: AxisKind, value: str) -> Path:
    """Names -> paths without a library (planning never opens files)."""
    if "missing" in value:
        raise LookupError(f"no {kind.value} model named {value!r}")
    return Path("/models") / kind.value / f"{value}.safetensors"


def base_request(**changes) -> GenerationRequest:
    fields = {"model": ModelChoice(Path("/models/checkpoint/a.safetensors")), "prompt": "a red hat", **SMALL}
    return GenerationRequest(**(fields | changes))


# -- planning (pure) ------------------------------------------------------------------------------------------------
def test_prompt_sr_replaces_the_first_value_in_prompt_and_negative():
    axis = parse_axis('prompt-sr=red,"blue, green",')  # CSV quoting; an empty value removes the text
    assert axis.values == ("red", "blue, green", "")
    job = CompareJob(base_request(prompt="a red hat", negative_prompt="red eyes"), axis)
    cells = plan(job, fake_resolve)
    assert [(c.request.prompt, c.request.negative_prompt) for c in cells] == [
        ("a red hat", "red eyes"),
        ("a blue, green hat", "blue, green eyes"),
        ("a  hat", " eyes"),
    ]
    assert [c.x_label for c in cells] == ["red", "blue, green", "(nothing)"]
    with pytest.raises(ValueError, match="prompt-sr axis: 'dog'"):
        plan(CompareJob(base_request(), Axis(AxisKind.PROMPT_SR, ("dog", "cat"))), fake_resolve)


def test_seed_axis_plans_one_seed_per_value_and_random_seeds_are_fixed_once():
    job = CompareJob(base_request(seed=-1), Axis(AxisKind.CFG, ("4", "7")), Axis(AxisKind.SEED, ("1", "-1")))
    fixed = fix_seeds(job)
    random_seed = int(fixed.y.values[1])
    assert fixed.base.seed >= 0 and fixed.y.values[0] == "1" and random_seed >= 0
    cells = plan(fixed, fake_resolve)
    assert [(c.x, c.y, c.request.cfg_scale, c.request.seed) for c in cells] == [
        (0, 0, 4.0, 1),
        (1, 0, 7.0, 1),
        (0, 1, 4.0, random_seed),
        (1, 1, 7.0, random_seed),
    ]
    assert all(c.request.batch_size == 1 and c.request.batch_count == 1 for c in cells)


def test_lora_axis_varies_one_lora_of_the_stack_and_adds_it_when_absent():
    other = LoraSpec(Path("/models/lora/other.safetensors"), 0.3, 0.3)
    varied = LoraSpec(Path("/models/lora/style.safetensors"), 0.8, 0.6)
    job = CompareJob(base_request(loras=(other, varied)), parse_axis("lora:style=off,on,0.5,1:0.25"))
    stacks = [c.request.loras for c in plan(job, fake_resolve)]
    assert all(stack[0] == other for stack in stacks)
    assert [(s[1].enabled, s[1].unet_weight, s[1].te_weight) for s in stacks] == [
        (False, 0.8, 0.6),
        (True, 0.8, 0.6),
        (True, 0.5, 0.5),
        (True, 1.0, 0.25),
    ]
    added = plan(CompareJob(base_request(), parse_axis("lora:new=0,1")), fake_resolve)
    assert [c.request.loras for c in added] == [
        (LoraSpec(Path("/models/lora/new.safetensors"), 0.0, 0.0),),
        (LoraSpec(Path("/models/lora/new.safetensors"), 1.0, 1.0),),
    ]
    assert Axis(AxisKind.LORA, ("1",), "loras/new.safetensors").title == "LoRA new.safetensors"
    with pytest.raises(ValueError, match="name the LoRA"):
        plan(CompareJob(base_request(loras=(other, varied)), parse_axis("lora=0,1")), fake_resolve)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("cfg=4,abc", "cfg axis: 'abc': not a number"),
        ("steps=2,2.5", "steps axis: '2.5': not a whole number"),
        ("lora:x=on,heavy", "lora axis: 'heavy'"),
        ("sampler=Euler,Eulr", "did you mean 'Euler'"),
        ("colour=red", "axis 'colour' is unknown"),
    ],
)
def test_bad_values_are_refused_naming_the_axis_and_value(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_axis(spec)


def test_out_of_range_numbers_are_refused_before_anything_runs():
    for axis, message in (
        (Axis(AxisKind.STEPS, ("2", "5000")), "steps axis: '5000'"),
        (Axis(AxisKind.CFG, ("999",)), "cfg axis"),
    ):
        with pytest.raises(ValueError, match=message):
            plan(CompareJob(base_request(), axis), fake_resolve)


def test_cells_that_cannot_be_built_carry_their_error_and_the_others_plan():
    job = CompareJob(
        base_request(schedule="Karras"),
        parse_axis("vae=Automatic,alt,missing-vae"),
        parse_axis('sampler=Euler,"Euler a",DPM++ 2M Karras'),
    )
    cells = plan(job, fake_resolve)
    by_place = {(c.x_label, c.y_label): c for c in cells}
    assert by_place["Automatic", "Euler"].request.model.vae is None
    assert by_place["alt", "Euler"].request.model.vae == Path("/models/vae/alt.safetensors")
    assert "missing-vae" in by_place["missing-vae", "Euler"].error and by_place["missing-vae", "Euler"].request is None
    assert by_place["alt", "Euler a"].request.schedule == "Karras"  # any sampler takes any schedule, as A1111's
    legacy = by_place["alt", "DPM++ 2M Karras"].request
    assert (legacy.sampler, legacy.schedule) == ("DPM++ 2M", "Karras")


def test_run_order_puts_each_checkpoints_cells_together():
    job = CompareJob(base_request(), parse_axis("checkpoint=a,b,missing-c"), parse_axis("cfg=1,4,7"))
    cells = plan(job, fake_resolve)
    order = [cells[i] for i in run_order(cells)]
    assert [c.error is not None for c in order] == [True] * 3 + [False] * 6  # failures first: they take no time
    names = [c.request.model.checkpoint.stem for c in order[3:]]
    assert names == ["a", "a", "a", "b", "b", "b"]
    assert [c.request.cfg_scale for c in order[3:6]] == [1.0, 4.0, 7.0]  # grid order within a model


# -- grid drawing ---------------------------------------------------------------------------------------------------
def _dark(image: Image.Image, box) -> int:
    return int((np.asarray(image.crop(box).convert("L")) < 128).sum())


def test_grid_is_header_plus_cells_and_labels_are_drawn_where_the_layout_says():
    tile = Tile(image=Image.new("RGB", (32, 32), (200, 220, 240)))
    tiles = [[tile, tile, tile], [tile, Tile(error="no such file: " + "x/" * 40), Tile(interrupted=True)]]
    args = ("Checkpoint", ["tiny-sd1", "a much longer checkpoint name that has to wrap", "c"], "CFG scale", ["4", "7"])
    grid, layout = draw_grid(tiles, *args, title="Sampler: Euler")
    assert grid.size == layout.size == (layout.left + 3 * layout.tile_width, layout.top + 2 * layout.tile_height)
    assert layout.tile_width == layout.tile_height == 128  # 32 px tiles scaled up so labels stay readable
    for column in range(3):
        assert _dark(grid, layout.column_label_box(column)) > 5
    for row in range(2):
        assert _dark(grid, layout.row_label_box(row)) > 5
    assert grid.getpixel(layout.tile_box(1, 1)[:2]) == BACKGROUND  # the error tile's frame
    error_box, interrupted_box = layout.tile_box(1, 1), layout.tile_box(2, 1)
    assert grid.getpixel((error_box[0] + 2, error_box[1] + 2)) == ERROR_BACKGROUND
    assert grid.getpixel((interrupted_box[0] + 2, interrupted_box[1] + 2)) == INTERRUPTED_BACKGROUND
    assert np.count_nonzero(np.asarray(grid.crop(error_box))[..., 1] < 100) > 50  # its message, wrapped inside

    blank, blank_layout = draw_grid(tiles, "", ["", "", ""], "", ["", ""])
    for column in range(3):
        assert _dark(blank, blank_layout.column_label_box(column)) == 0
    assert _dark(blank, blank_layout.row_label_box(0)) == 0
    short, short_layout = draw_grid(tiles, "Checkpoint", ["a", "b", "c"], "CFG scale", ["4", "7"])
    assert short_layout.top < layout.top  # the long label wrapped onto more lines instead of overflowing


# -- running with the tiny models -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def resolve(tiny_models_dir):
    library = ModelLibrary(tiny_models_dir)
    library.scan()
    return library_resolver(library)


def new_engine(models_dir: Path, outputs: Path) -> Engine:
    return Engine(PipelineManager(models_dir), outputs)


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_checkpoint_by_cfg_cells_equal_single_generations_and_load_each_model_once(tiny_models_dir, resolve, tmp_path):
    engine = new_engine(tiny_models_dir, tmp_path)
    sd1, sd2 = (tiny_models_dir / f"checkpoints/tiny-{f}.safetensors" for f in ("sd1", "sd2"))
    base = GenerationRequest(model=ModelChoice(sd1), prompt="a red hat", negative_prompt="blurry", **SMALL)
    job = CompareJob(base, parse_axis("checkpoint=tiny-sd1,tiny-sd2"), parse_axis("cfg=1,4,7"))  # grid order: 1,2,1,2..
    result = run_compare(engine, job, resolve)
    assert engine.manager.cache.loads == 6  # UNet, VAE, text encoder of each checkpoint, once
    assert [c.status for c in result.cells] == [CellStatus.DONE] * 6
    assert all(c.seconds > 0 and c.load_seconds >= 0 for c in result.cells)
    assert sum(c.load_seconds for c in result.cells) > 0
    for cell in result.cells:
        planned = cell.cell.request
        single = engine.generate(
            replace(base, model=ModelChoice(planned.model.checkpoint), cfg_scale=planned.cfg_scale)
        )
        assert np.array_equal(pixels(cell.path), pixels(single.images[0].path)), cell.cell
        with Image.open(cell.path) as png:
            assert png.text["parameters"] == cell.infotext == single.images[0].infotext
    (grid,) = result.grids
    assert grid.parent == tmp_path / "grids" / grid.parent.name and grid.name.startswith("00000-11-")
    with Image.open(grid) as png:
        assert png.text["parameters"] == result.cells[0].infotext
        axes = json.loads(png.text["comparison"])
    assert axes["x"]["values"] == ["tiny-sd1", "tiny-sd2"] and axes["y"]["axis"] == "cfg" and axes["z"] is None
    assert {sd1, sd2} == {c.cell.request.model.checkpoint for c in result.cells}


def test_interleaved_checkpoints_are_not_reloaded_when_the_cache_holds_only_two(tiny_models_dir, resolve, tmp_path):
    engine = new_engine(tiny_models_dir, tmp_path)
    names = ["tiny-sd1", "tiny-sd1.ckpt", "tiny-sd2"]
    sizes = []
    for name in names:  # measure what each model holds in memory
        before = engine.manager.cache.total_bytes()
        engine.manager.load(ModelChoice(resolve(AxisKind.CHECKPOINT, name)))
        sizes.append(engine.manager.cache.total_bytes() - before)
    engine.manager.cache.clear()
    engine.manager.cache.set_budget("cpu", sum(sizes) - min(sizes) // 2)  # any two models fit, not all three
    loads = engine.manager.cache.loads
    base = GenerationRequest(model=ModelChoice(resolve(AxisKind.CHECKPOINT, "tiny-sd1")), prompt="a hat", **SMALL)
    job = CompareJob(base, Axis(AxisKind.CHECKPOINT, tuple(names)), parse_axis("cfg=1,7"))
    result = run_compare(engine, job, resolve)
    assert all(c.status is CellStatus.DONE for c in result.cells)
    assert engine.manager.cache.loads - loads == 9  # grid order A,B,C,A,B,C would reload models evicted meanwhile


def test_impossible_cells_become_error_tiles_and_the_rest_completes(tiny_models_dir, resolve, tmp_path):
    engine = new_engine(tiny_models_dir, tmp_path)
    sdxl_lora = LoraSpec(tiny_models_dir / "loras/tiny-sdxl-kohya.safetensors")
    base = GenerationRequest(model=ModelChoice(resolve(AxisKind.CHECKPOINT, "tiny-sdxl")), loras=(sdxl_lora,), **SMALL)
    job = CompareJob(base, parse_axis("checkpoint=tiny-sd1,tiny-sdxl,checkpoints/missing.safetensors"))
    result = run_compare(engine, job, resolve)
    sd1, sdxl, missing = result.cells
    assert sd1.status is CellStatus.ERROR and "SDXL" in sd1.error and "SD1" in sd1.error and sd1.path is None
    assert sdxl.status is CellStatus.DONE and sdxl.path.is_file()
    assert missing.status is CellStatus.ERROR and "missing" in missing.error
    assert list((tmp_path / "txt2img").rglob("*.png")) == [sdxl.path]  # nothing saved for the failed cells
    (grid,) = result.grids
    with Image.open(grid) as png:
        image = png.convert("RGB")
    _, layout = draw_grid([[Tile(interrupted=True)] * 3], "Checkpoint", job.x.labels, tile_size=(32, 32))
    assert image.size == layout.size
    for column, expected in ((0, ERROR_BACKGROUND), (2, ERROR_BACKGROUND)):
        x, y, *_ = layout.tile_box(column, 0)
        assert image.getpixel((x + 2, y + 2)) == expected
    drawn = image.crop(layout.tile_box(1, 0)).resize((32, 32), Image.Resampling.NEAREST)
    assert np.array_equal(np.asarray(drawn), pixels(sdxl.path))


def test_interrupt_keeps_finished_cells_and_draws_the_rest_as_interrupted(tiny_models_dir, resolve, tmp_path):
    engine = new_engine(tiny_models_dir, tmp_path)
    base = GenerationRequest(model=ModelChoice(resolve(AxisKind.CHECKPOINT, "tiny-sd1")), prompt="a hat", **SMALL)
    job = CompareJob(base, parse_axis("cfg=1,4"), parse_axis("seed=1,2"))
    cancel, reports = CancelToken(), []

    def progress(report):
        reports.append(report)
        if report.cell == 2 and report.step == 1:
            cancel.cancel()  # during the second cell

    result = run_compare(engine, job, resolve, progress=progress, cancel=cancel)
    assert [c.status for c in result.cells] == [CellStatus.DONE] + [CellStatus.INTERRUPTED] * 3
    assert result.interrupted and len(list((tmp_path / "txt2img").rglob("*.png"))) == 1
    assert result.cells[1].to_json()["error"] == "interrupted"
    assert (reports[0].cell, reports[0].cells, reports[0].step, reports[0].label) == (1, 4, 1, "x=1, y=1")
    fractions = [r.fraction for r in reports]
    assert fractions == sorted(fractions) and 0 < fractions[0] < 0.25 and fractions[-1] == 1.0
    assert reports[1].eta_seconds is not None and reports[-1].eta_seconds == 0
    (grid,) = result.grids
    with Image.open(grid) as png:
        image = png.convert("RGB")
    _, layout = draw_grid(
        [[Tile(interrupted=True)] * 2] * 2, job.x.title, job.x.labels, job.y.title, job.y.labels, tile_size=(32, 32)
    )
    x, y, *_ = layout.tile_box(1, 0)
    assert image.getpixel((x + 2, y + 2)) == INTERRUPTED_BACKGROUND


def test_a_mismatched_component_becomes_an_error_cell(tiny_models_dir, resolve, tmp_path):
    engine = new_engine(tiny_models_dir, tmp_path)
    base = GenerationRequest(model=ModelChoice(resolve(AxisKind.CHECKPOINT, "tiny-sd1")), **SMALL)
    job = CompareJob(base, parse_axis("text-encoder=Automatic,tiny-sd2-open-clip-h"))
    done, mismatched = run_compare(engine, job, resolve).cells
    assert done.status is CellStatus.DONE
    assert mismatched.status is CellStatus.ERROR and "CLIP-L" in mismatched.error and mismatched.load_seconds >= 0


def test_compare_command_prints_grids_and_cells_as_json(tiny_models_dir, tmp_path, capsys):
    argv = ["compare", "--models-dir", str(tiny_models_dir), "--outputs-dir", str(tmp_path), "--prompt", "a red hat"]
    argv += ["--steps", "2", "--width", "32", "--height", "32", "--seed", "3", "--x", "vae=Automatic,tiny-sd1-vae-alt"]
    argv += ["--y", "checkpoint=tiny-sd1", "--z", "clip-skip=1,2", "--lora", "tiny-sd1-kohya:0.5", "--json"]
    assert main(argv) == 0  # no --checkpoint: the checkpoint axis gives the base model
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"grids", "cells"} and len(out["grids"]) == 2 and all(Path(p).is_file() for p in out["grids"])
    assert [set(c) for c in out["cells"]] == [{"x", "y", "z", "path", "seconds", "load_seconds", "error"}] * 4
    assert [(c["x"], c["y"], c["z"], c["error"]) for c in out["cells"]] == [
        ("Automatic", "tiny-sd1", "1", None),
        ("tiny-sd1-vae-alt", "tiny-sd1", "1", None),
        ("Automatic", "tiny-sd1", "2", None),
        ("tiny-sd1-vae-alt", "tiny-sd1", "2", None),
    ]
    assert not np.array_equal(pixels(Path(out["cells"][0]["path"])), pixels(Path(out["cells"][1]["path"])))
    with Image.open(out["cells"][3]["path"]) as png:
        infotext = png.text["parameters"]
    assert "VAE: tiny-sd1-vae-alt.safetensors" in infotext and "Clip skip: 2" in infotext and "Lora hashes" in infotext

    assert main(["compare", "--models-dir", str(tiny_models_dir), "--checkpoint", "tiny-sd1", "--x", "cfg=7,x"]) == 2
    assert "cfg axis: 'x'" in capsys.readouterr().err


def test_hires_axes_set_hires_fix_and_turn_it_on_with_a1111s_defaults():
    job = CompareJob(base_request(), parse_axis("hires-upscaler=Latent,Lanczos,4x-missing"),
                     parse_axis("denoising=0.3,0.6"), parse_axis("hires-steps=0,5"))  # fmt: skip
    cells = plan(job, fake_resolve)
    assert len(cells) == 12
    first = cells[0].request.hires
    assert (first.upscaler, first.denoising_strength, first.steps, first.scale) == ("Latent", 0.3, 0, 2.0)
    assert [c.request.hires.upscaler for c in cells[:2]] == ["Latent", "Lanczos"]
    missing = cells[2]
    assert missing.request is None and "4x-missing" in missing.error
    assert {(c.request.hires.denoising_strength, c.request.hires.steps) for c in cells if c.request} == {
        (0.3, 0), (0.6, 0), (0.3, 5), (0.6, 5)
    }
    with pytest.raises(ValueError, match="denoising axis: '1.5'.*denoising_strength"):
        plan(CompareJob(base_request(), parse_axis("denoising=0.5,1.5")), fake_resolve)
    assert AxisKind.HIRES_UPSCALER.title == "Hires upscaler" and AxisKind.DENOISING.title == "Denoising"


def test_a_hires_comparison_cell_equals_the_single_hires_generation(tiny_models_dir, resolve, tmp_path):
    upscalers = lambda name: resolve(AxisKind.HIRES_UPSCALER, name)  # noqa: E731
    engine = Engine(PipelineManager(tiny_models_dir), tmp_path, upscaler_resolver=upscalers)
    small = {**SMALL, "width": 16, "height": 16}
    base = GenerationRequest(model=ModelChoice(resolve(AxisKind.CHECKPOINT, "tiny-sd1")), prompt="a hat", **small)
    job = CompareJob(base, parse_axis("hires-upscaler=Latent (nearest),tiny-2x-esrgan"))
    result = run_compare(engine, job, resolve)
    for cell in result.cells:
        assert cell.status is CellStatus.DONE and Image.open(cell.path).size == (32, 32)
        single = engine.generate(replace(base, hires=cell.cell.request.hires))
        assert np.array_equal(pixels(cell.path), pixels(single.images[0].path))
        assert f"Hires upscaler: {cell.cell.x_label}" in cell.infotext
