"""The LoRA stack: LoRA files loaded once as named PEFT adapters on cached components, switched by weight.

Adapters live on the cached UNet / text-encoder modules, named after the LoRA file's identity,
so a weight change, a reorder or a toggle re-reads nothing, and two pipelines that share a
UNet share its adapters. A stack with nothing active disables the adapter layers, which gives
the base model's exact output. Inactive adapters beyond a few are deleted, since PEFT slows
down as adapters pile up (diffusers #11816).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from webui.engine.limits import check_lora_weights
from webui.engine.lora_modules import is_kohya_named
from webui.families import Family
from webui.families.base import LoraConversion
from webui.models.kinds import Kind

KEEP_INACTIVE = 4
_COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2")
_DENOISERS = ("unet", "transformer")  # take a LoRA row's UNet weight
_MODULE_SUFFIXES = re.compile(
    r"\.(lora_down\.weight|lora_up\.weight|lora_A\.weight|lora_B\.weight|lora\.down\.weight|lora\.up\.weight|"
    r"alpha|hada_w1_a|hada_w1_b|hada_w2_a|hada_w2_b|lokr_w1|lokr_w2|lokr_w1_a|lokr_w1_b|lokr_w2_a|lokr_w2_b|"
    r"dora_scale|diff|diff_b)$"
)


@dataclass(frozen=True)
class LoraSpec:
    """One row of the stack: a LoRA file, its UNet and text-encoder weights, and whether it is on."""

    path: Path
    unet_weight: float = 1.0
    te_weight: float = 1.0
    enabled: bool = True

    def __post_init__(self) -> None:
        check_lora_weights(f"lora {self.path.name}", self.unet_weight, self.te_weight)

    @property
    def active(self) -> bool:
        return self.enabled and (self.unet_weight != 0 or self.te_weight != 0)


@dataclass(frozen=True)
class LoraReport:
    """What became of one LoRA: modules patched, modules not applied (examples, with the reason where known: no
    matching layer, DoRA on the input axis, an unsupported LyCORIS algorithm), or why the whole file was refused."""

    name: str
    applied: int = 0
    unapplied: int = 0
    examples: tuple[str, ...] = ()
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "applied": self.applied,
            "unapplied": self.unapplied,
            "examples": list(self.examples),
            "error": self.error,
        }


def lora_warnings(reports: Sequence[LoraReport]) -> list[str]:
    """One sentence per LoRA that was not applied, or only in part: what every front end tells the user (a UI
    toast, a line on the CLI's stderr, the API's `warnings`), the generation itself going ahead without it."""
    lines = []
    for report in reports:
        if report.error:
            lines.append(f"LoRA {report.name} was not applied: {report.error}")
        elif report.unapplied:
            examples = f" (e.g. {', '.join(report.examples)})" if report.examples else ""
            lines.append(
                f"LoRA {report.name}: {report.unapplied} of its modules matched nothing in this model and were "
                f"not applied{examples}; {report.applied} were"
            )
    return lines


def adapter_name(path: Path) -> str:
    """Stable per file version: path, size and mtime (a changed file becomes a new adapter)."""
    stat = path.stat()
    digest = hashlib.sha1(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()
    return f"lora_{digest[:12]}"


def count_lora_modules(state_dict: dict[str, Any]) -> int:
    """Distinct patched modules in a LoRA file, in any layout (kohya, PEFT, old diffusers, LyCORIS)."""
    return len({_MODULE_SUFFIXES.sub("", key) for key in state_dict if _MODULE_SUFFIXES.search(key)})


class _UnexpectedKeys(logging.Handler):
    """Collects the keys diffusers/PEFT report as matching no module while an adapter loads."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.keys: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "unexpected keys" in message and ":" in message:
            names = message.split(":", 1)[1].strip().rstrip(".")
            self.keys.extend(n.strip() for n in names.split(",") if n.strip())


@contextmanager
def _capturing_unexpected_keys() -> Iterator[_UnexpectedKeys]:
    handler = _UnexpectedKeys()
    loggers = [logging.getLogger(name) for name in ("diffusers", "peft")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        if logger.getEffectiveLevel() > logging.WARNING:  # a quiet terminal must not hide the report
            logger.setLevel(logging.WARNING)
    try:
        yield handler
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)


def _has_adapter(module: Any, name: str) -> bool:
    """A PEFT tuner layer (LoRA, LoHa, LoKr) holding adapter `name`: every kind keeps a scaling per adapter."""
    scaling = getattr(module, "scaling", None)  # a dict on tuner layers; some models' own modules hold a float
    return isinstance(scaling, dict) and name in scaling and hasattr(module, "get_base_layer")


def _applied_modules(pipeline: Any, name: str) -> int:
    count = 0
    for component in _COMPONENTS:
        module = getattr(pipeline, component, None)
        if module is None:
            continue
        count += sum(1 for _, m in module.named_modules() if _has_adapter(m, name))
    return count


def _short(message: str, limit: int = 300) -> str:
    """The first line of a library's error, cut to `limit` characters (some list every key of the file)."""
    first = message.strip().splitlines()[0] if message.strip() else "unknown error"
    return first if len(first) <= limit else first[:limit] + f"… ({len(first) - limit} more characters)"


def _components_with(pipeline: Any, name: str) -> list[str]:
    return [c for c, names in pipeline.get_list_adapters().items() if name in names]


class LoraStackApplier:
    """Applies a stack to a pipeline; remembers which adapters were used recently to prune the rest."""

    def __init__(self, keep_inactive: int = KEEP_INACTIVE) -> None:
        self.keep_inactive = keep_inactive
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._reports: dict[str, LoraReport] = {}
        self._originals: list[tuple[torch.nn.Module, torch.Tensor]] = []  # base weights saved by a fuse
        self._fused: Any = None  # the pipeline whose weights are fused
        self._active: tuple[Any, ...] | None = None  # (UNet identity, adapter weights) last set
        self.file_reads = 0  # LoRA files read from disk (tests check that weight changes read nothing)

    def apply(
        self,
        pipeline: Any,
        family: Family,
        stack: Sequence[LoraSpec],
        fuse: bool = False,
        interrupt: Callable[[], None] | None = None,
    ) -> list[LoraReport]:
        """Load what is missing, set weights, prune; with `fuse`, merge the active LoRAs into the weights
        for speed (the next apply restores the original weights bit for bit first). `interrupt` is called
        before each file is read and may raise to stop (what was loaded stays, and the next apply sets weights)."""
        self.unfuse()
        reports: list[LoraReport] = []
        active: list[tuple[str, LoraSpec]] = []
        for spec in stack:
            name = adapter_name(spec.path)
            present = any(name in names for names in pipeline.get_list_adapters().values())
            if not present and not spec.active:
                reports.append(LoraReport(spec.path.stem))
                continue
            if not present and interrupt is not None:
                interrupt()
            report = self._ensure_loaded(pipeline, family, spec, name) if not present else None
            if report is not None and report.error is not None:
                reports.append(report)
                continue
            reports.append(report or self._report_loaded(pipeline, spec, name))
            self._recent[name] = None
            self._recent.move_to_end(name)
            if spec.active:
                active.append((name, spec))
        self._activate(pipeline, active)
        self._prune(pipeline, {name for name, _ in active} | {adapter_name(s.path) for s in stack})
        if fuse and active:
            self._fuse(pipeline, [name for name, _ in active])
        return reports

    @property
    def fused(self) -> bool:
        return self._fused is not None

    def _fuse(self, pipeline: Any, names: list[str]) -> None:
        components = [c for c in _COMPONENTS if getattr(pipeline, c, None) is not None]
        for component in components:
            for module in getattr(pipeline, component).modules():
                if any(_has_adapter(module, name) for name in names):
                    base = module.get_base_layer()
                    self._originals.append((base, base.weight.detach().clone()))
        pipeline.fuse_lora(components=components, lora_scale=1.0, adapter_names=names)
        self._fused = pipeline

    def unfuse(self) -> None:
        """Undo a fuse exactly: unmerge, then put back the saved base weights (unmerging alone leaves rounding)."""
        if self._fused is None:
            return
        components = [c for c in _COMPONENTS if getattr(self._fused, c, None) is not None]
        self._fused.unfuse_lora(components=components)
        with torch.no_grad():
            for base, weight in self._originals:
                base.weight.copy_(weight)
        self._originals.clear()
        self._fused = None

    def _report_loaded(self, pipeline: Any, spec: LoraSpec, name: str) -> LoraReport:
        cached = self._reports.get(name)
        return cached or LoraReport(spec.path.stem, applied=_applied_modules(pipeline, name))

    def _ensure_loaded(self, pipeline: Any, family: Family, spec: LoraSpec, name: str) -> LoraReport:
        from webui.models.files import ModelFileError, load_state_dict, read_header
        from webui.models.identify import identify

        label = spec.path.stem
        try:
            identity = identify(read_header(spec.path))
            if identity.kind is not Kind.LORA:
                return LoraReport(label, error=f"{spec.path.name} is a {identity.kind.value} file, not a LoRA")
            if not identity.fits(family) and identity.family is not Family.UNKNOWN:
                return LoraReport(
                    label,
                    error=f"{spec.path.name} is a LoRA for {identity.family.label}; "
                    f"it cannot patch this {family.label} model",
                )
            state_dict = load_state_dict(spec.path)
            self.file_reads += 1
        except ModelFileError as error:
            return LoraReport(label, error=f"{spec.path.name}: {error.problem}")
        total = count_lora_modules(state_dict)
        self._active = None  # loading makes the new adapter the active one
        convert = family.description.lora.converter()  # None: the SD families' kohya names are placed here
        if convert is None and is_kohya_named(state_dict):
            report = self._inject(pipeline, family, spec, name, state_dict, total)
        else:
            skipped: tuple[str, ...] = ()
            converted = convert(state_dict) if convert is not None else state_dict
            if isinstance(converted, LoraConversion):  # counted in the converted (diffusers) modules
                converted, skipped = converted.state, converted.skipped
                total = count_lora_modules(converted) + len(skipped)
            if converted:
                report = self._load_with_diffusers(pipeline, spec, name, converted, total, skipped)
            else:
                reasons = "; ".join(skipped[:3]) or "no key of it names a module"
                error = f"{spec.path.name}: {reasons}"
                report = LoraReport(spec.path.stem, unapplied=total, examples=skipped[:5], error=error)
        if report.error is None:
            self._reports[name] = report
        return report

    def _inject(
        self, pipeline: Any, family: Family, spec: LoraSpec, name: str, state_dict: dict[str, Any], total: int
    ) -> LoraReport:
        """kohya / LyCORIS names: LoRA, DoRA, LoHa and LoKr modules placed and injected here (lora_inject.py)."""
        from webui.engine.lora_inject import inject_network

        try:
            injected = inject_network(pipeline, family, state_dict, name)
        except ValueError as error:
            return LoraReport(spec.path.stem, unapplied=total, error=f"{spec.path.name}: {_short(str(error))}")
        examples = tuple(f"{module} ({reason})" for module, reason in sorted(injected.unapplied.items())[:5])
        return LoraReport(
            spec.path.stem,
            applied=injected.applied_total,
            unapplied=len(injected.unapplied),
            examples=examples,
        )

    def _load_with_diffusers(
        self,
        pipeline: Any,
        spec: LoraSpec,
        name: str,
        state_dict: dict[str, Any],
        total: int,
        skipped: tuple[str, ...] = (),
    ) -> LoraReport:
        """diffusers' loader; `skipped` names what the family's converter could not convert (reported too), and
        modules of a component the pipeline lacks (a text encoder when baking into a lone transformer file) are
        left out and reported rather than handed to diffusers, which cannot load into a missing component."""
        absent = {key.split(".", 1)[0] for key in state_dict} & {
            c for c in _COMPONENTS if getattr(pipeline, c, None) is None
        }
        if absent:
            state_dict = {k: v for k, v in state_dict.items() if k.split(".", 1)[0] not in absent}
            skipped = (*skipped, *(f"{c}.* (no {c} in this model)" for c in sorted(absent)))
            if not state_dict:
                error = f"{spec.path.name}: it patches only {', '.join(sorted(absent))}, which this model lacks"
                return LoraReport(spec.path.stem, unapplied=total, examples=skipped[:5], error=error)
        with _capturing_unexpected_keys() as unexpected:
            try:
                pipeline.load_lora_weights(state_dict, adapter_name=name, low_cpu_mem_usage=True)
            except (ValueError, KeyError, RuntimeError) as error:
                problem = _short(str(error))
                error_text = f"{spec.path.name}: none of its {total} modules fits this model ({problem})"
                return LoraReport(spec.path.stem, unapplied=total, error=error_text)
        applied = _applied_modules(pipeline, name)
        examples = (*skipped, *sorted({_MODULE_SUFFIXES.sub("", k) for k in unexpected.keys}))[:5]
        unapplied = max(total - applied, len(examples))
        return LoraReport(spec.path.stem, applied=applied, unapplied=unapplied, examples=examples)

    def _activate(self, pipeline: Any, active: list[tuple[str, LoraSpec]]) -> None:
        if not pipeline.get_list_adapters():
            return
        # set_adapters walks every module; skip it when this pipeline already has exactly these weights.
        modules = tuple(id(getattr(pipeline, c, None)) for c in _COMPONENTS)
        wanted = (modules, tuple((name, s.unet_weight, s.te_weight) for name, s in active))
        if wanted == self._active:
            return
        if not active:
            pipeline.disable_lora()
        else:
            pipeline.enable_lora()
            names = [name for name, _ in active]
            weights = []
            for name, spec in active:
                parts = _components_with(pipeline, name)
                weights.append({c: (spec.unet_weight if c in _DENOISERS else spec.te_weight) for c in parts})
            pipeline.set_adapters(names, adapter_weights=weights)
        self._active = wanted

    def _prune(self, pipeline: Any, keep: set[str]) -> None:
        present = {n for names in pipeline.get_list_adapters().values() for n in names}
        inactive = [n for n in self._recent if n in present and n not in keep]
        for name in inactive[: max(0, len(inactive) - self.keep_inactive)]:
            pipeline.delete_adapters(name)
            self._active = None
            self._recent.pop(name, None)
