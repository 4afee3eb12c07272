"""A merge streams: peak RSS while merging two models stays a few tensors above the baseline (fresh process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from webui.families import Family
from webui.merge.sources import REOPEN_BYTES
from webui.models.ldm_writer import pipeline_to_ldm, save_single_file
from webui.testing.tiny import build_tiny_pipeline

BIG = 24  # extra 2048×2048 fp16 tensors (8 MiB each) in the UNet's IN01 block: ~200 MB per model


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_peak_rss_while_merging_stays_near_one_tensor_above_the_baseline(tmp_path):
    for name, seed in (("a", 0), ("b", 1)):
        state = pipeline_to_ldm(build_tiny_pipeline(Family.SD1, seed), Family.SD1)
        noise = torch.Generator().manual_seed(seed)
        for index in range(BIG):
            key = f"model.diffusion_model.input_blocks.1.1.probe_{index:02d}.weight"
            state[key] = torch.randn(2048, 2048, generator=noise)
        save_single_file(state, tmp_path / f"{name}.safetensors", dtype=torch.float16)
        del state
    command = [sys.executable, "-m", "webui.bench.merge_probe", "--a", str(tmp_path / "a.safetensors")]
    command += ["--b", str(tmp_path / "b.safetensors"), "--out", str(tmp_path / "m.safetensors")]
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    tensor = figures["largest_tensor_bytes"]
    grown = figures["sampled_peak_growth_bytes"]
    print(json.dumps(figures, indent=1))  # the measured figures, shown with -s
    assert tensor == 8 * 2**20 and figures["input_bytes"] > 2 * BIG * tensor
    # Allocated memory: two float32 work buffers and one output buffer, i.e. five fp16 tensors' worth.
    assert grown["RssAnon"] <= 6 * tensor + 8 * 2**20
    # Page cache mapped by the two readers: each reopens its file after REOPEN_BYTES.
    assert grown["RssFile"] <= 2 * (REOPEN_BYTES + tensor) + 8 * 2**20
    # Together far below holding either model, let alone both (~430 MB here).
    assert grown["VmRSS"] < figures["input_bytes"] / 3
