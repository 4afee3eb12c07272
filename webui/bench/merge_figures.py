"""The merge figure: a streamed weighted-sum merge of the set's two checkpoints, in bytes of input per second,
against reading the same two files (from the warm page cache); plus one run in a fresh process for peak RSS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from webui.bench.loading import read_file
from webui.bench.session import Figure, Session
from webui.bench.stats import Case, interleaved

TIMEOUT_S = 3600


def merge_figure(session: Session) -> Figure:
    """`merge_vs_file_read`: merge throughput ÷ plain read throughput, over the same input bytes."""
    from webui.merge.merger import merge
    from webui.merge.recipe import MergeMode, MergeRecipe, ModelInput

    s = session.bench_set
    a, b = s.checkpoint, s.checkpoint_b
    size = read_file(a) + read_file(b)  # into the page cache: the ratio is the merge's cost over raw I/O
    folder = session.scratch / "merges"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "merged.safetensors"
    recipe = MergeRecipe(MergeMode.WEIGHTED_SUM, ModelInput((a,)), ModelInput((b,)), alpha=0.5)
    stats = interleaved(
        {
            "merge": Case(lambda: merge(recipe, target), setup=lambda: target.unlink(missing_ok=True)),
            "file_read": Case(lambda: read_file(a) + read_file(b)),
        },
        session.repeats,
        session.warmup,
    )
    output_bytes = target.stat().st_size
    target.unlink(missing_ok=True)
    merge_rate, read_rate = stats["merge"].per(size, "B/s"), stats["file_read"].per(size, "B/s")
    raw = {
        "inputs": [str(a), str(b)],
        "input_bytes": size,
        "output_bytes": output_bytes,
        "merge_s": stats["merge"].to_json(),
        "file_read_s": stats["file_read"].to_json(),
        "merge_bytes_per_s": merge_rate.to_json(),
        "file_read_bytes_per_s": read_rate.to_json(),
        "peak_rss": _probe(a, b, folder / "probe.safetensors"),
    }
    note = "weighted sum at 0.5 to fp16, written with fsync; input bytes per second of both sides"
    return Figure.of_ratio(merge_rate, read_rate, raw, note)


def _probe(a: Path, b: Path, out: Path) -> dict[str, object]:
    """Peak RSS growth of the same merge in a fresh process (webui.bench.merge_probe), or why it failed."""
    command = [sys.executable, "-m", "webui.bench.merge_probe", "--a", str(a), "--b", str(b), "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as error:
        return {"error": f"timed out: {error}"}
    finally:
        out.unlink(missing_ok=True)
    if done.returncode != 0:
        return {"error": done.stderr.strip()[-2000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])
