"""One benchmark run's shared state: the engine under test, the set of files, and the plain-diffusers twin.

The twin is a stock diffusers pipeline over the very modules the engine has cached (same weights),
with the scheduler class the engine's sampler maps to, built from the same model scheduler config;
it is called with prompt strings and a CPU generator, as a diffusers user would.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from webui.bench.sets import BenchSet
from webui.bench.stats import Stat, ratio
from webui.engine.pipelines import LoadedModel, ModelChoice, PipelineManager
from webui.engine.request import GenerationRequest
from webui.engine.samplers import SAMPLERS
from webui.engine.txt2img import Engine

PROMPT = "a photo of a red fox in a snowy forest, highly detailed, soft light"
NEGATIVE = "blurry, low quality, watermark"
SEED = 1234
CFG_SCALE = 7.0
SAMPLER = "Euler"  # A1111 name; plain diffusers gets the class (and options) it maps to
StepCallback = Callable[[Any, int, Any, dict], dict]


@dataclass(frozen=True)
class Figure:
    """One figure of the report: its value (None when it cannot be measured here), raw numbers, a note."""

    value: float | None
    raw: dict[str, Any] = field(default_factory=dict)
    note: str | None = None

    @classmethod
    def of_ratio(cls, numerator: Stat, denominator: Stat, raw: dict[str, Any], note: str | None = None) -> Figure:
        """Median ÷ median; the ratio of the fastest runs is kept beside it, a check on a noisy machine."""
        raw = {**raw, "fastest_runs_ratio": ratio(numerator.best, denominator.best)}
        return cls(ratio(numerator.median, denominator.median), raw, note)


@dataclass
class Session:
    bench_set: BenchSet
    engine: Engine
    steps: int
    repeats: int
    warmup: int
    scratch: Path

    @property
    def manager(self) -> PipelineManager:
        return self.engine.manager

    @property
    def fast_repeats(self) -> int:
        """Repetitions for figures of milliseconds (switches, swaps, weight changes): cheap, so more of them."""
        return max(10, 5 * self.repeats)

    def choice(self, checkpoint: Path | None = None, vae: Path | None = None) -> ModelChoice:
        return ModelChoice(checkpoint or self.bench_set.checkpoint, vae=vae)

    def request(self, choice: ModelChoice | None = None, **changes: Any) -> GenerationRequest:
        fields: dict[str, Any] = {
            "model": choice or self.choice(),
            "prompt": PROMPT,
            "negative_prompt": NEGATIVE,
            "steps": self.steps,
            "cfg_scale": CFG_SCALE,
            "width": self.bench_set.width,
            "height": self.bench_set.height,
            "seed": SEED,
            "sampler": SAMPLER,
        }
        return GenerationRequest(**(fields | changes))

    def settings(self) -> dict[str, Any]:
        return {
            "family": self.bench_set.family.value,
            "width": self.bench_set.width,
            "height": self.bench_set.height,
            "steps": self.steps,
            "cfg_scale": CFG_SCALE,
            "sampler": SAMPLER,
            "plain_diffusers_scheduler": SAMPLERS[SAMPLER].scheduler,
            "seed": SEED,
            "prompt": PROMPT,
            "negative_prompt": NEGATIVE,
            "repeats": self.repeats,
            "fast_repeats": self.fast_repeats,
            "warmup": self.warmup,
            "files": self.bench_set.files(),
        }


def release(manager: PipelineManager) -> None:
    """Drop every cached model and the current pipeline (which would keep its modules alive)."""
    manager.cache.clear()
    manager.current = None


def plain_pipeline(loaded: LoadedModel) -> Any:
    """Stock diffusers over the engine's cached modules, with a scheduler built the plain diffusers way."""
    import diffusers

    p = loaded.pipeline
    sampler = SAMPLERS[SAMPLER]
    scheduler = getattr(diffusers, sampler.scheduler).from_config({**loaded.scheduler_config, **sampler.options})
    description = loaded.family.description
    if description.pipeline is None:
        raise ValueError(f"family: the benchmark has no plain diffusers pipeline for {loaded.family.label}")
    # The stock class and the init flags the real repo's model_index.json sets, over the same modules.
    pipe = description.pipeline.create({**p.components, "scheduler": scheduler})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def plain_call(session: Session, pipe: Any, output_type: str, callback: StepCallback | None = None) -> Any:
    """The bare pipeline call with the session's request settings; noise from a CPU generator, as the engine."""
    kwargs: dict[str, Any] = {}
    if callback is not None:
        kwargs["callback_on_step_end"] = callback
    return pipe(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        num_inference_steps=session.steps,
        guidance_scale=CFG_SCALE,
        width=session.bench_set.width,
        height=session.bench_set.height,
        generator=[torch.Generator("cpu").manual_seed(SEED)],
        output_type=output_type,
        **kwargs,
    ).images


def step_stamper(into: list[list[float]]) -> StepCallback:
    """A step-end callback recording when each step ended (one list per call), for per-step times."""
    run: list[float] = []
    into.append(run)

    def stamp(_pipe: Any, _step: int, _timestep: Any, tensors: dict) -> dict:
        run.append(time.perf_counter())
        return tensors

    return stamp


def step_intervals(stamped: list[list[float]]) -> tuple[float, ...]:
    return tuple(b - a for run in stamped for a, b in zip(run, run[1:], strict=False))
