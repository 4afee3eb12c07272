"""LoRA figures: changing the weights of a loaded stack vs one denoising step; a first load vs reading the file."""

from __future__ import annotations

from itertools import cycle

from webui.bench.loading import read_file
from webui.bench.session import Figure, Session
from webui.bench.stats import Case, Stat, interleaved, measure
from webui.engine.lora import LoraSpec, LoraStackApplier

WEIGHTS = (0.5, 0.8, 1.0, 0.3)  # each change differs from the one before


def _check(reports: list) -> None:  # noqa: ANN001 (list[LoraReport])
    bad = [r for r in reports if r.error is not None or r.applied == 0]
    if bad:
        raise RuntimeError(f"the benchmark LoRA did not apply: {bad[0].to_json()}")


def lora_figures(session: Session, step: Stat) -> tuple[Figure, Figure]:
    """(`lora_weight_change_vs_step`, `lora_first_load_vs_file_read`); leaves the pipeline without LoRAs."""
    loaded = session.manager.load(session.choice())
    pipeline, family, path = loaded.pipeline, loaded.family, session.bench_set.lora
    size = read_file(path)
    appliers: list[LoraStackApplier] = []

    def fresh() -> None:  # a true first load: no adapter, no PEFT wrapper layers, a new stack applier
        pipeline.unload_lora_weights()
        appliers.append(LoraStackApplier())

    def first_load() -> None:
        _check(appliers[-1].apply(pipeline, family, [LoraSpec(path, 1.0, 1.0)]))

    first = interleaved(
        {"first_load": Case(first_load, setup=fresh), "file_read": Case(lambda: read_file(path))},
        session.repeats,
        session.warmup,
    )
    applier = appliers[-1]
    reads = applier.file_reads
    weights = cycle(WEIGHTS)

    def change() -> None:
        weight = next(weights)
        _check(applier.apply(pipeline, family, [LoraSpec(path, weight, weight)]))

    change_stat = measure(change, session.fast_repeats, session.warmup)
    reread = applier.file_reads - reads
    pipeline.unload_lora_weights()
    change_raw = {
        "weight_change_s": change_stat.to_json(),
        "denoising_step_s": step.to_json(),
        "lora_file_reads_during_changes": reread,
        "step_measured": "median interval between step-end callbacks of the plain diffusers pipeline, no LoRA",
    }
    first_raw = {
        "first_load_s": first["first_load"].to_json(),
        "file_read_s": first["file_read"].to_json(),
        "file": str(path),
        "file_bytes": size,
    }
    note = f"weight changes re-read the LoRA file {reread} times" if reread else None
    return (
        Figure.of_ratio(change_stat, step, change_raw, note),
        Figure.of_ratio(first["first_load"], first["file_read"], first_raw),
    )
