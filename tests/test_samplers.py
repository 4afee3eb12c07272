"""Samplers: every A1111 name runs on a tiny model, reproducibly; schedules, prediction type and labels hold."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import pytest
import torch

from webui.engine.pipelines import ModelChoice
from webui.engine.request import GenerationRequest
from webui.engine.samplers import (
    DISTILLED_PRESET,
    LCM_PRESET,
    SAMPLER_NAMES,
    SAMPLERS,
    SCHEDULE_OPTIONS,
    SCHEDULE_TYPES,
    TIMESTEP_SCHEDULERS,
    TURBO_PRESET,
    has_diffusers_option,
    make_scheduler,
    sampler_label,
    schedule_note,
    split_legacy_name,
    supported_schedules,
)
from webui.engine.schedules import NoiseLevels, schedule_sigmas
from webui.families import Family
from webui.models.derive import bundled_config
from webui.testing.tiny_models import tiny_pipeline

PROMPT = "a red hat on a table"
SIZE = 32
STEPS = 3
FAMILIES = (Family.SD1, Family.SD2, Family.SDXL, Family.SDXL_REFINER)
# diffusers' own "A1111/k-diffusion" table (api/schedulers/overview.md). It lists DPM++ SDE as
# DPMSolverSinglestepScheduler; we use DPMSolverSDEScheduler, the port of k-diffusion's sample_dpmpp_sde.
DIFFUSERS_TABLE = {
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {}),
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "DPM2": ("KDPM2DiscreteScheduler", {}),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", {}),
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "Heun": ("HeunDiscreteScheduler", {}),
    "LMS": ("LMSDiscreteScheduler", {}),
}
# torchsde warns when diffusers asks its Brownian tree for sigma_min rounded a hair below its start.
pytestmark = pytest.mark.filterwarnings("ignore:Should have ta>=t0:UserWarning")
# The samplers with a diffusers scheduler (the others run in own_sampling.py; see test_own_samplers.py).
DIFFUSERS_NAMES = [name for name in SAMPLER_NAMES if SAMPLERS[name].own is None]
SCHEDULED = [(name, schedule) for name in DIFFUSERS_NAMES for schedule in supported_schedules(name)[1:]]
ALL_PAIRS = [(name, schedule) for name in DIFFUSERS_NAMES for schedule in supported_schedules(name)]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads; on a busy 2-core box OpenMP's spinning makes them 20x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def sd1() -> diffusers.DiffusionPipeline:
    return tiny_pipeline(Family.SD1)


@pytest.fixture(scope="module")
def fixed_latents(sd1) -> torch.Tensor:
    side = SIZE // sd1.vae_scale_factor
    return torch.randn((1, 4, side, side), generator=torch.Generator("cpu").manual_seed(0))


@pytest.fixture(scope="module")
def built() -> Callable[..., Any]:
    """make_scheduler on SD2's (v-prediction) config, once per (sampler, schedule): DPM2's constructor alone
    takes ~0.3 s. Shared between tests; each one starts with set_timesteps, which resets the run state."""
    cache: dict[tuple[str, str], Any] = {}

    def get(name: str, schedule: str = "Automatic") -> Any:
        if (name, schedule) not in cache:
            cache[name, schedule] = make_scheduler(bundled_config(Family.SD2, "scheduler"), name, schedule)
        return cache[name, schedule]

    return get


def sd1_config() -> dict:
    return bundled_config(Family.SD1, "scheduler")


def run(pipe, scheduler, seed: int, latents: torch.Tensor | None = None, **kwargs) -> np.ndarray:
    pipe.scheduler = scheduler
    values = dict(prompt=PROMPT, num_inference_steps=STEPS, guidance_scale=5.0) | kwargs
    generator = torch.Generator("cpu").manual_seed(seed)
    return pipe(**values, width=SIZE, height=SIZE, generator=generator, latents=latents, output_type="np").images


def sigmas_after(scheduler, steps: int = 8) -> tuple[list[float], list[float]]:
    scheduler.set_timesteps(steps)
    sigmas = getattr(scheduler, "sigmas", torch.zeros(0))
    return scheduler.timesteps.tolist(), torch.as_tensor(sigmas).tolist()


# -- every sampler runs, reproducibly ---------------------------------------------------------------
@pytest.mark.parametrize("name", DIFFUSERS_NAMES)
def test_sampler_is_finite_and_reproducible_and_noisy_only_if_stochastic(name, sd1, fixed_latents):
    # Same starting latents throughout, so only the sampler's own per-step noise can tell two seeds apart.
    first = run(sd1, make_scheduler(sd1_config(), name, seeds=[1]), 1, fixed_latents)
    again = run(sd1, make_scheduler(sd1_config(), name, seeds=[1]), 1, fixed_latents)
    other = run(sd1, make_scheduler(sd1_config(), name, seeds=[2]), 2, fixed_latents)
    assert np.isfinite(first).all() and first.std() > 0
    np.testing.assert_array_equal(first, again)
    if SAMPLERS[name].stochastic:
        assert np.abs(first - other).max() > 1e-3, f"{name} ignored the seed of its per-step noise"
    else:
        np.testing.assert_array_equal(first, other)


def test_brownian_noise_of_dpmpp_sde_follows_each_image_seed(sd1):
    alone = run(sd1, make_scheduler(sd1_config(), "DPM++ SDE", seeds=[2]), 2)
    sd1.scheduler = make_scheduler(sd1_config(), "DPM++ SDE", seeds=[1, 2])
    batch = sd1(
        prompt=[PROMPT] * 2,
        num_inference_steps=STEPS,
        guidance_scale=5.0,
        width=SIZE,
        height=SIZE,
        generator=[torch.Generator("cpu").manual_seed(s) for s in (1, 2)],
        output_type="np",
    ).images
    np.testing.assert_allclose(batch[1], alone[0], atol=1e-4)


@pytest.mark.parametrize("name", DIFFUSERS_TABLE)
def test_sampler_uses_the_class_diffusers_documents_for_it(name):
    assert type(make_scheduler(sd1_config(), name)).__name__ == DIFFUSERS_TABLE[name][0]


@pytest.mark.parametrize("name", [name for name, (_, kwargs) in DIFFUSERS_TABLE.items() if kwargs])
def test_sampler_options_give_the_pixels_of_diffusers_documented_init(name, sd1, fixed_latents):
    class_name, kwargs = DIFFUSERS_TABLE[name]
    reference = getattr(diffusers, class_name).from_config(sd1_config(), **kwargs)
    ours = make_scheduler(sd1_config(), name)
    np.testing.assert_array_equal(run(sd1, ours, 7, fixed_latents), run(sd1, reference, 7, fixed_latents))


def test_schedulers_are_fresh_per_call():
    assert make_scheduler(sd1_config(), "Euler") is not make_scheduler(sd1_config(), "Euler")


# -- Automatic keeps the model's configuration -----------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_no_sampler_and_automatic_is_the_models_own_scheduler(family):
    config = bundled_config(family, "scheduler")
    ours = make_scheduler(config, None)
    plain = getattr(diffusers, config["_class_name"]).from_config(config)
    assert type(ours) is type(plain)
    assert dict(ours.config) == dict(plain.config)
    assert sigmas_after(ours) == sigmas_after(plain)


def test_no_sampler_gives_plain_diffusers_pixels(sd1, fixed_latents):
    plain = tiny_pipeline(Family.SD1).scheduler  # the tiny repo's own PNDMScheduler
    ours = make_scheduler({"_class_name": "PNDMScheduler", **plain.config}, None)
    np.testing.assert_array_equal(run(sd1, ours, 3, fixed_latents), run(sd1, plain, 3, fixed_latents))


@pytest.mark.parametrize("family", FAMILIES)
def test_label_of_a_models_own_scheduler_reproduces_it(family):
    config = bundled_config(family, "scheduler")
    label = sampler_label(config)
    expected = {"PNDMScheduler": "PLMS", "DDIMScheduler": "DDIM", "EulerDiscreteScheduler": "Euler"}
    assert label == expected[config["_class_name"]]
    relabelled, own = make_scheduler(config, label), make_scheduler(config, None)
    assert type(relabelled) is type(own)
    params = set(inspect.signature(type(own).__init__).parameters) - {"self"}
    assert {k: relabelled.config[k] for k in params} == {k: own.config[k] for k in params}


@pytest.mark.parametrize("name", DIFFUSERS_NAMES)
def test_v_prediction_and_betas_survive_a_sampler_change(name):
    config = bundled_config(Family.SD2, "scheduler")
    assert config["prediction_type"] == "v_prediction"
    scheduler = make_scheduler(config, name)
    assert scheduler.config.prediction_type == "v_prediction"
    model = make_scheduler(config, None)
    torch.testing.assert_close(scheduler.alphas_cumprod, model.alphas_cumprod)


def test_v_prediction_reaches_the_pixels():
    pipe = tiny_pipeline(Family.SD2)
    config = bundled_config(Family.SD2, "scheduler")
    v = run(pipe, make_scheduler(config, "DPM++ 2M"), 5)
    eps = run(pipe, make_scheduler(config | {"prediction_type": "epsilon"}, "DPM++ 2M"), 5)
    assert np.isfinite(v).all()
    assert np.abs(v - eps).max() > 1e-3


def ideal_model(scheduler, x0: torch.Tensor, prediction: str) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """The exact denoiser for data that is the single image `x0`, at any (fractional) timestep."""
    alphas = scheduler.alphas_cumprod.double()
    log_sigmas = (((1 - alphas) / alphas) ** 0.5).log().numpy()

    def predict(x: torch.Tensor, t: float) -> torch.Tensor:
        sigma = np.exp(np.interp(float(t), np.arange(len(log_sigmas)), log_sigmas))  # diffusers' t <-> sigma
        alpha = 1 / (1 + sigma**2)
        eps = (x.double() - alpha**0.5 * x0) / (1 - alpha) ** 0.5
        return (alpha**0.5 * eps - (1 - alpha) ** 0.5 * x0 if prediction == "v_prediction" else eps).float()

    return predict


@pytest.mark.parametrize(("name", "schedule"), ALL_PAIRS)
def test_every_sampler_lands_on_the_data_with_an_ideal_v_prediction_model(name, schedule, built):
    # With the exact denoiser of a one-image data set every correct sampler ends on that image, whatever its
    # noise; a dropped prediction type, beta schedule or sigma option would land elsewhere.
    scheduler = built(name, schedule)
    x0 = torch.linspace(-0.8, 0.8, 4 * 8 * 8, dtype=torch.float64).reshape(1, 4, 8, 8)
    predict = ideal_model(scheduler, x0, "v_prediction")
    generator = torch.Generator("cpu").manual_seed(0)
    takes_generator = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    scheduler.set_timesteps(8)
    x = torch.randn(x0.shape, generator=generator) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x = scheduler.step(predict(scheduler.scale_model_input(x, t), t), t, x, **takes_generator).prev_sample
    # DDIM, PLMS and DEIS stop at the smallest training sigma (0.03), not at 0: some noise is left by design;
    # so does LCM on a given schedule (its last step lands on training step 0, where LCM returns its input).
    tolerance = 0.2 if name in ("DDIM", "PLMS", "DEIS") or (name == "LCM" and schedule != "Automatic") else 1e-4
    if schedule != "Automatic" and not has_diffusers_option(type(scheduler).__name__, schedule):
        # A given schedule's levels: some classes round their timesteps to whole training steps, and AYS's
        # published table starts a hair above SD's largest level, so the ideal model answers for a level a
        # little off the one the sampler is at. A wrong schedule would miss by far more (> 0.05).
        tolerance = max(tolerance, 5e-3)
    assert (x.double() - x0).abs().max() < tolerance


def test_zero_terminal_snr_model_refuses_samplers_that_would_drop_it():
    config = bundled_config(Family.SD2, "scheduler") | {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}
    euler = make_scheduler(config, "Euler")
    assert euler.config.rescale_betas_zero_snr and euler.config.timestep_spacing == "trailing"
    assert euler.alphas_cumprod[-1] < 1e-4
    with pytest.raises(ValueError, match=r"^sampler: 'LMS' cannot sample this zero-terminal-SNR.*'Euler'"):
        make_scheduler(config, "LMS")


def test_options_listed_as_defaults_in_an_instance_config_still_apply():
    # A scheduler's .config lists keys it took from defaults; diffusers' from_config drops those keys.
    instance = diffusers.EulerDiscreteScheduler.from_config(sd1_config())
    config = {"_class_name": "EulerDiscreteScheduler", **instance.config}
    assert "use_karras_sigmas" in config["_use_default_values"]
    assert make_scheduler(config, "Euler", "Karras").config.use_karras_sigmas is True


# -- schedule types -------------------------------------------------------------------------------------
def walked_levels(scheduler, steps: int) -> list[float]:
    """The noise levels a scheduler steps from, once each (Heun/DPM2/SDE repeat them between half steps)."""
    scheduler.set_timesteps(steps)
    if not hasattr(scheduler, "sigmas"):  # LCM: timesteps only
        levels = NoiseLevels(scheduler.alphas_cumprod.numpy())
        return [float(levels.t_to_sigma(float(t))) for t in scheduler.timesteps]
    return torch.unique_consecutive(torch.as_tensor(scheduler.sigmas, dtype=torch.float64)).tolist()


@pytest.mark.parametrize(
    ("name", "schedule"), [(n, s) for n, s in SCHEDULED if SAMPLERS[n].scheduler not in TIMESTEP_SCHEDULERS]
)
def test_every_sampler_walks_the_schedules_published_levels(name, schedule, built):
    """Any sampler with any schedule type, as A1111 allows: the scheduler steps from exactly the schedule's
    noise levels (schedules.py, each checked against its definition in test_schedules.py)."""
    scheduler = built(name, schedule)
    expected = [float(x) for x in schedule_sigmas(schedule, 8, NoiseLevels(scheduler.alphas_cumprod.numpy()))[:-1]]
    if schedule == "SGM Uniform" and has_diffusers_option(type(scheduler).__name__, schedule):
        assert scheduler.config.timestep_spacing == "trailing"  # diffusers' documented equivalent
        return
    if name == "LCM":  # LCM takes whole training steps: the levels of the rounded steps
        levels = NoiseLevels(scheduler.alphas_cumprod.numpy())
        expected = sorted({float(levels.sigmas[round(levels.sigma_to_t(x))]) for x in expected}, reverse=True)
    walked = walked_levels(scheduler, 8)[: len(expected)]
    np.testing.assert_allclose(walked, expected, rtol=2e-3)
    for key, value in SCHEDULE_OPTIONS.get(schedule, {}).items():
        if has_diffusers_option(type(scheduler).__name__, schedule) and key != "timestep_spacing":
            assert scheduler.config[key] == value  # diffusers' own option where the class has it


@pytest.mark.parametrize("name", ["DDIM", "PLMS"])
def test_timestep_samplers_ignore_the_schedule_type_and_say_so(name, built):
    assert walked_or_timesteps(built(name, "Karras")) == walked_or_timesteps(built(name))
    assert "has no effect" in schedule_note(name, "Karras")
    assert schedule_note("Euler", "Karras") is None and schedule_note(name, "Automatic") is None


def walked_or_timesteps(scheduler) -> list[float]:
    scheduler.set_timesteps(8)
    return scheduler.timesteps.tolist()


@pytest.mark.parametrize("name", ["Euler", "LMS", "DPM2", "DPM++ 2M"])
def test_karras_spans_the_models_full_sigma_range_like_k_diffusion(name):
    # SDXL's config has "leading" spacing, which alone would start Euler at sigma 8.4 instead of 14.6.
    config = bundled_config(Family.SDXL, "scheduler")
    model = make_scheduler(config, None)
    all_sigmas = ((1 - model.alphas_cumprod) / model.alphas_cumprod) ** 0.5
    ramp = torch.linspace(0, 1, 10, dtype=torch.float64)
    low, high = all_sigmas[0].double() ** (1 / 7), all_sigmas[-1].double() ** (1 / 7)
    k_diffusion = (high + ramp * (low - high)) ** 7  # k_diffusion.sampling.get_sigmas_karras, rho 7
    scheduler = make_scheduler(config, name, "Karras")
    scheduler.set_timesteps(10)
    sigmas = torch.unique_consecutive(scheduler.sigmas.double())[:-1]  # DPM2 repeats each sigma; last is 0
    torch.testing.assert_close(sigmas, k_diffusion.float().double(), rtol=1e-4, atol=1e-5)


def test_a_chosen_schedule_switches_the_models_other_schedule_off():
    config = bundled_config(Family.SDXL, "scheduler") | {"use_karras_sigmas": True}
    assert make_scheduler(config, "Euler").config.use_karras_sigmas is True  # Automatic keeps the model's
    exponential = make_scheduler(config, "Euler", "Exponential")
    assert exponential.config.use_exponential_sigmas and not exponential.config.use_karras_sigmas


@pytest.mark.parametrize("name", DIFFUSERS_NAMES)
def test_table_only_uses_options_the_diffusers_class_takes(name):
    entry = SAMPLERS[name]
    params = set(inspect.signature(getattr(diffusers, entry.scheduler).__init__).parameters)
    assert set(entry.options) <= params


# -- errors that name the field -----------------------------------------------------------------------
def test_unknown_sampler_names_the_field_and_the_choices():
    with pytest.raises(ValueError, match=r"^sampler: unknown sampler 'Eulr'; did you mean 'Euler'\?.*'DPM\+\+ 2M'"):
        make_scheduler(sd1_config(), "Eulr")


def test_old_combined_name_is_explained_and_split():
    with pytest.raises(ValueError, match=r"use sampler 'DPM\+\+ 2M' with schedule 'Karras'"):
        make_scheduler(sd1_config(), "DPM++ 2M Karras")
    assert split_legacy_name("DPM++ 2M Karras") == ("DPM++ 2M", "Karras")
    assert split_legacy_name("DPM++ 2M SDE Heun") == ("DPM++ 2M SDE Heun", "Automatic")
    assert split_legacy_name("DPM2 a Karras") == ("DPM2 a", "Karras")
    assert split_legacy_name("Restart") == ("Restart", "Automatic")  # a sampler of its own since A1111 1.6
    assert split_legacy_name("DPM++ 2M Align Your Steps") == ("DPM++ 2M", "Align Your Steps")
    with pytest.raises(ValueError, match=r"^sampler:"):
        split_legacy_name("Restartt")


def test_unknown_schedule_names_the_field_and_the_choices():
    allowed = r"\(allowed: 'Automatic', 'Uniform', 'Karras'"
    with pytest.raises(ValueError, match=rf"^schedule: unknown schedule type 'karras' {allowed}"):
        make_scheduler(sd1_config(), "Euler", "karras")


# Combinations diffusers has no option for, which A1111 allows (the examples among them).
ANY_WITH_ANY = [("Euler a", "Karras"), ("LCM", "SGM Uniform"), ("DPM++ 2S a", "SGM Uniform"), ("DDIM", "Karras"),
                ("Euler a", "Align Your Steps"), ("Heun", "KL Optimal"), ("DPM2 a", "Polyexponential")]  # fmt: skip


@pytest.mark.parametrize(("name", "schedule"), ANY_WITH_ANY)
def test_any_sampler_runs_with_any_schedule_type(name, schedule, sd1, fixed_latents):
    assert schedule in supported_schedules(name)
    image = run(sd1, make_scheduler(sd1_config(), name, schedule, seeds=[1]), 1, fixed_latents)
    assert np.isfinite(image).all() and image.std() > 0


def test_own_samplers_have_no_diffusers_scheduler():
    with pytest.raises(ValueError, match=r"^sampler: 'DPM fast' runs in its own sampling loop"):
        make_scheduler(sd1_config(), "DPM fast")


def test_models_own_scheduler_keeps_its_schedule_choice():
    with pytest.raises(ValueError, match=r"^schedule: the model's own scheduler \(PNDMScheduler\) cannot use"):
        make_scheduler({"_class_name": "PNDMScheduler", "skip_prk_steps": False}, None, "Karras")


def test_missing_torchsde_is_explained(monkeypatch):
    import diffusers.utils

    monkeypatch.setattr(diffusers.utils, "is_torchsde_available", lambda: False)
    with pytest.raises(ImportError, match="torchsde"):
        make_scheduler(sd1_config(), "DPM++ SDE")


# -- labels for the infotext -------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "schedule"), ALL_PAIRS)
def test_label_round_trips(name, schedule, built):
    scheduler = built(name, schedule)
    assert sampler_label(scheduler) == name
    assert sampler_label({"_class_name": type(scheduler).__name__, **scheduler.config}) == name


def test_labels_of_schedulers_outside_the_table_are_their_class_names():
    assert sampler_label(diffusers.DDPMScheduler()) == "DDPMScheduler"
    # Order-2 singlestep without SDE noise is no A1111 sampler: say what it is, do not guess.
    assert sampler_label(diffusers.DPMSolverSinglestepScheduler()) == "DPMSolverSinglestepScheduler"
    assert sampler_label({"_class_name": "DPMSolverMultistepScheduler"}) == "DPM++ 2M"
    assert sampler_label({"_class_name": "PNDMScheduler", "skip_prk_steps": False}) == "PNDMScheduler"
    with pytest.raises(ValueError, match="_class_name"):
        sampler_label(dict(diffusers.EulerDiscreteScheduler().config))


# -- distilled presets -----------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", [TURBO_PRESET, LCM_PRESET])
def test_distilled_preset_is_a_valid_request_and_runs(preset, sd1):
    assert preset.schedule in supported_schedules(preset.sampler)
    assert preset.min_steps <= preset.steps <= preset.max_steps
    request = GenerationRequest(model=ModelChoice(Path("turbo.safetensors")), **preset.request_fields())
    assert (request.sampler, request.steps, request.cfg_scale) == (preset.sampler, preset.steps, preset.cfg_scale)
    scheduler = make_scheduler(sd1_config(), preset.sampler, preset.schedule)
    image = run(sd1, scheduler, 1, num_inference_steps=preset.steps, guidance_scale=preset.cfg_scale)
    assert np.isfinite(image).all()
    with pytest.raises(dataclasses.FrozenInstanceError):
        preset.steps = 8  # type: ignore[misc]


def test_default_distilled_preset_is_what_sdxl_turbo_ships():
    assert DISTILLED_PRESET is TURBO_PRESET
    scheduler = make_scheduler(bundled_config(Family.SDXL, "scheduler"), DISTILLED_PRESET.sampler, "SGM Uniform")
    assert type(scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    assert scheduler.config.timestep_spacing == "trailing"
    assert DISTILLED_PRESET.cfg_scale <= 1.0 and DISTILLED_PRESET.max_steps == 4


def test_public_names_are_a1111s():
    required = {"Euler", "Euler a", "LMS", "Heun", "DPM2", "DPM2 a", "DPM++ 2M", "DPM++ 2M SDE", "DPM++ SDE"}
    required |= {"DPM++ 2S a", "DPM++ 3M SDE", "DDIM", "PLMS", "UniPC", "LCM"}
    required |= {"DPM fast", "DPM adaptive", "Restart", "DDIM CFG++"}
    assert required <= set(SAMPLER_NAMES)
    assert SCHEDULE_TYPES == (  # A1111's list, in its order
        "Automatic", "Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform", "KL Optimal",
        "Align Your Steps", "Simple", "Normal", "DDIM", "Beta",
    )  # fmt: skip
