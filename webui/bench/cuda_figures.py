"""CUDA-only figures: fp16 vs fp32 speed, attention slicing off/auto/on, UNet TFLOP/s against the GPU's peak."""

from __future__ import annotations

from typing import Any

import torch

from webui.bench.generation import unet_step
from webui.bench.session import SEED, Session
from webui.bench.stats import measure
from webui.engine.device import DevicePolicy
from webui.engine.pipelines import PipelineManager
from webui.engine.progress import StepReporter
from webui.engine.txt2img import Engine

# Dense fp16/bf16 tensor-core peak with fp32 accumulation, TFLOP/s, from the vendors' datasheets.
# Most specific name first: the first substring found in the device name wins.
PEAK_FP16_TFLOPS = (
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),
    ("A100", 312.0),
    ("L40S", 362.1),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 4090", 165.2),
    ("RTX 3090", 71.0),
    ("V100", 125.0),
    ("T4", 65.0),
)


def peak_tflops(name: str) -> float | None:
    return next((peak for key, peak in PEAK_FP16_TFLOPS if key in name), None)


def _engine_its(session: Session, policy: DevicePolicy) -> tuple[float, dict[str, Any], list[Any]]:
    """Denoising it/s through an engine with `policy`, sharing the session's component cache where dtypes agree."""
    manager = PipelineManager(session.bench_set.models_dir, policy, session.manager.cache)
    engine = Engine(manager, session.scratch / "cuda-outputs")
    loaded = manager.load(session.choice())
    request = session.request()

    def run() -> None:
        engine.denoise(loaded, request, [SEED], StepReporter(loaded.family, session.steps, 1, None, None))

    stat = measure(run, session.repeats, session.warmup).per(session.steps, "it/s")
    sliced = any(type(p).__name__.startswith("Sliced") for p in loaded.pipeline.unet.attn_processors.values())
    loaded.pipeline.disable_attention_slicing()  # slicing lives on the shared UNet; leave it as found
    return stat.median, {"it_s": stat.to_json(), "attention_sliced": sliced}, list(loaded.keys.values())


def cuda_figures(session: Session) -> dict[str, Any]:
    device = str(session.manager.device)
    session.manager.load(session.choice()).pipeline.disable_attention_slicing()  # start from plain SDPA
    fp16_its, fp16, _keys = _engine_its(session, DevicePolicy(device=device, precision="fp16"))
    fp32_its, fp32, fp32_keys = _engine_its(session, DevicePolicy(device=device, precision="fp32"))
    session.manager.load(session.choice())  # pins the fp16 model again, so that the fp32 copies can go
    session.manager.cache.evict(fp32_keys)
    modes = ("off", "auto", "on")
    slicing = {mode: _engine_its(session, DevicePolicy(device=device, attention_slicing=mode)) for mode in modes}
    step = unet_step(session)
    name = torch.cuda.get_device_name(session.manager.device)
    peak = peak_tflops(name)
    return {
        "fp16_vs_fp32_speed": fp16_its / fp32_its,
        "fp16": fp16,
        "fp32": fp32,
        "attention_slicing": {mode: raw for mode, (_its, raw, _keys) in slicing.items()},
        "slicing_on_vs_off_speed": slicing["on"][0] / slicing["off"][0],
        "slicing_auto_vs_off_speed": slicing["auto"][0] / slicing["off"][0],
        "unet_step": step,
        "peak_tflops": peak,
        "peak_source": "vendor datasheet, dense fp16 tensor cores, fp32 accumulate" if peak else f"unknown GPU {name}",
        "tflops_vs_peak": step["tflop_per_s"] / peak if peak else None,
    }
