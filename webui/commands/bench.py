"""`python -m webui bench`: the engine's figures against plain diffusers, as JSON and a markdown table."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from webui.bench import SIZES


def cmd_bench(args: argparse.Namespace) -> int:
    if args.cluster:
        return cmd_bench_cluster(args)
    from webui.bench.report import write
    from webui.bench.runner import BenchOptions, run

    options = BenchOptions(
        size=args.size,
        device=args.device,
        models_dir=args.models_dir,
        out=args.out,
        repeats=args.repeats,
        warmup=args.warmup,
        steps=args.steps,
        threads=args.threads,
    )
    with contextlib.redirect_stdout(sys.stderr):  # servers and libraries print; stdout carries only the report
        report = run(options)
    report = write(report, args.out)
    if args.json:
        json.dump(report, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(Path(report["files"]["markdown"]).read_text())
        print(f"\nWrote {report['files']['json']} and {report['files']['markdown']}")
    return 0


def cmd_bench_cluster(args: argparse.Namespace) -> int:
    """`bench --cluster`: throughput with 1 and N Ray Serve replicas, routed vs random loads (needs the extra)."""
    from webui.bench.cluster_figures import ClusterBenchOptions, markdown, run_cluster, write
    from webui.cluster.wiring import MISSING_EXTRA

    try:
        import ray.serve  # noqa: F401  (only to say clearly what is missing)
    except ImportError:
        raise ValueError(MISSING_EXTRA.replace("--ray", "bench --cluster")) from None
    options = ClusterBenchOptions(
        size=args.size,
        replicas=args.replicas,
        rounds=args.repeats or 2,
        steps=args.steps or 4,
        threads=args.threads,
        models_dir=args.models_dir,
        out=args.out,
    )
    with contextlib.redirect_stdout(sys.stderr):
        report = write(run_cluster(options), args.out)
    if args.json:
        json.dump(report, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(markdown(report))
        print(f"\nWrote {report['files']['json']} and {report['files']['markdown']}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "bench",
        help="measure the engine against plain diffusers (speed, overhead, loads, LoRA, memory, UI)",
        description="Each figure: median of several runs after a warm-up, min and max kept, as a ratio against "
        "plain diffusers (or raw I/O) measured in the same run. Writes <out>/<size>-<device>.json and .md.",
    )
    parser.add_argument(
        "--size",
        choices=SIZES,
        default="tiny",
        help="tiny: test fixtures (about a minute); "
        "small: scaled-down models of a few hundred MB; full: real-size models (GPU); "
        "which families each runs, their descriptions say",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (cuda:N)")
    parser.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
    parser.add_argument(
        "--models-dir",
        type=Path,
        help="tiny: a folder from `make-tiny-models` (default: written to a temp dir); "
        "small/full: where the generated benchmark models are written once and reused (default: OUT/cache)",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="where the report goes")
    parser.add_argument("--repeats", type=int, help="timed runs per figure (default: by size and device)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before timing (default 1)")
    parser.add_argument("--steps", type=int, help="denoising steps per image (default: by size and device)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: 1 for tiny, all cores otherwise)")
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="instead: the engine as Ray Serve replicas on a local Ray instance: throughput with 1 and --replicas "
        "replicas, and models loaded with routing vs without (tiny or small; needs the cluster extra)",
    )
    parser.add_argument("--replicas", type=int, default=2, help="replicas for --cluster (default 2)")
    parser.set_defaults(func=cmd_bench)
