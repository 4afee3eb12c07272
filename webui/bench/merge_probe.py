"""Peak memory and throughput of one merge, measured in a fresh process: `python -m webui.bench.merge_probe …`.

Prints one JSON object: the peak RSS growth over a baseline taken after imports (VmHWM, and the sampled peaks of
anonymous and file-backed RSS apart, see memory_probe.RssSampler), the largest tensor's bytes, the inputs' and
output's bytes and the seconds the merge took. The test of bounded memory and the benchmark's merge figures both
run it; a fresh process keeps earlier allocations out of the baseline.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from webui.bench.memory_probe import RssSampler, _peak_rss


def probe(a: Path, b: Path, output: Path, alpha: float) -> dict[str, Any]:
    from webui.merge.merger import plan_merge, run_merge
    from webui.merge.recipe import MergeMode, MergeRecipe, ModelInput

    recipe = MergeRecipe(MergeMode.WEIGHTED_SUM, ModelInput((a,)), ModelInput((b,)), alpha=alpha)
    sampler = RssSampler()
    plan = plan_merge(recipe)  # headers only: part of the baseline
    largest = max(tensor.nbytes for source in plan.sources.values() for tensor in source.tensors.values())
    largest = max(largest, *(step.entry.nbytes for step in plan.steps))
    baseline_parts = sampler.sample()
    baseline, _ = _peak_rss()
    started = time.perf_counter()
    with sampler:
        result = run_merge(plan, output)
    seconds = time.perf_counter() - started
    peak, source = _peak_rss()
    growth = {name: sampler.peak.get(name, 0) - baseline_parts.get(name, 0) for name in baseline_parts}
    return {
        "peak_rss_growth_bytes": peak - baseline,
        "peak_rss_source": source,
        "sampled_peak_growth_bytes": growth,
        "largest_tensor_bytes": largest,
        "input_bytes": a.stat().st_size + b.stat().st_size,
        "output_bytes": result.bytes_written,
        "tensors": result.tensors,
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m webui.bench.merge_probe", description=__doc__)
    parser.add_argument("--a", type=Path, required=True)
    parser.add_argument("--b", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="the merged file (must not exist)")
    parser.add_argument("--alpha", type=float, default=0.5)
    args = parser.parse_args(argv)
    print(json.dumps(probe(args.a, args.b, args.out, args.alpha)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
