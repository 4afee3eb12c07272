"""Preferences: the Settings tab's values, kept in a JSON file written atomically (never under outputs/)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webui.config import DEVICES, FP8_MODES, PRECISIONS, SLICING_MODES, Settings
from webui.engine.outputs import check_format
from webui.engine.pipelines import ModelChoice
from webui.engine.request import MAX_CFG, MAX_STEPS, GenerationRequest
from webui.engine.samplers import AUTOMATIC, default_sampling
from webui.families import Family

log = logging.getLogger(__name__)
# The Settings entry for "start from the model family's own default" (A1111's DPM++ 2M Karras for SD families).
FAMILY_SAMPLER = "Family default"
_LEGACY_SAMPLERS = ("Model default",)  # what files saved before FAMILY_SAMPLER hold for the same choice
FILE_VERSION = 1


@dataclass(frozen=True)
class Preferences:
    """Defaults for the txt2img fields, then how the engine runs. Width/height 0: the family's native size."""

    checkpoint: str = ""  # "": the first checkpoint the library lists
    prompt: str = ""
    negative_prompt: str = ""
    sampler: str = FAMILY_SAMPLER  # with it, `schedule` is the family's too
    schedule: str = AUTOMATIC
    steps: int = 20
    cfg_scale: float = 7.0
    width: int = 0
    height: int = 0
    batch_count: int = 1
    batch_size: int = 1
    clip_skip: int = 1
    preview_every: int = 1  # live preview every N steps; 0: none
    samples_format: str = "png"  # A1111's "File format for images": png, jpg or webp (infotext in EXIF)
    device: str = "auto"
    precision: str = "auto"
    attention_slicing: str = "auto"
    fp8_storage: str = "auto"  # transformer weights (FLUX.1) in fp8: auto (when bf16 does not fit), on, off
    ram_budget_gb: float = 0.0  # 0: the engine's default (half the RAM)
    vram_budget_gb: float = 0.0  # 0: the engine's default (80% of the GPU)

    def __post_init__(self) -> None:
        # The request validates the txt2img fields exactly as a generation would.
        sides = {k: getattr(self, k) for k in ("width", "height") if getattr(self, k)}
        GenerationRequest(
            model=ModelChoice(Path("defaults")),
            sampler=None if self.sampler == FAMILY_SAMPLER else self.sampler,
            **{k: getattr(self, k) for k in REQUEST_DEFAULTS if k not in ("sampler", "width", "height")},
            **sides,
        )
        for name, allowed in (
            ("device", DEVICES),
            ("precision", PRECISIONS),
            ("attention_slicing", SLICING_MODES),
            ("fp8_storage", FP8_MODES),
        ):
            value = getattr(self, name)
            if value not in allowed and not (name == "device" and value.startswith("cuda:")):
                raise ValueError(f"{name}: {value!r} is unknown; use {', '.join(allowed)}")
        for name in ("ram_budget_gb", "vram_budget_gb"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: {getattr(self, name)} is negative; give GB, or 0 for the default")
        check_format(self.samples_format)
        for name, high in (("steps", MAX_STEPS), ("cfg_scale", MAX_CFG)):  # the sliders' ranges, not the API's
            if getattr(self, name) > high:
                raise ValueError(f"{name}: {getattr(self, name)} is out of range for the slider; allowed up to {high}")
        if not 0 <= self.preview_every <= 150:
            raise ValueError(f"preview_every: {self.preview_every} is out of range; allowed 0..150")

    def sampling_for(self, family: Family | None) -> tuple[str, str]:
        """(sampler, schedule) a txt2img page starts from for a model of `family`."""
        return default_sampling(family) if self.sampler == FAMILY_SAMPLER else (self.sampler, self.schedule)

    def with_cli(self, settings: Settings) -> Preferences:
        """These preferences with the device options the command line gave (flags win over the file)."""
        given = {
            name: getattr(settings, name)
            for name in ("device", "precision", "attention_slicing", "ram_budget_gb", "vram_budget_gb")
            if getattr(settings, name) is not None
        }
        return dataclasses.replace(self, **given)


# Preference fields that are also GenerationRequest fields (the txt2img defaults).
REQUEST_DEFAULTS = (
    "prompt",
    "negative_prompt",
    "sampler",
    "schedule",
    "steps",
    "cfg_scale",
    "width",
    "height",
    "batch_count",
    "batch_size",
    "clip_skip",
)
PREFERENCE_NAMES = tuple(f.name for f in dataclasses.fields(Preferences))


def preferences_from_json(data: dict[str, Any]) -> tuple[Preferences, list[str]]:
    """Preferences from a saved dict; unknown keys and bad values are dropped, each with a note why."""
    notes: list[str] = []
    known = {k: v for k, v in data.items() if k in PREFERENCE_NAMES}
    if known.get("sampler") in _LEGACY_SAMPLERS:
        known["sampler"] = FAMILY_SAMPLER
    notes += [f"{k}: not a setting (ignored)" for k in data if k not in PREFERENCE_NAMES and k != "version"]
    defaults = Preferences()
    for name, value in list(known.items()):
        expected = type(getattr(defaults, name))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            known[name] = float(value)
        elif not isinstance(value, expected) or isinstance(value, bool) != (expected is bool):
            notes.append(f"{name}: {value!r} is not a {expected.__name__} (default used)")
            del known[name]
    try:
        return Preferences(**known), notes
    except ValueError as error:  # a value out of range: keep the file's other values
        name = str(error).split(":", 1)[0]
        notes.append(f"{error} (default used)")
        if name not in known:
            return Preferences(), notes
        return preferences_from_json({k: v for k, v in known.items() if k != name})[0], notes


def preferences_from_widgets(values: dict[str, Any]) -> Preferences:
    """Preferences from the Settings tab's values (numbers arrive as floats); ValueError names the field."""
    defaults = Preferences()
    out: dict[str, Any] = {}
    for name, value in values.items():
        expected = type(getattr(defaults, name))
        if expected is str:
            out[name] = "" if value is None else str(value)
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: {value!r} is not a number") from None
        if expected is int and not number.is_integer():
            raise ValueError(f"{name}: {value} is not a whole number")
        out[name] = int(number) if expected is int else number
    return Preferences(**out)


class PreferencesStore:
    """The settings file: read once, saved atomically (temp file + rename) on every change."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self.notes: list[str] = []
        self._current = self._read()

    def _read(self) -> Preferences:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return Preferences()
        except (OSError, ValueError) as error:
            self.notes = [f"{self.path} is unreadable ({error}); defaults are used until you save"]
            log.warning("%s", self.notes[0])
            return Preferences()
        if not isinstance(data, dict):
            self.notes = [f"{self.path} does not hold a JSON object; defaults are used until you save"]
            return Preferences()
        preferences, self.notes = preferences_from_json(data)
        for note in self.notes:
            log.warning("%s: %s", self.path, note)
        return preferences

    @property
    def current(self) -> Preferences:
        with self._lock:
            return self._current

    def save(self, preferences: Preferences) -> None:
        data = {"version": FILE_VERSION, **dataclasses.asdict(preferences)}
        text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle, temp = tempfile.mkstemp(prefix=".settings-", suffix=".json", dir=self.path.parent)
            try:
                with os.fdopen(handle, "w", encoding="utf-8") as stream:
                    stream.write(text)
                    stream.flush()
                    os.fsync(stream.fileno())
                os.replace(temp, self.path)
            finally:
                Path(temp).unlink(missing_ok=True)
            self._current = preferences
            self.notes = []
