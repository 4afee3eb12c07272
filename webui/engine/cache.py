"""Component cache: loaded UNets, VAEs and text encoders kept by file identity, within a memory budget.

Eviction policy: every component is charged to the memory of the device it sits on (RAM for
the CPU, VRAM for CUDA). Before a load that would exceed that device's budget, the least
recently used components not pinned by the pipeline in use are evicted until it fits; the
cache then holds the only reference to what it evicts, so dropping it and trimming the heap
really returns the memory (see `release_memory`). A component larger than the whole budget is
still loaded (the alternative is not generating at all), and the budget is exceeded only by it.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from webui.engine.memory import module_bytes, release_memory
from webui.families import Family
from webui.models.loading import Role

log = logging.getLogger(__name__)


def file_identity(path: Path) -> tuple[str, int, int]:
    """(resolved path, size, mtime_ns): changes whenever the file (or any file of a folder) changes."""
    path = path.resolve()
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file()]
        stats = [p.stat() for p in files]
        return str(path), sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0)
    stat = path.stat()
    return str(path), stat.st_size, stat.st_mtime_ns


@dataclass(frozen=True)
class ComponentKey:
    """What makes two loaded components the same: the file's identity, where in it, role, dtype, device."""

    path: str
    size: int
    mtime_ns: int
    prefix: str
    role: Role
    family: Family
    dtype: str
    device: str

    @classmethod
    def of(
        cls, path: Path, prefix: str, role: Role, family: Family, dtype: torch.dtype, device: torch.device
    ) -> ComponentKey:
        resolved, size, mtime = file_identity(path)
        return cls(resolved, size, mtime, prefix, role, family, str(dtype).removeprefix("torch."), str(device))

    @property
    def label(self) -> str:
        return f"{Path(self.path).name}{' ' + self.prefix if self.prefix else ''} [{self.role.value}]"


@dataclass
class CachedComponent:
    key: ComponentKey
    module: torch.nn.Module
    nbytes: int
    flags: set[str] = field(default_factory=set)  # e.g. "vae-fp32" once fp16 decoding failed


@dataclass(frozen=True)
class CacheStats:
    label: str
    role: str
    device: str
    dtype: str
    nbytes: int


class ComponentCache:
    def __init__(self, budgets: dict[str, int]) -> None:
        """`budgets`: bytes per device type, e.g. {"cpu": 8 GiB, "cuda": 20 GiB}."""
        self._budgets = dict(budgets)
        self._items: OrderedDict[ComponentKey, CachedComponent] = OrderedDict()
        self._pinned: frozenset[ComponentKey] = frozenset()
        self._lock = threading.RLock()
        self.loads = 0  # how many times a loader ran (tests count cache misses with it)
        self.evictions = 0

    def get_or_load(self, key: ComponentKey, loader: Callable[[], torch.nn.Module]) -> CachedComponent:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
                return item
        module = loader()
        self.loads += 1
        item = CachedComponent(key, module, module_bytes(module))
        with self._lock:
            self._make_room(torch.device(key.device).type, item.nbytes)
            self._items[key] = item
        return item

    def pin(self, keys: Iterable[ComponentKey]) -> None:
        """Protect the pipeline in use from eviction (replaces the previous pin)."""
        with self._lock:
            self._pinned = frozenset(keys)

    def _used(self, device_type: str) -> int:
        return sum(i.nbytes for i in self._items.values() if torch.device(i.key.device).type == device_type)

    def _make_room(self, device_type: str, incoming: int) -> None:
        budget = self._budgets.get(device_type)
        if budget is None:
            return
        victims = [k for k in self._items if k not in self._pinned and torch.device(k.device).type == device_type]
        freed = False
        while victims and self._used(device_type) + incoming > budget:
            self._drop(victims.pop(0))
            freed = True
        if freed:
            release_memory()

    def _drop(self, key: ComponentKey) -> None:
        item = self._items.pop(key)
        log.info("evicting %s (%.1f MB)", key.label, item.nbytes / 2**20)
        self.evictions += 1
        del item

    def evict(self, keys: Iterable[ComponentKey] | None = None) -> None:
        """Evict the given keys (default: everything not pinned) and return their memory."""
        with self._lock:
            targets = list(self._items) if keys is None else list(keys)
            for key in targets:
                if key in self._items and key not in self._pinned:
                    self._drop(key)
        release_memory()

    def clear(self) -> None:
        with self._lock:
            self._pinned = frozenset()
            self._items.clear()
        release_memory()

    def budget(self, device_type: str) -> int | None:
        """The memory budget of a device type in bytes (None: no budget)."""
        return self._budgets.get(device_type)

    def set_budget(self, device_type: str, nbytes: int) -> None:
        with self._lock:
            self._budgets[device_type] = nbytes
            self._make_room(device_type, 0)

    def __contains__(self, key: ComponentKey) -> bool:
        return key in self._items

    def stats(self) -> list[CacheStats]:
        with self._lock:
            return [
                CacheStats(i.key.label, i.key.role.value, i.key.device, i.key.dtype, i.nbytes)
                for i in self._items.values()
            ]

    def total_bytes(self) -> int:
        with self._lock:
            return sum(i.nbytes for i in self._items.values())
