"""What the figures were measured on: CPU, cores, RAM, GPU, torch threads and library versions."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil
import torch

LIBRARIES = ("torch", "diffusers", "transformers", "peft", "accelerate", "safetensors", "gradio", "gradio_client")


def cpu_model() -> str:
    """The CPU's marketing name (/proc/cpuinfo on Linux), or what the platform module knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def gpu_info(device: torch.device) -> dict[str, Any] | None:
    if device.type != "cuda":
        return None
    props = torch.cuda.get_device_properties(device)
    return {
        "name": props.name,
        "vram_bytes": props.total_memory,
        "capability": f"{props.major}.{props.minor}",
        "multiprocessors": props.multi_processor_count,
        "cuda": torch.version.cuda,
    }


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in (*LIBRARIES, "webui"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def machine_info(device: torch.device) -> dict[str, Any]:
    memory = psutil.virtual_memory()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cpu": cpu_model(),
        "cores_logical": psutil.cpu_count(logical=True),
        "cores_physical": psutil.cpu_count(logical=False),
        "ram_bytes": memory.total,
        "ram_available_bytes_at_start": memory.available,
        "load_average_at_start": list(load) if load else None,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "gpu": gpu_info(device),
    }


def describe(info: dict[str, Any]) -> str:
    """One line for the README and the markdown report."""
    line = (
        f"{info['cpu']}, {info['cores_logical']} logical cores, {info['ram_bytes'] / 2**30:.0f} GiB RAM, "
        f"{info['torch_threads']} torch threads"
    )
    if info.get("gpu"):
        line += f"; {info['gpu']['name']} ({info['gpu']['vram_bytes'] / 2**30:.0f} GiB)"
    return line
