"""The UI's named API endpoints through gradio_client: generate, refresh, PNG Info, interrupt; what is served."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image
from ui_server import SMALL, TINY_SD1, running_app

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def app(tiny_models_dir, tmp_path_factory):
    with running_app(tiny_models_dir, tmp_path_factory.mktemp("ui-api")) as running:
        yield running


@pytest.fixture(scope="module")
def client(app, tmp_path_factory):
    from gradio_client import Client

    downloads = tmp_path_factory.mktemp("ui-api-downloads")
    client = Client(app.url, verbose=False, download_files=str(downloads), analytics_enabled=False)
    yield client
    client.close()


def generate(client, **fields):
    """/generate's outputs by name (the endpoint takes every field by name, the rest keep their defaults)."""
    names = ("gallery", "file", "infotext", "progress", "preview", "prompt_loras", "model_status")
    values = client.predict(**{"checkpoint": TINY_SD1, **SMALL, **fields}, api_name="/generate")
    return dict(zip(names, values, strict=False))


def test_generate_endpoint_takes_fields_by_name(client):
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/generate"]
    names = [p["parameter_name"] for p in api["parameters"]]
    for name in (
        "prompt",
        "negative_prompt",
        "steps",
        "cfg_scale",
        "width",
        "height",
        "seed",
        "sampler",
        "schedule",
        "batch_size",
        "batch_count",
        "clip_skip",
        "checkpoint",
        "vae",
        "lora_1",
        "lora_1_unet_weight",
        "lora_1_te_weight",
        "lora_1_enabled",
    ):
        assert name in names


def test_generate_saves_png_with_infotext_and_reports_model(client, app):
    out = generate(client, prompt="a lighthouse", negative_prompt="fog", seed=7)
    saved = Path(out["file"])
    assert saved.is_file() and saved.is_relative_to(app.outputs_dir.resolve())
    with Image.open(saved) as image:
        assert image.size == (32, 32)
        assert image.text["parameters"] == out["infotext"]
    assert out["infotext"].startswith("a lighthouse\nNegative prompt: fog\nSteps: 2,")
    assert "Seed: 7," in out["infotext"] and "Model: tiny-sd1" in out["infotext"]
    assert len(out["gallery"]) == 1
    assert "1 image in" in out["progress"]
    assert "tiny-sd1</b> loaded" in out["model_status"] and "cache: 3 components" in out["model_status"]


def test_bad_request_shows_the_engine_message_then_a_good_one_runs(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="eta: 20.0 is out of range"):
        generate(client, prompt="bad", eta=20)
    with pytest.raises(AppError, match="no checkpoint model named 'nothing-here'"):
        generate(client, prompt="bad", checkpoint="nothing-here")
    assert "Steps: 2" in generate(client, prompt="good", seed=1)["infotext"]


def test_lora_stack_by_name_is_applied_and_reported(client):
    out = generate(client, prompt="p", seed=3, lora_1="tiny-sd1-kohya.safetensors", lora_1_unet_weight=0.5)
    assert 'Lora hashes: "tiny-sd1-kohya: ' in out["infotext"]


def test_png_info_reads_what_generate_wrote(client):
    from gradio_client import handle_file

    out = generate(client, prompt="round trip", seed=11)
    infotext, parsed, other = client.predict(handle_file(out["file"]), api_name="/png_info")
    assert infotext == out["infotext"]
    assert parsed["prompt"] == "round trip" and parsed["parameters"]["Seed"] == "11"
    assert other == ""


def test_refresh_endpoints_list_the_library(client):
    status = client.predict(api_name="/refresh_models")
    assert "model list refreshed: 0 added, 0 changed, 0 removed" in status
    table, _files = client.predict(None, api_name="/list_models")
    names = [row[0] for row in table["data"]]
    assert TINY_SD1 in names and "tiny-sd1-kohya.safetensors" in names


def test_interrupt_stops_a_long_generation(client):
    job = client.submit(
        checkpoint=TINY_SD1, prompt="long", width=32, height=32, steps=150, batch_count=20, api_name="/generate"
    )
    deadline = time.monotonic() + 120
    while "step" not in str(job.outputs()[-1:] or "") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.predict(api_name="/interrupt") == "interrupting…"
    progress = job.result(timeout=120)[3]
    assert "interrupted" in progress
    assert client.predict(api_name="/interrupt") == "nothing running"


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_only_outputs_are_served(client, app, tiny_models_dir):
    saved = generate(client, prompt="served", seed=2)["file"]
    app.context.preferences.save(app.context.preferences.current)  # the settings file exists
    base = f"{app.url}/gradio_api/file="
    assert _status(base + saved) == 200
    readme = Path.cwd() / "README.md"
    assert readme.is_file()
    for refused in (
        tiny_models_dir / "checkpoints" / TINY_SD1,
        tiny_models_dir / "loras" / "tiny-sd1-kohya.safetensors",
        app.settings.settings_path,
        readme,
        Path("README.md"),
        Path("pyproject.toml"),
    ):
        assert _status(base + str(refused)) == 403, refused


def test_variation_seed_eta_and_prompt_syntax_through_the_ui(client):
    out = generate(client, prompt="a [cat:dog:1] AND sky:0.5 <hypernet:x:1>", seed=4, subseed=9,
                   subseed_strength=0.5, sampler="Euler a", eta=0.5)  # fmt: skip
    assert "Variation seed: 9, Variation seed strength: 0.5" in out["infotext"] and "Eta: 0.5" in out["infotext"]
    assert "hypernet" in out["prompt_loras"] and "not supported" in out["prompt_loras"]  # said, never silent
    assert out["infotext"].startswith("a [cat:dog:1] AND sky:0.5 <hypernet:x:1>\n")
