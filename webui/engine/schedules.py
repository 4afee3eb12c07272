"""A1111's schedule types as noise levels: for `n` steps, the `n + 1` sigmas a sampler walks through.

Each follows its published definition (the source is named at each function) with the model's own discrete
noise levels σ_t = √((1 − ᾱ_t) / ᾱ_t), t = 0..999, as A1111 reads them through k-diffusion's
`DiscreteSchedule` (σ between the discrete levels is interpolated linearly in log σ). `sigma_min` and
`sigma_max` are the model's smallest and largest levels, as A1111 passes them. Every schedule ends at 0 but
KL Optimal, which ends at `sigma_min` (as A1111's; the diffusers schedulers, which always step to 0 last,
take its first n levels and end at 0). Karras, Exponential and Beta also exist in diffusers as scheduler
options; `samplers.py` uses those where the scheduler class has them, these elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import MappingProxyType

import numpy as np

# NVIDIA, "Align Your Steps" (Sabour et al. 2024), the how-to page's 10-step noise levels for SD 1.5, which
# A1111 uses for every model a family gives no levels of its own (diffusers' AysSchedules holds the same
# levels with the last one set to 0). A family's own levels: its description's scheduler.align_your_steps.
AYS_DEFAULT = (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029)
BETA_ALPHA = BETA_BETA = 0.6  # A1111's defaults for the Beta schedule (Lee et al. 2024 use the same)
KARRAS_RHO = 7.0  # Karras et al. 2022, eq. 5
POLYEXPONENTIAL_RHO = 1.0  # A1111's default_rho for Polyexponential


class NoiseLevels:
    """A model's discrete noise levels, from its scheduler's `alphas_cumprod` (k-diffusion's DiscreteSchedule)."""

    def __init__(self, alphas_cumprod: np.ndarray) -> None:
        alphas = np.asarray(alphas_cumprod, dtype=np.float64)
        if alphas.ndim != 1 or len(alphas) < 2 or not np.all((alphas > 0) & (alphas < 1)):
            raise ValueError(
                "scheduler config: these schedules need 0 < alphas_cumprod < 1 at every training step; "
                "a zero-terminal-SNR model (rescale_betas_zero_snr) has an infinite largest noise level"
            )
        self.sigmas = np.sqrt((1 - alphas) / alphas)
        self.log_sigmas = np.log(self.sigmas)

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: float) -> float:
        """The continuous training step whose interpolated noise level is `sigma` (clamped to the table)."""
        log_sigma = math.log(sigma)
        low = int(np.clip(np.searchsorted(self.log_sigmas, log_sigma, side="right") - 1, 0, len(self.sigmas) - 2))
        lo, hi = self.log_sigmas[low], self.log_sigmas[low + 1]
        weight = float(np.clip((lo - log_sigma) / (lo - hi), 0.0, 1.0))
        return (1 - weight) * low + weight * (low + 1)

    def t_to_sigma(self, t: float | np.ndarray) -> np.ndarray:
        t = np.asarray(t, dtype=np.float64)
        low = np.floor(t).astype(int)
        high = np.ceil(t).astype(int)
        weight = t - low
        return np.exp((1 - weight) * self.log_sigmas[low] + weight * self.log_sigmas[high])


def _with_zero(sigmas: np.ndarray | list[float]) -> np.ndarray:
    return np.append(np.asarray(sigmas, dtype=np.float64), 0.0)


def uniform(n: int, levels: NoiseLevels, **_: object) -> np.ndarray:
    """k-diffusion `DiscreteSchedule.get_sigmas`: n steps evenly spaced in t from the last training step to 0."""
    return _with_zero(levels.t_to_sigma(np.linspace(len(levels.sigmas) - 1, 0, n)))


def karras(n: int, levels: NoiseLevels, **_: object) -> np.ndarray:
    """Karras et al. 2022 ("Elucidating the Design Space…", eq. 5) with ρ = 7."""
    ramp = np.linspace(0, 1, n)
    low, high = levels.sigma_min ** (1 / KARRAS_RHO), levels.sigma_max ** (1 / KARRAS_RHO)
    return _with_zero((high + ramp * (low - high)) ** KARRAS_RHO)


def exponential(n: int, levels: NoiseLevels, **_: object) -> np.ndarray:
    """k-diffusion `get_sigmas_exponential`: evenly spaced in log σ."""
    return _with_zero(np.exp(np.linspace(math.log(levels.sigma_max), math.log(levels.sigma_min), n)))


def polyexponential(n: int, levels: NoiseLevels, **_: object) -> np.ndarray:
    """k-diffusion `get_sigmas_polyexponential`: log σ along a ramp of power ρ (ρ = 1 is Exponential)."""
    ramp = np.linspace(1, 0, n) ** POLYEXPONENTIAL_RHO
    log_min, log_max = math.log(levels.sigma_min), math.log(levels.sigma_max)
    return _with_zero(np.exp(ramp * (log_max - log_min) + log_min))


def sgm_uniform(n: int, levels: NoiseLevels, **_: object) -> np.ndarray:
    """A1111 / ComfyUI `sgm_uniform`: n + 1 points evenly spaced in t from σ_max to σ_min, the last dropped."""
    start, end = levels.sigma_to_t(levels.sigma_max), levels.sigma_to_t(levels.sigma_min)
    return _with_zero(levels.t_to_sigma(np.linspace(start, end, n + 1)[:-1]))


def kl_optimal(n: int, levels: NoiseLevels, **_: object) -> np.ndarray:
    """KL-optimal schedule (Sabour et al. 2024, "Align Your Steps", eq. 12): σ = tan((1 − s)·atan σ_max +
    s·atan σ_min) for s = i/n; n + 1 points ending at σ_min, not 0 (as A1111's)."""
    steps = np.arange(n + 1) / n
    return np.tan(steps * math.atan(levels.sigma_min) + (1 - steps) * math.atan(levels.sigma_max))


def align_your_steps(n: int, levels: NoiseLevels, *, ays_levels: tuple[float, ...] | None = None) -> np.ndarray:
    """NVIDIA's Align Your Steps levels for the model (`ays_levels`, else SD 1.5's), interpolated in log σ to n
    points as A1111 does (11 steps use the table as it is), then 0."""
    table = ays_levels or AYS_DEFAULT
    if n == len(table):
        return _with_zero(table)
    xs = np.linspace(0, 1, len(table))
    log_levels = np.log(table[::-1])
    return _with_zero(np.exp(np.interp(np.linspace(0, 1, n), xs, log_levels))[::-1])


def simple(n: int, levels: NoiseLevels, **_: object) -> np.ndarray:
    """ComfyUI / A1111 `simple`: every (1000/n)-th training level, from the largest down."""
    stride = len(levels.sigmas) / n
    return _with_zero([levels.sigmas[-(1 + int(i * stride))] for i in range(n)])


def normal(n: int, levels: NoiseLevels, **_: object) -> np.ndarray:
    """ComfyUI / A1111 `normal`: n points evenly spaced in t from σ_max to σ_min."""
    start, end = levels.sigma_to_t(levels.sigma_max), levels.sigma_to_t(levels.sigma_min)
    return _with_zero(levels.t_to_sigma(np.linspace(start, end, n)))


def ddim(n: int, levels: NoiseLevels, **_: object) -> np.ndarray:
    """ComfyUI / A1111 `ddim_uniform`: training levels 1, 1 + s, 1 + 2s, … (s = 1000 // n), largest first.
    A step count that does not divide 1000 gives one step more, as in A1111."""
    stride = max(len(levels.sigmas) // n, 1)
    return _with_zero(levels.sigmas[1::stride][::-1])


def beta(n: int, levels: NoiseLevels, **_: object) -> np.ndarray:
    """Beta schedule (Lee et al. 2024, "Beta Sampling is All You Need"), α = β = 0.6, as A1111's and diffusers'
    `use_beta_sigmas`: σ_min + ppf(1 − i/(n−1)) · (σ_max − σ_min)."""
    from scipy import stats

    points = stats.beta.ppf(1 - np.linspace(0, 1, n), BETA_ALPHA, BETA_BETA)
    return _with_zero(levels.sigma_min + points * (levels.sigma_max - levels.sigma_min))


ScheduleFunction = Callable[..., np.ndarray]
# A1111's schedule types (label → function), in its dropdown's order; "Automatic" is the sampler's own.
SCHEDULES: Mapping[str, ScheduleFunction] = MappingProxyType(
    {
        "Uniform": uniform,
        "Karras": karras,
        "Exponential": exponential,
        "Polyexponential": polyexponential,
        "SGM Uniform": sgm_uniform,
        "KL Optimal": kl_optimal,
        "Align Your Steps": align_your_steps,
        "Simple": simple,
        "Normal": normal,
        "DDIM": ddim,
        "Beta": beta,
    }
)


def schedule_sigmas(
    schedule: str, steps: int, levels: NoiseLevels, *, ays_levels: tuple[float, ...] | None = None
) -> np.ndarray:
    """The sigmas of A1111's `schedule` for `steps` steps (see SCHEDULES); ValueError names an unknown one.
    `ays_levels`: the model family's Align Your Steps levels (None: SD 1.5's)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule: unknown schedule type {schedule!r} (allowed: {', '.join(SCHEDULES)})")
    if steps < 1:
        raise ValueError(f"steps: {steps} is out of range; allowed 1 and more")
    return SCHEDULES[schedule](steps, levels, ays_levels=ays_levels)
