"""The memory figure, measured in a fresh process: two checkpoints sharing one VAE file, peak RSS (and VRAM).

Run by `memory_figure` as `python -m webui.bench.memory_probe …`; it prints one JSON object. A fresh
process keeps the earlier figures' allocations (and the allocator's leftovers) out of the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from webui.bench.session import Figure, Session

TIMEOUT_S = 3600


def _preimport() -> None:
    """Import what loading will import, so module code is in the baseline and not counted as model memory."""
    import diffusers
    import transformers
    from diffusers.loaders import single_file_utils  # noqa: F401
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer  # noqa: F401

    from webui.cli import quiet_libraries

    diffusers.StableDiffusionPipeline, diffusers.StableDiffusionXLPipeline  # noqa: B018 (lazy imports)
    diffusers.UNet2DConditionModel, diffusers.AutoencoderKL  # noqa: B018
    quiet_libraries()
    transformers.utils.logging.disable_progress_bar()


def _peak_rss() -> tuple[int, str]:
    """This process's peak RSS and where it came from.

    VmHWM (Linux) is the high-water mark of this process's own memory map. getrusage's ru_maxrss is not
    used where VmHWM exists: after fork + exec it keeps the parent's RSS at fork time as a floor.
    """
    for line in RssSampler.STATUS.read_text().splitlines() if RssSampler.STATUS.is_file() else ():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024, "VmHWM"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (peak if sys.platform == "darwin" else peak * 1024), "ru_maxrss"  # bytes on macOS, KiB elsewhere


class RssSampler:
    """Polls /proc/self/status while loading: peak anonymous and file-backed RSS, apart (Linux only).

    File-backed RSS is the safetensors mmap's pages (page cache mapped into the process); anonymous RSS is
    what the process allocated. Peak RSS counts both; telling them apart says where a peak comes from.
    """

    STATUS = Path("/proc/self/status")

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s
        self.peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def sample(self) -> dict[str, int]:
        if not self.STATUS.is_file():
            return {}
        fields = {}
        for line in self.STATUS.read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                fields[name] = int(value.split()[0]) * 1024
        return fields

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            for name, value in self.sample().items():
                self.peak[name] = max(self.peak.get(name, 0), value)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def probe(models_dir: Path, checkpoints: list[Path], vae: Path, device: str) -> dict[str, Any]:
    _preimport()
    import torch

    from webui.engine.device import DevicePolicy
    from webui.engine.memory import rss_bytes
    from webui.engine.pipelines import ModelChoice, PipelineManager

    manager = PipelineManager(models_dir, DevicePolicy(device=device))
    cuda = manager.device.type == "cuda"
    if cuda:
        torch.zeros(1, device=manager.device)  # the CUDA context belongs to the baseline
        torch.cuda.reset_peak_memory_stats(manager.device)
    sampler = RssSampler()
    baseline_rss, baseline_vram = rss_bytes(), torch.cuda.memory_allocated() if cuda else 0
    baseline_parts = sampler.sample()
    after: list[int] = []
    with sampler:
        for checkpoint in checkpoints:
            manager.load(ModelChoice(checkpoint, vae=vae))
            after.append(rss_bytes())
    stats = manager.cache.stats()
    peak, peak_source = _peak_rss()
    return {
        "baseline_rss_bytes": baseline_rss,
        "rss_after_each_load_bytes": after,
        "baseline_rss_parts_bytes": baseline_parts,
        "sampled_peak_rss_parts_bytes": sampler.peak,
        "peak_rss_bytes": peak,
        "peak_rss_source": peak_source,
        "held_rss_bytes": rss_bytes(),
        "baseline_vram_bytes": baseline_vram,
        "peak_vram_bytes": torch.cuda.max_memory_allocated(manager.device) if cuda else None,
        "unique_component_bytes": sum(s.nbytes for s in stats),
        "components": [{"label": s.label, "bytes": s.nbytes, "device": s.device, "dtype": s.dtype} for s in stats],
        "device": str(manager.device),
    }


def memory_figure(session: Session) -> Figure:
    """Run the probe in a fresh interpreter and turn its numbers into `memory_vs_unique_components`."""
    s = session.bench_set
    command = [
        sys.executable,
        "-m",
        "webui.bench.memory_probe",
        "--models-dir",
        str(s.models_dir),
        "--checkpoint",
        str(s.checkpoint),
        "--checkpoint",
        str(s.checkpoint_b),
        "--vae",
        str(s.vae),
        "--device",
        str(session.manager.device),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory probe failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    raw = json.loads(done.stdout.strip().splitlines()[-1])
    unique = raw["unique_component_bytes"]
    raw["rss_peak_growth_bytes"] = raw["peak_rss_bytes"] - raw["baseline_rss_bytes"]
    raw["rss_held_growth_bytes"] = raw["held_rss_bytes"] - raw["baseline_rss_bytes"]
    raw["rss_peak_vs_unique"] = raw["rss_peak_growth_bytes"] / unique
    raw["rss_held_vs_unique"] = raw["rss_held_growth_bytes"] / unique
    value = raw["rss_peak_vs_unique"]
    note = "peak RSS growth over a baseline taken after imports, before loading, in a fresh process"
    if raw["peak_vram_bytes"] is not None:
        raw["vram_peak_vs_unique"] = (raw["peak_vram_bytes"] - raw["baseline_vram_bytes"]) / unique
        value = max(value, raw["vram_peak_vs_unique"])
        note += "; on CUDA the figure is the worse of the RSS and VRAM ratios"
    return Figure(value, raw, note)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m webui.bench.memory_probe", description=__doc__)
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, action="append", required=True, help="repeat for each checkpoint")
    parser.add_argument("--vae", type=Path, required=True, help="the VAE file every checkpoint uses")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    print(json.dumps(probe(args.models_dir, args.checkpoint, args.vae, args.device)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
