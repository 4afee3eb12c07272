"""What every tab is built from: the engine, the model library, the preferences, and the running jobs."""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from webui.config import Settings
from webui.engine.device import DevicePolicy
from webui.engine.jobs import JobQueue
from webui.engine.pipelines import PipelineManager, default_budgets
from webui.engine.styles import StyleLibrary
from webui.engine.txt2img import Engine
from webui.models.library import ModelLibrary
from webui.models.tokenizers import TokenizerNotFoundError, load_clip_tokenizer
from webui.ui.preferences import Preferences, PreferencesStore

GPU = "gpu"  # the concurrency_id every event that touches the device shares (one at a time)
GB = 2**30
MAX_REFUSALS_KEPT = 64  # sessions whose refused override waits to be reset (each is taken at once)


def owner_of(request: Any) -> str:
    """Whose job it is: the signed-in user; without logins, the machine the browser runs on (the local user:
    every tab of theirs, and their API calls, which are named the same way: see webui.server.api_user_dependency)."""
    user = getattr(request, "username", None)
    if user:
        return user
    client = getattr(request, "client", None)
    return getattr(client, "host", None) or "local"


def session_of(request: Any) -> str | None:
    """The browser page a request comes from (Gradio's session hash), None without one."""
    return getattr(request, "session_hash", None)


@dataclass
class UiContext:
    """The engine, its job queue (shared with the API, started by `webui.app.serve`), the library, the
    command line's settings and the preferences file."""

    engine: Engine
    queue: JobQueue
    library: ModelLibrary
    settings: Settings
    preferences: PreferencesStore
    styles: StyleLibrary | None = None  # A1111 styles.csv files (txt2img's Styles, the API's styles)
    _tokenizer: Any = None
    _tokenizer_error: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # browser session -> the override field ("vae", ...) its last model load was refused for (see model_bar)
    _refusals: OrderedDict[str, str] = field(default_factory=OrderedDict)

    @property
    def prefs(self) -> Preferences:
        """The saved preferences with the command line's device options on top."""
        return self.preferences.current.with_cli(self.settings)

    def note_refusal(self, session: str | None, field_name: str) -> None:
        """Remember that `session`'s last load was refused for its `field_name` override (kept for a few sessions)."""
        if session is None:
            return
        with self._lock:
            self._refusals[session] = field_name
            while len(self._refusals) > MAX_REFUSALS_KEPT:
                self._refusals.popitem(last=False)

    def take_refusal(self, session: str | None) -> str | None:
        """The override field `session`'s last load was refused for, once; None if it was not."""
        with self._lock:
            return self._refusals.pop(session, None) if session is not None else None

    def tokenizer(self) -> Any:
        """The CLIP tokenizer for the token counter (the same BPE for every SD text encoder), or None."""
        with self._lock:
            if self._tokenizer is None and self._tokenizer_error is None:
                try:
                    self._tokenizer = load_clip_tokenizer(self.library.models_dir)
                except (TokenizerNotFoundError, OSError, ValueError) as error:
                    self._tokenizer_error = str(error)
            return self._tokenizer


def apply_engine_preferences(engine: Engine, prefs: Preferences) -> list[str]:
    """Device, precision, attention slicing and memory budgets, applied now; returns what changed.

    A new device policy gets a new pipeline manager over the same component cache (dropped first when
    the device or dtype changes); the next generation re-assembles its pipeline under the new policy."""
    changes: list[str] = []
    with engine.gpu_lock:
        manager = engine.manager
        policy = dataclasses.replace(
            manager.policy,
            device=prefs.device,
            precision=prefs.precision,
            attention_slicing=prefs.attention_slicing,
            fp8_storage=prefs.fp8_storage,
        )
        if policy != manager.policy:
            fresh = PipelineManager(manager.models_dir, policy, cache=manager.cache, default_part=manager.default_part)
            if (fresh.device, fresh.dtype) != (manager.device, manager.dtype):
                manager.cache.clear()
                changes.append(f"device {fresh.device}, {str(fresh.dtype).removeprefix('torch.')}")
            if policy.attention_slicing != manager.policy.attention_slicing:
                changes.append(f"attention slicing {policy.attention_slicing}")
            if policy.fp8_storage != manager.policy.fp8_storage:
                changes.append(f"fp8 transformer storage {policy.fp8_storage}")
            engine.manager = fresh
        for device_type, nbytes in {**default_budgets(engine.manager.device), **budgets_of(prefs)}.items():
            engine.manager.cache.set_budget(device_type, nbytes)
        if engine.samples_format != prefs.samples_format:
            engine.samples_format = prefs.samples_format
            changes.append(f"images saved as {prefs.samples_format}")
    return changes


def policy_of(prefs: Preferences) -> DevicePolicy:
    return DevicePolicy(prefs.device, prefs.precision, prefs.attention_slicing, fp8_storage=prefs.fp8_storage)


def budgets_of(prefs: Preferences) -> dict[str, int]:
    """The memory budgets the preferences set (0 GB: the engine's default)."""
    gigabytes = {"cpu": prefs.ram_budget_gb, "cuda": prefs.vram_budget_gb}
    return {device: int(value * GB) for device, value in gigabytes.items() if value}
