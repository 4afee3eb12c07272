"""The A1111-compatible API over a real uvicorn server on 127.0.0.1, called as existing clients call it (httpx)."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Annotated

import httpx
import pytest
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from PIL import Image

from webui.api import ApiOptions, build_api_router, client_host
from webui.engine.jobs import JobQueue, JobState
from webui.models.kinds import Kind
from webui.models.library import open_library
from webui.wiring import build_engine

BASIC = HTTPBasic()
WAIT = 60  # seconds; a bound on every wait, never reached when things work
# The body from a typical A1111 client script.
CAT = {
    "prompt": "a cat",
    "steps": 2,
    "width": 32,
    "height": 32,
    "seed": 3,
    "sampler_name": "Euler a",
    "override_settings": {"sd_model_checkpoint": "tiny-sd1"},
}


@pytest.fixture(scope="module")
def library(tiny_models_dir):
    lib = open_library(tiny_models_dir)
    lib.scan()
    lib.hash_all()  # titles carry hashes (the app hashes in the background)
    return lib


@pytest.fixture(scope="module")
def queue(library, tmp_path_factory) -> Iterator[JobQueue]:
    jobs = JobQueue(build_engine(library, tmp_path_factory.mktemp("outputs")), max_size=2)
    jobs.start()
    yield jobs
    jobs.stop(timeout=WAIT)


def user_header_or_host(request: Request) -> str:
    """Stands in for the app's authentication: tests name the user in a header."""
    return request.headers.get("x-user") or client_host(request)


def basic_user(credentials: Annotated[HTTPBasicCredentials, Depends(BASIC)]) -> str:
    """What the app passes when auth is on: HTTP Basic, the user name owning the jobs."""
    if (credentials.username, credentials.password) != ("alice", "secret"):
        raise HTTPException(401, "Incorrect username or password", headers={"WWW-Authenticate": "Basic"})
    return credentials.username


def hold(release: threading.Event):  # noqa: ANN201
    """A queue job that keeps the worker busy until `release` is set or it is cancelled (bounded by WAIT)."""

    def run(_engine, _progress, cancel):  # noqa: ANN001, ANN202
        deadline = time.monotonic() + WAIT
        while not release.wait(0.01) and not cancel.cancelled and time.monotonic() < deadline:
            pass

    return run


def wait_running(job) -> None:  # noqa: ANN001
    deadline = time.monotonic() + WAIT
    while job.state is JobState.QUEUED and time.monotonic() < deadline:
        time.sleep(0.01)


@pytest.fixture(scope="module")
def server(queue, library) -> Iterator[str]:
    import uvicorn

    app = FastAPI()
    app.include_router(build_api_router(queue, library, ApiOptions(), current_user=user_header_or_host))
    app.include_router(build_api_router(queue, library, ApiOptions(), current_user=basic_user), prefix="/locked")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # loopback only, a free port
    config = uvicorn.Config(app, log_level="warning", timeout_keep_alive=1, timeout_graceful_shutdown=5)
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT
    while not uv.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert uv.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    uv.should_exit = True
    thread.join(WAIT)
    sock.close()


@pytest.fixture
def api(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=WAIT) as client:
        yield client


def png(encoded: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(encoded)))
    image.load()
    return image


def outputs(queue) -> list:
    return sorted(queue.engine.outputs_dir.rglob("*.png"))


def field_of(response: httpx.Response) -> list:
    assert response.status_code == 422, response.text
    return [error["loc"] for error in response.json()["detail"]]


def test_txt2img_answers_an_a1111_body_with_pngs_carrying_infotext(api, library, queue):
    before = outputs(queue)
    response = api.post("/sdapi/v1/txt2img", json=CAT)
    assert response.status_code == 200, response.text
    body = response.json()
    image = png(body["images"][0])
    assert image.size == (32, 32) and image.format == "PNG"
    infotext = image.info["parameters"]
    model_hash = library.find("tiny-sd1", Kind.CHECKPOINT).hash
    assert infotext.startswith("a cat\nSteps: 2, Sampler: Euler a, CFG scale: 7, Seed: 3, Size: 32x32, ")
    assert f"Model hash: {model_hash}, Model: tiny-sd1" in infotext
    info = json.loads(body["info"])
    assert info["all_seeds"] == [3] and info["seed"] == 3 and info["infotexts"] == [infotext]
    assert info["all_prompts"] == ["a cat"] and info["prompt"] == "a cat" and info["negative_prompt"] == ""
    assert (info["sd_model_name"], info["sd_model_hash"]) == ("tiny-sd1", model_hash)
    assert (info["width"], info["height"], info["steps"], info["cfg_scale"]) == (32, 32, 2, 7.0)
    assert info["sampler_name"] == "Euler a" and info["clip_skip"] == 1 and info["warnings"] == []
    assert body["parameters"]["prompt"] == "a cat" and body["parameters"]["save_images"] is False
    assert outputs(queue) == before  # save_images defaults to false, as in A1111


def test_txt2img_saves_when_asked_and_applies_prompt_loras_and_clip_skip(api, queue):
    before = set(outputs(queue))
    body = {
        **CAT,
        "prompt": "a cat <lora:tiny-sd1-kohya:0.8>",
        "save_images": True,
        "batch_size": 2,
        "override_settings": {
            "sd_model_checkpoint": "tiny-sd1",
            "CLIP_stop_at_last_layers": 2,
            "sd_vae": "tiny-sd1-vae-alt.safetensors",
        },
        "restore_faces": True,
    }
    response = api.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert info["all_seeds"] == [3, 4] and info["clip_skip"] == 2
    assert info["loras"][0]["name"] == "tiny-sd1-kohya" and info["loras"][0]["applied"] > 0
    assert info["extra_generation_params"]["Lora hashes"].startswith("tiny-sd1-kohya: ")
    assert info["warnings"] == ["restore_faces: face restoration is not supported here; ignored"]
    saved = sorted(set(outputs(queue)) - before)
    assert [p.name.split("-", 1)[1] for p in saved] == ["3.png", "4.png"]
    assert [base64.b64decode(i) for i in response.json()["images"]] == [p.read_bytes() for p in saved]
    assert "Clip skip: 2" in info["infotexts"][0]
    assert info["sd_vae_name"] == "tiny-sd1-vae-alt.safetensors" and len(info["sd_vae_hash"]) == 10


def test_model_lists_have_a1111_shapes(api, library):
    models = api.get("/sdapi/v1/sd-models").json()
    entry = library.find("tiny-sd1.safetensors", Kind.CHECKPOINT)
    sd1 = next(m for m in models if m["filename"] == str(entry.path))
    assert sd1 == {
        "title": f"tiny-sd1.safetensors [{entry.hash}]",
        "model_name": "tiny-sd1",
        "hash": entry.hash,
        "sha256": sd1["sha256"],
        "filename": str(entry.path),
        "config": None,
    }
    assert len(sd1["sha256"]) == 64 and sd1["sha256"].startswith(entry.hash)
    assert {"tiny-sd1-diffusers", "tiny-sdxl.safetensors [" + library.find("tiny-sdxl.safetensors").hash + "]"} <= {
        m["title"] for m in models
    }
    vaes = api.get("/sdapi/v1/sd-vae").json()
    assert {"model_name": "tiny-sd1-vae.safetensors", "filename": str(library.find("tiny-sd1-vae").path)} in vaes
    loras = {lora["name"]: lora for lora in api.get("/sdapi/v1/loras").json()}
    assert loras["tiny-sd1-kohya"]["alias"] == "tiny-sd1-kohya"
    assert loras["tiny-sd1-kohya"]["path"].endswith("tiny-sd1-kohya.safetensors")
    assert isinstance(loras["tiny-sd1-kohya"]["metadata"], dict)
    samplers = {s["name"]: s for s in api.get("/sdapi/v1/samplers").json()}
    assert samplers["Euler a"] == {"name": "Euler a", "aliases": ["k_euler_a", "k_euler_ancestral"], "options": {}}
    assert {"DPM++ 2M", "DDIM", "UniPC"} <= set(samplers)
    schedulers = {s["name"]: s for s in api.get("/sdapi/v1/schedulers").json()}
    assert schedulers["karras"]["label"] == "Karras" and schedulers["karras"]["default_rho"] == 7.0
    assert api.post("/sdapi/v1/refresh-checkpoints").status_code == 200
    assert api.post("/sdapi/v1/refresh-loras").status_code == 200


def test_options_switch_the_model_through_the_queue(api, library, queue):
    sd2 = library.find("tiny-sd2.safetensors", Kind.CHECKPOINT)
    switched = api.post("/sdapi/v1/options", json={"sd_model_checkpoint": "tiny-sd2", "CLIP_stop_at_last_layers": 2})
    assert switched.status_code == 200, switched.text
    assert queue.engine.manager.current.choice.checkpoint == sd2.path
    options = api.get("/sdapi/v1/options").json()
    assert options["sd_model_checkpoint"] == f"tiny-sd2.safetensors [{sd2.hash}]"
    assert options["CLIP_stop_at_last_layers"] == 2 and options["sd_checkpoint_hash"].startswith(sd2.hash)
    body = {key: value for key, value in CAT.items() if key != "override_settings"}
    info = json.loads(api.post("/sdapi/v1/txt2img", json=body).json()["info"])
    assert info["sd_model_name"] == "tiny-sd2" and info["clip_skip"] == 2
    override = json.loads(api.post("/sdapi/v1/txt2img", json=CAT).json()["info"])
    assert override["sd_model_name"] == "tiny-sd1"  # for that request only
    info = json.loads(api.post("/sdapi/v1/txt2img", json=body).json()["info"])
    assert info["sd_model_name"] == "tiny-sd2"
    unknown = api.post("/sdapi/v1/options", json={"sd_model_checkpoint": "no-such-model"})
    assert unknown.status_code == 404 and "no-such-model" in unknown.json()["detail"]
    assert field_of(api.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 40})) == [
        ["body", "CLIP_stop_at_last_layers"]
    ]
    restored = {"sd_model_checkpoint": "tiny-sd1", "CLIP_stop_at_last_layers": 1}
    assert api.post("/sdapi/v1/options", json=restored).status_code == 200


def test_progress_shows_the_callers_running_job_and_only_the_caller_interrupts_it(api, server):
    assert api.post("/sdapi/v1/options", json={"show_progress_every_n_steps": 1}).status_code == 200
    answer: dict[str, httpx.Response] = {}

    def slow_request() -> None:
        with httpx.Client(base_url=server, timeout=WAIT, headers={"x-user": "alice"}) as alice:
            answer["slow"] = alice.post("/sdapi/v1/txt2img", json={**CAT, "steps": 150, "seed": 11})

    thread = threading.Thread(target=slow_request)
    thread.start()
    alice = {"x-user": "alice"}
    try:
        check_progress_and_interrupt(api, alice)
    finally:
        api.post("/sdapi/v1/interrupt", headers=alice)
        thread.join(WAIT)
    assert answer["slow"].status_code == 200, answer["slow"].text
    info = json.loads(answer["slow"].json()["info"])
    # A1111 returns the image where the interrupt stopped it (half denoised), with its infotext.
    assert info["interrupted"] is True and len(answer["slow"].json()["images"]) == 1
    assert png(answer["slow"].json()["images"][0]).info["parameters"] == info["infotexts"][0]
    assert api.post("/sdapi/v1/options", json={"show_progress_every_n_steps": 10}).status_code == 200


def check_progress_and_interrupt(api: httpx.Client, alice: dict[str, str]) -> None:
    deadline = time.monotonic() + WAIT
    progress = api.get("/sdapi/v1/progress", headers=alice).json()
    while progress["state"]["sampling_step"] < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
        progress = api.get("/sdapi/v1/progress", headers=alice).json()
    state = progress["state"]
    assert state["job"] == "txt2img" and state["sampling_steps"] == 150 and state["job_count"] == 1
    assert 0 < progress["progress"] < 1 and progress["eta_relative"] > 0 and not state["interrupted"]
    preview = png(progress["current_image"])  # the cheap latent preview, a few pixels wide here
    assert preview.format == "PNG" and preview.size[0] < 32
    bob = api.get("/sdapi/v1/progress", headers={"x-user": "bob"}).json()
    assert bob["progress"] == 0 and bob["state"]["job_count"] == 0 and bob["current_image"] is None

    assert api.post("/sdapi/v1/interrupt", headers={"x-user": "bob"}).json() == {}
    time.sleep(0.1)
    assert api.get("/sdapi/v1/progress", headers=alice).json()["state"]["interrupted"] is False
    assert api.post("/sdapi/v1/interrupt", headers=alice).status_code == 200


def test_png_info_reads_back_what_txt2img_wrote(api):
    image = api.post("/sdapi/v1/txt2img", json=CAT).json()["images"][0]
    answer = api.post("/sdapi/v1/png-info", json={"image": f"data:image/png;base64,{image}"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["info"] == png(image).info["parameters"]
    parameters = body["parameters"]
    assert parameters["Prompt"] == "a cat" and parameters["Seed"] == "3" and parameters["Sampler"] == "Euler a"
    assert (parameters["Size-1"], parameters["Size-2"]) == ("32", "32")
    assert field_of(api.post("/sdapi/v1/png-info", json={"image": "not base64!"})) == [["body", "image"]]


@pytest.mark.parametrize(
    ("change", "loc"),
    [
        ({"width": 8}, ["body", "width"]),
        ({"height": "tall"}, ["body", "height"]),
        ({"steps": 0}, ["body", "steps"]),
        ({"n_iter": 0}, ["body", "n_iter"]),
        ({"sampler_name": "Euler z"}, ["body", "sampler_name"]),
        ({"scheduler": "fancy"}, ["body", "scheduler"]),
        ({"subseed_strength": 2}, ["body", "subseed_strength"]),
        ({"styles": ["no such style"]}, ["body", "styles"]),
        ({"override_settings": {"samples_format": "gif"}}, ["body", "override_settings", "samples_format"]),
        (
            {"override_settings": {"sd_model_checkpoint": "tiny-sd1", "CLIP_stop_at_last_layers": 13}},
            ["body", "override_settings", "CLIP_stop_at_last_layers"],
        ),
    ],
)
def test_bad_fields_are_422_naming_the_field(api, change, loc):
    response = api.post("/sdapi/v1/txt2img", json={**CAT, **change})
    assert field_of(response) == [loc]
    error = response.json()["detail"][0]
    if error["type"] == "value_error":  # ours; pydantic's own type errors say "Input should be ..."
        assert error["msg"].startswith(f"{loc[-1]}: ")


def test_unknown_checkpoint_is_404_naming_it(api):
    response = api.post("/sdapi/v1/txt2img", json={**CAT, "override_settings": {"sd_model_checkpoint": "tiny-sd9"}})
    assert response.status_code == 404
    assert "sd_model_checkpoint" in response.json()["detail"] and "'tiny-sd9'" in response.json()["detail"]


def test_a_full_queue_is_503_with_a_clear_message(api, queue):
    release = threading.Event()
    held = [queue.submit_call(hold(release), "someone", "test")]
    wait_running(held[0])
    held += [queue.submit_call(hold(release), "someone", "test") for _ in range(2)]  # one runs, two wait: full
    try:
        response = api.post("/sdapi/v1/txt2img", json=CAT)
        assert response.status_code == 503 and response.headers["retry-after"]
        assert response.json()["detail"] == "the queue is full (2 jobs); try again in a moment"
    finally:
        release.set()
    assert all(job.wait(WAIT) and job.state is JobState.DONE for job in held)


def test_current_user_can_require_http_basic_and_owns_the_jobs(api, queue):
    assert api.get("/locked/sdapi/v1/sd-models").status_code == 401
    assert api.get("/locked/sdapi/v1/sd-models", auth=("alice", "wrong")).status_code == 401
    assert api.get("/locked/sdapi/v1/sd-models", auth=("alice", "secret")).status_code == 200
    release = threading.Event()
    alices = queue.submit_call(hold(release), "alice", "test")
    try:
        wait_running(alices)
        assert api.post("/sdapi/v1/interrupt", headers={"x-user": "bob"}).status_code == 200
        assert not alices.cancel_token.cancelled
        assert api.post("/locked/sdapi/v1/interrupt", auth=("alice", "secret")).status_code == 200
        assert alices.wait(WAIT) and alices.state is JobState.CANCELLED
    finally:
        release.set()


def test_txt2img_runs_a_modular_flux_model_as_forge_clients_send_it(api):
    """Forge's API: sd_model_checkpoint names the diffusion model, forge_additional_modules its encoders and
    VAE; distilled_cfg_scale is FLUX.1 dev's guidance ("Distilled CFG Scale" in the infotext)."""
    modules = ["tiny-flux-clip-l.safetensors", "tiny-flux-t5xxl-fp16.safetensors", "tiny-flux-ae.safetensors"]
    body = {
        **CAT,
        "sampler_name": "Euler",
        "cfg_scale": 1,
        "distilled_cfg_scale": 2.5,
        "override_settings": {"sd_model_checkpoint": "tiny-flux-dev", "forge_additional_modules": modules},
    }
    response = api.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    infotext = png(response.json()["images"][0]).info["parameters"]
    assert "Sampler: Euler, CFG scale: 1, Distilled CFG Scale: 2.5, Seed: 3" in infotext
    assert "Model: tiny-flux-dev" in infotext and "Text encoder 2: tiny-flux-t5xxl-fp16.safetensors" in infotext
    bad = {**body, "override_settings": {**body["override_settings"], "forge_additional_modules": "x"}}
    assert field_of(api.post("/sdapi/v1/txt2img", json=bad)) == [
        ["body", "override_settings", "forge_additional_modules"]
    ]


def test_a_flux_model_starts_from_its_familys_cfg_when_the_body_sends_none(api):
    """A1111 clients leave cfg_scale out and mean 'the default': for FLUX.1 dev that is CFG 1 (distilled guidance
    does the work; true CFG at A1111's 7 would double each step), as the UI and the CLI start it."""
    flux = {"sd_model_checkpoint": "tiny-flux-dev-aio"}
    euler_a = api.post("/sdapi/v1/txt2img", json={**CAT, "override_settings": flux})  # CAT asks for Euler a
    assert euler_a.status_code == 422 and field_of(euler_a) == [["body", "sampler_name"]]  # a bad field, not a 500
    assert "flow-matching" in euler_a.json()["detail"][0]["msg"]
    euler = {**CAT, "sampler_name": "Euler"}
    unsent = api.post("/sdapi/v1/txt2img", json={**euler, "override_settings": flux})
    assert unsent.status_code == 200, unsent.text
    assert "CFG scale: 1," in png(unsent.json()["images"][0]).info["parameters"]
    sent = api.post("/sdapi/v1/txt2img", json={**euler, "cfg_scale": 3, "override_settings": flux})
    assert "CFG scale: 3," in png(sent.json()["images"][0]).info["parameters"]  # what the body sends wins
    sd1 = api.post("/sdapi/v1/txt2img", json=CAT)
    assert "CFG scale: 7," in png(sd1.json()["images"][0]).info["parameters"]  # A1111's default elsewhere


def test_txt2img_runs_a_modular_sd3_model_with_three_text_encoders_and_cfg(api):
    """SD3.5 as Forge clients send a split model: the three encoders (any order) and the VAE in
    forge_additional_modules; real CFG with the negative prompt."""
    modules = ["tiny-sd3-t5xxl-fp16.safetensors", "tiny-sd3-clip-g.safetensors", "tiny-sd3-clip-l.safetensors",
               "tiny-sd3-vae.safetensors"]  # fmt: skip
    body = {**CAT, "sampler_name": "Euler", "cfg_scale": 4, "negative_prompt": "blurry",
            "override_settings": {"sd_model_checkpoint": "tiny-sd3", "forge_additional_modules": modules}}  # fmt: skip
    response = api.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    infotext = png(response.json()["images"][0]).info["parameters"]
    assert "Negative prompt: blurry" in infotext and "CFG scale: 4," in infotext and "Model: tiny-sd3," in infotext
    assert "Text encoder 3: tiny-sd3-t5xxl-fp16.safetensors" in infotext
