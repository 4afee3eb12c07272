"""Settings: the one place where command-line flags become a typed configuration."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PORT = 7860


@dataclass(frozen=True)
class Settings:
    models_dir: Path = Path("models")
    outputs_dir: Path = Path("outputs")
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    device: str = "auto"
    extra_model_paths: Path | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port: {self.port} is not a TCP port; use 1-65535 (default {DEFAULT_PORT})")
        if self.device not in ("auto", "cpu", "cuda", "mps"):
            raise ValueError(f"device: {self.device!r} is unknown; use auto, cpu, cuda or mps")


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
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    return Settings(
        models_dir=args.models_dir,
        outputs_dir=args.outputs_dir,
        port=getattr(args, "port", DEFAULT_PORT),
        device=getattr(args, "device", "auto"),
        extra_model_paths=args.extra_model_paths,
    )
