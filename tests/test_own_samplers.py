"""DPM fast, DPM adaptive, Restart and DDIM CFG++: each against its published definition, then through the engine."""

from __future__ import annotations

import math

import diffusers
import numpy as np
import pytest
import torch

from webui.engine import own_samplers
from webui.engine.own_samplers import (
    dpm_adaptive,
    dpm_fast,
    fast_orders,
    karras_sigmas,
    restart,
    restart_segments,
)
from webui.engine.pipelines import ModelChoice, PipelineManager
from webui.engine.progress import CancelToken
from webui.engine.request import GenerationRequest
from webui.engine.txt2img import Engine
from webui.families import Family
from webui.models.derive import bundled_config

SIGMA_MIN, SIGMA_MAX = 0.0292, 14.6146
DATA_STD = 0.5


def gaussian_denoiser(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """The exact denoiser for data ~ N(0, DATA_STD²): E[x0 | x] = x · s² / (s² + σ²)."""
    return x * DATA_STD**2 / (DATA_STD**2 + sigma**2)


def exact_ode(x_start: torch.Tensor, sigma_from: float, sigma_to: float) -> torch.Tensor:
    """The probability-flow ODE's exact solution for Gaussian data: x scales with √(s² + σ²)."""
    return x_start * math.sqrt(DATA_STD**2 + sigma_to**2) / math.sqrt(DATA_STD**2 + sigma_from**2)


@pytest.fixture(scope="module")
def start() -> torch.Tensor:
    return torch.randn(2000, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * SIGMA_MAX


class Counting:
    def __init__(self, model) -> None:
        self.model, self.calls = model, 0

    def __call__(self, x, sigma):
        self.calls += 1
        return self.model(x, sigma)


# -- DPM-Solver (Lu et al. 2022) -----------------------------------------------------------------------------
def test_dpm_solver_fast_orders_are_the_papers():
    assert fast_orders(6) == [3, 2, 1]  # NFE divisible by 3: 3…3, then 2, 1
    assert fast_orders(10) == [3, 3, 3, 1]
    assert fast_orders(11) == [3, 3, 3, 2]
    assert all(sum(fast_orders(nfe)) == nfe for nfe in range(3, 40))


def test_dpm_fast_solves_the_ode_with_its_budget_of_calls(start):
    errors = []
    for nfe in (6, 12, 24):
        model = Counting(gaussian_denoiser)
        out = dpm_fast(model, start.clone(), SIGMA_MIN, SIGMA_MAX, nfe)
        assert model.calls == nfe
        errors.append(float((out - exact_ode(start, SIGMA_MAX, SIGMA_MIN)).abs().max()))
    assert errors[2] < 1e-2 and errors[2] < errors[1] < errors[0]  # converges as the budget grows


def test_dpm_adaptive_lands_within_its_tolerance_and_adapts_its_steps(start):
    loose, tight = Counting(gaussian_denoiser), Counting(gaussian_denoiser)
    out = dpm_adaptive(loose, start.clone(), SIGMA_MIN, SIGMA_MAX)
    exact = exact_ode(start, SIGMA_MAX, SIGMA_MIN)
    assert float((out - exact).abs().max()) < 0.1
    precise = dpm_adaptive(tight, start.clone(), SIGMA_MIN, SIGMA_MAX, rtol=0.005, atol=0.0005)
    assert float((precise - exact).abs().max()) < float((out - exact).abs().max())
    assert tight.calls > loose.calls and loose.calls % 3 == 0


@pytest.mark.parametrize("sampler", [dpm_fast, dpm_adaptive])
def test_dpm_solvers_with_eta_sample_the_data_distribution(start, sampler):
    generator = torch.Generator().manual_seed(1)

    def noise(like):
        return torch.randn(like.shape, generator=generator, dtype=like.dtype)

    kwargs = {"nfe": 30} if sampler is dpm_fast else {}
    out = sampler(gaussian_denoiser, start.clone(), SIGMA_MIN, SIGMA_MAX, eta=1.0, noise=noise, **kwargs)
    assert float(out.std()) == pytest.approx(math.sqrt(DATA_STD**2 + SIGMA_MIN**2), rel=0.06)
    assert float((out - exact_ode(start, SIGMA_MAX, SIGMA_MIN)).abs().max()) > 0.1  # stochastic, not the ODE


# -- Restart (Xu et al. 2023) ----------------------------------------------------------------------------------
def test_restart_steps_are_a1111s_split_of_the_steps():
    short = karras_sigmas(10, SIGMA_MIN, SIGMA_MAX)
    assert restart_segments(short) == [(float(a), float(b)) for a, b in zip(short[:-1], short[1:], strict=True)]
    for steps, restarts, per_restart in ((20, 1, 9), (40, 2, 10)):
        segments = restart_segments(karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX))
        assert len(segments) == steps  # the steps are split, not added to
        jumps = [i for i in range(1, len(segments)) if segments[i][0] > segments[i - 1][1]]
        assert len(jumps) == restarts
        for jump in jumps:
            top, bottom = segments[jump][0], segments[jump + per_restart - 1][1]
            assert top == pytest.approx(2.0, rel=0.35) and bottom == pytest.approx(0.1, rel=0.35)  # [0.1, 2]


def test_restart_without_restarts_is_heuns_method(start):
    sigmas = karras_sigmas(10, SIGMA_MIN, SIGMA_MAX)
    out = restart(gaussian_denoiser, start.clone(), sigmas, noise=lambda x: torch.zeros_like(x))
    x = start.clone()
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:], strict=True):  # Karras et al. 2022, Algorithm 1
        d = (x - gaussian_denoiser(x, sigma)) / sigma
        x_euler = x + (sigma_next - sigma) * d
        if sigma_next > 0:
            d_next = (x_euler - gaussian_denoiser(x_euler, sigma_next)) / sigma_next
            x = x + (sigma_next - sigma) * (d + d_next) / 2
        else:
            x = x_euler
    torch.testing.assert_close(out, x)


def test_restart_samples_the_data_distribution(start):
    generator = torch.Generator().manual_seed(2)
    sigmas = karras_sigmas(40, SIGMA_MIN, SIGMA_MAX)
    out = restart(gaussian_denoiser, start.clone(), sigmas, noise=lambda x: torch.randn(x.shape, generator=generator,
                                                                                         dtype=x.dtype))  # fmt: skip
    assert float(out.std()) == pytest.approx(DATA_STD, rel=0.05)


# -- DDIM CFG++ (Chung et al. 2024) -----------------------------------------------------------------------------
def test_ddim_cfgpp_is_the_papers_update_in_ddims_own_terms():
    """x_{t-1} = √ᾱ_{t-1} · x̂0(ε_guided) + √(1 − ᾱ_{t-1}) · ε_uncond, on DDIM's timesteps (variance preserving)."""
    ddim = diffusers.DDIMScheduler.from_config(bundled_config(Family.SD1, "scheduler"))
    ddim.set_timesteps(6)
    alphas = ddim.alphas_cumprod.double()
    timesteps = [int(t) for t in ddim.timesteps]
    guidance = 0.6

    def eps_uncond(x, t):
        return 0.2 * x + 0.001 * t

    def eps_cond(x, t):
        return 0.3 * x - 0.002 * t

    def eps_guided(x, t):
        return eps_uncond(x, t) + guidance * (eps_cond(x, t) - eps_uncond(x, t))

    x_vp = torch.linspace(-2, 2, 64, dtype=torch.float64)
    reference = x_vp.clone()
    for index, t in enumerate(timesteps):
        previous = alphas[timesteps[index + 1]] if index + 1 < len(timesteps) else ddim.final_alpha_cumprod.double()
        x0 = (reference - (1 - alphas[t]).sqrt() * eps_guided(reference, t)) / alphas[t].sqrt()
        reference = previous.sqrt() * x0 + (1 - previous).sqrt() * eps_uncond(reference, t)

    sigmas = [float(((1 - alphas[t]) / alphas[t]).sqrt()) for t in timesteps]
    final = float(((1 - ddim.final_alpha_cumprod) / ddim.final_alpha_cumprod).sqrt())
    by_sigma = dict(zip(sigmas, timesteps, strict=True))

    def model(x, sigma):  # the same model seen as k-diffusion's denoiser: x = x_vp·√(1 + σ²)
        t = by_sigma[sigma]
        vp = x / math.sqrt(1 + sigma**2)
        return x - sigma * eps_guided(vp, t), x - sigma * eps_uncond(vp, t)

    out = own_samplers.ddim_cfgpp(model, x_vp * math.sqrt(1 + sigmas[0] ** 2), np.array([*sigmas, final]))
    torch.testing.assert_close(out / math.sqrt(1 + final**2), reference)


# -- through the engine -------------------------------------------------------------------------------------
OWN = ["DPM fast", "DPM adaptive", "Restart", "DDIM CFG++"]


@pytest.fixture(scope="module")
def engine(tiny_models_dir, tmp_path_factory) -> Engine:
    return Engine(PipelineManager(tiny_models_dir), tmp_path_factory.mktemp("outputs"))


@pytest.mark.parametrize("family", [Family.SD1, Family.SDXL])
@pytest.mark.parametrize("sampler", OWN)
def test_own_samplers_generate_reproducibly(engine, tiny_models_dir, family, sampler):
    name = {Family.SD1: "tiny-sd1", Family.SDXL: "tiny-sdxl"}[family]
    request = GenerationRequest(
        model=ModelChoice(tiny_models_dir / f"checkpoints/{name}.safetensors"),
        prompt="a red [hat:cap:2] AND a table:0.5",
        steps=3,
        width=32,
        height=32,
        seed=5,
        sampler=sampler,
        schedule="Karras",
    )
    loaded = engine.manager.load(request.model)
    first, again = engine.denoise(loaded, request, [5]), engine.denoise(loaded, request, [5])
    assert torch.isfinite(first).all() and first.std() > 0
    torch.testing.assert_close(first, again)


def test_an_interrupted_own_sampler_returns_where_it_stopped(engine, tiny_models_dir):
    cancel = CancelToken()
    seen = []

    def progress(report):
        seen.append(report.step)
        cancel.cancel()

    request = GenerationRequest(
        model=ModelChoice(tiny_models_dir / "checkpoints/tiny-sd1.safetensors"), steps=6, width=32, height=32,
        sampler="Restart", seed=1,
    )  # fmt: skip
    result = engine.generate(request, progress=progress, cancel=cancel)
    assert seen == [1] and result.info["interrupted"] and len(result.images) == 1  # the partial image
