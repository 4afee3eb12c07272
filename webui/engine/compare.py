"""Comparison jobs: one prompt, seed and settings over up to three axes, run in the order that loads least, saved as
labelled grids.

`plan` is pure: it turns a job into cells, each with its own GenerationRequest or the reason it cannot run. `run_order`
groups the cells so that each model is assembled once. `run_compare` runs every cell through `Engine.generate` (so a
cell is exactly what a normal generation gives, saved with its own infotext), turns failures into error tiles, and draws
one grid per Z value with whatever finished.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from webui.engine.grid import Tile, draw_grid, save_grid
from webui.engine.infotext import format_infotext
from webui.engine.lora import LoraSpec
from webui.engine.outputs import day_folder
from webui.engine.pipelines import ModelChoice
from webui.engine.progress import CancelToken, Progress
from webui.engine.request import GenerationRequest
from webui.engine.samplers import SAMPLER_NAMES, SCHEDULE_TYPES, split_legacy_name
from webui.models.kinds import Kind

if TYPE_CHECKING:
    from webui.engine.txt2img import Engine
    from webui.models.library import ModelLibrary

log = logging.getLogger(__name__)


class AxisKind(str, Enum):
    """What an axis varies; the value is its name on the command line."""

    CHECKPOINT = "checkpoint"
    UNET = "unet"
    TEXT_ENCODER = "text-encoder"
    VAE = "vae"
    LORA = "lora"
    CFG = "cfg"
    STEPS = "steps"
    SAMPLER = "sampler"
    SCHEDULE = "schedule"
    SEED = "seed"
    CLIP_SKIP = "clip-skip"
    PROMPT_SR = "prompt-sr"

    @property
    def title(self) -> str:
        return _TITLES[self]


_TITLES = {
    AxisKind.CHECKPOINT: "Checkpoint",
    AxisKind.UNET: "UNet",
    AxisKind.TEXT_ENCODER: "Text encoder",
    AxisKind.VAE: "VAE",
    AxisKind.LORA: "LoRA",
    AxisKind.CFG: "CFG scale",
    AxisKind.STEPS: "Steps",
    AxisKind.SAMPLER: "Sampler",
    AxisKind.SCHEDULE: "Schedule type",
    AxisKind.SEED: "Seed",
    AxisKind.CLIP_SKIP: "Clip skip",
    AxisKind.PROMPT_SR: "Prompt S/R",
}
# Axes that name files, the ModelChoice field each sets, and the library kind its names are looked up as.
COMPONENT_FIELDS = {
    AxisKind.CHECKPOINT: "checkpoint",
    AxisKind.UNET: "unet",
    AxisKind.TEXT_ENCODER: "text_encoder",
    AxisKind.VAE: "vae",
}
FILE_KINDS = {
    AxisKind.CHECKPOINT: Kind.CHECKPOINT,
    AxisKind.UNET: Kind.UNET,
    AxisKind.TEXT_ENCODER: Kind.TEXT_ENCODER,
    AxisKind.VAE: Kind.VAE,
    AxisKind.LORA: Kind.LORA,
}
NUMBER_FIELDS = {
    AxisKind.CFG: "cfg_scale",
    AxisKind.STEPS: "steps",
    AxisKind.SEED: "seed",
    AxisKind.CLIP_SKIP: "clip_skip",
}
AUTOMATIC = ("automatic", "none", "default")  # a component axis value meaning "the checkpoint's own"
LORA_OFF, LORA_ON = "off", "on"
_SECOND_ENCODER = re.compile(r"\s+\+\s+")  # SDXL: "clip-l-file + clip-g-file"
# What makes one cell fail without stopping the others: bad combinations, missing or mismatched files, a model that
# does not fit (torch shape errors are RuntimeErrors), a sampler whose extra package is missing.
CELL_ERRORS = (ValueError, LookupError, OSError, RuntimeError, ImportError)

Resolver = Callable[[AxisKind, str], Path]  # a name or path as the user wrote it -> a file; raises LookupError


def is_automatic(value: str) -> bool:
    return value.strip().lower() in AUTOMATIC


def parse_value(kind: AxisKind, value: str) -> Any:
    """One axis value, typed: a number, a (sampler, schedule) pair, a schedule, a LoRA setting or the text itself.
    Raises ValueError naming the axis and the value."""
    try:
        return _parse(kind, value.strip())
    except ValueError as error:
        raise ValueError(f"{kind.value} axis: {value!r}: {error}") from None


def _parse(kind: AxisKind, text: str) -> Any:
    if kind is AxisKind.CFG:
        try:
            number = float(text)
        except ValueError:
            raise ValueError("not a number") from None
        if not math.isfinite(number):
            raise ValueError("not a finite number")
        return number
    if kind in NUMBER_FIELDS:
        try:
            return int(text)
        except ValueError:
            raise ValueError("not a whole number") from None
    if kind is AxisKind.SAMPLER:
        if is_automatic(text):
            return None, None  # the model's own scheduler
        named = {name.lower(): name for name in SAMPLER_NAMES}
        sampler, schedule = split_legacy_name(named.get(text.lower(), text))  # "DPM++ 2M Karras" sets both
        return sampler, (None if schedule == "Automatic" else schedule)
    if kind is AxisKind.SCHEDULE:
        named = {name.lower(): name for name in SCHEDULE_TYPES}
        if text.lower() not in named:
            raise ValueError(f"unknown schedule type; allowed: {', '.join(SCHEDULE_TYPES)}")
        return named[text.lower()]
    if kind is AxisKind.LORA:
        return _lora_setting(text)
    if kind is AxisKind.CHECKPOINT and is_automatic(text):
        raise ValueError("name a checkpoint; only component axes take 'Automatic'")
    return text


def _lora_setting(text: str) -> tuple[bool, float | None, float | None]:
    """(enabled, UNet weight, text-encoder weight): `on`, `off`, `W` (both) or `UNET_W:TE_W`; None keeps the stack's."""
    if text.lower() == LORA_OFF:
        return False, None, None
    if text.lower() == LORA_ON:
        return True, None, None
    parts = text.split(":")
    if len(parts) > 2:
        raise ValueError("write on, off, a weight, or UNET_WEIGHT:TE_WEIGHT")
    try:
        weights = [float(part) for part in parts]
    except ValueError:
        raise ValueError("write on, off, a weight, or UNET_WEIGHT:TE_WEIGHT") from None
    return True, weights[0], weights[-1]


@dataclass(frozen=True)
class Axis:
    """The values one axis runs over, as the user wrote them. A LoRA axis varies one LoRA of the stack: `target`
    names it (added to the stack if absent); without a target the stack must hold exactly one LoRA."""

    kind: AxisKind
    values: tuple[str, ...]
    target: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", AxisKind(self.kind))
        object.__setattr__(self, "values", tuple(self.values))
        if not self.values:
            raise ValueError(f"{self.kind.value} axis: give at least one value")
        if self.target is not None and self.kind is not AxisKind.LORA:
            raise ValueError(f"{self.kind.value} axis: only a LoRA axis names a target")
        for value in self.values:
            if not value.strip() and self.kind is not AxisKind.PROMPT_SR:
                raise ValueError(f"{self.kind.value} axis: an empty value; remove it or write one")
            parse_value(self.kind, value)
        if self.kind is AxisKind.PROMPT_SR and not self.values[0].strip():
            raise ValueError("prompt-sr axis: the first value is the text searched in the prompt; it cannot be empty")

    @property
    def title(self) -> str:
        if self.kind is AxisKind.LORA:
            return f"LoRA {_short(self.target)}" if self.target else "LoRA weight"
        return self.kind.title

    @property
    def labels(self) -> tuple[str, ...]:
        """The values as the grid shows them: file names without their folders, `(nothing)` for an empty S/R."""
        if self.kind in COMPONENT_FIELDS:
            return tuple(" + ".join(_short(p) for p in _SECOND_ENCODER.split(v.strip())) for v in self.values)
        return tuple(v.strip() or "(nothing)" for v in self.values)

    def describe(self) -> dict[str, Any]:
        return {"axis": self.kind.value, "title": self.title, "target": self.target, "values": list(self.values)}


def _short(value: str) -> str:
    return Path(value).name if ("/" in value or "\\" in value) else value


def parse_values(text: str) -> tuple[str, ...]:
    """Comma-separated values, CSV-quoted where they hold commas (`"a, b",c`), as A1111's X/Y/Z plot reads them."""
    return tuple(item.strip() for row in csv.reader(io.StringIO(text), skipinitialspace=True) for item in row)


def parse_axis(spec: str) -> Axis:
    """`AXIS=V1,V2,...` (for a LoRA axis `lora:NAME=off,0.5,1`), e.g. `cfg=4,7` or `prompt-sr="red, blue",green`."""
    name, sep, text = spec.partition("=")
    if not sep:
        raise ValueError(f"axis {spec!r}: write AXIS=V1,V2,... with AXIS one of {', '.join(k.value for k in AxisKind)}")
    name, _, target = name.strip().partition(":")
    try:
        kind = AxisKind(name.lower())
    except ValueError:
        allowed = ", ".join(k.value for k in AxisKind)
        raise ValueError(f"axis {name!r} is unknown; allowed: {allowed}") from None
    values = parse_values(text)
    if kind is not AxisKind.PROMPT_SR:
        values = tuple(v for v in values if v)  # a trailing comma is a typo, not a value
    return Axis(kind, values, target.strip() or None)


@dataclass(frozen=True)
class CompareJob:
    """The base request and its axes: X and Y span a grid, Z gives one grid per value."""

    base: GenerationRequest
    x: Axis
    y: Axis | None = None
    z: Axis | None = None

    def __post_init__(self) -> None:
        seen: set[tuple[AxisKind, str | None]] = set()
        for axis in self.axes:
            key = (axis.kind, axis.target)
            if key in seen and axis.kind is not AxisKind.PROMPT_SR:
                raise ValueError(f"{axis.kind.value} axis: given twice; put all its values on one axis")
            seen.add(key)

    @property
    def axes(self) -> tuple[Axis, ...]:
        return tuple(a for a in (self.x, self.y, self.z) if a is not None)

    def describe(self) -> dict[str, Any]:
        return {name: None if a is None else a.describe() for name, a in (("x", self.x), ("y", self.y), ("z", self.z))}


@dataclass(frozen=True)
class Cell:
    """One generation of the job: its place (value indices; 0 on an absent axis) and request, or why it cannot run."""

    x: int
    y: int
    z: int
    x_label: str
    y_label: str | None
    z_label: str | None
    request: GenerationRequest | None
    error: str | None = None


@dataclass
class _Draft:
    """A request being put together from the base and one value of each axis."""

    fields: dict[str, Any]
    model: dict[str, Path | None]
    loras: list[LoraSpec]

    @classmethod
    def of(cls, base: GenerationRequest) -> _Draft:
        names = [f.name for f in fields(GenerationRequest) if f.name not in ("model", "loras")]
        model = {f.name: getattr(base.model, f.name) for f in fields(ModelChoice)}
        return cls({n: getattr(base, n) for n in names}, model, list(base.loras))

    def build(self) -> GenerationRequest:
        return GenerationRequest(model=ModelChoice(**self.model), loras=tuple(self.loras), **self.fields)


@dataclass(frozen=True)
class _Change:
    """One axis value, ready to apply to a draft, or the reason every cell holding it fails."""

    apply: Callable[[_Draft], None] | None
    error: str | None = None


def _component_changes(axis: Axis, resolve: Resolver) -> list[_Change]:
    field_name = COMPONENT_FIELDS[axis.kind]
    changes = []
    for value in axis.values:
        if is_automatic(value):
            paths: list[Path | None] = [None]
        else:
            try:
                paths = [resolve(axis.kind, part) for part in _SECOND_ENCODER.split(value.strip())]
            except (LookupError, OSError, ValueError) as error:
                changes.append(_Change(None, str(error)))
                continue
        if len(paths) > 2 or (len(paths) == 2 and axis.kind is not AxisKind.TEXT_ENCODER):
            changes.append(_Change(None, f"{value}: only a text-encoder value names two files (A + B)"))
            continue
        if axis.kind is AxisKind.TEXT_ENCODER:
            encoders = (paths + [None])[:2]
            changes.append(_Change(lambda d, e=encoders: d.model.update(text_encoder=e[0], text_encoder_2=e[1])))
        else:
            changes.append(_Change(lambda d, p=paths[0]: d.model.update({field_name: p})))
    return changes


def _lora_changes(axis: Axis, base: GenerationRequest, resolve: Resolver) -> list[_Change]:
    if axis.target is None:
        if len(base.loras) != 1:
            raise ValueError(f"lora axis: name the LoRA it varies (lora:NAME=...); the stack holds {len(base.loras)}")
        path = base.loras[0].path
    else:
        try:
            path = resolve(AxisKind.LORA, axis.target)
        except (LookupError, OSError) as error:
            raise LookupError(f"lora axis: {error}") from error
    index = next((i for i, s in enumerate(base.loras) if s.path == path or s.path.resolve() == path.resolve()), None)
    spec = base.loras[index] if index is not None else LoraSpec(path)
    changes = []
    for value in axis.values:
        enabled, unet_weight, te_weight = parse_value(AxisKind.LORA, value)
        try:
            new = replace(
                spec,
                enabled=enabled,
                unet_weight=spec.unet_weight if unet_weight is None else unet_weight,
                te_weight=spec.te_weight if te_weight is None else te_weight,
            )
        except ValueError as error:
            raise ValueError(f"lora axis: {value!r}: {error}") from None

        def apply(draft: _Draft, new: LoraSpec = new) -> None:
            if index is None:
                draft.loras.append(new)
            else:
                draft.loras[index] = new

        changes.append(_Change(apply))
    return changes


def _axis_changes(axis: Axis, base: GenerationRequest, resolve: Resolver) -> list[_Change]:
    """Every value of `axis` as a change; raises ValueError (naming axis and value) for a value no cell could use."""
    kind = axis.kind
    if kind in COMPONENT_FIELDS:
        return _component_changes(axis, resolve)
    if kind is AxisKind.LORA:
        return _lora_changes(axis, base, resolve)
    if kind is AxisKind.PROMPT_SR:
        search = axis.values[0].strip()
        if search not in base.prompt and search not in base.negative_prompt:
            raise ValueError(f"prompt-sr axis: {search!r} is in neither the prompt nor the negative prompt")

        return [_Change(_substitution(search, value.strip())) for value in axis.values]
    changes = []
    for value in axis.values:
        parsed = parse_value(kind, value)
        if kind in NUMBER_FIELDS:
            name = NUMBER_FIELDS[kind]
            try:
                replace(base, **{name: parsed})  # the request's own range check, for this value alone
            except ValueError as error:
                raise ValueError(f"{kind.value} axis: {value!r}: {error}") from None
            changes.append(_Change(lambda d, n=name, p=parsed: d.fields.update({n: p})))
        elif kind is AxisKind.SAMPLER:
            sampler, schedule = parsed
            update = {"sampler": sampler} | ({"schedule": schedule} if schedule else {})
            changes.append(_Change(lambda d, u=update: d.fields.update(u)))
        else:
            changes.append(_Change(lambda d, p=parsed: d.fields.update(schedule=p)))
    return changes


def _substitution(search: str, value: str) -> Callable[[_Draft], None]:
    def substitute(draft: _Draft) -> None:  # as A1111's Prompt S/R: in the prompt and the negative prompt
        for name in ("prompt", "negative_prompt"):
            draft.fields[name] = draft.fields[name].replace(search, value)

    return substitute


def plan(job: CompareJob, resolve: Resolver) -> list[Cell]:
    """Every cell of the job in grid order (Z, then Y, then X), each with its own request (one image) or its error.

    Pure apart from `resolve`. Raises ValueError / LookupError for what no cell could use (a number out of range, an
    S/R text the prompt lacks); a value only some cells cannot use (a missing file, a sampler that cannot take the
    chosen schedule) becomes those cells' error."""
    base = replace(job.base, batch_size=1, batch_count=1)
    axes = (job.x, job.y, job.z)
    changes = [_axis_changes(a, base, resolve) if a else [_Change(lambda _d: None)] for a in axes]
    labels = [a.labels if a else (None,) for a in axes]
    cells = []
    for zi, z in enumerate(changes[2]):
        for yi, y in enumerate(changes[1]):
            for xi, x in enumerate(changes[0]):
                request, error = None, next((c.error for c in (x, y, z) if c.error), None)
                if error is None:
                    draft = _Draft.of(base)
                    for change in (x, y, z):  # as A1111: X, then Y, then Z (matters for two S/R axes)
                        change.apply(draft)
                    try:
                        request = draft.build()
                    except ValueError as problem:
                        error = str(problem)
                cells.append(Cell(xi, yi, zi, labels[0][xi], labels[1][yi], labels[2][zi], request, error))
    return cells


def run_order(cells: Sequence[Cell]) -> list[int]:
    """Indices of `cells` in the order to run them: cells that cannot run first (they take no time), then the rest
    grouped by checkpoint and, within one, by the full choice of components, so that each model is assembled once
    and a component shared by several choices is used while it is cached. Grid order is kept within a group."""
    checkpoint_rank: dict[Path | None, int] = {}
    choice_rank: dict[ModelChoice, int] = {}
    for cell in cells:
        if cell.request is not None:
            model = cell.request.model
            checkpoint_rank.setdefault(model.checkpoint or model.unet, len(checkpoint_rank))
            choice_rank.setdefault(model, len(choice_rank))

    def key(index: int) -> tuple[int, int, int]:
        request = cells[index].request
        if request is None:
            return -1, -1, index
        return checkpoint_rank[request.model.checkpoint or request.model.unet], choice_rank[request.model], index

    return sorted(range(len(cells)), key=key)


def fix_seeds(job: CompareJob, rng: random.Random | None = None) -> CompareJob:
    """The job with seed -1 (random) replaced by one drawn seed, so every cell starts from the same noise (as A1111)."""
    rng = rng or random.Random()
    base = job.base if job.base.seed >= 0 else replace(job.base, seed=rng.randrange(2**32))
    axes = []
    for axis in (job.x, job.y, job.z):
        if axis is not None and axis.kind is AxisKind.SEED:
            values = tuple(str(rng.randrange(2**32)) if int(v) == -1 else v for v in axis.values)
            axis = replace(axis, values=values)
        axes.append(axis)
    return CompareJob(base, *axes)


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
    job's pace so far."""

    def __init__(self, callback: CompareProgressCallback | None, cells: int, total_weight: int) -> None:
        self.callback, self.cells, self.total_weight = callback, cells, max(1, total_weight)
        self.started = time.perf_counter()
        self.done_weight = 0
        self.number, self.weight, self.label = 0, 0, ""
        self.step = self.steps = 0

    def start(self, number: int, cell: Cell) -> None:
        self.number, self.label = number, cell_label(cell)
        self.weight = cell.request.steps if cell.request is not None else 0
        self.step = self.steps = 0

    def finish(self) -> None:
        self.done_weight += self.weight
        self.weight = 0
        self._emit(0.0)

    def engine_callback(self, progress: Progress) -> None:
        self.step, self.steps = progress.step, progress.steps
        self._emit(progress.step / max(1, progress.steps), progress.preview)

    def _emit(self, within_cell: float, preview: Image.Image | None = None) -> None:
        if self.callback is None:
            return
        done = min(1.0, (self.done_weight + self.weight * within_cell) / self.total_weight)
        elapsed = time.perf_counter() - self.started
        eta = elapsed / done * (1 - done) if done > 0 else None
        report = CompareProgress(self.number, self.cells, self.step, self.steps, done, eta, self.label, preview)
        self.callback(report)


def run_compare(
    engine: Engine,
    job: CompareJob,
    resolve: Resolver,
    progress: CompareProgressCallback | None = None,
    cancel: CancelToken | None = None,
    preview_every: int = 0,
) -> CompareResult:
    """Run every cell (grouped to load each model once), then draw and save one grid per Z value.

    A cell that cannot run becomes an error tile; `cancel` stops the job within one step: finished cells are kept,
    the rest are drawn as interrupted. A Z value none of whose cells ran gets no grid."""
    job = fix_seeds(job)
    cells = plan(job, resolve)
    order = run_order(cells)
    tracker = _JobProgress(progress, len(cells), sum(c.request.steps for c in cells if c.request))
    results: dict[int, CellResult] = {}
    for number, index in enumerate(order, 1):
        cell = cells[index]
        tracker.start(number, cell)
        if cell.request is None:
            results[index] = CellResult(cell, CellStatus.ERROR, error=cell.error)
        elif cancel is not None and cancel.cancelled:
            results[index] = CellResult(cell, CellStatus.INTERRUPTED)
        else:
            results[index] = _run_cell(engine, cell, cell.request, tracker, cancel, preview_every)
        tracker.finish()  # however the cell ended
    ordered = [results[i] for i in range(len(cells))]
    interrupted = any(r.status is CellStatus.INTERRUPTED for r in ordered)
    grids = _save_grids(engine, job, ordered)
    return CompareResult(grids, ordered, interrupted)


def _run_cell(
    engine: Engine,
    cell: Cell,
    request: GenerationRequest,
    tracker: _JobProgress,
    cancel: CancelToken | None,
    preview_every: int,
) -> CellResult:
    """Generate exactly as a normal request; a LoRA that cannot patch this model makes the cell an error
    before anything is saved (strict LoRAs)."""
    started = time.perf_counter()
    try:
        result = engine.generate(request, tracker.engine_callback, cancel, preview_every, strict_loras=True)
    except CELL_ERRORS as error:  # a failed load or a refused LoRA: the time spent finding out counts as loading
        return _failed(cell, error, load_seconds=time.perf_counter() - started)
    load_seconds = result.timings.get("load", 0.0) + result.timings.get("lora", 0.0)
    if not result.images:
        return CellResult(cell, CellStatus.INTERRUPTED, load_seconds=load_seconds)
    image = result.images[0]
    return CellResult(cell, CellStatus.DONE, image.path, image.infotext, result.timings.get("total"), load_seconds)


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


def library_resolver(library: ModelLibrary) -> Resolver:
    """Resolve axis values as `python -m webui models` names them (or as paths): the axis' own kind first, then any
    file (a checkpoint can lend its VAE or UNet); the error lists close names of the axis' kind."""
    from webui.models.library import ModelNotFoundError

    def resolve(kind: AxisKind, value: str) -> Path:
        path = Path(value.strip()).expanduser()
        if path.exists():
            return path
        try:
            return library.find(value, FILE_KINDS[kind]).path
        except ModelNotFoundError as error:
            if kind in (AxisKind.CHECKPOINT, AxisKind.LORA):
                raise
            try:
                return library.find(value).path
            except ModelNotFoundError:
                raise error from None

    return resolve
