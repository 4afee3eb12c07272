"""What the UI shows per model family: the badge, native image sizes, and the few-step preset of distilled models."""

from __future__ import annotations

import re

from webui.engine.samplers import LCM_PRESET, TURBO_PRESET, DistilledPreset
from webui.models.kinds import Family, Prediction
from webui.models.library import ModelEntry

# Few-step distillations announce themselves in the file name on every model site.
_LCM = re.compile(r"(^|[^a-z])lcm([^a-z]|$)", re.IGNORECASE)
_TURBO = re.compile(r"turbo|lightning|hyper|[^a-z]dmd2?([^a-z]|$)", re.IGNORECASE)

# (width, height) presets per family, native size first; SD2 v-prediction models are trained at 768.
_SD1_SIZES = ((512, 512), (512, 768), (768, 512), (640, 512), (512, 640))
_SD2V_SIZES = ((768, 768), (768, 1024), (1024, 768), (768, 576), (576, 768))
_SDXL_SIZES = ((1024, 1024), (896, 1152), (1152, 896), (832, 1216), (1216, 832), (768, 1344), (1344, 768))


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
    if entry is None:
        return _SD1_SIZES
    if entry.family in (Family.SDXL, Family.SDXL_REFINER):
        return _SDXL_SIZES
    prediction = entry.identity.prediction if entry.identity else None
    if entry.family is Family.SD2 and prediction is Prediction.V:
        return _SD2V_SIZES
    return _SD1_SIZES


def native_size(entry: ModelEntry | None) -> tuple[int, int]:
    return size_presets(entry)[0]


def size_label(size: tuple[int, int]) -> str:
    return f"{size[0]}×{size[1]}"


def parse_size_label(label: str) -> tuple[int, int]:
    width, height = label.split("×")
    return int(width), int(height)


def badge(entry: ModelEntry | None) -> str:
    """The family badge: `SDXL`, `SD2.x v-pred`, `SDXL · distilled`; empty without a checkpoint."""
    if entry is None:
        return ""
    parts = [entry.family.label]
    if entry.identity is not None and entry.identity.prediction is Prediction.V:
        parts.append("v-pred")
    if distilled_preset(entry) is not None:
        parts.append("distilled")
    return " · ".join(parts)
