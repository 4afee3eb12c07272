"""Measuring and returning memory: module sizes, process RSS, CUDA memory, and a real free."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
from functools import cache

import psutil
import torch


def module_bytes(module: torch.nn.Module) -> int:
    """Bytes held by a module's parameters and buffers."""
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def rss_bytes() -> int:
    return psutil.Process(os.getpid()).memory_info().rss


@cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim  # noqa: B018 (glibc only; absent on musl and macOS)
    except (OSError, AttributeError):
        return None
    return libc


def release_memory() -> None:
    """Give freed tensors back: collect cycles, empty the CUDA cache, trim the C heap (glibc)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def cuda_allocated_bytes() -> int:
    return torch.cuda.memory_allocated() if torch.cuda.is_available() else 0


def system_ram_bytes() -> int:
    return psutil.virtual_memory().total


def device_total_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return system_ram_bytes()
