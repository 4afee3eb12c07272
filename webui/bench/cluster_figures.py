"""`bench --cluster`: the engine as Ray Serve replicas on a local Ray instance, measured in one run.

Two figures. `cluster_throughput_vs_one_replica`: jobs per second through the front's queue with N replicas ÷ with
one (the same jobs, all submitted at once; the 1-replica and N-replica deployments alternate, 1, N, N, 1, ..., so a
busy machine's drift hits both). `routed_loads_vs_random`: models read from disk while jobs alternate between two
checkpoints, with Serve's multiplexed routing ÷ with Serve's default routing (the replicas keep the same memory
policy: one model each, `--ray-models-per-replica 1`). On a machine with fewer cores than replicas the throughput
ratio measures contention, not scaling: the report says how many cores there were.
"""

from __future__ import annotations

import datetime as dt
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webui.bench import sets
from webui.bench.machine import machine_info, versions

PROMPT = "a photo of a red fox in a snowy forest"


@dataclass(frozen=True)
class ClusterBenchOptions:
    size: str = "tiny"  # tiny or small
    replicas: int = 2
    jobs: int = 8  # per timed round
    rounds: int = 2  # per deployment size
    steps: int = 4
    threads: int | None = None  # torch threads per CPU replica; None: 1 for tiny (as `bench`), the core share else
    models_dir: Path | None = None
    out: Path = Path("benchmarks/results")

    def __post_init__(self) -> None:
        if self.size not in ("tiny", "small"):
            raise ValueError(f"size: {self.size!r}; bench --cluster runs tiny or small models")
        for name in ("replicas", "jobs", "rounds", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: {getattr(self, name)} is out of range; allowed 1 and more")
        if self.replicas < 2:
            raise ValueError(f"replicas: {self.replicas}; the comparison needs 2 or more")


def _bench_set(options: ClusterBenchOptions, scratch: Path) -> sets.BenchSet:
    if options.size == "tiny":
        return sets.tiny_set(options.models_dir, scratch)
    recipe = sets.small_recipes()[0]
    return sets.generated_set(recipe, (options.models_dir or options.out / "cache") / recipe.name)


def _requests(bench_set: sets.BenchSet, steps: int, count: int, alternate: bool) -> list[Any]:
    from webui.engine.pipelines import ModelChoice
    from webui.engine.request import GenerationRequest

    models = [bench_set.checkpoint, bench_set.checkpoint_b] if alternate else [bench_set.checkpoint]
    return [
        GenerationRequest(
            model=ModelChoice(models[i % len(models)]),
            prompt=PROMPT,
            steps=steps,
            seed=i,
            width=bench_set.width,
            height=bench_set.height,
        )  # fmt: skip
        for i in range(count)
    ]


def _deploy(config: Any, replicas: int, front: Any, threads: int | None) -> Any:
    from webui.cluster.client import Cluster, ClusterOptions
    from webui.cluster.queue import ClusterJobQueue

    queue = ClusterJobQueue(front, Cluster.start(config, ClusterOptions(replicas=replicas, torch_threads=threads)))
    queue.start()
    return queue


def _throughput(queue: Any, requests: list[Any]) -> float:
    """Jobs per second for `requests` submitted at once (every one must finish)."""
    started = time.perf_counter()
    jobs = [queue.submit(request, "bench") for request in requests]
    for job in jobs:
        job.wait()
        if job.error:
            raise RuntimeError(f"a benchmark job failed: {job.error}")
    return len(jobs) / (time.perf_counter() - started)


def _loads(queue: Any, requests: list[Any], routed: bool) -> int:
    """Models the replicas read from disk for `requests` run one after the other."""
    before = sum(record.loads for record in queue.replicas())
    for request in requests:

        def call(engine: Any, progress: Any, cancel: Any, request: Any = request) -> Any:
            return engine.generate(request, progress, cancel)

        queue.cluster.run(call, request.model, route_by_model=routed)
    deadline = time.monotonic() + 30  # replicas report asynchronously
    while time.monotonic() < deadline:
        records = queue.replicas()
        if sum(r.jobs for r in records) and not any(r.running for r in records):
            break
        time.sleep(0.2)
    time.sleep(0.5)
    return sum(record.loads for record in queue.replicas()) - before


def run_cluster(options: ClusterBenchOptions) -> dict[str, Any]:
    """Both figures, with the raw numbers behind them."""
    import ray

    from webui.cli import quiet_libraries
    from webui.cluster.client import NAMESPACE
    from webui.cluster.replica import ReplicaConfig
    from webui.engine.device import DevicePolicy
    from webui.models.library import open_library
    from webui.wiring import build_engine

    started = time.perf_counter()
    quiet_libraries()
    cores = os.cpu_count() or 1
    threads = options.threads or (1 if options.size == "tiny" else None)
    machine = machine_info(DevicePolicy().resolve_device())
    ray.init(num_cpus=max(cores, options.replicas), include_dashboard=False, namespace=NAMESPACE)
    try:
        with tempfile.TemporaryDirectory(prefix="webui-bench-cluster-") as tmp:
            scratch = Path(tmp)
            bench_set = _bench_set(options, scratch)
            library = open_library(bench_set.models_dir)
            library.scan()
            front = build_engine(library, scratch / "outputs")
            config = ReplicaConfig(models_dir=bench_set.models_dir, outputs_dir=scratch / "outputs")
            same_model = _requests(bench_set, options.steps, options.jobs, alternate=False)
            rates: dict[int, list[float]] = {1: [], options.replicas: []}
            order = [1, options.replicas, options.replicas, 1] * options.rounds
            for replicas in order[: 2 * options.rounds]:
                queue = _deploy(config, replicas, front, threads)
                try:
                    _throughput(queue, same_model[: 2 * replicas])  # warm-up: every replica loads the model
                    rates[replicas].append(_throughput(queue, same_model))
                finally:
                    queue.stop()
            alternating = _requests(bench_set, options.steps, options.jobs, alternate=True)
            queue = _deploy(config, options.replicas, front, threads)
            try:
                routed = _loads(queue, alternating, routed=True)
                random_loads = _loads(queue, alternating, routed=False)
            finally:
                queue.stop()
    finally:
        ray.shutdown()
    one, many = statistics.median(rates[1]), statistics.median(rates[options.replicas])
    each = f"{threads} torch thread{'s' if threads != 1 else ''} each" if threads else "their share of the cores"
    note = f"{cores} CPU cores for {options.replicas} replicas, {each}" + (
        ": replicas share cores, so this measures contention more than scaling" if cores < 2 * options.replicas else ""
    )
    return {
        "size": options.size,
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine,
        "versions": {**versions(), "ray": ray.__version__},
        "settings": {
            "model": bench_set.name,
            "steps": options.steps,
            "jobs": options.jobs,
            "rounds": options.rounds,
            "replicas": options.replicas,
            "width": bench_set.width,
            "height": bench_set.height,
        },  # fmt: skip
        "cluster_throughput_vs_one_replica": many / one,
        "routed_loads_vs_random": routed / random_loads if random_loads else None,
        "raw": {
            "jobs_per_s": {str(k): v for k, v in rates.items()},
            "loads": {"routed": routed, "random": random_loads, "jobs": len(alternating)},
        },
        "notes": {"cluster_throughput_vs_one_replica": note},
        "total_seconds": time.perf_counter() - started,
    }


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    rates, loads = report["raw"]["jobs_per_s"], report["raw"]["loads"]
    one, many = statistics.median(rates["1"]), statistics.median(rates[str(s["replicas"])])
    ratio = report["routed_loads_vs_random"]
    lines = [
        f"### `bench --cluster --size {report['size']}`",
        "",
        f"{s['model']}: {s['width']}×{s['height']}, {s['steps']} steps; {s['jobs']} jobs per round, "
        f"{s['rounds']} rounds per deployment; {report['total_seconds']:.0f} s in all.",
        "",
        "| figure | value | measured |",
        "| --- | --- | --- |",
        f"| cluster_throughput_vs_one_replica | {report['cluster_throughput_vs_one_replica']:.3g} | "
        f"{many:.3g} vs {one:.3g} jobs/s ({s['replicas']} vs 1 replica) |",
        f"| routed_loads_vs_random | {'—' if ratio is None else f'{ratio:.3g}'} | {loads['routed']} vs "
        f"{loads['random']} models read from disk for {loads['jobs']} jobs alternating two checkpoints |",
        "",
    ]
    lines += [f"- {key}: {note}" for key, note in report["notes"].items()]
    return "\n".join(lines) + "\n"


def write(report: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """`cluster-<size>.json` and `.md` under `out_dir`."""
    import json

    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"cluster-{report['size']}.json", out_dir / f"cluster-{report['size']}.md"
    written = {**report, "files": {"json": str(json_path), "markdown": str(md_path)}}
    json_path.write_text(json.dumps(written, indent=2, default=str) + "\n")
    md_path.write_text(markdown(written))
    return written
