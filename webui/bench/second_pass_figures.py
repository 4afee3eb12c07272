"""Second-pass figure: the engine's hires pass against plain diffusers' img2img pipeline at the same size.

Both start from the same first-pass latents upscaled to 1.5× ("Latent") and run the same img2img (the session's
steps, strength 0.5, on A1111's stretched schedule); the engine's side is `passes.hires_pass` (upscale, prompt
encoding, the pipeline call through the engine), the plain side the stock img2img class called with prompt
strings. The latents are compared too: equal latents mean the ratio is overhead, not another computation.
"""

from __future__ import annotations

import torch

from webui.bench.session import CFG_SCALE, NEGATIVE, PROMPT, SAMPLER, SEED, Figure, Session
from webui.bench.stats import Case, interleaved
from webui.engine import passes
from webui.engine.embeddings import EmbeddingUse
from webui.engine.progress import StepReporter
from webui.engine.prompt_plan import plan_prompt
from webui.engine.samplers import SAMPLERS
from webui.engine.second_pass import HiresFix, scheduled_steps
from webui.engine.upscalers import LATENT_MODES, Upscaler, upscale_latents

HIRES = {"upscaler": "Latent", "scale": 1.5, "denoising_strength": 0.5}


def hires_overhead(session: Session) -> Figure:
    """`hires_pass_vs_diffusers_img2img`: the hires pass ÷ the stock img2img pipeline on the same latents."""
    import diffusers

    loaded = session.manager.load(session.choice())
    spec = loaded.family.description.second_pass.img2img
    if spec is None:
        return Figure(None, {}, f"{loaded.family.label} has no img2img pipeline")
    hires = HiresFix(**HIRES, steps=session.steps)
    request = session.request(hires=hires)
    plan = plan_prompt(request.prompt, request.negative_prompt, request.steps)
    work = passes.prepare(session.engine, loaded, request, plan)
    first = session.engine.denoise(loaded, session.request(), [SEED])
    factor = loaded.pipeline.vae_scale_factor
    target = hires.target(*request.latent_size, factor)
    start = upscale_latents(first.float(), Upscaler("Latent", LATENT_MODES["Latent"]), target)
    sampler = SAMPLERS[SAMPLER]
    scheduler = getattr(diffusers, sampler.scheduler).from_config({**loaded.scheduler_config, **sampler.options})
    plain = spec.create({**loaded.pipeline.components, "scheduler": scheduler})
    plain.set_progress_bar_config(disable=True)
    latents: dict[str, torch.Tensor] = {}

    def engine() -> None:
        reporter = StepReporter(loaded.family, session.steps, 1, None, None)
        latents["engine"] = passes.hires_pass(session.engine, work, first, [SEED], None, reporter, EmbeddingUse())

    def stock() -> None:
        latents["diffusers"] = plain(
            prompt=PROMPT,
            negative_prompt=NEGATIVE,
            image=start.to(loaded.dtype),
            strength=hires.denoising_strength,
            num_inference_steps=scheduled_steps(session.steps, hires.denoising_strength),
            guidance_scale=CFG_SCALE,
            generator=[torch.Generator("cpu").manual_seed(SEED)],
            output_type="latent",
        ).images

    stats = interleaved({"engine": Case(engine), "diffusers": Case(stock)}, session.repeats, session.warmup)
    difference = (latents["engine"].float() - latents["diffusers"].float()).abs().max().item()
    raw = {
        "engine_hires_pass_s": stats["engine"].to_json(),
        "diffusers_img2img_s": stats["diffusers"].to_json(),
        "target": [target.width, target.height],
        "hires": {**HIRES, "steps": session.steps},
        "latents_max_abs_difference": difference,
        "measured": "from first-pass latents to second-pass latents, prompt encoding included, per run",
    }
    note = None if difference <= 1e-3 else f"the latents differ by up to {difference:.3g}: not the same computation"
    return Figure.of_ratio(stats["engine"], stats["diffusers"], raw, note)
