"""A1111 sampler and schedule-type names, mapped to diffusers schedulers built from the model's own scheduler config.

Any sampler runs with any schedule type, as in A1111: diffusers' own scheduler options where the class has them
(Karras, Exponential, Beta, SGM Uniform as "trailing" spacing), else the class made to walk the schedule's noise
levels (`scheduler_variants.with_schedule`, levels from `schedules.py`). DDIM and PLMS walk their own timesteps
whatever the schedule type, as A1111's timestep samplers do (`schedule_note` says so). DPM fast, DPM adaptive,
Restart and DDIM CFG++ have no diffusers scheduler: they run in this studio's own loop (`own_sampling.py`).
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from webui.engine.limits import RequestError
from webui.engine.schedules import SCHEDULES

if TYPE_CHECKING:
    from diffusers import SchedulerMixin

    from webui.families import Family

AUTOMATIC = "Automatic"
ALL_SCHEDULES = tuple(SCHEDULES)  # every A1111 schedule type besides Automatic
TIMESTEP_SCHEDULERS = ("DDIMScheduler", "PNDMScheduler")  # walk their own timesteps (A1111's DDIM, PLMS)


@dataclass(frozen=True)
class Sampler:
    """One A1111 sampler: the diffusers class and the config values that make it behave as that sampler."""

    name: str
    scheduler: str  # diffusers class name
    options: Mapping[str, Any] = field(default_factory=dict)
    schedules: tuple[str, ...] = ALL_SCHEDULES  # schedule types besides Automatic: all of them, as in A1111
    stochastic: bool = False  # draws fresh noise every step (same seed, same image; other seed, other path)
    own: str | None = None  # an own sampling loop (own_sampling.py) instead of a diffusers scheduler
    eta: float | None = None  # the default of A1111's `eta` where the sampler takes one (ancestral 1, DDIM 0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))


# Names and order as A1111's sampler dropdown; classes as diffusers' "A1111/k-diffusion" table
# (docs/source/en/api/schedulers/overview.md). Options are set explicitly so a model config that
# ships a variant (e.g. DPMSolverMultistep with "sde-dpmsolver++") cannot leak into another name.
_DPM_2M = {"algorithm_type": "dpmsolver++", "solver_order": 2, "solver_type": "midpoint"}
_DPM_SDE = {**_DPM_2M, "algorithm_type": "sde-dpmsolver++"}
SAMPLERS: Mapping[str, Sampler] = MappingProxyType(
    {
        s.name: s
        for s in (
            # midpoint dpmsolver++ is k-diffusion's sample_dpmpp_2m update, term for term.
            Sampler("DPM++ 2M", "DPMSolverMultistepScheduler", _DPM_2M),
            # k-diffusion's sample_dpmpp_sde; Brownian-tree noise, seeded from the image seeds (see make_scheduler).
            Sampler("DPM++ SDE", "DPMSolverSDEScheduler", {}, stochastic=True),
            # A1111 draws this noise from a Brownian tree, diffusers from the generator: same law, other numbers.
            Sampler("DPM++ 2M SDE", "DPMSolverMultistepScheduler", _DPM_SDE, stochastic=True),
            Sampler(
                "DPM++ 2M SDE Heun",
                "DPMSolverMultistepScheduler",
                {**_DPM_SDE, "solver_type": "heun"},
                stochastic=True,
            ),
            # Approximation: diffusers has no DPM++ 2S ancestral. Its singlestep solver at order 2 with SDE
            # noise is the closest: second-order singlestep updates with fresh noise each step, like 2S a, but
            # SDE noise instead of ancestral (eta=1) noise, and one model call per step (A1111 makes two), so
            # 20 steps here do 10 second-order updates.
            Sampler(
                "DPM++ 2S a",
                "DPMSolverSinglestepScheduler",
                {**_DPM_SDE, "lower_order_final": True},  # diffusers forces it anyway, with a warning
                stochastic=True,
            ),
            Sampler("DPM++ 3M SDE", "DPMSolverMultistepScheduler", {**_DPM_SDE, "solver_order": 3}, stochastic=True),
            Sampler("Euler a", "EulerAncestralDiscreteScheduler", {}, stochastic=True, eta=1.0),
            Sampler("Euler", "EulerDiscreteScheduler", {}),
            Sampler("LMS", "LMSDiscreteScheduler", {}),
            Sampler("Heun", "HeunDiscreteScheduler", {}),
            Sampler("DPM2", "KDPM2DiscreteScheduler", {}),
            Sampler("DPM2 a", "KDPM2AncestralDiscreteScheduler", {}, stochastic=True),
            # DPM-Solver-fast and -adaptive (Lu et al. 2022) as k-diffusion runs them: they walk from the model's
            # largest to its smallest noise level on their own, so the schedule type has no effect (as in A1111).
            # A1111 runs them with its ancestral eta, 1 by default: fresh noise at every step.
            Sampler("DPM fast", "", {}, stochastic=True, own="dpm_fast", eta=1.0),
            Sampler("DPM adaptive", "", {}, stochastic=True, own="dpm_adaptive", eta=1.0),
            Sampler("Restart", "", {}, stochastic=True, own="restart"),  # Xu et al. 2023
            Sampler("DDIM", "DDIMScheduler", {}, eta=0.0),  # eta 0: the pipeline's default
            Sampler("DDIM CFG++", "", {}, own="ddim_cfgpp"),  # Chung et al. 2024
            Sampler("PLMS", "PNDMScheduler", {"skip_prk_steps": True}),  # PNDM minus its Runge-Kutta warm-up
            Sampler("UniPC", "UniPCMultistepScheduler", {}),
            Sampler("LCM", "LCMScheduler", {}, stochastic=True),
            # Not in A1111 (SD.Next's name). diffusers' DEIS ends on its last level instead of 0, which only
            # the schedules it has as options put at the smallest training level: those only.
            Sampler("DEIS", "DEISMultistepScheduler", {}, ("Karras", "Exponential", "Beta", "SGM Uniform")),
        )
    }
)
SAMPLER_NAMES: tuple[str, ...] = tuple(SAMPLERS)
# Flow-matching models (FLUX.1, SD3) sample with flow-matching Euler: Forge's "Euler" with schedule "Simple"
# (the model's own shifted schedule) or the sigma schedules diffusers' FlowMatchEulerDiscreteScheduler takes.
FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler",)
FLOW_SCHEDULES = ("Simple", "Karras", "Exponential", "Beta")  # Simple: the model's own (shifted) schedule
FLOW_SAMPLERS: Mapping[str, Sampler] = MappingProxyType(
    {"Euler": Sampler("Euler", "FlowMatchEulerDiscreteScheduler", {}, FLOW_SCHEDULES)}
)

# The schedule types diffusers has as scheduler options (used where the class takes them). Karras/Exponential/
# Beta span the model's full sigma range, as k-diffusion does, only with "linspace" timesteps: under "leading"
# diffusers' Euler/LMS/Heun/DPM2 start at sigma 8.4 instead of SD's 14.6.
# SGM Uniform = "trailing" (diffusers' overview: sgm_uniform -> timestep_spacing="trailing").
SCHEDULE_OPTIONS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        AUTOMATIC: {},
        "Karras": {"use_karras_sigmas": True, "timestep_spacing": "linspace"},
        "Exponential": {"use_exponential_sigmas": True, "timestep_spacing": "linspace"},
        "Beta": {"use_beta_sigmas": True, "timestep_spacing": "linspace"},
        "SGM Uniform": {"timestep_spacing": "trailing"},
    }
)
SCHEDULE_TYPES: tuple[str, ...] = (AUTOMATIC, *ALL_SCHEDULES)  # A1111's list, in its order
_SIGMA_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
_ZERO_SNR = "rescale_betas_zero_snr"


@dataclass(frozen=True)
class DistilledPreset:
    """Settings for a few-step distilled model; `request_fields()` fits `dataclasses.replace(request, ...)`."""

    sampler: str
    schedule: str
    steps: int
    min_steps: int
    max_steps: int
    cfg_scale: float  # <= 1 turns classifier-free guidance off in diffusers (one UNet call per step)

    def request_fields(self) -> dict[str, Any]:
        return {"sampler": self.sampler, "schedule": self.schedule, "steps": self.steps, "cfg_scale": self.cfg_scale}


# SDXL-Turbo / SD-Turbo ship EulerAncestralDiscreteScheduler with timestep_spacing="trailing"; diffusers'
# SDXL Turbo page: trailing spacing, 1-4 steps, guidance off.
TURBO_PRESET = DistilledPreset("Euler a", "SGM Uniform", steps=4, min_steps=1, max_steps=4, cfg_scale=1.0)
# LCM checkpoints and LCM-LoRAs: LCMScheduler, 2-8 steps (4 is the usual), guidance off or 1-2.
LCM_PRESET = DistilledPreset("LCM", AUTOMATIC, steps=4, min_steps=1, max_steps=8, cfg_scale=1.0)
# For a distilled model of unknown kind, what Turbo models ship; LCM checkpoints and LoRAs want LCM_PRESET.
DISTILLED_PRESET = TURBO_PRESET


def default_sampling(family: Family | None) -> tuple[str, str]:
    """(sampler, schedule) a user of `family` starts from: its description's default (A1111's "DPM++ 2M" with
    Karras for the SD families); a family without one, or none, gets the first registered family's."""
    from webui.families import DESCRIPTIONS

    spec = family.description.scheduler if family is not None else DESCRIPTIONS[0].scheduler
    if spec.default_sampler is None:
        spec = DESCRIPTIONS[0].scheduler
    return spec.default_sampler or "DPM++ 2M", spec.default_schedule


def is_family_default(sampler: str | None, schedule: str | None) -> bool:
    """Whether (sampler, schedule) is some registered family's default (so not a user's own pick)."""
    from webui.families import registered

    return (sampler, schedule) in {default_sampling(family) for family in registered()}


def _choices(values: Sequence[str]) -> str:
    return ", ".join(repr(v) for v in values)


def _sampler(name: str) -> Sampler:
    if name in SAMPLERS:
        return SAMPLERS[name]
    hint = ""
    for schedule in SCHEDULE_TYPES[1:]:
        base = name.removesuffix(f" {schedule}")
        if base != name and base in SAMPLERS:
            hint = f"; {name!r} is the old combined name: use sampler {base!r} with schedule {schedule!r}"
            break
    else:
        close = difflib.get_close_matches(name, SAMPLER_NAMES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"sampler: unknown sampler {name!r}{hint} (allowed: {_choices(SAMPLER_NAMES)})")


def sampler_entry(name: str) -> Sampler:
    """The table entry for an A1111 sampler name; ValueError names the field and the choices."""
    return _sampler(name)


def split_legacy_name(name: str) -> tuple[str, str]:
    """(sampler, schedule) from an A1111 name, including pre-1.9 ones like "DPM++ 2M Karras"."""
    if name in SAMPLERS:
        return name, AUTOMATIC
    for schedule in SCHEDULE_TYPES[1:]:
        base = name.removesuffix(f" {schedule}")
        if base != name and base in SAMPLERS and schedule in supported_schedules(base):
            return base, schedule
    _sampler(name)  # raises, naming the field and the allowed names
    raise AssertionError("unreachable")


def supported_schedules(sampler: str) -> tuple[str, ...]:
    """Schedule types `sampler` can be asked for, Automatic first (every one, as in A1111; see schedule_note)."""
    return (AUTOMATIC, *_sampler(sampler).schedules)


def schedule_note(sampler: str | None, schedule: str) -> str | None:
    """Why `schedule` has no effect on `sampler`, when it has none (A1111 accepts and ignores it the same way)."""
    if sampler is None or schedule == AUTOMATIC:
        return None
    entry = _sampler(sampler)
    if entry.own in ("dpm_fast", "dpm_adaptive"):
        return f"schedule: {sampler} sets its own noise levels; {schedule!r} has no effect (as in A1111)"
    if entry.own == "ddim_cfgpp" or entry.scheduler in TIMESTEP_SCHEDULERS:
        return f"schedule: {sampler} walks its own timesteps; {schedule!r} has no effect (as in A1111)"
    return None


def is_flow_matching(model_scheduler_config: Mapping[str, Any]) -> bool:
    return model_scheduler_config.get("_class_name") in FLOW_SCHEDULERS


def samplers_for(model_scheduler_config: Mapping[str, Any]) -> Mapping[str, Sampler]:
    """The sampler table that applies to a model: flow-matching Euler, or every noise-prediction sampler."""
    return FLOW_SAMPLERS if is_flow_matching(model_scheduler_config) else SAMPLERS


def _lookup(name: str) -> Any:
    """diffusers' attribute `name`: the class, a placeholder whose use raises when its extra is missing, or None."""
    import diffusers

    return getattr(diffusers, name, None)


def scheduler_class(name: str) -> type[SchedulerMixin]:
    """The diffusers scheduler class called `name`; DPM++ SDE needs the torchsde package."""
    from diffusers.utils import is_torchsde_available

    if name == "DPMSolverSDEScheduler" and not is_torchsde_available():
        raise ImportError("sampler: DPM++ SDE needs the torchsde package: `pip install torchsde`, or pick another")
    cls = _lookup(name)
    if not (isinstance(cls, type) and hasattr(cls, "from_config") and hasattr(cls, "set_timesteps")):
        raise ValueError(f"scheduler: {name!r} is not a diffusers scheduler class")
    return cls


def _init_params(name: str) -> Mapping[str, inspect.Parameter]:
    """The config keys the class `name` takes (none for a placeholder or an unknown name)."""
    cls = _lookup(name)
    if not isinstance(cls, type):
        return {}
    params = inspect.signature(cls.__init__).parameters
    return {k: p for k, p in params.items() if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and k != "self"}


def _defining(schedule: str) -> dict[str, Any]:
    """The options that make `schedule` in diffusers (for Karras & co. the spacing only widens the range)."""
    options = dict(SCHEDULE_OPTIONS.get(schedule, {}))
    if schedule != "SGM Uniform":
        options.pop("timestep_spacing", None)
    return options


def has_diffusers_option(scheduler: str, schedule: str) -> bool:
    """Whether the diffusers class `scheduler` has `schedule` as an option of its own."""
    return schedule in SCHEDULE_OPTIONS and set(_defining(schedule)) <= set(_init_params(scheduler))


def _schedule_options(schedule: str, accepted: set[str]) -> dict[str, Any]:
    """The config values for `schedule`; a chosen schedule also switches the other sigma schedules off."""
    if schedule == AUTOMATIC:
        return {}
    options = {flag: False for flag in _SIGMA_FLAGS} | dict(SCHEDULE_OPTIONS.get(schedule, {}))
    return {key: value for key, value in options.items() if key in accepted}


def make_scheduler(
    model_scheduler_config: Mapping[str, Any],
    sampler: str | None,
    schedule: str = AUTOMATIC,
    *,
    seeds: Sequence[int] | None = None,
    ays_levels: tuple[float, ...] | None = None,
    eta: float | None = None,
) -> SchedulerMixin:
    """A fresh scheduler for one batch: `sampler`'s class over the model's own config (betas, prediction type,
    spacing, zero-SNR), with the sampler's and the schedule's options on top.

    `sampler=None` keeps the model's own class; with schedule Automatic the result equals plain diffusers'
    `ModelClass.from_config(config)`. A schedule the class has no option for runs through its schedule variant
    (`ays_levels`: the family's Align Your Steps levels); DDIM and PLMS ignore the schedule (see `schedule_note`). `eta`
    (Euler a) re-adds that share of each step's noise; None is the sampler's default. `seeds` (one per image)
    seed the Brownian-tree noise of DPM++ SDE, whose noise does not come from the pipeline's generator.
    """
    if schedule not in SCHEDULE_TYPES:
        raise RequestError("schedule", f"unknown schedule type {schedule!r} (allowed: {_choices(SCHEDULE_TYPES)})")
    if sampler is None:
        cls = scheduler_class(_class_name(model_scheduler_config))
        label = sampler_label(model_scheduler_config)
        name, options = f"the model's own scheduler ({label})", {}
        table = samplers_for(model_scheduler_config)
        allowed = (AUTOMATIC, *table[label].schedules) if label in table else (AUTOMATIC,)
    elif is_flow_matching(model_scheduler_config):
        if sampler not in FLOW_SAMPLERS:
            allowed = _choices(tuple(FLOW_SAMPLERS))
            raise RequestError("sampler", f"{sampler!r} does not apply to a flow-matching model; allowed: {allowed}")
        entry = FLOW_SAMPLERS[sampler]
        cls = scheduler_class(entry.scheduler)
        name, options, allowed = repr(sampler), dict(entry.options), (AUTOMATIC, *entry.schedules)
    else:
        entry = _sampler(sampler)
        if entry.own is not None:
            raise ValueError(f"sampler: {sampler!r} runs in its own sampling loop, not a diffusers scheduler")
        cls = scheduler_class(entry.scheduler)
        name, options, allowed = repr(sampler), dict(entry.options), (AUTOMATIC, *entry.schedules)
    if schedule not in allowed:
        raise RequestError("schedule", f"{name} cannot use {schedule!r}; it supports {_choices(allowed)}")
    accepted = set(_init_params(cls.__name__))
    if model_scheduler_config.get(_ZERO_SNR) and _ZERO_SNR not in accepted:
        able = [s.name for s in SAMPLERS.values() if s.own is None and _ZERO_SNR in _init_params(s.scheduler)]
        raise RequestError(
            "sampler",
            f"{name} cannot sample this zero-terminal-SNR model (rescale_betas_zero_snr); "
            f"choose one of {_choices(able)}",
        )
    flow = is_flow_matching(model_scheduler_config)
    if flow and schedule == "Simple":
        schedule = AUTOMATIC  # Forge's name for a flow model's own schedule
    variant = schedule != AUTOMATIC and not has_diffusers_option(cls.__name__, schedule)
    variant = variant and cls.__name__ not in TIMESTEP_SCHEDULERS and not flow
    if variant:
        from webui.engine.scheduler_variants import karras_option_used, with_schedule

        options |= _schedule_options("Karras" if karras_option_used(cls) else AUTOMATIC, accepted)
        cls = with_schedule(cls)
    elif cls.__name__ not in TIMESTEP_SCHEDULERS:
        options |= _schedule_options(schedule, accepted)
    if seeds is not None and "noise_sampler_seed" in accepted:
        options["noise_sampler_seed"] = [int(s) for s in seeds]
    if eta is not None and sampler is not None and _sampler(sampler).eta == 1.0 and eta != 1.0:
        from webui.engine.scheduler_variants import with_eta

        cls = with_eta(cls)
    config = dict(model_scheduler_config)
    if sampler is not None:  # keys only the model's class takes would be logged as "ignored" on every request
        config = {k: v for k, v in config.items() if k in accepted or k.startswith("_")}
    config |= options
    if "_use_default_values" in config:  # from_config would drop our options listed there
        config["_use_default_values"] = [k for k in config["_use_default_values"] if k not in options]
    scheduler = cls.from_config(config)
    if variant:
        from webui.engine.scheduler_variants import SCHEDULE_ATTRIBUTE

        setattr(scheduler, SCHEDULE_ATTRIBUTE, (schedule, ays_levels))
    if eta is not None:
        from webui.engine.scheduler_variants import ETA_ATTRIBUTE

        setattr(scheduler, ETA_ATTRIBUTE, float(eta))
    return scheduler


def _class_name(config: Mapping[str, Any]) -> str:
    name = config.get("_class_name")
    if not isinstance(name, str):
        raise ValueError(
            "scheduler config: no '_class_name'; pass the model's scheduler_config.json as loaded, "
            "or a scheduler instance (an instance's .config does not carry its class name)"
        )
    return name


def _config_of(scheduler_config_or_instance: Any) -> tuple[str, dict[str, Any]]:
    config = getattr(scheduler_config_or_instance, "config", scheduler_config_or_instance)
    if not isinstance(config, Mapping):
        raise TypeError(f"scheduler: expected a scheduler or its config dict, got {type(config).__name__}")
    if hasattr(scheduler_config_or_instance, "config"):
        return type(scheduler_config_or_instance).__name__, dict(config)
    return _class_name(config), dict(config)


def sampler_label(scheduler_config_or_instance: Any) -> str:
    """The A1111 sampler name for a scheduler (for the infotext); its class name when no A1111 name fits."""
    class_name, config = _config_of(scheduler_config_or_instance)
    candidates = [s for s in (*SAMPLERS.values(), *FLOW_SAMPLERS.values()) if s.scheduler == class_name]
    if not candidates:
        return class_name
    defaults = {key: param.default for key, param in _init_params(class_name).items()}
    used_defaults = set(config.get("_use_default_values", ()))
    for entry in sorted(candidates, key=lambda s: -len(s.options)):
        values = {k: defaults.get(k) if k in used_defaults or k not in config else config[k] for k in entry.options}
        if values == dict(entry.options):
            return entry.name
    return class_name
