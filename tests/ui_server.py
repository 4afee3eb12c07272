"""The real app served on 127.0.0.1 (a free port) over the tiny models, for the UI tests; one per test module."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from webui.config import Settings

TINY_SD1 = "tiny-sd1.safetensors"
SMALL = {"width": 32, "height": 32, "steps": 2}  # tiny models: 32x32 images, 2 steps


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class RunningApp:
    url: str
    settings: Settings
    context: object  # webui.ui.context.UiContext

    @property
    def outputs_dir(self) -> Path:
        return self.settings.outputs_dir


@contextmanager
def running_app(models_dir: Path, scratch: Path) -> Iterator[RunningApp]:
    """`webui.app.serve` as launch.py runs it (background hashing included), stopped afterwards."""
    from webui.app import open_context, serve

    settings = Settings(
        models_dir=models_dir,
        outputs_dir=scratch / "outputs",
        port=free_port(),
        settings_file=scratch / "config" / "settings.json",
    )
    context = open_context(settings)
    app, url = serve(settings, block=False, context=context)
    try:
        yield RunningApp(url.rstrip("/"), settings, context)
    finally:
        app.close()
        context.queue.stop(timeout=30)
        context.library.stop_background_hashing()
