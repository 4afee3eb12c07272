"""A1111's schedule types, each against its published definition computed here independently."""

from __future__ import annotations

import math

import diffusers
import numpy as np
import pytest
from scipy import stats

from webui.engine.schedules import SCHEDULES, NoiseLevels, schedule_sigmas
from webui.families import Family
from webui.models.derive import bundled_config


@pytest.fixture(scope="module")
def levels() -> NoiseLevels:
    scheduler = diffusers.EulerDiscreteScheduler.from_config(bundled_config(Family.SD1, "scheduler"))
    return NoiseLevels(scheduler.alphas_cumprod.numpy())


def table(levels: NoiseLevels) -> np.ndarray:
    return levels.sigmas


def interpolated(levels: NoiseLevels, t: float) -> float:
    """σ at a fractional training step: linear in log σ between the neighbouring steps (k-diffusion's t_to_sigma)."""
    low = math.floor(t)
    high = min(low + 1, len(levels.sigmas) - 1)
    weight = t - low
    return math.exp((1 - weight) * math.log(levels.sigmas[low]) + weight * math.log(levels.sigmas[high]))


def test_noise_levels_are_sds():
    scheduler = diffusers.EulerDiscreteScheduler.from_config(bundled_config(Family.SD1, "scheduler"))
    levels = NoiseLevels(scheduler.alphas_cumprod.numpy())
    assert levels.sigma_min == pytest.approx(0.0292, abs=1e-4) and levels.sigma_max == pytest.approx(14.6146, abs=1e-4)
    for t in (0.0, 0.5, 123.25, 998.9, 999.0):
        assert levels.sigma_to_t(interpolated(levels, t)) == pytest.approx(t, abs=1e-6)


def test_karras_is_eq_5_of_karras_et_al(levels):
    n, rho = 10, 7.0
    lo, hi = levels.sigma_min, levels.sigma_max
    expected = [(hi ** (1 / rho) + i / (n - 1) * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho for i in range(n)]
    np.testing.assert_allclose(schedule_sigmas("Karras", n, levels), [*expected, 0.0], rtol=1e-12)


def test_karras_equals_diffusers_own_karras_sigmas(levels):
    scheduler = diffusers.EulerDiscreteScheduler.from_config(
        bundled_config(Family.SD1, "scheduler"), use_karras_sigmas=True, timestep_spacing="linspace"
    )
    scheduler.set_timesteps(12)
    np.testing.assert_allclose(schedule_sigmas("Karras", 12, levels), scheduler.sigmas.numpy(), rtol=1e-5)


@pytest.mark.parametrize("name", ["Exponential", "Polyexponential"])
def test_exponential_is_even_in_log_sigma(levels, name):
    sigmas = schedule_sigmas(name, 9, levels)
    steps = np.diff(np.log(sigmas[:-1]))
    np.testing.assert_allclose(steps, steps[0], rtol=1e-9)  # polyexponential with rho 1 is exponential
    assert sigmas[0] == pytest.approx(levels.sigma_max) and sigmas[-2] == pytest.approx(levels.sigma_min)


def test_uniform_and_normal_are_evenly_spaced_training_steps(levels):
    n = 7
    expected = [interpolated(levels, 999 * (1 - i / (n - 1))) for i in range(n)]
    np.testing.assert_allclose(schedule_sigmas("Uniform", n, levels), [*expected, 0.0], rtol=1e-9)
    np.testing.assert_allclose(schedule_sigmas("Normal", n, levels), [*expected, 0.0], rtol=1e-9)


def test_sgm_uniform_drops_the_last_of_n_plus_one_points(levels):
    n = 4
    expected = [interpolated(levels, 999 * (1 - i / n)) for i in range(n)]  # 999, 749.25, 499.5, 249.75
    np.testing.assert_allclose(schedule_sigmas("SGM Uniform", n, levels), [*expected, 0.0], rtol=1e-9)


def test_kl_optimal_is_the_tangent_of_the_interpolated_angles(levels):
    n = 6
    lo, hi = math.atan(levels.sigma_min), math.atan(levels.sigma_max)
    expected = [math.tan((1 - i / n) * hi + i / n * lo) for i in range(n + 1)]
    np.testing.assert_allclose(schedule_sigmas("KL Optimal", n, levels), expected, rtol=1e-12)
    assert expected[-1] == pytest.approx(levels.sigma_min)  # it ends at the smallest level, as A1111's


def test_align_your_steps_uses_nvidias_levels_and_interpolates_in_log_sigma(levels):
    sd = [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029]  # NVIDIA's how-to page
    xl = [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029]
    np.testing.assert_allclose(schedule_sigmas("Align Your Steps", 11, levels), [*sd, 0.0])
    sdxl_levels = Family.SDXL.description.scheduler.align_your_steps  # the family's own table
    np.testing.assert_allclose(schedule_sigmas("Align Your Steps", 11, levels, ays_levels=sdxl_levels), [*xl, 0.0])
    assert Family.SD1.description.scheduler.align_your_steps is None  # SD 1.5's, the default
    ours = schedule_sigmas("Align Your Steps", 21, levels)[:-1]
    assert ours[0] == pytest.approx(14.615) and ours[-1] == pytest.approx(0.029)
    np.testing.assert_allclose(ours[::2], sd, rtol=1e-9)  # 21 points: the table's, one between each pair
    np.testing.assert_allclose(ours[1], math.sqrt(sd[0] * sd[1]), rtol=1e-9)  # geometric mean: log-linear
    diffusers_table = diffusers.schedulers.AysSchedules["StableDiffusionSigmas"]
    np.testing.assert_allclose(sd[:-1], diffusers_table[:-1])  # the same levels diffusers ships


def test_simple_and_ddim_take_training_levels_at_a_stride(levels):
    sigmas = table(levels)
    simple = [sigmas[999], sigmas[749], sigmas[499], sigmas[249], 0.0]  # every 1000/4-th from the top
    np.testing.assert_array_equal(schedule_sigmas("Simple", 4, levels), simple)
    ddim = [sigmas[751], sigmas[501], sigmas[251], sigmas[1], 0.0]  # 1, 1 + 250, ... reversed
    np.testing.assert_array_equal(schedule_sigmas("DDIM", 4, levels), ddim)
    assert len(schedule_sigmas("DDIM", 30, levels)) == 32  # 1000 // 30 = 33: one step more, as A1111's


def test_beta_is_lee_et_als_beta_quantiles(levels):
    n = 5
    lo, hi = levels.sigma_min, levels.sigma_max
    expected = [lo + stats.beta.ppf(1 - i / (n - 1), 0.6, 0.6) * (hi - lo) for i in range(n)]
    np.testing.assert_allclose(schedule_sigmas("Beta", n, levels), [*expected, 0.0], rtol=1e-12)


@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize("steps", [1, 2, 20])
def test_every_schedule_descends_from_about_sigma_max(levels, name, steps):
    sigmas = schedule_sigmas(name, steps, levels)
    assert np.all(np.diff(sigmas) <= 0) and np.all(np.isfinite(sigmas))
    assert steps <= len(sigmas) - 1 <= steps + 1


def test_unknown_schedule_and_bad_steps_name_the_field(levels):
    with pytest.raises(ValueError, match="^schedule: unknown schedule type 'Fancy'"):
        schedule_sigmas("Fancy", 10, levels)
    with pytest.raises(ValueError, match="^steps: 0"):
        schedule_sigmas("Karras", 0, levels)
    with pytest.raises(ValueError, match="zero-terminal-SNR"):
        NoiseLevels(np.array([0.9, 0.5, 0.0]))
