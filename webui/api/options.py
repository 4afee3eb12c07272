"""The A1111 options the API reads and writes (`/sdapi/v1/options`): a thread-safe store held in memory."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from webui.engine.outputs import check_format

# A1111 keys this studio acts on, with A1111's defaults. Other keys a client sets are stored and echoed back.
DEFAULTS: Mapping[str, Any] = {
    "sd_model_checkpoint": "",  # "": the loaded model, else the library's first usable checkpoint
    "sd_vae": "Automatic",  # "Automatic"/"None": the checkpoint's own VAE; else a VAE file's name
    "CLIP_stop_at_last_layers": 1,
    "samples_format": "png",
    "show_progress_every_n_steps": 10,  # live preview every N steps; -1 or 0: none
    "live_previews_enable": True,
    "forge_additional_modules": [],  # Forge: text encoders / VAE beside a diffusion-model file (FLUX.1)
}
# Per-request override_settings keys acted on (the rest are reported as ignored).
# forge_additional_modules: Forge's list of text-encoder and VAE files that go with a diffusion-model file
OVERRIDE_KEYS = (
    "sd_model_checkpoint",
    "sd_vae",
    "CLIP_stop_at_last_layers",
    "samples_format",
    "forge_additional_modules",
)
NO_VAE = ("", "Automatic", "None")


def _integer(key: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ValueError(f"{key}: {value!r} is not a whole number; use {low}..{high}")
    if not low <= value <= high:
        raise ValueError(f"{key}: {value} is out of range; allowed {low}..{high}")
    return int(value)


def check_option(key: str, value: Any) -> Any:
    """The value to store for `key`; a ValueError names the key when this studio cannot honour it.
    `sd_model_checkpoint` and `sd_vae` name files: the routes check those against the library."""
    if key == "CLIP_stop_at_last_layers":
        return _integer(key, value, 1, 12)
    if key == "show_progress_every_n_steps":
        return _integer(key, value, -1, 1000)
    if key == "samples_format":
        return check_format(value)
    if key == "live_previews_enable" and not isinstance(value, bool):
        raise ValueError(f"live_previews_enable: {value!r} is not true or false")
    if key == "forge_additional_modules" and (
        not isinstance(value, list) or not all(isinstance(item, str) for item in value)
    ):
        raise ValueError(f"{key}: {value!r} is not a list of file names (text encoders and a VAE)")
    if key in ("sd_model_checkpoint", "sd_vae") and not isinstance(value, str):
        raise ValueError(f"{key}: {value!r} is not a name; give a title from /sdapi/v1/sd-models or sd-vae")
    return value


class ApiOptions:
    """Option values by A1111 key; reads give a snapshot, writes replace values (already checked)."""

    def __init__(self, initial: Mapping[str, Any] | None = None) -> None:
        self._values = {**DEFAULTS, **(initial or {})}
        self._lock = threading.Lock()

    @classmethod
    def from_preferences(cls, preferences: Any) -> ApiOptions:
        """Start from the UI's saved defaults (any object with `checkpoint`, `clip_skip`, `preview_every`)."""
        initial: dict[str, Any] = {}
        if getattr(preferences, "checkpoint", ""):
            initial["sd_model_checkpoint"] = preferences.checkpoint
        if getattr(preferences, "clip_skip", None):
            initial["CLIP_stop_at_last_layers"] = preferences.clip_skip
        if getattr(preferences, "preview_every", None) is not None:
            initial["show_progress_every_n_steps"] = preferences.preview_every
        if getattr(preferences, "samples_format", None):
            initial["samples_format"] = preferences.samples_format
        return cls(initial)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._values)

    def __getitem__(self, key: str) -> Any:
        with self._lock:
            return self._values[key]

    def update(self, values: Mapping[str, Any]) -> None:
        with self._lock:
            self._values.update(values)

    @property
    def preview_every(self) -> int:
        """Steps between live previews for /progress (0: none), from the two A1111 options."""
        values = self.snapshot()
        every = values["show_progress_every_n_steps"]
        return every if values["live_previews_enable"] and every > 0 else 0
