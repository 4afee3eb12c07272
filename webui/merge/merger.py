"""Run a merge: check the inputs, plan every output tensor, then stream them one at a time into the new file.

Everything that can refuse a merge is checked before the first tensor is read: each input identified (a
family mismatch names both files), the block weights resolved against the denoiser's blocks, each merged key's
shape compared across the inputs, the LoRAs loaded, the output name free and the disk large enough. Then each
output tensor is read from its inputs, computed in float32 (weighted sum `A·(1−α) + B·α` as `torch.lerp`, add
difference `A + (B − C)·α`), patched by the LoRA stack, cast to the output precision and written; a weight of
exactly 0 or 1 copies A or B unchanged, so α = 0 gives A and α = 1 gives B bit for bit. Progress is reported per
tensor and the cancel token is checked between tensors; an interrupted or failed merge leaves no file.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from webui.engine.lora import LoraReport
from webui.engine.progress import CancelToken
from webui.families import Family
from webui.families.base import Part
from webui.merge.blocks import BlockWeights, blocks_of, parse_block_weights
from webui.merge.lora_bake import LoraBakeError, LoraBaker
from webui.merge.recipe import (
    MODELS_KEY,
    RECIPE_KEY,
    InputRecord,
    MergeMode,
    MergeRecipe,
    ModelInput,
    read_recipe,
    recipe_metadata,
)
from webui.merge.sources import ModelSource, SourceError, identify_file, open_checkpoint, open_component, role_of
from webui.models.hashing import HashCache
from webui.models.identity import MARKER_KEYS
from webui.models.kinds import FileFormat, Kind, Role
from webui.models.loading_dit import SCALED_FP8_MARKER
from webui.models.safetensors_stream import DTYPES, StreamingWriter, TensorEntry, aligned_order

EMA_PREFIX = "model_ema."
SCALE_KEYS = (".scale_weight", ".scale_input")  # ComfyUI's scaled-fp8 extras (see webui.models.loading_dit)


class MergeError(ValueError):
    """A merge that cannot run; the message names the input (or field) and what to do."""


class MergeInterrupted(Exception):
    """The merge was cancelled between two tensors; nothing was written."""


@dataclass(frozen=True)
class MergeProgress:
    """Tensor `done` of `total` written, `bytes_done` of `bytes_total` output bytes, the key just written."""

    done: int
    total: int
    bytes_done: int
    bytes_total: int
    key: str
    eta_seconds: float | None

    @property
    def fraction(self) -> float:
        return self.bytes_done / max(1, self.bytes_total)


ProgressCallback = Callable[[MergeProgress], None]


@dataclass(frozen=True)
class Step:
    """How one output tensor is made: from A alone (`weight` None), or merged at `weight`; `source` names the
    input a plain copy reads ("A", "B" or "VAE"). `key` is the family's single-file key the inputs are read by;
    `entry.key` the key written (the same, or at the role's `lone_prefix` in a one-component file)."""

    key: str
    entry: TensorEntry
    source: str = "A"
    weight: float | None = None


@dataclass
class MergePlan:
    """Every output tensor in write order, with what was resolved on the way (all before any data is read)."""

    recipe: MergeRecipe
    family: Family
    sources: dict[str, ModelSource]
    steps: list[Step]
    block_weights: BlockWeights | None
    baker: LoraBaker | None
    kept_from_a: list[str] = field(default_factory=list)  # keys B (or C) lacks: A's value is kept
    dropped: list[str] = field(default_factory=list)  # pruned or discarded keys

    @property
    def total_bytes(self) -> int:
        return sum(step.entry.nbytes for step in self.steps)

    def close(self) -> None:
        for source in self.sources.values():
            source.close()


@dataclass(frozen=True)
class MergeResult:
    """The written file and how it was made; figures for the progress line and the benchmark."""

    path: Path
    family: Family
    kind: Kind
    tensors: int
    merged: int
    bytes_written: int
    seconds: float
    kept_from_a: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    lora_reports: tuple[LoraReport, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "family": self.family.value,
            "kind": self.kind.value,
            "tensors": self.tensors,
            "merged": self.merged,
            "bytes": self.bytes_written,
            "seconds": round(self.seconds, 3),
            "kept_from_a": {"count": len(self.kept_from_a), "examples": list(self.kept_from_a[:10])},
            "dropped": {"count": len(self.dropped), "examples": list(self.dropped[:10])},
            "loras": [r.to_json() for r in self.lora_reports],
            "recipe": read_recipe(self.metadata),
        }


def open_model(model: ModelInput, letter: str, family: Family | None = None) -> ModelSource:
    """One merge input in its family's single-file layout: a checkpoint, and/or component files by their kind.

    The first file decides the family unless `family` is given; every file must fit it (MergeError naming both)."""
    merged: ModelSource | None = None
    for path in model.files:
        if not path.exists():
            raise MergeError(f"{letter}: {path} does not exist")
        try:
            header, identity = identify_file(path)
        except SourceError as error:
            raise MergeError(f"{letter}: {error}") from None
        if identity.kind not in (Kind.CHECKPOINT, Kind.UNET, Kind.VAE, Kind.TEXT_ENCODER):
            raise MergeError(f"{letter}: {path} is a {identity.kind.value} file, not a model or model component")
        if header.format is FileFormat.GGUF:
            raise MergeError(
                f"{letter}: {path} is a GGUF file: its quantised blocks cannot be mixed tensor by tensor; merge the "
                "bf16/fp16 .safetensors file (and quantise the result)"
            )
        if SCALED_FP8_MARKER in header.shapes or any(key.endswith(SCALE_KEYS) for key in header.shapes):
            raise MergeError(
                f"{letter}: {path} is a ComfyUI scaled-fp8 file: its fp8 weights need their per-layer scales, "
                "which a merge would mix up; merge the bf16/fp16 file"
            )
        family = family or identity.family
        if not identity.fits(family):
            raise MergeError(
                f"{letter}: {path} is {identity.family.label} ({identity.detail}), but the merge is of "
                f"{family.label} models; every input must be of one family"
            )
        if not family.supported:
            raise MergeError(f"{letter}: {path} is {family.label}, which cannot be merged here yet")
        try:
            if identity.kind is Kind.CHECKPOINT:
                part = open_checkpoint(path, family, header, identity)
            else:
                part = open_component(path, _role_for(family, identity, path), family, header, identity)
        except SourceError as error:
            raise MergeError(f"{letter}: {error}") from None
        if merged is None:
            merged = part
        else:  # a component file replaces that part of what came before
            for role in part.roles:
                prefix = family.description.role(role).checkpoint_prefix
                merged.tensors = {k: v for k, v in merged.tensors.items() if not k.startswith(prefix)}
            merged.tensors.update(part.tensors)
            merged.roles |= part.roles
            merged.files += part.files
            merged.dropped += part.dropped
            merged.label = model.label
    assert merged is not None  # ModelInput holds at least one file
    return merged


def _role_for(family: Family, identity: Any, path: Path) -> Role:
    description = family.description
    if identity.kind is Kind.UNET:
        return description.denoiser.role
    if identity.kind is Kind.VAE:
        return Role.VAE
    for spec in description.text_encoders:
        if spec.encoder in identity.text_encoders:
            return spec.role
    raise MergeError(f"{path}: a {identity.detail}, which is none of {family.label}'s text encoders")


def _check_family(letter: str, source: ModelSource, a: ModelSource) -> None:
    if source.family is not a.family:
        raise MergeError(
            f"{letter} ({source.label}) is {source.family.label}, but A ({a.label}) is {a.family.label}: "
            "models of different families cannot be merged"
        )


def plan_merge(recipe: MergeRecipe) -> MergePlan:
    """Open and check every input and resolve every output tensor; raises MergeError before any data is read."""
    a = open_model(recipe.a, "A")
    sources = {"A": a}
    family = a.family
    for letter, model in recipe.inputs[1:]:
        sources[letter] = open_model(model, letter)
        _check_family(letter, sources[letter], a)
    if recipe.vae is not None:
        vae = open_model(ModelInput((recipe.vae,)), "vae")
        if vae.roles != {Role.VAE}:
            raise MergeError(f"vae: {recipe.vae} is not a VAE file")
        if not vae.identity.fits(family):
            raise MergeError(f"vae: {recipe.vae} is a {vae.identity.detail}; it does not fit {family.label}")
        vae.family = family
        sources["VAE"] = vae
    block_weights = None
    if recipe.block_weights is not None:
        try:
            block_weights = parse_block_weights(recipe.block_weights, blocks_of(family, a.tensors))
        except ValueError as error:
            raise MergeError(str(error)) from None
    plan = MergePlan(recipe, family, sources, [], block_weights, None)
    _plan_steps(plan)
    if recipe.loras:
        shapes = {step.key: step.entry.shape for step in plan.steps}
        try:
            plan.baker = LoraBaker(family, shapes, recipe.loras)
        except LoraBakeError as error:
            raise MergeError(str(error)) from None
    return plan


def _kept(key: str, family: Family, recipe: MergeRecipe, discard: re.Pattern[str] | None) -> bool:
    if discard is not None and discard.search(key):
        return False
    if not recipe.prune:
        return True
    if key.startswith(EMA_PREFIX):
        return False
    return role_of(family, key) is not None or key in MARKER_KEYS or key.startswith("edm_")


def _plan_steps(plan: MergePlan) -> None:
    recipe, family, sources = plan.recipe, plan.family, plan.sources
    a = sources["A"]
    discard = re.compile(recipe.discard) if recipe.discard else None
    keys = dict.fromkeys(a.tensors)
    vae = sources.get("VAE")
    if vae is not None:
        prefix = family.description.role(Role.VAE).checkpoint_prefix
        keys = {k: None for k in keys if not k.startswith(prefix)} | dict.fromkeys(vae.tensors)
    others = [sources[letter] for letter in ("B", "C") if letter in sources]
    entries = []
    for key in keys:
        if not _kept(key, family, recipe, discard):
            plan.dropped.append(key)
            continue
        from_vae = vae is not None and key in vae.tensors
        source = vae if from_vae else a
        tensor = source.tensors[key]
        dtype = recipe.precision.dtype_name if DTYPES[tensor.dtype].is_floating_point else tensor.dtype
        entry = TensorEntry(key, dtype, tensor.shape)
        weight = None if from_vae else _weight(plan, key)
        if weight is not None and others:
            missing = [s for s in others if key not in s.tensors]
            if missing:
                plan.kept_from_a.append(key)
                weight = None
            else:
                for other in others:
                    if other.tensors[key].shape != tensor.shape:
                        raise MergeError(
                            f"{key}: shape {list(tensor.shape)} in A ({a.label}) but {list(other.tensors[key].shape)} "
                            f"in {other.label}; these models differ in architecture (an inpainting or otherwise "
                            "modified model?) and cannot be merged"
                        )
        entries.append((entry, "VAE" if from_vae else "A", weight if others else None))
    if not entries:
        raise MergeError("the merge would write no tensors: nothing of A is kept (check prune and discard)")
    rename = _lone_rename(family, [entry.key for entry, _, _ in entries])
    by_key = {}  # written key -> (the layout's key, source, weight)
    written = []
    for entry, source, weight in entries:
        out = TensorEntry(rename(entry.key), entry.dtype, entry.shape)
        by_key[out.key] = (entry.key, source, weight)
        written.append(out)
    for entry in aligned_order(written):
        key, source, weight = by_key[entry.key]
        if weight == 0.0:  # exactly A: copy, bit for bit
            weight = None
        elif weight == 1.0 and recipe.mode is MergeMode.WEIGHTED_SUM:  # exactly B
            source, weight = "B", None
        plan.steps.append(Step(key, entry, source, weight))


def _lone_rename(family: Family, keys: list[str]) -> Callable[[str], str]:
    """How keys are written: a file holding one role alone puts them at the role's `lone_prefix` (FLUX.1's
    transformer files have BFL names without `model.diffusion_model.`); anything else keeps the layout's keys."""
    roles = {spec.role: spec for key in keys if (spec := role_of(family, key)) is not None}
    if len(roles) != 1:
        return lambda key: key
    (spec,) = roles.values()
    start, lone = spec.checkpoint_prefix, spec.lone_prefix
    return lambda key: lone + key[len(start) :] if key.startswith(start) else key


def _weight(plan: MergePlan, key: str) -> float | None:
    """The α a key is merged at, or None when it is A's (a part not being merged)."""
    spec = role_of(plan.family, key)
    if spec is None or spec.part not in plan.recipe.parts:
        return None
    if plan.block_weights is None:
        return plan.recipe.alpha
    block = plan.family.description.block_of(key) if spec.part is Part.DENOISER else None
    return plan.block_weights.weight(block, plan.recipe.alpha)


class _Scratch:
    """Float32 work buffers and output buffers sized for the largest tensor, reused for every tensor.

    Allocating fresh tensors per key lets the C allocator keep the freed ones (glibc's heap grows past its
    dynamic mmap threshold), so resident memory would creep up to many tensors' worth; views into a few fixed
    buffers keep it at a few tensors' worth, whatever the model's size."""

    def __init__(self, steps: list[Step]) -> None:
        self.numel = max((_numel(step.entry.shape) for step in steps), default=0)
        self._float: list[torch.Tensor] = []
        self._out: dict[torch.dtype, torch.Tensor] = {}

    def work(self, index: int, shape: tuple[int, ...]) -> torch.Tensor:
        while len(self._float) <= index:
            self._float.append(torch.empty(self.numel, dtype=torch.float32))
        return self._float[index][: _numel(shape)].view(shape)

    def output(self, value: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if value.dtype == dtype:
            return value
        if dtype not in self._out:
            self._out[dtype] = torch.empty(self.numel, dtype=dtype)
        out = self._out[dtype][: value.numel()].view(value.shape)
        out.copy_(value)
        return out


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def _compute(plan: MergePlan, step: Step, scratch: _Scratch) -> torch.Tensor:
    """One output tensor, in the output dtype, as a view into `scratch` (valid until the next call)."""
    sources = plan.sources
    dtype = DTYPES[step.entry.dtype]
    patched = plan.baker is not None and step.key in plan.baker.keys
    if step.weight is None:
        tensor = sources[step.source].read(step.key)
        if not patched:
            return scratch.output(tensor, dtype)
        tensor = scratch.work(0, tensor.shape).copy_(tensor)
    else:
        tensor = scratch.work(0, step.entry.shape).copy_(sources["A"].read(step.key))
        other = scratch.work(1, step.entry.shape).copy_(sources["B"].read(step.key))
        if plan.recipe.mode is MergeMode.ADD_DIFFERENCE:
            other.sub_(sources["C"].read(step.key)).mul_(step.weight)
            tensor.add_(other)  # A + (B − C)·α
        else:
            tensor.lerp_(other, step.weight)  # A·(1−α) + B·α
    if patched:
        tensor = plan.baker.patch(step.key, tensor)
    return scratch.output(tensor, dtype)


def run_merge(
    plan: MergePlan,
    output: Path,
    hashes: HashCache | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> MergeResult:
    """Write the planned merge to `output` (never overwriting; see the module docstring)."""
    started = time.perf_counter()
    metadata = _metadata(plan, hashes)
    entries = [step.entry for step in plan.steps]
    written = 0
    total = sum(e.nbytes for e in entries)
    scratch = _Scratch(plan.steps)
    try:
        with StreamingWriter(output, entries, metadata) as writer:
            for index, step in enumerate(plan.steps):
                if cancel is not None and cancel.cancelled:
                    raise MergeInterrupted(
                        f"merge interrupted after {index} of {len(plan.steps)} tensors; nothing was written"
                    )
                writer.write(step.entry.key, _compute(plan, step, scratch))
                written += step.entry.nbytes
                if progress is not None:
                    elapsed = time.perf_counter() - started
                    eta = elapsed / written * (total - written) if written else None
                    progress(MergeProgress(index + 1, len(plan.steps), written, total, step.key, eta))
            path = writer.commit()
    finally:
        plan.close()
    return MergeResult(
        path=path,
        family=plan.family,
        kind=output_kind(plan),
        tensors=len(plan.steps),
        merged=sum(1 for step in plan.steps if step.weight is not None),
        bytes_written=writer.total_bytes,
        seconds=time.perf_counter() - started,
        kept_from_a=tuple(plan.kept_from_a),
        dropped=tuple(plan.dropped),
        lora_reports=tuple(plan.baker.reports if plan.baker else ()),
        metadata=metadata,
    )


def output_kind(plan: MergePlan) -> Kind:
    """What the written file is: a checkpoint when it holds the denoiser and more, else its one component's kind."""
    roles = {spec.role for step in plan.steps if (spec := role_of(plan.family, step.key)) is not None}
    description = plan.family.description
    if description.denoiser.role in roles:
        return Kind.CHECKPOINT if len(roles) > 1 else Kind.UNET
    if roles == {Role.VAE}:
        return Kind.VAE
    return Kind.TEXT_ENCODER


def merge(
    recipe: MergeRecipe,
    output: Path,
    hashes: HashCache | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> MergeResult:
    """Plan and run `recipe` into `output`; MergeError (before any work) or MergeInterrupted, DiskFullError,
    FileExistsError (nothing written)."""
    return run_merge(plan_merge(recipe), output, hashes, progress, cancel)


def _metadata(plan: MergePlan, hashes: HashCache | None) -> dict[str, str]:
    """The recipe metadata: every input file (with its SHA-256 when a hash cache is given, and the recipe it
    carried), the VAE baked in, the LoRAs with their weights, the resolved block weights."""
    models = [*plan.recipe.inputs, *([("VAE", ModelInput((plan.recipe.vae,)))] if plan.recipe.vae else [])]
    records = []
    for letter, model in models:
        carried = plan.sources[letter].metadata
        for index, path in enumerate(model.files):
            tag = letter if index == 0 else f"{letter}{index + 1}"
            records.append(
                InputRecord(
                    tag,
                    path.name if path.is_dir() else path.stem,
                    str(path),
                    _sha256(hashes, path),
                    carried.get(RECIPE_KEY) if index == 0 else None,
                    carried.get(MODELS_KEY) if index == 0 else None,
                )
            )
    loras = [
        {
            "name": spec.path.stem,
            "path": str(spec.path),
            "sha256": _sha256(hashes, spec.path),
            "unet_weight": spec.unet_weight,
            "te_weight": spec.te_weight,
            "enabled": spec.enabled,
        }
        for spec in plan.recipe.loras
    ]
    weights = plan.block_weights.describe() if plan.block_weights else None
    return recipe_metadata(plan.recipe, records, weights, loras)


def _sha256(hashes: HashCache | None, path: Path) -> str | None:
    return hashes.compute(path).sha256 if hashes is not None and path.is_file() else None
