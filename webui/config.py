"""Settings: the one place where command-line flags become a typed configuration."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PORT = 7860
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp16", "bf16", "fp32")
SLICING_MODES = ("auto", "on", "off")


def default_settings_file() -> Path:
    """Per user, outside the project: never under outputs/, never in a folder the UI serves."""
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "webui" / "settings.json"


@dataclass(frozen=True)
class Settings:
    """What the command line said. Device options left as None come from the settings file (Settings tab)."""

    models_dir: Path = Path("models")
    outputs_dir: Path = Path("outputs")
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    device: str | None = None
    precision: str | None = None
    attention_slicing: str | None = None
    ram_budget_gb: float | None = None
    vram_budget_gb: float | None = None
    settings_file: Path | None = None  # None: default_settings_file()
    extra_model_paths: Path | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port: {self.port} is not a TCP port; use 1-65535 (default {DEFAULT_PORT})")
        if self.device is not None and self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise ValueError(f"device: {self.device!r} is unknown; use auto, cpu, cuda, cuda:N or mps")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ValueError(f"precision: {self.precision!r} is unknown; use {', '.join(PRECISIONS)}")
        if self.attention_slicing is not None and self.attention_slicing not in SLICING_MODES:
            raise ValueError(f"attention_slicing: {self.attention_slicing!r} is unknown; use auto, on or off")
        for name in ("ram_budget_gb", "vram_budget_gb"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name}: {value} GB is not a memory budget; give a positive number of GB")

    @property
    def settings_path(self) -> Path:
        return self.settings_file or default_settings_file()


def add_path_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by launch.py and every `python -m webui` command."""
    parser.add_argument("--models-dir", type=Path, default=Path("models"), help="where model files live")
    parser.add_argument("--outputs-dir", type=Path, default=Path("outputs"), help="where images are saved")
    parser.add_argument(
        "--extra-model-paths",
        type=Path,
        default=None,
        help="TOML file naming more model roots (an existing A1111 or ComfyUI install); "
        "default: extra_model_paths.toml in the models dir, if present",
    )


def launch_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="launch.py", description="Start the web UI.")
    add_path_arguments(parser)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="TCP port (default 7860)")
    parser.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N or mps (default: settings, else auto)")
    parser.add_argument("--precision", default=None, choices=PRECISIONS, help="weights dtype (default: auto)")
    parser.add_argument(
        "--attention-slicing", default=None, choices=SLICING_MODES, help="slice attention to save VRAM (default: auto)"
    )
    parser.add_argument("--ram-budget-gb", type=float, default=None, help="RAM for cached models (default: half)")
    parser.add_argument("--vram-budget-gb", type=float, default=None, help="VRAM for cached models (default: 80%%)")
    parser.add_argument(
        "--settings-file",
        type=Path,
        default=None,
        help=f"where the Settings tab saves (default: {default_settings_file()})",
    )
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    return Settings(
        models_dir=args.models_dir,
        outputs_dir=args.outputs_dir,
        port=getattr(args, "port", DEFAULT_PORT),
        device=getattr(args, "device", None),
        precision=getattr(args, "precision", None),
        attention_slicing=getattr(args, "attention_slicing", None),
        ram_budget_gb=getattr(args, "ram_budget_gb", None),
        vram_budget_gb=getattr(args, "vram_budget_gb", None),
        settings_file=getattr(args, "settings_file", None),
        extra_model_paths=args.extra_model_paths,
    )
