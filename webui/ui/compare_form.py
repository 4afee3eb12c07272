"""The Compare tab's logic without its widgets: field values (by name) → a CompareJob, each axis' value choices from
the library, and the job's progress and result as the tab shows them."""

from __future__ import annotations

import html
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from webui.engine.compare import CellStatus, CompareProgress, CompareResult, cell_label
from webui.engine.compare_axes import Axis, AxisKind, parse_values
from webui.engine.compare_plan import FILE_KINDS, CompareJob
from webui.engine.grid import MIN_FONT, MIN_TILE, Tile, render_tile
from webui.engine.samplers import AUTOMATIC, SAMPLER_NAMES, SCHEDULE_TYPES
from webui.engine.upscalers import upscaler_names
from webui.models.kinds import Kind
from webui.models.library import ModelLibrary
from webui.ui import adapter, choices

AXES = ("x", "y", "z")
NO_AXIS = "none"
# Axes whose values are picked from a list (the library's files of the right kind, the samplers, the schedules);
# the others are typed as comma-separated values.
PICKED = frozenset(
    {AxisKind.CHECKPOINT, AxisKind.UNET, AxisKind.TEXT_ENCODER, AxisKind.VAE, AxisKind.SAMPLER, AxisKind.SCHEDULE,
     AxisKind.HIRES_UPSCALER}
)  # fmt: skip
PLACEHOLDERS = {
    AxisKind.CFG: "4, 7, 10",
    AxisKind.STEPS: "10, 20, 30",
    AxisKind.SEED: "1, 2, 3",
    AxisKind.CLIP_SKIP: "1, 2",
    AxisKind.PROMPT_SR: 'red, blue, "dark, green"   (the first value is searched in the prompt)',
    AxisKind.LORA: "off, 0.5, 1   (a weight, UNET:TE weights, on or off)",
    AxisKind.DENOISING: "0.3, 0.5, 0.7   (Hires. fix's; turned on if it is off)",
    AxisKind.HIRES_STEPS: "0, 10, 20   (0: as many as the first pass)",
}
# The base request's fields on the tab (the model comes from the model bar).
BASE_FIELDS = (
    "prompt",
    "negative_prompt",
    "sampler",
    "schedule",
    "steps",
    "width",
    "height",
    "cfg_scale",
    "seed",
    "clip_skip",
)


def axis_names(axis: str) -> dict[str, str]:
    """Field names of one axis' widgets: what it varies, the values picked, the values typed, the LoRA it varies."""
    return {part: f"{axis}_{part}" for part in ("axis", "pick", "values", "lora")}


FIELD_NAMES = (*BASE_FIELDS, *adapter.MODEL_FIELDS, *(name for a in AXES for name in axis_names(a).values()))


def kind_choices(optional: bool) -> list[tuple[str, str]]:
    """(title, command-line name) for every axis kind; "None" first for an optional axis."""
    kinds = [(kind.title, kind.value) for kind in AxisKind]
    return [("None", NO_AXIS), *kinds] if optional else kinds


def axis_kind(value: str | None) -> AxisKind | None:
    """The kind a dropdown value names; None for "none" or nothing. ValueError lists the allowed names."""
    if not value or value == NO_AXIS:
        return None
    try:
        return AxisKind(value)
    except ValueError:
        allowed = ", ".join(kind.value for kind in AxisKind)
        raise ValueError(f"axis {value!r} is unknown; allowed: {NO_AXIS}, {allowed}") from None


def pick_choices(library: ModelLibrary, kind: AxisKind | None) -> list[str]:
    """What a picked axis offers: usable library files of its kind ("Automatic": the checkpoint's own), samplers
    ("Automatic": the model's own), schedule types; nothing for a typed axis."""
    if kind is AxisKind.CHECKPOINT:
        return choices.checkpoints(library)
    if kind in (AxisKind.UNET, AxisKind.TEXT_ENCODER, AxisKind.VAE):
        return [AUTOMATIC, *(choices.title(e) for e in library.entries(FILE_KINDS[kind]) if e.usable)]
    if kind is AxisKind.SAMPLER:
        return [AUTOMATIC, *SAMPLER_NAMES]
    if kind is AxisKind.SCHEDULE:
        return list(SCHEDULE_TYPES)
    if kind is AxisKind.HIRES_UPSCALER:
        return upscaler_names(True, [e.name for e in library.entries(Kind.UPSCALER) if e.usable])
    return []


def axis_from_values(values: Mapping[str, Any], axis: str) -> Axis | None:
    """One axis from its widgets' values; None when it is switched off. ValueError names the axis and the value."""
    names = axis_names(axis)
    kind = axis_kind(values.get(names["axis"]))
    if kind is None:
        return None
    if kind in PICKED:
        items = tuple(str(v) for v in values.get(names["pick"]) or ())
    else:
        items = parse_values(values.get(names["values"]) or "")
        if kind is not AxisKind.PROMPT_SR:
            items = tuple(v for v in items if v)  # a trailing comma is a typo, not a value
    if not items:
        verb = "pick" if kind in PICKED else "write"
        raise ValueError(f"{kind.value} axis ({axis.upper()}): no values; {verb} at least one")
    target = (values.get(names["lora"]) or None) if kind is AxisKind.LORA else None
    return Axis(kind, items, target)


def build_job(values: Mapping[str, Any], library: ModelLibrary) -> CompareJob:
    """The job the tab describes. The model is the model bar's; without a checkpoint there, a checkpoint axis'
    first value is the base (as `python -m webui compare` does)."""
    x, y, z = (axis_from_values(values, axis) for axis in AXES)
    if x is None:
        raise ValueError("x_axis: choose what the grid's columns vary")
    model = {name: values.get(name) for name in adapter.MODEL_FIELDS}
    checkpoint_axis = next((a for a in (x, y, z) if a is not None and a.kind is AxisKind.CHECKPOINT), None)
    if not model["checkpoint"] and checkpoint_axis is not None:
        model["checkpoint"] = checkpoint_axis.values[0].strip()
    base = adapter.build_request({**{n: values[n] for n in BASE_FIELDS if n in values}, **model}, library)
    return CompareJob(base, x, y, z)


def cell_items(result: CompareResult) -> list[dict[str, Any]]:
    """Every cell in grid order: its label, saved file (None without an image), infotext and error."""
    return [
        {
            "label": cell_label(r.cell),
            "path": None if r.path is None else str(r.path),
            "infotext": r.infotext or "",
            "error": r.to_json()["error"],
        }
        for r in result.cells
    ]


def result_json(result: CompareResult) -> dict[str, Any]:
    """The engine's JSON for the result, each cell's `path` named `file`: Gradio takes any dict with a `path` key
    for a file to send, and gradio_client replaces it with its own downloaded copy."""
    cells = [{("file" if k == "path" else k): v for k, v in cell.items()} for cell in result.to_json()["cells"]]
    return {"grids": [str(p) for p in result.grids], "cells": cells}


def gallery_value(items: list[dict[str, Any]]) -> list[tuple[Any, str]]:
    """(image, caption) per cell: the saved file, or a tile drawn as the grid draws it, captioned with the error."""
    out: list[tuple[Any, str]] = []
    for item in items:
        if item["path"] is not None:
            out.append((item["path"], item["label"]))
            continue
        error = item["error"]
        tile = Tile(interrupted=True) if error == "interrupted" else Tile(error=error or "failed")
        out.append((render_tile(tile, (MIN_TILE, MIN_TILE), MIN_FONT), f"{item['label']}: {error}"))
    return out


def grid_choices(job: CompareJob, result: CompareResult, outputs_dir: Path) -> list[tuple[str, str]]:
    """(label, value) per saved grid: one per Z value that ran (a Z value whose cells were all interrupted has none).
    The value is the grid's path under `outputs_dir` (`grids/…/00001.png`): no absolute path reaches the browser."""
    values = [Path(path).resolve().relative_to(outputs_dir.resolve()).as_posix() for path in result.grids]
    if job.z is None:
        return [("Grid", value) for value in values]
    ran: dict[int, str] = {}
    for r in result.cells:
        if r.status is not CellStatus.INTERRUPTED:
            ran.setdefault(r.cell.z, r.cell.z_label or "")
    labels = [f"{job.z.title}: {ran[z]}" for z in sorted(ran)]
    return list(zip(labels, values, strict=True))


def grid_path(outputs_dir: Path, value: str) -> Path:
    """The file a `grid_choices` value names; ValueError for anything outside `outputs_dir` (a value sent back by a
    browser is not trusted to stay there)."""
    root = outputs_dir.resolve()
    path = (root / value).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise ValueError(f"grid: {value[:100]!r} is not a saved grid; run the comparison again")
    return path


def progress_html(report: Any) -> str:
    """The job-wide bar: cell i of n, the step within it, the time left, the cell's label."""
    if not isinstance(report, CompareProgress):
        return _bar(0.0, "starting…")
    text = f"cell {report.cell}/{report.cells}"
    if report.steps:
        text += f" · step {report.step}/{report.steps}"
    if report.eta_seconds is not None:
        text += f" · ETA {report.eta_seconds:.0f} s"
    return _bar(report.fraction, f"{text} · {report.label}" if report.label else text)


def done_html(result: CompareResult | None, seconds: float) -> str:
    if result is None:
        return '<div class="gen-progress interrupted"><span class="gen-text">interrupted before it started</span></div>'
    done = sum(r.status is CellStatus.DONE for r in result.cells)
    failed = sum(r.status is CellStatus.ERROR for r in result.cells)
    total = len(result.cells)
    text = f"interrupted: {done} of {total} cells kept" if result.interrupted else f"{done} of {total} cells"
    text += f", {failed} failed" if failed else ""
    text += f" in {seconds:.1f} s"
    return _bar(1.0, text, "interrupted" if result.interrupted else "done")


def _bar(fraction: float, text: str, state: str = "running") -> str:
    """The same markup as txt2img's progress bar (webui.ui.runner), so the page's CSS styles both."""
    return (
        f'<div class="gen-progress {state}"><div class="gen-bar"><div class="gen-fill" '
        f'style="width:{fraction * 100:.1f}%"></div></div><span class="gen-text">{html.escape(text)}</span></div>'
    )


def slider_value(items: list[dict[str, Any]], left: Any, right: Any) -> tuple[str, str] | None:
    """The two cells' files for the image slider; None unless both picks name a cell with an image."""
    paths = [items[i]["path"] if isinstance(i, int) and 0 <= i < len(items) else None for i in (left, right)]
    return (paths[0], paths[1]) if paths[0] and paths[1] else None
