"""diffusers schedulers made to do what A1111 lets every sampler do: walk any schedule type, take an eta.

- `with_schedule(cls)`: the class, running on the noise levels of one of A1111's schedule types
  (`schedules.py`). Classes with diffusers' Karras option compute their sigmas in one method,
  `_convert_to_karras`; the variant returns the schedule's levels from it, so the class's own code turns them
  into timesteps and its own step layout (Heun's and DPM2's interleaved sigmas included). Euler a has no such
  option; its variant sets its (sigma, timestep) table after diffusers builds it. LCM takes custom timesteps.
- `with_eta(cls)`: Euler a with k-diffusion's `eta` (the share of the step's noise that is re-added, 1 by
  default): `σ_up = min(σ_next, eta·√(σ_next²(σ² − σ_next²)/σ²))`, `σ_down = √(σ_next² − σ_up²)`
  (k-diffusion `get_ancestral_step`). At eta 1 it is diffusers' EulerAncestralDiscreteScheduler step.

Each variant keeps its base class's name, so a scheduler's config still names the diffusers class.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import torch

from webui.engine.schedules import NoiseLevels, schedule_sigmas

SCHEDULE_ATTRIBUTE = "a1111_schedule"  # set on an instance: (schedule type, the family's AYS levels or None)
ETA_ATTRIBUTE = "a1111_eta"


def _levels(scheduler: Any, steps: int) -> np.ndarray:
    schedule, ays_levels = getattr(scheduler, SCHEDULE_ATTRIBUTE)
    return schedule_sigmas(schedule, steps, NoiseLevels(scheduler.alphas_cumprod.numpy()), ays_levels=ays_levels)


def _karras_hooked(base: type) -> type:
    def set_timesteps(
        self: Any, num_inference_steps: int | None = None, device: Any = None, *args: Any, **kw: Any
    ) -> Any:
        if not hasattr(self, SCHEDULE_ATTRIBUTE):  # diffusers' own __init__ sets timesteps before we can
            return base.set_timesteps(self, num_inference_steps, device, *args, **kw)
        self._a1111_sigmas = _levels(self, int(num_inference_steps or 1))
        return base.set_timesteps(self, len(self._a1111_sigmas) - 1, device)

    def _convert_to_karras(self: Any, in_sigmas: Any, *args: Any, **kw: Any) -> Any:
        if getattr(self, "_a1111_sigmas", None) is None:
            return base._convert_to_karras(self, in_sigmas, *args, **kw)
        return self._a1111_sigmas[:-1].copy()

    return type(base.__name__, (base,), {"set_timesteps": set_timesteps, "_convert_to_karras": _convert_to_karras})


def _table_replaced(base: type) -> type:
    def set_timesteps(
        self: Any, num_inference_steps: int | None = None, device: Any = None, *args: Any, **kw: Any
    ) -> Any:
        if not hasattr(self, SCHEDULE_ATTRIBUTE):
            return base.set_timesteps(self, num_inference_steps, device, *args, **kw)
        sigmas = _levels(self, int(num_inference_steps or 1))
        base.set_timesteps(self, len(sigmas) - 1, device)
        levels = NoiseLevels(self.alphas_cumprod.numpy())
        self.timesteps = torch.tensor([levels.sigma_to_t(s) for s in sigmas[:-1]], dtype=torch.float32, device=device)
        self.sigmas = torch.tensor([*sigmas[:-1], 0.0], dtype=torch.float32)  # to 0 at the end, as the others
        return None

    return type(base.__name__, (base,), {"set_timesteps": set_timesteps})


def _timesteps_given(base: type) -> type:
    def set_timesteps(
        self: Any, num_inference_steps: int | None = None, device: Any = None, *args: Any, **kw: Any
    ) -> Any:
        if not hasattr(self, SCHEDULE_ATTRIBUTE):
            return base.set_timesteps(self, num_inference_steps, device, *args, **kw)
        sigmas = _levels(self, int(num_inference_steps or 1))
        levels = NoiseLevels(self.alphas_cumprod.numpy())
        steps = sorted({int(round(levels.sigma_to_t(s))) for s in sigmas if s > 0}, reverse=True)
        return base.set_timesteps(self, device=device, timesteps=steps)

    return type(base.__name__, (base,), {"set_timesteps": set_timesteps})


@lru_cache(maxsize=64)
def with_schedule(base: type) -> type:
    """`base` running on an A1111 schedule type; set `(schedule, ays_levels)` as the instance's `a1111_schedule`.
    ValueError if diffusers gives this class no way to take given noise levels (DDIM, PLMS)."""
    import inspect

    params = inspect.signature(base.__init__).parameters
    if "use_karras_sigmas" in params and hasattr(base, "_convert_to_karras"):
        return _karras_hooked(base)
    if "timesteps" in inspect.signature(base.set_timesteps).parameters and base.__name__ == "LCMScheduler":
        return _timesteps_given(base)
    if base.__name__ == "EulerAncestralDiscreteScheduler":
        return _table_replaced(base)
    raise ValueError(f"scheduler: {base.__name__} cannot run on a given schedule")


def karras_option_used(base: type) -> bool:
    """Whether `with_schedule(base)` needs the class's `use_karras_sigmas` switched on to call its hook."""
    import inspect

    return "use_karras_sigmas" in inspect.signature(base.__init__).parameters and hasattr(base, "_convert_to_karras")


@lru_cache(maxsize=8)
def with_eta(base: type) -> type:
    """`base` (EulerAncestralDiscreteScheduler or a schedule variant of it) with `a1111_eta` on the instance."""

    def step(
        self: Any,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> Any:
        from diffusers.schedulers.scheduling_euler_ancestral_discrete import (
            EulerAncestralDiscreteSchedulerOutput,
        )
        from diffusers.utils.torch_utils import randn_tensor

        if self.step_index is None:
            self._init_step_index(timestep)
        sigma, sigma_next = self.sigmas[self.step_index], self.sigmas[self.step_index + 1]
        sample = sample.to(torch.float32)
        prediction = self.config.prediction_type
        if prediction == "epsilon":
            denoised = sample - sigma * model_output
        elif prediction == "v_prediction":
            denoised = model_output * (-sigma / (sigma**2 + 1) ** 0.5) + (sample / (sigma**2 + 1))
        else:
            raise ValueError(f"scheduler: prediction_type {prediction!r} is not supported with eta")
        eta = float(getattr(self, ETA_ATTRIBUTE, 1.0))
        full = (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5  # diffusers' sigma_up (eta 1)
        sigma_up = torch.minimum(sigma_next, eta * full)
        sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5
        previous = sample + (sample - denoised) / sigma * (sigma_down - sigma)
        device = model_output.device
        noise = randn_tensor(model_output.shape, dtype=model_output.dtype, device=device, generator=generator)
        previous = (previous + noise * sigma_up).to(model_output.dtype)
        self._step_index += 1
        if not return_dict:
            return (previous, denoised)
        return EulerAncestralDiscreteSchedulerOutput(prev_sample=previous, pred_original_sample=denoised)

    return type(base.__name__, (base,), {"step": step})
