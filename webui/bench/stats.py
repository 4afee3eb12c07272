"""Repeated timings: warm-up runs, then interleaved repetitions; median reported, min and max kept."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Stat:
    """The runs of one measurement (seconds, it/s, bytes, …) and their median, min and max."""

    runs: tuple[float, ...]
    unit: str = "s"

    def __post_init__(self) -> None:
        if not self.runs:
            raise ValueError("Stat: no runs to summarise")

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    @property
    def min(self) -> float:
        return min(self.runs)

    @property
    def max(self) -> float:
        return max(self.runs)

    @property
    def best(self) -> float:
        """The least disturbed run: the fastest one (highest rate, or shortest time)."""
        return self.max if self.unit.endswith("/s") else self.min

    def per(self, amount: float, unit: str) -> Stat:
        """`amount / run` for every run, e.g. steps / seconds = it/s."""
        return Stat(tuple(amount / run for run in self.runs), unit)

    def to_json(self) -> dict[str, Any]:
        return {"unit": self.unit, "median": self.median, "min": self.min, "max": self.max, "runs": list(self.runs)}


@dataclass(frozen=True)
class Case:
    """One thing to time: `run` is timed; `setup` runs untimed before each call (e.g. dropping a cache)."""

    run: Callable[[], Any]
    setup: Callable[[], Any] | None = None


def synchronize() -> None:
    """Wait for queued GPU work, so a timer stops when the work is done, not when it was queued."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _time(case: Case) -> float:
    if case.setup is not None:
        case.setup()
    synchronize()
    started = time.perf_counter()
    case.run()
    synchronize()
    return time.perf_counter() - started


def interleaved(cases: Mapping[str, Case], repeats: int, warmup: int = 1, rotate: bool = True) -> dict[str, Stat]:
    """Time every case `repeats` times after `warmup` untimed rounds, one case after the other per round.

    Interleaving (and rotating the order each round) spreads the drift of a busy machine over all
    cases alike, so their ratio stays fair even when absolute times wander.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0 (got repeats={repeats}, warmup={warmup})")
    names: Sequence[str] = list(cases)
    for _ in range(warmup):
        for name in names:
            _time(cases[name])
    runs: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        shift = round_ % len(names) if rotate else 0
        for name in [*names[shift:], *names[:shift]]:
            runs[name].append(_time(cases[name]))
    return {name: Stat(tuple(values)) for name, values in runs.items()}


def measure(run: Callable[[], Any], repeats: int, warmup: int = 1, setup: Callable[[], Any] | None = None) -> Stat:
    """One case alone (see `interleaved`)."""
    return interleaved({"only": Case(run, setup)}, repeats, warmup)["only"]


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator
