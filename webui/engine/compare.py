"""Running a comparison: every cell through `Engine.generate`, job-wide progress, and one labelled grid per Z value."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from webui.engine.compare_plan import (
    Cell,
    CompareJob,
    MergeTargets,
    Resolver,
    fix_seeds,
    plan,
    run_order,
    with_family_semantics,
)
from webui.engine.grid import Tile, draw_grid, save_grid
from webui.engine.infotext import format_infotext
from webui.engine.outputs import day_folder
from webui.engine.pipelines import family_of_choice
from webui.engine.progress import CancelToken, Progress
from webui.engine.request import GenerationRequest
from webui.engine.samplers import default_sampling, is_family_default

if TYPE_CHECKING:
    from webui.engine.txt2img import Engine

log = logging.getLogger(__name__)

# What makes one cell fail without stopping the others: bad combinations, missing or mismatched files, a model that
# does not fit (torch shape errors are RuntimeErrors), a sampler whose extra package is missing.
CELL_ERRORS = (ValueError, LookupError, OSError, RuntimeError, ImportError)


class CellStatus(str, Enum):
    DONE = "done"
    ERROR = "error"
    INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class CellResult:
    """What became of one cell: its saved image and infotext, or its error; seconds generating and loading."""

    cell: Cell
    status: CellStatus
    path: Path | None = None
    infotext: str | None = None
    seconds: float | None = None
    load_seconds: float | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        error = "interrupted" if self.status is CellStatus.INTERRUPTED else self.error
        return {
            "x": self.cell.x_label,
            "y": self.cell.y_label,
            "z": self.cell.z_label,
            "path": None if self.path is None else str(self.path),
            "seconds": self.seconds,
            "load_seconds": self.load_seconds,
            "error": error,
        }


@dataclass(frozen=True)
class CompareResult:
    """The saved grids (one per Z value that ran) and every cell, in grid order."""

    grids: list[Path]
    cells: list[CellResult]
    interrupted: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"grids": [str(p) for p in self.grids], "cells": [c.to_json() for c in self.cells]}


@dataclass(frozen=True)
class CompareProgress:
    """Where the job stands: cell `cell` of `cells` (1-based, in run order), the step within that cell (as the engine
    counts them), the fraction of the whole job done (cells weighted by their steps) and the time left."""

    cell: int
    cells: int
    step: int
    steps: int
    fraction: float
    eta_seconds: float | None
    label: str
    preview: Image.Image | None = None


CompareProgressCallback = Callable[[CompareProgress], None]


def cell_label(cell: Cell) -> str:
    """`x=..., y=..., z=...` for the axes the job has."""
    parts = [("x", cell.x_label), ("y", cell.y_label), ("z", cell.z_label)]
    return ", ".join(f"{name}={value}" for name, value in parts if value is not None)


class _JobProgress:
    """Turns the engine's per-step reports into job-wide ones (cells weighted by their steps), with an ETA from the
    job's pace so far. Several cells may run at once (a spread-out engine): each has its own callback."""

    def __init__(self, callback: CompareProgressCallback | None, cells: int, total_weight: int) -> None:
        self.callback, self.cells, self.total_weight = callback, cells, max(1, total_weight)
        self.started = time.perf_counter()
        self.done_weight = 0
        self.running: dict[int, list[Any]] = {}  # cell number -> [weight, fraction within it, step, steps]
        self._lock = threading.Lock()

    def start(self, number: int, cell: Cell) -> Callable[[Progress], None]:
        """Mark cell `number` running; returns the engine callback for it."""
        weight = cell.request.steps if cell.request is not None else 0
        with self._lock:
            self.running[number] = [weight, 0.0, 0, 0]

        def engine_callback(progress: Progress) -> None:
            with self._lock:
                self.running[number][1:] = [progress.step / max(1, progress.steps), progress.step, progress.steps]
            self._emit(number, cell_label(cell), progress.step, progress.steps, progress.preview)

        return engine_callback

    def finish(self, number: int, cell: Cell) -> None:
        with self._lock:
            weight, _fraction, step, steps = self.running.pop(number)
            self.done_weight += weight
        self._emit(number, cell_label(cell), step, steps)

    def _emit(self, number: int, label: str, step: int, steps: int, preview: Image.Image | None = None) -> None:
        if self.callback is None:
            return
        with self._lock:
            running = sum(weight * fraction for weight, fraction, _step, _steps in self.running.values())
            done = min(1.0, (self.done_weight + running) / self.total_weight)
        elapsed = time.perf_counter() - self.started
        eta = elapsed / done * (1 - done) if done > 0 else None
        self.callback(CompareProgress(number, self.cells, step, steps, done, eta, label, preview))


def run_compare(
    engine: Engine,
    job: CompareJob,
    resolve: Resolver,
    progress: CompareProgressCallback | None = None,
    cancel: CancelToken | None = None,
    preview_every: int = 0,
    merges: MergeTargets | None = None,
) -> CompareResult:
    """Run every cell (grouped to load each model once), then draw and save one grid per Z value.

    A cell that cannot run becomes an error tile; `cancel` stops the job within one step: finished cells are kept,
    the rest are drawn as interrupted. A Z value none of whose cells ran gets no grid. An engine spread over
    several replicas (`parallel_jobs` > 1, `webui.cluster`) gets that many cells at once, in the same run order.
    A checkpoint axis' `merge α` values are written by `merges` just before the first cell that uses each (and
    reused after)."""
    job = fix_seeds(job)
    # a merge α cell's file does not exist yet: its family is unknown and the cell is left as planned
    cells = with_family_semantics(job, plan(job, resolve, merges), family_of_choice)
    order = run_order(cells)
    tracker = _JobProgress(progress, len(cells), sum(c.request.steps for c in cells if c.request))

    def run_one(number: int, index: int) -> CellResult:
        cell = cells[index]
        callback = tracker.start(number, cell)
        try:
            if cell.request is None:
                return CellResult(cell, CellStatus.ERROR, error=cell.error)
            if cancel is not None and cancel.cancelled:
                return CellResult(cell, CellStatus.INTERRUPTED)
            return _run_cell(engine, cell, cell.request, callback, cancel, preview_every, merges)
        finally:
            tracker.finish(number, cell)  # however the cell ended

    workers = max(1, int(getattr(engine, "parallel_jobs", 1)))
    if workers == 1:
        results = {index: run_one(number, index) for number, index in enumerate(order, 1)}
    else:
        with ThreadPoolExecutor(workers, thread_name_prefix="compare-cell") as pool:
            futures = {index: pool.submit(run_one, number, index) for number, index in enumerate(order, 1)}
            results = {index: future.result() for index, future in futures.items()}
    ordered = [results[i] for i in range(len(cells))]
    interrupted = any(r.status is CellStatus.INTERRUPTED for r in ordered)
    grids = _save_grids(engine, job, ordered)
    return CompareResult(grids, ordered, interrupted)


def _run_cell(
    engine: Engine,
    cell: Cell,
    request: GenerationRequest,
    callback: Callable[[Progress], None],
    cancel: CancelToken | None,
    preview_every: int,
    merges: MergeTargets | None = None,
) -> CellResult:
    """Generate exactly as a normal request; a LoRA that cannot patch this model makes the cell an error
    before anything is saved (strict LoRAs). A merged checkpoint is written first if it is not yet (its time
    counts as loading)."""
    started = time.perf_counter()
    try:
        if merges is not None and request.model.checkpoint is not None:
            if not merges.ensure(request.model.checkpoint, cancel):
                return CellResult(cell, CellStatus.INTERRUPTED, load_seconds=time.perf_counter() - started)
        request = cell_sampling(engine, request)
        result = engine.generate(request, callback, cancel, preview_every, strict_loras=True, partial=False)
    except CELL_ERRORS as error:  # a failed load or a refused LoRA: the time spent finding out counts as loading
        return _failed(cell, error, load_seconds=time.perf_counter() - started)
    load_seconds = result.timings.get("load", 0.0) + result.timings.get("lora", 0.0)
    if not result.images:
        return CellResult(cell, CellStatus.INTERRUPTED, load_seconds=load_seconds)
    image = result.images[0]
    return CellResult(cell, CellStatus.DONE, image.path, image.infotext, result.timings.get("total"), load_seconds)


def cell_sampling(engine: Engine, request: GenerationRequest) -> GenerationRequest:
    """A cell left at a family's default sampler and schedule takes its own model's family default (an SD1 cell
    A1111's DPM++ 2M with Karras, a FLUX.1 cell Euler), as the txt2img tab switches with the checkpoint; a sampler
    the user chose stays, and a model that cannot take it says so. Raises ModelLoadError for a choice no family
    fits (the cell's error)."""
    if not is_family_default(request.sampler, request.schedule):
        return request
    sampler, schedule = default_sampling(engine.manager.family_of(request.model))
    if (sampler, schedule) == (request.sampler, request.schedule):
        return request
    return replace(request, sampler=sampler, schedule=schedule)


def _failed(cell: Cell, error: Exception, load_seconds: float) -> CellResult:
    if isinstance(error, RuntimeError):  # not a validation message: keep the traceback for a bug report
        log.warning("compare cell %s failed", cell_label(cell), exc_info=error)
    return CellResult(cell, CellStatus.ERROR, load_seconds=load_seconds, error=str(error) or type(error).__name__)


def _tile(result: CellResult) -> Tile:
    if result.status is CellStatus.DONE and result.path is not None:
        with Image.open(result.path) as image:
            return Tile(image=image.convert("RGB"))
    if result.status is CellStatus.INTERRUPTED:
        return Tile(interrupted=True)
    return Tile(error=result.error or "failed")


def _base_infotext(job: CompareJob, results: Sequence[CellResult]) -> str:
    """The first finished cell's infotext (as A1111 gives a grid), else the base request's main settings."""
    done = next((r.infotext for r in results if r.infotext), None)
    if done is not None:
        return done
    base = job.base
    params = {
        "Steps": base.steps,
        "Sampler": base.sampler,
        "Schedule type": None if base.schedule == "Automatic" else base.schedule,
        "CFG scale": base.cfg_scale,
        "Seed": base.seed,
        "Size": f"{base.width}x{base.height}",
        "Model": base.model.name,
    }
    return format_infotext(base.prompt, base.negative_prompt, params)


def _save_grids(engine: Engine, job: CompareJob, results: Sequence[CellResult]) -> list[Path]:
    width, height = job.base.width, job.base.height
    columns = len(job.x.values)
    rows = len(job.y.values) if job.y else 1
    folder = day_folder(engine.outputs_dir, "grids")
    suffix = "-".join([str(job.base.seed), *(a.kind.value for a in job.axes)])
    paths = []
    for z in range(len(job.z.values) if job.z else 1):
        grid_results = [r for r in results if r.cell.z == z]
        if all(r.status is CellStatus.INTERRUPTED for r in grid_results):
            continue
        tiles = [[_tile(grid_results[y * columns + x]) for x in range(columns)] for y in range(rows)]
        title = f"{job.z.title}: {job.z.labels[z]}" if job.z else None
        image, _layout = draw_grid(
            tiles,
            job.x.title,
            job.x.labels,
            job.y.title if job.y else None,
            job.y.labels if job.y else None,
            title=title,
            tile_size=(width, height),
        )
        description = {**job.describe(), "z_value": job.z.values[z] if job.z else None}
        texts = {"parameters": _base_infotext(job, grid_results), "comparison": json.dumps(description)}
        paths.append(save_grid(image, folder, suffix, texts))
    return paths
