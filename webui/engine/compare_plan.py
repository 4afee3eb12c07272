"""Comparison planning: a job's axes turned into one request per cell (pure), the order that loads least, seeds."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from webui.engine.compare_axes import (
    COMPONENT_FIELDS,
    HIRES_FIELDS,
    NUMBER_FIELDS,
    SECOND_ENCODER,
    Axis,
    AxisKind,
    is_automatic,
    merge_ends,
    merge_value,
    parse_value,
)
from webui.engine.lora import LoraSpec
from webui.engine.pipelines import ModelChoice
from webui.engine.request import GenerationRequest
from webui.engine.second_pass import HiresFix
from webui.engine.upscalers import resolve_upscaler
from webui.models.kinds import Kind

if TYPE_CHECKING:
    from webui.models.library import ModelLibrary

Resolver = Callable[[AxisKind, str], Path]  # a name or path as the user wrote it -> a file; raises LookupError


class MergeTargets(Protocol):
    """Where a checkpoint axis' `merge α` values are written (webui.merge.compare_merges.CompareMerges): `target`
    names the file at planning time (nothing is merged yet), `ensure` writes it before the first cell uses it."""

    def target(self, a: Path, b: Path, alpha: float) -> Path: ...

    def ensure(self, path: Path, cancel: Any = None) -> bool: ...
# The library kind each file-naming axis' values are looked up as.
FILE_KINDS = {
    AxisKind.CHECKPOINT: Kind.CHECKPOINT,
    AxisKind.UNET: Kind.UNET,
    AxisKind.TEXT_ENCODER: Kind.TEXT_ENCODER,
    AxisKind.VAE: Kind.VAE,
    AxisKind.LORA: Kind.LORA,
    AxisKind.HIRES_UPSCALER: Kind.UPSCALER,
}


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


def _merge_change(axis: Axis, index: int, resolve: Resolver, merges: MergeTargets | None) -> _Change:
    """A `merge α` value: the weighted sum of its neighbouring checkpoints, as the file `merges` will write."""
    value = axis.values[index]
    if merges is None:
        raise ValueError(f"checkpoint axis: {value.strip()!r}: merges need the model library to write them into")
    ends = merge_ends(axis.values, index)
    try:
        a, b = (resolve(AxisKind.CHECKPOINT, axis.values[i].strip()) for i in ends)
        target = merges.target(a, b, merge_value(value).alpha)
    except (LookupError, OSError, ValueError) as error:
        return _Change(None, str(error))
    return _Change(lambda d, p=target: d.model.update(checkpoint=p))


def _component_changes(axis: Axis, resolve: Resolver, merges: MergeTargets | None = None) -> list[_Change]:
    field_name = COMPONENT_FIELDS[axis.kind]
    changes = []
    for index, value in enumerate(axis.values):
        if axis.kind is AxisKind.CHECKPOINT and merge_value(value) is not None:
            changes.append(_merge_change(axis, index, resolve, merges))
            continue
        if is_automatic(value):
            paths: list[Path | None] = [None]
        else:
            try:
                paths = [resolve(axis.kind, part) for part in SECOND_ENCODER.split(value.strip())]
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


def _axis_changes(
    axis: Axis, base: GenerationRequest, resolve: Resolver, merges: MergeTargets | None = None
) -> list[_Change]:
    """Every value of `axis` as a change; raises ValueError (naming axis and value) for a value no cell could use."""
    kind = axis.kind
    if kind in COMPONENT_FIELDS:
        return _component_changes(axis, resolve, merges)
    if kind is AxisKind.LORA:
        return _lora_changes(axis, base, resolve)
    if kind is AxisKind.PROMPT_SR:
        search = axis.values[0].strip()
        if search not in base.prompt and search not in base.negative_prompt:
            raise ValueError(f"prompt-sr axis: {search!r} is in neither the prompt nor the negative prompt")

        return [_Change(_substitution(search, value.strip())) for value in axis.values]
    if kind in HIRES_FIELDS:
        return _hires_changes(axis, resolve)
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


def _hires_changes(axis: Axis, resolve: Resolver) -> list[_Change]:
    """Each value sets one Hires. fix field (Hires. fix turned on with A1111's defaults where the base has none);
    an upscaler no library file or built-in mode names fails its cells."""
    name = HIRES_FIELDS[axis.kind]
    changes = []
    for value in axis.values:
        parsed = parse_value(axis.kind, value)
        try:
            HiresFix(**{name: parsed})  # the field's own range check, for this value alone
        except ValueError as error:
            raise ValueError(f"{axis.kind.value} axis: {value!r}: {error}") from None
        if axis.kind is AxisKind.HIRES_UPSCALER:
            try:
                resolve_upscaler(parsed, lambda n: resolve(AxisKind.HIRES_UPSCALER, n))
            except (LookupError, OSError) as error:
                changes.append(_Change(None, str(error)))
                continue

        def apply(draft: _Draft, parsed: Any = parsed) -> None:
            draft.fields["hires"] = replace(draft.fields.get("hires") or HiresFix(), **{name: parsed})

        changes.append(_Change(apply))
    return changes


def _substitution(search: str, value: str) -> Callable[[_Draft], None]:
    def substitute(draft: _Draft) -> None:  # as A1111's Prompt S/R: in the prompt and the negative prompt
        for name in ("prompt", "negative_prompt"):
            draft.fields[name] = draft.fields[name].replace(search, value)

    return substitute


def plan(job: CompareJob, resolve: Resolver, merges: MergeTargets | None = None) -> list[Cell]:
    """Every cell of the job in grid order (Z, then Y, then X), each with its own request (one image) or its error.

    Pure apart from `resolve` and `merges` (which only name files). Raises ValueError / LookupError for what no
    cell could use (a number out of range, an S/R text the prompt lacks); a value only some cells cannot use (a
    missing file, a sampler that cannot take the chosen schedule) becomes those cells' error."""
    base = replace(job.base, batch_size=1, batch_count=1)
    axes = (job.x, job.y, job.z)
    changes = [_axis_changes(a, base, resolve, merges) if a else [_Change(lambda _d: None)] for a in axes]
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


FamilyOf = Callable[[ModelChoice], Any]  # a model choice -> (its Family, its named variant), or None when unknown


def with_family_semantics(job: CompareJob, cells: list[Cell], family_of: FamilyOf) -> list[Cell]:
    """Cells whose model is of another family than the job's base model, run with that family's semantics (a
    grid across SDXL, FLUX.1 and SD3 checkpoints): a sampler the family does not take becomes its default
    sampler, and the CFG scale its (variant's) default CFG where it sets one (FLUX.1: 1 with its distilled
    guidance, SD3.5 Large: 3.5); a value that is on an axis is kept as the axis says. Other cells are unchanged."""
    varied = {axis.kind for axis in job.axes}
    base = family_of(job.base.model)
    out = []
    for cell in cells:
        request = cell.request
        found = family_of(request.model) if request is not None else None
        if request is None or found is None or base is None or found[0] is base[0]:
            out.append(cell)
            continue
        family, variant = found
        description = family.description
        changes: dict[str, Any] = {}
        allowed = description.scheduler.samplers
        if AxisKind.SAMPLER not in varied and allowed is not None and request.sampler not in allowed:
            changes["sampler"] = description.scheduler.default_sampler or allowed[0]
        cfg = description.defaults_for(variant).cfg_scale
        if AxisKind.CFG not in varied and cfg is not None:
            changes["cfg_scale"] = cfg
        out.append(replace(cell, request=replace(request, **changes)) if changes else cell)
    return out


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
            if kind in (AxisKind.CHECKPOINT, AxisKind.LORA, AxisKind.HIRES_UPSCALER):
                raise
            try:
                return library.find(value).path
            except ModelNotFoundError:
                raise error from None

    return resolve
