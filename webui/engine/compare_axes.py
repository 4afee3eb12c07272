"""Comparison axes: what each one varies, how its values are written and parsed, and how the grid labels them."""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from webui.engine.samplers import SAMPLER_NAMES, SCHEDULE_TYPES, split_legacy_name


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
    HIRES_UPSCALER = "hires-upscaler"
    DENOISING = "denoising"
    HIRES_STEPS = "hires-steps"

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
    AxisKind.HIRES_UPSCALER: "Hires upscaler",
    AxisKind.DENOISING: "Denoising",
    AxisKind.HIRES_STEPS: "Hires steps",
}
# Axes of Hires. fix, and the HiresFix field each sets (a base request without Hires. fix gets A1111's defaults).
HIRES_FIELDS = {
    AxisKind.HIRES_UPSCALER: "upscaler",
    AxisKind.DENOISING: "denoising_strength",
    AxisKind.HIRES_STEPS: "steps",
}
# Axes that name files, and the ModelChoice field each sets.
COMPONENT_FIELDS = {
    AxisKind.CHECKPOINT: "checkpoint",
    AxisKind.UNET: "unet",
    AxisKind.TEXT_ENCODER: "text_encoder",
    AxisKind.VAE: "vae",
}
NUMBER_FIELDS = {
    AxisKind.CFG: "cfg_scale",
    AxisKind.STEPS: "steps",
    AxisKind.SEED: "seed",
    AxisKind.CLIP_SKIP: "clip_skip",
}
AUTOMATIC = ("automatic", "none", "default")  # a component axis value meaning "the checkpoint's own"
LORA_OFF, LORA_ON = "off", "on"
SECOND_ENCODER = re.compile(r"\s+\+\s+")  # SDXL: "clip-l-file + clip-g-file"
MERGE_VALUE = re.compile(r"^merge\s*:?\s*(\S+)$", re.IGNORECASE)  # a checkpoint axis' "merge 0.3"


@dataclass(frozen=True)
class MergeValue:
    """A checkpoint axis value `merge α`: the weighted sum A·(1−α) + B·α of the nearest checkpoints named before
    (A) and after (B) it on the axis, so `A, merge 0.3, merge 0.5, B` runs A, two merges and B."""

    alpha: float


def merge_value(text: str) -> MergeValue | None:
    """The merge a checkpoint axis value names, or None for a checkpoint; ValueError for a bad α."""
    found = MERGE_VALUE.match(text.strip())
    if found is None:
        return None
    try:
        alpha = float(found.group(1))
    except ValueError:
        raise ValueError("write merge and a weight between 0 and 1, e.g. merge 0.3") from None
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"merge weight {alpha} is out of range; allowed 0..1")
    return MergeValue(alpha)


def merge_ends(values: tuple[str, ...], index: int) -> tuple[int, int]:
    """The indices of the checkpoints a `merge α` value at `index` blends: the nearest named before and after it."""
    before = [i for i in range(index) if merge_value(values[i]) is None]
    after = [i for i in range(index + 1, len(values)) if merge_value(values[i]) is None]
    if not before or not after:
        raise ValueError(f"{values[index].strip()!r} needs a checkpoint before and after it, e.g. A, merge 0.3, B")
    return before[-1], after[0]


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
    if kind in (AxisKind.CFG, AxisKind.DENOISING):
        try:
            number = float(text)
        except ValueError:
            raise ValueError("not a number") from None
        if not math.isfinite(number):
            raise ValueError("not a finite number")
        return number
    if kind in NUMBER_FIELDS or kind is AxisKind.HIRES_STEPS:
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
    if kind is AxisKind.CHECKPOINT:
        return merge_value(text) or text
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
        if self.kind is AxisKind.CHECKPOINT:
            for index, value in enumerate(self.values):
                if merge_value(value) is not None:
                    try:
                        merge_ends(self.values, index)
                    except ValueError as error:
                        raise ValueError(f"checkpoint axis: {error}") from None

    @property
    def title(self) -> str:
        if self.kind is AxisKind.LORA:
            return f"LoRA {_short(self.target)}" if self.target else "LoRA weight"
        return self.kind.title

    @property
    def labels(self) -> tuple[str, ...]:
        """The values as the grid shows them: file names without their folders, `(nothing)` for an empty S/R."""
        if self.kind is AxisKind.CHECKPOINT:
            return tuple(self._checkpoint_label(i) for i in range(len(self.values)))
        if self.kind in COMPONENT_FIELDS:
            return tuple(" + ".join(_short(p) for p in SECOND_ENCODER.split(v.strip())) for v in self.values)
        return tuple(v.strip() or "(nothing)" for v in self.values)

    def _checkpoint_label(self, index: int) -> str:
        """A checkpoint's name, or a merge as A1111 names merged files: `0.7(A) + 0.3(B)`."""
        value = self.values[index]
        merge = merge_value(value)
        if merge is None:
            return _short(value.strip())
        a, b = (_short(self.values[i].strip()) for i in merge_ends(self.values, index))
        return f"{round(1 - merge.alpha, 2):g}({a}) + {round(merge.alpha, 2):g}({b})"

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
