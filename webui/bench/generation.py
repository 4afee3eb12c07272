"""Generation figures: denoising speed against plain diffusers, full-request overhead, one UNet step's FLOP/s."""

from __future__ import annotations

from typing import Any

import torch

from webui.bench.session import (
    SEED,
    Figure,
    Session,
    plain_call,
    plain_pipeline,
    step_intervals,
    step_stamper,
)
from webui.bench.stats import Case, Stat, interleaved, measure
from webui.bench.ui_roundtrip import UiServer
from webui.engine.pipelines import LoadedModel
from webui.engine.progress import StepReporter


def speed(session: Session) -> tuple[Figure, Stat]:
    """`engine_vs_diffusers_speed`, and the plain pipeline's per-step times (the LoRA figure divides by them)."""
    loaded = session.manager.load(session.choice())
    request = session.request()
    pipe = plain_pipeline(loaded)
    stamps: list[list[float]] = []
    latents: dict[str, torch.Tensor] = {}

    def engine() -> None:
        reporter = StepReporter(loaded.family, session.steps, 1, None, None)  # as Engine.generate passes one
        latents["engine"] = session.engine.denoise(loaded, request, [SEED], reporter)

    def diffusers() -> None:
        latents["diffusers"] = plain_call(session, pipe, "latent", callback=step_stamper(stamps))

    stats = interleaved({"engine": Case(engine), "diffusers": Case(diffusers)}, session.repeats, session.warmup)
    engine_its = stats["engine"].per(session.steps, "it/s")
    plain_its = stats["diffusers"].per(session.steps, "it/s")
    step = Stat(step_intervals(stamps[session.warmup :]) or (stats["diffusers"].median / session.steps,))
    difference = (latents["engine"].float() - latents["diffusers"].float()).abs().max().item()
    raw = {
        "engine_it_s": engine_its.to_json(),
        "diffusers_it_s": plain_its.to_json(),
        "engine_denoise_s": stats["engine"].to_json(),
        "diffusers_denoise_s": stats["diffusers"].to_json(),
        "diffusers_step_s": step.to_json(),
        "latents_max_abs_difference": difference,
        "measured": "one call from prompt text to latents (text encoding included) per run; it/s = steps / seconds",
    }
    note = None
    if difference > 1e-3:
        note = f"engine and plain diffusers latents differ by up to {difference:.3g}: not the same computation"
    return Figure.of_ratio(engine_its, plain_its, raw, note), step


def request_and_ui(session: Session, ui: UiServer | None, ui_problem: str = "") -> tuple[Figure, Figure]:
    """`request_overhead` and `ui_roundtrip_vs_engine`, timed in one interleaved loop.

    The UI figure divides by the engine its server calls (the real app has its own), run in-process.
    """
    loaded = session.manager.load(session.choice())
    request = session.request()
    pipe = plain_pipeline(loaded)
    results: list[Any] = []
    cases = {
        "bare_pipeline": Case(lambda: plain_call(session, pipe, "pil")),
        "engine_request": Case(lambda: results.append(session.engine.generate(request))),
    }
    ui_engine = "engine_request"
    if ui is not None:
        if ui.engine is not session.engine:
            ui_engine = "ui_engine_request"
            cases[ui_engine] = Case(lambda: ui.engine.generate(request))
        cases["ui_roundtrip"] = Case(ui.roundtrip)
    stats = interleaved(cases, session.repeats, session.warmup)
    timed = results[-session.repeats :]
    breakdown = {key: Stat(tuple(r.timings[key] for r in timed)).to_json() for key in timed[-1].timings}
    raw_request = {
        "engine_request_s": stats["engine_request"].to_json(),
        "bare_pipeline_s": stats["bare_pipeline"].to_json(),
        "engine_timings_s": breakdown,
        "measured": "Engine.generate (request to saved PNG with infotext) vs the stock pipeline call to a PIL image",
    }
    request_figure = Figure.of_ratio(stats["engine_request"], stats["bare_pipeline"], raw_request)
    if ui is None:
        return request_figure, Figure(None, {}, ui_problem or "no UI server")
    raw_ui = {
        "ui_roundtrip_s": stats["ui_roundtrip"].to_json(),
        "engine_request_s": stats[ui_engine].to_json(),
        "endpoint": ui.endpoint,
    }
    ui_figure = Figure.of_ratio(stats["ui_roundtrip"], stats[ui_engine], raw_ui, ui.note)
    return request_figure, ui_figure


def unet_inputs(loaded: LoadedModel, width: int, height: int) -> dict[str, Any]:
    """One denoising step's UNet inputs: the classifier-free-guidance batch of 2 at the image's latent size."""
    unet, vae = loaded.pipeline.unet, loaded.pipeline.vae
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    device, dtype = unet.device, unet.dtype
    inputs: dict[str, Any] = {
        "sample": torch.randn(2, unet.config.in_channels, height // scale, width // scale, device=device, dtype=dtype),
        "timestep": torch.tensor(500, device=device),
        "encoder_hidden_states": torch.randn(2, 77, unet.config.cross_attention_dim, device=device, dtype=dtype),
    }
    if unet.config.addition_embed_type == "text_time":  # SDXL: pooled text embeds + size/crop time ids
        text = loaded.pipeline.text_encoder_2.config.projection_dim
        ids = (unet.config.projection_class_embeddings_input_dim - text) // unet.config.addition_time_embed_dim
        inputs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(2, text, device=device, dtype=dtype),
            "time_ids": torch.randn(2, ids, device=device, dtype=dtype),
        }
    return inputs


def unet_step(session: Session) -> dict[str, Any]:
    """FLOPs of one UNet call (counted by torch's FlopCounterMode) and the FLOP/s achieved."""
    from torch.utils.flop_counter import FlopCounterMode

    loaded = session.manager.load(session.choice())
    unet = loaded.pipeline.unet
    inputs = unet_inputs(loaded, session.bench_set.width, session.bench_set.height)
    with torch.inference_mode():
        with FlopCounterMode(display=False) as counter:
            unet(**inputs)
        stat = measure(lambda: unet(**inputs), session.repeats, session.warmup)
    flops = counter.get_total_flops()
    return {
        "flops": flops,
        "unet_call_s": stat.to_json(),
        "tflop_per_s": flops / stat.median / 1e12,
        "dtype": str(unet.dtype).removeprefix("torch."),
        "batch": 2,
        "latent_shape": list(inputs["sample"].shape),
    }
