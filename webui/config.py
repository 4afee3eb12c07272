"""Settings: the one place where command-line flags become a typed configuration."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_PORT = 7860
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp16", "bf16", "fp32")
SLICING_MODES = ("auto", "on", "off")
FP8_MODES = ("auto", "on", "off")  # fp8 storage of transformer weights (FLUX.1), webui.engine.memory_plan


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
    # Sharing (A1111 flag names). Secrets are kept out of repr so they never reach a log or a page.
    auth: tuple[str, ...] = field(default=(), repr=False)
    auth_file: Path | None = None
    tls_keyfile: Path | None = None
    tls_certfile: Path | None = None
    insecure_no_auth: bool = False
    api: bool = False
    queue_size: int = 32
    max_upload_mb: int = 50
    # The engine as Ray Serve replicas (webui.cluster): None runs it in this process; "" a local Ray instance.
    ray: str | None = None
    ray_replicas: int | None = None  # None: one per GPU of the cluster (one when it has none)
    ray_models_per_replica: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port: {self.port} is not a TCP port; use 1-65535 (default {DEFAULT_PORT})")
        if self.device is not None and self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise ValueError(f"device: {self.device!r} is unknown; use auto, cpu, cuda, cuda:N or mps")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ValueError(f"precision: {self.precision!r} is unknown; use {', '.join(PRECISIONS)}")
        if self.attention_slicing is not None and self.attention_slicing not in SLICING_MODES:
            raise ValueError(f"attention_slicing: {self.attention_slicing!r} is unknown; use auto, on or off")
        if (self.tls_keyfile is None) != (self.tls_certfile is None):
            raise ValueError("tls: give both --tls-keyfile and --tls-certfile, or neither")
        if not 1 <= self.queue_size <= 1000:
            raise ValueError(f"queue_size: {self.queue_size} is out of range; allowed 1..1000")
        if self.ray_replicas is not None and not 1 <= self.ray_replicas <= 1024:
            raise ValueError(f"ray_replicas: {self.ray_replicas} is out of range; allowed 1..1024")
        if not 1 <= self.ray_models_per_replica <= 64:
            raise ValueError(f"ray_models_per_replica: {self.ray_models_per_replica} is out of range; allowed 1..64")
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
    parser.add_argument(
        "--listen",
        nargs="?",
        const="0.0.0.0",
        default=None,
        metavar="ADDRESS",
        help="share on the LAN: listen on ADDRESS (0.0.0.0 when given alone) instead of 127.0.0.1; needs --auth",
    )
    parser.add_argument("--auth", action="append", default=[], metavar="USER:PASS", help="a login (repeatable)")
    parser.add_argument("--auth-file", type=Path, help="a file of logins, one USER:PASS a line")
    parser.add_argument("--tls-keyfile", type=Path, help="serve HTTPS with this private key")
    parser.add_argument("--tls-certfile", type=Path, help="serve HTTPS with this certificate")
    parser.add_argument(
        "--insecure-no-auth", action="store_true", help="allow --listen without a password (not recommended)"
    )
    parser.add_argument("--share", action="store_true", help="Gradio's public share tunnel (not supported)")
    parser.add_argument("--api", action="store_true", help="serve the A1111-compatible API under /sdapi/v1")
    parser.add_argument("--queue-size", type=int, default=32, help="most jobs waiting at once (default 32)")
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
    parser.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="run the engine as Ray Serve replicas (one per GPU): on a local Ray instance, or on the cluster at "
        "ADDRESS (e.g. 192.168.1.20:6379); needs the cluster extra",
    )
    parser.add_argument("--ray-replicas", type=int, default=None, help="engine replicas (default: one per GPU)")
    parser.add_argument(
        "--ray-models-per-replica", type=int, default=1, help="models each replica keeps loaded for routing (1)"
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
        host=getattr(args, "listen", None) or "127.0.0.1",
        auth=tuple(getattr(args, "auth", ()) or ()),
        auth_file=getattr(args, "auth_file", None),
        tls_keyfile=getattr(args, "tls_keyfile", None),
        tls_certfile=getattr(args, "tls_certfile", None),
        insecure_no_auth=getattr(args, "insecure_no_auth", False),
        api=getattr(args, "api", False),
        queue_size=getattr(args, "queue_size", 32),
        ray=getattr(args, "ray", None),
        ray_replicas=getattr(args, "ray_replicas", None),
        ray_models_per_replica=getattr(args, "ray_models_per_replica", 1),
    )
