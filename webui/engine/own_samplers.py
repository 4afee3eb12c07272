"""The samplers diffusers has no scheduler for: DPM fast, DPM adaptive, Restart, DDIM CFG++ (A1111's names).

They work on k-diffusion's formulation, which A1111 uses: `x = x0 + σ·ε`, and a denoiser `model(x, σ) → x0`
(classifier-free guidance applied). Each is written from its paper:

- DPM-Solver (Lu et al. 2022, "DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model Sampling"):
  the 1st/2nd/3rd-order single-step updates in t = −log σ (eqs. 3.7, Algorithms 1–2), "DPM-Solver-fast"
  (Appendix D.1: ⌊NFE/3⌋+1 steps uniform in t, orders 3…3 then 2,1 or NFE mod 3) and the adaptive
  step-size solver (Appendix D.2: a 2nd/3rd-order pair, error `‖x_low − x_high‖ / max(atol, rtol·|x|)`),
  with k-diffusion's defaults (rtol 0.05, atol 0.0078, h_init 0.05, an integral step-size controller with
  accept safety 0.81) and its ancestral `eta` (A1111 runs both with eta 1 unless told otherwise).
- Restart (Xu et al. 2023, "Restart Sampling for Improving Generative Processes"): Heun steps (Karras et al.
  2022, Alg. 1) along a Karras schedule; inside the restart interval [0.1, 2] in σ the process jumps back
  up by adding noise and runs down again, K times. The split of the steps is A1111's: from 20 steps on,
  one restart of 9 steps, from 36 steps on two restarts of steps//4 each; fewer steps run plain Heun.
- DDIM CFG++ (Chung et al. 2024, "CFG++: Manifold-constrained Classifier Free Guidance"): the DDIM update
  with the guided x0 but the unconditional noise in its renoising term; the guidance scale is read on CFG++'s
  [0, 1] range as A1111 does (the studio's CFG scale / 12.5).

`callback(step, x, denoised)` is called after every step; it may raise `SamplingInterrupted` to stop, carrying
the latents reached so far.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

Denoiser = Callable[[torch.Tensor, float], torch.Tensor]
GuidedDenoiser = Callable[[torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]  # (guided, unconditional)
Noise = Callable[[torch.Tensor], torch.Tensor]  # a fresh standard-normal tensor shaped like its argument
Callback = Callable[[int, torch.Tensor, torch.Tensor], None]
CFGPP_SCALE = 1 / 12.5  # A1111 maps CFG++'s guidance λ ∈ [0, 1] onto its CFG slider's [0, 12.5]
RESTART_INTERVAL = (0.1, 2.0)  # σ, Xu et al.'s interval for Stable Diffusion


class SamplingInterrupted(Exception):  # noqa: N818 (a control signal, not an error)
    """Raised by a callback to stop sampling; `latents` is where it stopped."""

    def __init__(self, latents: torch.Tensor) -> None:
        super().__init__("sampling interrupted")
        self.latents = latents


def ancestral_step(sigma: float, sigma_next: float, eta: float) -> tuple[float, float]:
    """(σ_down, σ_up): where the deterministic step lands and how much fresh noise brings it to σ_next."""
    if not eta:
        return sigma_next, 0.0
    up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - up**2), up


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> np.ndarray:
    """Karras et al. 2022, eq. 5: n levels from σ_max to σ_min, then 0."""
    ramp = np.linspace(0, 1, n)
    low, high = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return np.append((high + ramp * (low - high)) ** rho, 0.0)


class _DPMSolver:
    """DPM-Solver's updates in t = −log σ, on a denoiser (ε = (x − x0)/σ); ε at a point is computed once."""

    def __init__(self, model: Denoiser) -> None:
        self.model = model
        self.last_denoised: torch.Tensor | None = None

    def eps(self, cache: dict[str, torch.Tensor], key: str, x: torch.Tensor, t: float) -> torch.Tensor:
        if key not in cache:
            sigma = math.exp(-t)
            denoised = self.model(x, sigma)
            if key == "eps":
                self.last_denoised = denoised
            cache[key] = (x - denoised) / sigma
        return cache[key]

    def first_order(self, x: torch.Tensor, t: float, t_next: float, cache: dict) -> torch.Tensor:
        h = t_next - t
        return x - math.exp(-t_next) * math.expm1(h) * self.eps(cache, "eps", x, t)

    def second_order(self, x: torch.Tensor, t: float, t_next: float, cache: dict, r1: float = 0.5) -> torch.Tensor:
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        u1 = x - math.exp(-s1) * math.expm1(r1 * h) * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        sigma_next = math.exp(-t_next)
        return x - sigma_next * math.expm1(h) * eps - sigma_next / (2 * r1) * math.expm1(h) * (eps_r1 - eps)

    def third_order(
        self, x: torch.Tensor, t: float, t_next: float, cache: dict, r1: float = 1 / 3, r2: float = 2 / 3
    ) -> torch.Tensor:
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1, s2 = t + r1 * h, t + r2 * h
        u1 = x - math.exp(-s1) * math.expm1(r1 * h) * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        u2 = (
            x
            - math.exp(-s2) * math.expm1(r2 * h) * eps
            - math.exp(-s2) * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1) * (eps_r1 - eps)
        )
        eps_r2 = self.eps(cache, "eps_r2", u2, s2)
        sigma_next = math.exp(-t_next)
        return x - sigma_next * math.expm1(h) * eps - sigma_next / r2 * (math.expm1(h) / h - 1) * (eps_r2 - eps)

    def step(self, order: int, x: torch.Tensor, t: float, t_next: float, cache: dict) -> torch.Tensor:
        return (self.first_order, self.second_order, self.third_order)[order - 1](x, t, t_next, cache)


def _ancestral_times(t: float, t_next: float, t_end: float, eta: float) -> tuple[float, float]:
    """(t the deterministic step ends at, the noise level that brings it back to t_next), as k-diffusion's
    DPM-Solver takes ancestral steps; (t_next, 0) without eta."""
    if not eta:
        return t_next, 0.0
    sigma_down, _ = ancestral_step(math.exp(-t), math.exp(-t_next), eta)
    t_down = min(t_end, -math.log(sigma_down)) if sigma_down > 0 else t_end
    return t_down, math.sqrt(max(math.exp(-t_next) ** 2 - math.exp(-t_down) ** 2, 0.0))


def fast_orders(nfe: int) -> list[int]:
    """DPM-Solver-fast's orders for a budget of `nfe` model calls (Lu et al. 2022, Appendix D.1)."""
    steps = nfe // 3 + 1
    if nfe % 3 == 0:
        return [3] * (steps - 2) + [2, 1]
    return [3] * (steps - 1) + [nfe % 3]


def dpm_fast(
    model: Denoiser,
    x: torch.Tensor,
    sigma_min: float,
    sigma_max: float,
    nfe: int,
    *,
    eta: float = 0.0,
    noise: Noise | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """DPM-Solver-fast from σ_max to σ_min with `nfe` model calls; `x` starts at σ_max."""
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"sigma: DPM fast needs 0 < sigma_min < sigma_max; got {sigma_min}, {sigma_max}")
    solver = _DPMSolver(model)
    orders = fast_orders(max(nfe, 1))
    t_start, t_end = -math.log(sigma_max), -math.log(sigma_min)
    times = np.linspace(t_start, t_end, len(orders) + 1)
    for index, order in enumerate(orders):
        t, t_next = float(times[index]), float(times[index + 1])
        t_down, sigma_up = _ancestral_times(t, t_next, t_end, eta)
        x = solver.step(order, x, t, t_down, {})
        if sigma_up and noise is not None:
            x = x + noise(x) * sigma_up
        if callback is not None:
            callback(index, x, solver.last_denoised)
    return x


class _StepSizeController:
    """k-diffusion's PID step-size controller (with the defaults: integral only); `h` is the next step in t."""

    def __init__(self, h: float, order: float, accept_safety: float = 0.81, icoeff: float = 1.0) -> None:
        self.h = h
        self.b1 = icoeff / order
        self.accept_safety = accept_safety
        self.eps = 1e-8

    def propose(self, error: float) -> bool:
        factor = (1 / (error + self.eps)) ** self.b1
        factor = 1 + math.atan(factor - 1)  # a limiter keeps the change of step size smooth
        self.h *= factor
        return factor >= self.accept_safety


def dpm_adaptive(
    model: Denoiser,
    x: torch.Tensor,
    sigma_min: float,
    sigma_max: float,
    *,
    rtol: float = 0.05,
    atol: float = 0.0078,
    h_init: float = 0.05,
    eta: float = 0.0,
    noise: Noise | None = None,
    callback: Callback | None = None,
    max_calls: int = 10_000,
) -> torch.Tensor:
    """Adaptive DPM-Solver (orders 2 and 3) from σ_max to σ_min; the step count follows the error estimate."""
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"sigma: DPM adaptive needs 0 < sigma_min < sigma_max; got {sigma_min}, {sigma_max}")
    solver = _DPMSolver(model)
    t, t_end = -math.log(sigma_max), -math.log(sigma_min)
    controller = _StepSizeController(h_init, 1.5 if eta else 3)
    previous = x
    step = calls = 0
    while t < t_end - 1e-5:
        if calls > max_calls:
            raise RuntimeError(f"DPM adaptive took more than {max_calls} model calls; use another sampler")
        cache: dict[str, torch.Tensor] = {}
        t_next = min(t_end, t + controller.h)
        t_down, sigma_up = _ancestral_times(t, t_next, t_end, eta)
        low = solver.second_order(x, t, t_down, cache, r1=1 / 3)
        high = solver.third_order(x, t, t_down, cache)
        calls += 3
        delta = torch.maximum(torch.full_like(low, atol), rtol * torch.maximum(low.abs(), previous.abs()))
        error = float(torch.linalg.norm((low - high) / delta)) / low.numel() ** 0.5
        if controller.propose(error):
            previous = low
            x = high + (noise(high) * sigma_up if sigma_up and noise is not None else 0)
            t = t_next
            if callback is not None:
                callback(step, x, solver.last_denoised)
            step += 1
    return x


def _heun(model: Denoiser, x: torch.Tensor, sigma: float, sigma_next: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of Karras et al.'s Heun sampler (Euler when it ends at σ = 0); returns (x_next, denoised)."""
    denoised = model(x, sigma)
    slope = (x - denoised) / sigma
    euler = x + slope * (sigma_next - sigma)
    if sigma_next == 0:
        return euler, denoised
    slope_next = (euler - model(euler, sigma_next)) / sigma_next
    return x + (slope + slope_next) / 2 * (sigma_next - sigma), denoised


def restart_segments(sigmas: np.ndarray) -> list[tuple[float, float]]:
    """The (σ_from, σ_to) steps Restart runs for a schedule of len(sigmas) − 1 steps; a segment that starts
    above where the last ended is a restart (noise is added to climb back up first)."""
    steps = len(sigmas) - 1
    if steps < 20:
        return [(float(a), float(b)) for a, b in zip(sigmas[:-1], sigmas[1:], strict=True)]
    restart_steps, repeats = (steps // 4, 2) if steps >= 36 else (9, 1)
    main = karras_sigmas(steps - restart_steps * repeats, float(sigmas[-2]), float(sigmas[0]))
    low_index = int(np.argmin(np.abs(main - RESTART_INTERVAL[0])))
    high_index = int(np.argmin(np.abs(main - RESTART_INTERVAL[1])))
    segments: list[tuple[float, float]] = []
    for index in range(len(main) - 1):
        segments.append((float(main[index]), float(main[index + 1])))
        if index + 1 == low_index and high_index < low_index:
            # restart_steps Heun steps on a Karras ramp from the interval's top level down to its bottom one
            ramp = karras_sigmas(restart_steps + 1, float(main[low_index]), float(main[high_index]))[:-1]
            for _ in range(repeats):
                segments += [(float(a), float(b)) for a, b in zip(ramp[:-1], ramp[1:], strict=True)]
    return segments


def restart(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: np.ndarray,
    *,
    noise: Noise,
    s_noise: float = 1.0,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Restart sampling over the schedule `sigmas` (n + 1 levels ending at 0); `x` starts at sigmas[0]."""
    last = None
    for index, (sigma, sigma_next) in enumerate(restart_segments(sigmas)):
        if last is not None and last < sigma:
            x = x + noise(x) * s_noise * math.sqrt(sigma**2 - last**2)
        x, denoised = _heun(model, x, sigma, sigma_next)
        last = sigma_next
        if callback is not None:
            callback(index, x, denoised)
    return x


def ddim_cfgpp(
    model: GuidedDenoiser, x: torch.Tensor, sigmas: np.ndarray, *, callback: Callback | None = None
) -> torch.Tensor:
    """DDIM (η = 0) with CFG++: x0 from the guided prediction, the step's noise direction from the unconditional
    one. `sigmas` are the DDIM timesteps' levels; `model` returns (guided x0, unconditional x0)."""
    for index, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:], strict=True)):
        denoised, unconditional = model(x, float(sigma))
        x = denoised + float(sigma_next) * (x - unconditional) / float(sigma)
        if callback is not None:
            callback(index, x, denoised)
    return x
