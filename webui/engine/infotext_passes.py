"""Second-pass infotext keys read back as A1111 reads them: Hires. fix, the refiner, and old hires fix's sizes.

A1111 (modules/infotext_utils.py) turns Hires. fix on when `Denoising strength` comes with `Hires upscale`,
`Hires upscaler` or `Hires resize`; an infotext from before 1.0 says `First pass size: WxH` instead, and its
`Size` is the final size: `restore_old_hires_fix_params` makes the first pass the Size and the old Size the
hires resize, computing a `0x0` first pass as the old hires fix did (about 512×512 pixels, sides up to 64).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from webui.engine.samplers import SCHEDULE_TYPES, split_legacy_name
from webui.engine.second_pass import first_pass_size

# infotext key -> (flat field, converter)
_HIRES_KEYS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "Denoising strength": ("denoising_strength", float),
    "Hires upscale": ("hr_scale", float),
    "Hires steps": ("hr_second_pass_steps", int),
    "Hires upscaler": ("hr_upscaler", str),
    "Hires prompt": ("hr_prompt", str),
    "Hires negative prompt": ("hr_negative_prompt", str),
    "Hires CFG Scale": ("hr_cfg", float),
    "Refiner switch at": ("refiner_switch_at", float),
}
_SCHEDULES = {name.lower(): name for name in SCHEDULE_TYPES}


def _size(text: str) -> tuple[int, int]:
    width, height = (int(v) for v in text.lower().split("x"))
    return width, height


def second_pass_values(
    params: dict[str, str], values: dict[str, Any], notes: list[str], find_checkpoint: Callable[[str], Path | None]
) -> list[str]:
    """Fill `values` (flat field names) from the second-pass keys of `params`; a value that cannot be read gets a
    note. Returns what the library lacks (a refiner checkpoint)."""
    params = dict(params)
    if "First pass size" in params:
        _old_hires_fix(params, values, notes)
    for key, (name, convert) in _HIRES_KEYS.items():
        if key in params:
            try:
                values[name] = convert(params[key])
            except ValueError:
                notes.append(f"{key}: {params[key]!r} is not a valid value; left at its default")
    if "Hires resize" in params:
        try:
            values["hr_resize_x"], values["hr_resize_y"] = _size(params["Hires resize"])
        except ValueError:
            notes.append(f"Hires resize: {params['Hires resize']!r} is not WIDTHxHEIGHT; left at its default")
    if "Hires sampler" in params:
        try:
            values["hr_sampler_name"], schedule = split_legacy_name(params["Hires sampler"])
            if schedule != "Automatic":
                values["hr_scheduler"] = schedule
        except ValueError:
            notes.append(f"Hires sampler: {params['Hires sampler']!r} is unknown here; the first pass's is used")
    if "Hires schedule type" in params:
        schedule = _SCHEDULES.get(params["Hires schedule type"].lower())
        if schedule is None:
            notes.append(f"Hires schedule type: {params['Hires schedule type']!r} is unknown; the first pass's is used")
        else:
            values["hr_scheduler"] = schedule
    hires_keys = ("Hires upscale", "Hires upscaler", "Hires resize")
    values["enable_hr"] = "Denoising strength" in params and any(key in params for key in hires_keys)
    missing = []
    if params.get("Refiner"):
        found = find_checkpoint(params["Refiner"])
        if found is None:
            missing.append(f"refiner {params['Refiner']}")
        else:
            values["refiner_checkpoint"] = found
    return missing


def _old_hires_fix(params: dict[str, str], values: dict[str, Any], notes: list[str]) -> None:
    """A1111's restore_old_hires_fix_params: the first pass becomes the size, the old size the hires resize."""
    try:
        first_width, first_height = _size(params["First pass size"])
    except ValueError:
        notes.append(f"First pass size: {params['First pass size']!r} is not WIDTHxHEIGHT; ignored")
        return
    width, height = values.get("width", 512), values.get("height", 512)
    if first_width == 0 or first_height == 0:
        first_width, first_height = first_pass_size(width, height)
    values["width"], values["height"] = first_width, first_height
    params["Hires resize"] = f"{width}x{height}"
    notes.append(f"First pass size: old hires fix; {first_width}x{first_height} is generated, then {width}x{height}")
