"""What the UI shows per model family, read from its description: the badge, size presets and native size,
and the few-step preset of distilled models."""

from __future__ import annotations

import re

from webui.engine.samplers import LCM_PRESET, TURBO_PRESET, DistilledPreset
from webui.families import DESCRIPTIONS, Family
from webui.models.kinds import Prediction
from webui.models.library import ModelEntry

# Few-step distillations announce themselves in the file name on every model site.
_LCM = re.compile(r"(^|[^a-z])lcm([^a-z]|$)", re.IGNORECASE)
_TURBO = re.compile(r"turbo|lightning|hyper|[^a-z]dmd2?([^a-z]|$)", re.IGNORECASE)


def distilled_preset(entry: ModelEntry | None) -> DistilledPreset | None:
    """The preset for a Turbo/Lightning/LCM model, judged by its name (files carry no other sign of it)."""
    if entry is None:
        return None
    if _LCM.search(entry.name):
        return LCM_PRESET
    if _TURBO.search(entry.name):
        return TURBO_PRESET
    return None


def size_presets(entry: ModelEntry | None) -> tuple[tuple[int, int], ...]:
    """(width, height) presets of the entry's family, native size first (the first family's without one)."""
    known = entry is not None and entry.family is not Family.UNKNOWN
    description = entry.family.description if known else DESCRIPTIONS[0]
    prediction = entry.identity.prediction if entry is not None and entry.identity else None
    return description.defaults.size_presets(prediction)


def native_size(entry: ModelEntry | None) -> tuple[int, int]:
    return size_presets(entry)[0]


def size_label(size: tuple[int, int]) -> str:
    return f"{size[0]}×{size[1]}"


def parse_size_label(label: str) -> tuple[int, int]:
    width, height = label.split("×")
    return int(width), int(height)


DISTILLED_GUIDANCE = 3.5  # Forge's "Distilled CFG Scale" default, shown before a model says otherwise


def family_settings(entry: ModelEntry | None) -> dict[str, float | int]:
    """Steps, CFG scale and distilled guidance the entry's family (and variant) starts from, where it sets
    them (FLUX.1 dev: 20 steps, CFG 1, guidance 3.5; schnell: 4 steps); {} for families that leave them to
    the user's preferences."""
    if entry is None or entry.identity is None:
        return {}
    defaults = entry.family.description.defaults_for(entry.identity.variant)
    values = {
        "steps": defaults.steps,
        "cfg_scale": defaults.cfg_scale,
        "distilled_guidance": defaults.distilled_guidance,
    }
    return {k: v for k, v in values.items() if v is not None}


def takes_distilled_guidance(entry: ModelEntry | None) -> bool:
    """Whether the entry's model has a guidance input (Forge shows "Distilled CFG Scale" for it)."""
    if entry is None or entry.identity is None:
        return False
    variant = entry.family.description.variant(entry.identity.variant)
    return variant is not None and variant.distilled_guidance


def negative_prompt_note(entry: ModelEntry | None) -> str:
    """The negative prompt's hint: empty, or for families where it means nothing at their defaults, when it does."""
    if entry is None or entry.family.description.defaults.negative_prompt:
        return ""
    return f"{entry.family.label}: used only with CFG scale above 1 (true CFG: each step runs twice)"


def badge(entry: ModelEntry | None) -> str:
    """The family badge: `SDXL`, `SD2.x · v-pred`, `SDXL · v-pred · zero-SNR`, `SDXL · distilled`; empty without
    a checkpoint."""
    if entry is None:
        return ""
    parts = [entry.family.label]
    if entry.identity is not None and entry.identity.prediction is Prediction.V:
        parts.append("v-pred")
    if entry.identity is not None and entry.identity.zero_snr:
        parts.append("zero-SNR")
    if distilled_preset(entry) is not None:
        parts.append("distilled")
    return " · ".join(parts)
