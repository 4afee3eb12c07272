"""Load figures: cold load vs reading the file, switching between cached checkpoints, swapping a cached VAE."""

from __future__ import annotations

from pathlib import Path

from webui.bench.session import Figure, Session, release
from webui.bench.stats import Case, Stat, interleaved, measure
from webui.engine.pipelines import ModelChoice


def read_file(path: Path) -> int:
    """Read every byte of `path` into memory (from the page cache once it is warm); returns the size."""
    return len(path.read_bytes())


def cold_load(session: Session) -> tuple[Figure, Stat]:
    """`cold_load_vs_file_read`, and the cold-load times the switch figure divides by."""
    path = session.bench_set.checkpoint
    choice = ModelChoice(path)
    size = read_file(path)  # into the page cache: the ratio is our overhead over raw I/O
    stats = interleaved(
        {
            "cold_load": Case(lambda: session.manager.load(choice), setup=lambda: release(session.manager)),
            "file_read": Case(lambda: read_file(path)),
        },
        session.repeats,
        session.warmup,
    )
    raw = {
        "file": str(path),
        "file_bytes": size,
        "cold_load_s": stats["cold_load"].to_json(),
        "file_read_s": stats["file_read"].to_json(),
        "file_read_bytes_per_s": stats["file_read"].per(size, "B/s").median,
    }
    figure = Figure.of_ratio(stats["cold_load"], stats["file_read"], raw)
    return figure, stats["cold_load"]


def _toggle(session: Session, choices: list[ModelChoice]) -> tuple[Stat, int, int]:
    """Time loads alternating between `choices` (all cached first): every timed load is a switch.

    Returns the times, the components loaded to fill the cache, and those loaded while switching (0 expected).
    """
    cache = session.manager.cache
    start = cache.loads
    for choice in choices:
        session.manager.load(choice)
    filled = cache.loads
    turn = [0]

    def switch() -> None:
        session.manager.load(choices[turn[0] % len(choices)])
        turn[0] += 1

    stat = measure(switch, session.fast_repeats, session.warmup)
    return stat, filled - start, cache.loads - filled


def cached_switch(session: Session, cold: Stat) -> Figure:
    s = session.bench_set
    switch, filled, during = _toggle(session, [ModelChoice(s.checkpoint), ModelChoice(s.checkpoint_b)])
    raw = {
        "switch_s": switch.to_json(),
        "cold_load_s": cold.to_json(),
        "components_loaded_to_fill_cache": filled,
        "components_loaded_while_switching": during,
    }
    return Figure.of_ratio(switch, cold, raw)


def vae_swap(session: Session) -> Figure:
    s = session.bench_set
    swap, filled, during = _toggle(
        session, [ModelChoice(s.checkpoint, vae=s.vae), ModelChoice(s.checkpoint, vae=s.vae_alt)]
    )
    raw = {
        "swap_s": swap.to_json(),
        "components_loaded_to_fill_cache": filled,
        "components_loaded_while_swapping": during,
    }
    return Figure(swap.median * 1000, raw)
