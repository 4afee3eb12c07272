"""What an A1111 user expects at first sight: the default sampler and schedule, steps counted as set, and the tiny
fixtures generating at the UI's default size and steps in CI-friendly time."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from webui.config import Settings
from webui.engine.pipelines import ModelChoice
from webui.engine.request import GenerationRequest
from webui.engine.samplers import SCHEDULE_TYPES, default_sampling, supported_schedules
from webui.families import Family, registered
from webui.families.base import SchedulerKind
from webui.ui import choices
from webui.ui.model_bar import initial_checkpoint
from webui.ui.preferences import FAMILY_SAMPLER, Preferences, PreferencesStore

A1111_DEFAULT = ("DPM++ 2M", "Karras")  # A1111 1.9+: DPM++ 2M, whose Automatic schedule is Karras


@pytest.fixture(scope="module")
def context(tiny_models_dir, tmp_path_factory):
    from webui.app import open_context

    scratch = tmp_path_factory.mktemp("ux-defaults")
    settings = Settings(
        models_dir=tiny_models_dir, outputs_dir=scratch / "outputs", settings_file=scratch / "settings.json"
    )
    return open_context(settings)


def test_every_noise_prediction_family_starts_from_a1111s_default_sampler_and_schedule():
    supported = [f for f in registered() if f.supported]
    noise = [f for f in supported if f.description.scheduler.kind is SchedulerKind.NOISE_PREDICTION]
    assert {Family.SD1, Family.SD2, Family.SDXL} <= set(noise)
    for family in noise:
        assert default_sampling(family) == A1111_DEFAULT, family
    assert default_sampling(None) == A1111_DEFAULT
    assert default_sampling(Family.FLUX) == ("Euler", "Automatic")  # flow matching: Forge's FLUX.1 default


def test_a_fresh_txt2img_page_shows_the_familys_sampler_with_every_schedule_it_takes(context):
    from webui.ui.txt2img_tab import SAMPLER_CHOICES, field_defaults, schedule_update

    defaults = field_defaults(context)
    family = choices.family_of(context.library, initial_checkpoint(context))
    assert (defaults["sampler"], defaults["schedule"]) == default_sampling(family)
    assert defaults["sampler"] in SAMPLER_CHOICES and FAMILY_SAMPLER not in SAMPLER_CHOICES
    offered = schedule_update(*A1111_DEFAULT)
    assert offered["value"] == "Karras" and set(offered["choices"]) == set(SCHEDULE_TYPES)
    assert set(supported_schedules("DPM++ 2M")) == set(SCHEDULE_TYPES)


def test_a_chosen_sampler_in_settings_wins_over_the_family_default():
    assert Preferences().sampling_for(Family.SDXL) == A1111_DEFAULT
    assert Preferences(sampler="Euler", schedule="Automatic").sampling_for(Family.SDXL) == ("Euler", "Automatic")


def test_a_settings_file_saved_with_model_default_means_the_family_default(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"version": 1, "sampler": "Model default", "steps": 12}))
    store = PreferencesStore(path)
    assert store.current.sampler == FAMILY_SAMPLER and store.current.steps == 12 and not store.notes


@pytest.mark.parametrize("sampler", ["PLMS", "Heun"])  # one warm-up call more; two model calls per step
def test_progress_counts_the_steps_as_set_whatever_the_samplers_model_calls(context, tiny_models_dir, sampler):
    seen = []
    request = GenerationRequest(
        model=ModelChoice(tiny_models_dir / "checkpoints" / "tiny-sd1.safetensors"),
        prompt="a hat",
        steps=6,
        width=32,
        height=32,
        seed=3,
        sampler=sampler,
    )
    context.engine.generate(request, progress=seen.append)
    steps = [p.step for p in seen]
    assert {p.steps for p in seen} == {6} and steps[-1] == 6 and max(steps) == 6
    assert steps == sorted(steps) and set(steps) == set(range(1, 7))  # 1/6 .. 6/6, never 7/6
    assert seen[-1].fraction == 1.0


@pytest.mark.slow
def test_tiny_models_generate_at_the_ui_default_size_and_steps(context):
    """What `python launch.py` over `make-tiny-models` gives a new user: the page's defaults, unchanged."""
    from webui.ui import adapter
    from webui.ui.txt2img_tab import field_defaults

    defaults = field_defaults(context)
    checkpoint = initial_checkpoint(context)
    family = context.library.find(checkpoint).family
    assert (defaults["width"], defaults["height"]) == family.description.defaults.sizes[0]
    assert defaults["steps"] == 20 and defaults["width"] >= 512
    sampler, _schedule = default_sampling(family)
    values = {**defaults, "checkpoint": checkpoint, "prompt": "a cat", "seed": 1}
    request = adapter.build_request(values, context.library)
    result = context.engine.generate(request)
    (image,) = result.images
    with Image.open(image.path) as png:
        pixels = np.asarray(png)
    assert png.size == (defaults["width"], defaults["height"]) and pixels.std() > 1
    assert f"Steps: 20, Sampler: {sampler}," in image.infotext


def test_a_compare_cell_at_a_family_default_takes_its_own_models_default(tiny_models_dir):
    """An SD1 and a FLUX.1 checkpoint in one grid: the base's A1111 default (DPM++ 2M, Karras) becomes Euler for
    the FLUX.1 cell; a sampler the user chose is kept (and the cell then says it does not apply)."""
    from types import SimpleNamespace

    from webui.engine.compare import cell_sampling
    from webui.engine.pipelines import PipelineManager

    engine = SimpleNamespace(manager=PipelineManager(tiny_models_dir))
    sd1 = ModelChoice(tiny_models_dir / "checkpoints/tiny-sd1.safetensors")
    flux = ModelChoice(tiny_models_dir / "checkpoints/tiny-flux-dev-aio.safetensors")
    base = GenerationRequest(model=sd1, prompt="a hat", sampler="DPM++ 2M", schedule="Karras", steps=2)
    assert cell_sampling(engine, base) is base
    flux_cell = cell_sampling(engine, GenerationRequest(**{**vars(base), "model": flux}))
    assert (flux_cell.sampler, flux_cell.schedule) == default_sampling(Family.FLUX) == ("Euler", "Automatic")
    chosen = GenerationRequest(model=flux, prompt="a hat", sampler="Euler a", schedule="Karras", steps=2)
    assert cell_sampling(engine, chosen) is chosen
