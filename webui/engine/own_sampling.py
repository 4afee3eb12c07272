"""Runs the samplers that have no diffusers scheduler (own_samplers.py) on a loaded SD / SDXL pipeline.

This is the one denoising loop outside a diffusers pipeline call, kept minimal: the pipeline's own UNet,
text conditioning (through the same `ConditioningHook` as every sampler, so editing and AND work alike) and
SDXL size conditioning; the UNet wrapped as k-diffusion's denoiser for the model's prediction type (its
`CompVisDenoiser` / `CompVisVDenoiser`: input scaled by 1/√(σ²+1), t the interpolated training step of σ);
classifier-free guidance on every call, as A1111 does. Progress and interruption go through the same
`StepReporter` as the pipeline's callback; an interrupted run returns the latents reached.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from webui.engine import own_samplers
from webui.engine.prompt_conditioning import ConditioningHook, ScheduledConditioning
from webui.engine.schedules import NoiseLevels, schedule_sigmas
from webui.families import Family


def _levels(scheduler_config: dict[str, Any]) -> NoiseLevels:
    import diffusers

    scheduler = getattr(diffusers, scheduler_config["_class_name"]).from_config(scheduler_config)
    return NoiseLevels(scheduler.alphas_cumprod.numpy())


def _ddim_sigmas(scheduler_config: dict[str, Any], steps: int, levels: NoiseLevels) -> np.ndarray:
    """The noise levels of DDIM's timesteps for `steps` steps (the model's spacing and offset), ending where
    DDIM ends: the first training level, or 0 for configs with set_alpha_to_one."""
    import diffusers

    ddim = diffusers.DDIMScheduler.from_config(scheduler_config)
    ddim.set_timesteps(steps)
    sigmas = [float(levels.sigmas[int(t)]) for t in ddim.timesteps]
    return np.array([*sigmas, 0.0 if scheduler_config.get("set_alpha_to_one") else levels.sigma_min])


class _Denoiser:
    """k-diffusion's view of the pipeline's UNet: `(x, σ) → (guided x0, unconditional x0)`."""

    def __init__(
        self, pipeline: Any, family: Family, levels: NoiseLevels, prediction: str, guidance: float, size: tuple
    ) -> None:
        self.unet = pipeline.unet
        self.device = pipeline._execution_device
        self.dtype = self.unet.dtype
        self.levels, self.prediction, self.guidance = levels, prediction, guidance
        self.family, self.pipeline, self.size = family, pipeline, size
        if getattr(self.unet.config, "time_cond_proj_dim", None):
            raise ValueError("sampler: this UNet takes a guidance embedding (LCM-distilled); use the LCM sampler")

    def prepare(self, conditioning: ScheduledConditioning) -> None:
        """Placeholder conditioning of the right batch (the hook supplies the real one at every call)."""
        first = conditioning.first()
        self.hidden = torch.cat([first.negative_prompt_embeds, first.prompt_embeds]).to(self.device)
        self.added = None
        if getattr(self.unet.config, "addition_embed_type", None) == "text_time":  # size conditioning (time ids)
            pooled = torch.cat([first.negative_pooled_prompt_embeds, first.pooled_prompt_embeds]).to(self.device)
            time_ids = self.pipeline._get_add_time_ids(
                self.size, (0, 0), self.size, dtype=self.hidden.dtype, text_encoder_projection_dim=pooled.shape[-1]
            )
            self.added = {"text_embeds": pooled, "time_ids": time_ids.repeat(pooled.shape[0], 1).to(self.device)}

    def __call__(self, x: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        scale = 1 / math.sqrt(sigma**2 + 1)
        model_input = (torch.cat([x, x]) * scale).to(self.device, self.dtype)
        timestep = torch.tensor(self.levels.sigma_to_t(sigma), device=self.device)
        kwargs = {"encoder_hidden_states": self.hidden, "return_dict": False}
        if self.added is not None:
            kwargs["added_cond_kwargs"] = self.added
        output = self.unet(model_input, timestep, **kwargs)[0].float()
        unconditional, combined = output.chunk(2)
        guided = unconditional + self.guidance * (combined - unconditional)
        return self._denoised(x, sigma, guided), self._denoised(x, sigma, unconditional)

    def _denoised(self, x: torch.Tensor, sigma: float, output: torch.Tensor) -> torch.Tensor:
        if self.prediction == "v_prediction":
            return x / (sigma**2 + 1) - output * sigma / math.sqrt(sigma**2 + 1)
        if self.prediction == "epsilon":
            return x - output * sigma
        raise ValueError(f"scheduler config: prediction_type {self.prediction!r} is not supported by this sampler")


def sample(
    own: str,
    pipeline: Any,
    family: Family,
    scheduler_config: dict[str, Any],
    conditioning: ScheduledConditioning,
    noise: torch.Tensor,
    generators: list[torch.Generator],
    *,
    steps: int,
    cfg_scale: float,
    schedule: str,
    eta: float,
    reporter: Any = None,
) -> torch.Tensor:
    """Latents for one batch with the own sampler `own` ("dpm_fast", "dpm_adaptive", "restart", "ddim_cfgpp").
    `noise` is the batch's standard-normal starting noise (on the CPU); `generators` (one per image) draw the
    noise the stochastic samplers add along the way."""
    from diffusers.utils.torch_utils import randn_tensor

    levels = _levels(scheduler_config)
    prediction = scheduler_config.get("prediction_type", "epsilon")
    height, width = noise.shape[-2] * pipeline.vae_scale_factor, noise.shape[-1] * pipeline.vae_scale_factor
    guidance = cfg_scale * (own_samplers.CFGPP_SCALE if own == "ddim_cfgpp" else 1.0)
    denoiser = _Denoiser(pipeline, family, levels, prediction, guidance, (height, width))
    denoiser.prepare(conditioning)
    device = denoiser.device

    def fresh_noise(like: torch.Tensor) -> torch.Tensor:
        return randn_tensor(like.shape, generator=generators, device=torch.device("cpu"), dtype=torch.float32).to(
            device
        )

    def guided(x: torch.Tensor, sigma: float) -> torch.Tensor:
        return denoiser(x, sigma)[0]

    expected = {"dpm_fast": len(own_samplers.fast_orders(steps))}.get(own, steps)
    pipeline._num_timesteps = expected  # what StepReporter reads as the step count

    def callback(step: int, x: torch.Tensor, _denoised: torch.Tensor) -> None:
        if reporter is not None:
            reporter(pipeline, step, None, {"latents": x})
            if reporter.interrupted:
                raise own_samplers.SamplingInterrupted(x)

    x = noise.to(device, torch.float32)
    hook = ConditioningHook(conditioning, cfg_scale)
    with hook.installed(pipeline.unet), torch.no_grad():
        try:
            if own in ("dpm_fast", "dpm_adaptive"):
                x = x * levels.sigma_max
                if own == "dpm_fast":
                    run = own_samplers.dpm_fast(
                        guided, x, levels.sigma_min, levels.sigma_max, steps,
                        eta=eta, noise=fresh_noise, callback=callback,
                    )  # fmt: skip
                else:
                    run = own_samplers.dpm_adaptive(
                        guided, x, levels.sigma_min, levels.sigma_max, eta=eta, noise=fresh_noise, callback=callback
                    )
            elif own == "restart":
                name = "Karras" if schedule == "Automatic" else schedule  # A1111's default for Restart
                ays_levels = family.description.scheduler.align_your_steps
                sigmas = schedule_sigmas(name, steps, levels, ays_levels=ays_levels)
                run = own_samplers.restart(guided, x * float(sigmas[0]), sigmas, noise=fresh_noise, callback=callback)
            elif own == "ddim_cfgpp":
                sigmas = _ddim_sigmas(scheduler_config, steps, levels)
                run = own_samplers.ddim_cfgpp(denoiser, x * float(sigmas[0]), sigmas, callback=callback)
                run = run / math.sqrt(float(sigmas[-1]) ** 2 + 1)  # back to DDIM's (variance-preserving) scale
            else:
                raise ValueError(f"sampler: no own sampling loop called {own!r}")
        except own_samplers.SamplingInterrupted as stop:
            run = stop.latents
    return run.to(pipeline.unet.dtype)
