"""The A1111 API on bad input: every malformed body is a 4xx naming the field, never a 500; abandoned jobs stop."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI, Request

from webui.api import ApiOptions, build_api_router, client_host
from webui.engine.jobs import JobQueue, JobState
from webui.engine.limits import MAX_PROMPT_CHUNKS
from webui.models.library import open_library
from webui.wiring import build_engine

WAIT = 60
CAT = {"prompt": "a cat", "steps": 2, "width": 32, "height": 32, "seed": 3,
       "override_settings": {"sd_model_checkpoint": "tiny-sd1"}}  # fmt: skip


@pytest.fixture(scope="module")
def library(tiny_models_dir):
    lib = open_library(tiny_models_dir)
    lib.scan()
    return lib


@pytest.fixture(scope="module")
def queue(library, tmp_path_factory) -> Iterator[JobQueue]:
    jobs = JobQueue(build_engine(library, tmp_path_factory.mktemp("outputs")))
    jobs.start()
    yield jobs
    jobs.stop(timeout=WAIT)


def user_of(request: Request) -> str:
    return request.headers.get("x-user") or client_host(request)


@pytest.fixture(scope="module")
def server(queue, library) -> Iterator[str]:
    import uvicorn

    app = FastAPI()
    app.include_router(build_api_router(queue, library, ApiOptions(), current_user=user_of))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT
    while not uv.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    uv.should_exit = True
    thread.join(WAIT)
    sock.close()


@pytest.fixture(scope="module")
def api(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=WAIT) as client:  # one keep-alive connection for all
        yield client


def post_raw(api: httpx.Client, path: str, text: str) -> httpx.Response:
    return api.post(path, content=text.encode("utf-8"), headers={"content-type": "application/json"})


def body_with(field_json: str) -> str:
    """CAT with one more `"key": value` written as raw JSON (NaN, Infinity and \\ud800 are not Python JSON output)."""
    return json.dumps(CAT)[:-1] + ", " + field_json + "}"


def refused(response: httpx.Response) -> list:
    assert response.status_code == 422, (response.status_code, response.text[:300])
    return response.json()["detail"]


@pytest.mark.parametrize(
    ("field_json", "loc"),
    [
        ('"cfg_scale": NaN', ["body", "cfg_scale"]),
        ('"steps": Infinity', ["body", "steps"]),
        ('"width": -Infinity', ["body", "width"]),
        ('"seed": 1e309', ["body", "seed"]),
        ('"subseed_strength": NaN', ["body", "subseed_strength"]),  # a field this studio ignores
        ('"my_extension_arg": [1, {"x": NaN}]', ["body", "my_extension_arg", 1, "x"]),
    ],
)
def test_non_finite_numbers_anywhere_are_422s_naming_the_field(api, field_json, loc):
    detail = refused(post_raw(api, "/sdapi/v1/txt2img", body_with(field_json)))
    assert detail[0]["loc"] == loc and "is not a finite number" in detail[0]["msg"]
    assert api.get("/sdapi/v1/samplers").status_code == 200  # the keep-alive connection is still fine


def test_non_finite_override_and_option_values_are_422s(api):
    override = {**CAT, "override_settings": {"sd_model_checkpoint": "tiny-sd1", "CLIP_stop_at_last_layers": 1}}
    text = json.dumps(override).replace('"CLIP_stop_at_last_layers": 1', '"CLIP_stop_at_last_layers": NaN')
    detail = refused(post_raw(api, "/sdapi/v1/txt2img", text))
    assert detail[0]["loc"] == ["body", "override_settings", "CLIP_stop_at_last_layers"]
    detail = refused(post_raw(api, "/sdapi/v1/options", '{"CLIP_stop_at_last_layers": Infinity}'))
    assert detail[0]["loc"] == ["body", "CLIP_stop_at_last_layers"]
    detail = refused(api.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 1e300}))
    assert detail[0]["loc"] == ["body", "CLIP_stop_at_last_layers"]


@pytest.mark.parametrize(
    ("change", "loc", "fragment"),
    [
        ({"prompt": "x" * 40_000}, ["body", "prompt"], "the limit is 32,768"),
        ({"negative_prompt": "x" * 40_000}, ["body", "negative_prompt"], "the limit is 32,768"),
        ({"prompt": "<lora:a>" * 4_000}, ["body", "prompt"], "4000 LoRAs (<lora:…> tags and the stack)"),
        ({"override_settings": {"sd_model_checkpoint": "tiny-sdxl-refiner"}},
         ["body", "override_settings", "sd_model_checkpoint"], "is an SDXL refiner"),
        ({"prompt": " BREAK ".join(["cat"] * (MAX_PROMPT_CHUNKS + 1))}, ["body", "prompt"], "chunks of 75 tokens"),
    ],
)  # fmt: skip
def test_prompts_and_models_the_engine_refuses_are_422s_naming_the_field(api, change, loc, fragment):
    detail = refused(api.post("/sdapi/v1/txt2img", json={**CAT, **change}))
    assert detail[0]["loc"] == loc and fragment in detail[0]["msg"], detail
    assert detail[0]["msg"].startswith(f"{loc[-1]}: ")


def test_an_sdxl_refiner_set_as_the_model_option_is_a_422_at_txt2img(api):
    assert api.post("/sdapi/v1/options", json={"sd_model_checkpoint": "tiny-sdxl-refiner"}).status_code == 200
    try:
        body = {key: value for key, value in CAT.items() if key != "override_settings"}
        detail = refused(api.post("/sdapi/v1/txt2img", json=body))
        assert detail[0]["loc"] == ["body", "sd_model_checkpoint"] and "SDXL refiner" in detail[0]["msg"]
    finally:
        assert api.post("/sdapi/v1/options", json={"sd_model_checkpoint": "tiny-sd1"}).status_code == 200


def test_a_lora_tag_with_a_nan_weight_is_skipped_with_a_message_not_a_500(api):
    # A1111 skips an extra-network tag it cannot read and still generates (webui/engine/extra_networks.py).
    response = api.post("/sdapi/v1/txt2img", json={**CAT, "prompt": "a cat <lora:tiny-sd1-kohya:nan>"})
    assert response.status_code == 200, response.text[:300]
    info = json.loads(response.json()["info"])
    said = json.dumps(info["warnings"]) + json.dumps(info["loras"])
    assert "<lora:tiny-sd1-kohya:nan>" in said and "not a finite number" in said


def test_a_model_that_cannot_be_loaded_is_a_422_naming_the_model_not_a_500(api, queue, monkeypatch):
    from webui.engine.pipeline_fit import ModelLoadError

    def broken(*_args, **_kwargs):  # what a truncated .ckpt, a FIFO or a missing FLUX component raise on loading
        raise ModelLoadError("x.ckpt: truncated file: the pickle ends early; download it again")

    monkeypatch.setattr(queue.engine.manager, "load", broken)
    body = {**CAT, "override_settings": {"sd_model_checkpoint": "tiny-sd1"}}
    response = api.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 422, response.text[:300]
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", "override_settings", "sd_model_checkpoint"] and "truncated" in detail["msg"]
    monkeypatch.undo()
    assert api.post("/sdapi/v1/txt2img", json=CAT).status_code == 200  # the next request is served


def test_a_lone_surrogate_is_a_422_that_renders(api):
    response = post_raw(api, "/sdapi/v1/txt2img", body_with('"negative_prompt": "bad \\ud800 text"'))
    detail = refused(response)
    assert detail[0]["loc"] == ["body", "negative_prompt"] and "unpaired surrogate" in detail[0]["msg"]
    response = post_raw(api, "/sdapi/v1/png-info", '{"image": "\\ud800"}')
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "image"]


def test_json_nested_thousands_deep_is_a_422(api):
    deep = '{"prompt": "cat", "alwayson_scripts": ' + "[" * 50_000 + "]" * 50_000 + "}"
    assert refused(post_raw(api, "/sdapi/v1/txt2img", deep))[0]["loc"] == ["body"]
    medium = '{"prompt": "cat", "alwayson_scripts": {"x": ' + "[" * 100 + "]" * 100 + "}}"
    assert "nested more than 64 deep" in refused(post_raw(api, "/sdapi/v1/txt2img", medium))[0]["msg"]


def test_a_model_name_of_megabytes_is_a_404_not_minutes_of_matching(api):
    response = api.post("/sdapi/v1/txt2img", json={**CAT, "override_settings": {"sd_model_checkpoint": "x" * 2**20}})
    assert response.status_code == 404 and "1,048,576 characters" in response.json()["detail"]


def _png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.parametrize("data", [_png_claiming(100_000, 100_000), b"\x89PNG\r\n\x1a\n" + b"\0" * 40, b"GIF89a"])
def test_png_info_of_hostile_images_is_a_422(api, data):
    import base64

    response = api.post("/sdapi/v1/png-info", json={"image": base64.b64encode(data).decode()})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "image"]


@pytest.mark.parametrize(
    ("route", "field", "body"),
    [
        ("/sdapi/v1/img2img", "init_images", lambda image: {**CAT, "init_images": [image]}),
        ("/sdapi/v1/extra-single-image", "image", lambda image: {"image": image, "upscaling_resize": 2}),
    ],
)
@pytest.mark.parametrize("data", [_png_claiming(60_000, 60_000), b"\x89PNG\r\n\x1a\n" + b"\0" * 40])
def test_input_images_beyond_pils_limits_or_broken_are_422s_naming_the_field(api, route, field, body, data):
    import base64

    response = api.post(route, json=body(base64.b64encode(data).decode()))
    assert response.status_code == 422, response.text[:300]
    assert field in response.json()["detail"][0]["loc"]


def _png_base64(size: tuple[int, int] = (16, 16)) -> str:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 40, 40)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize(
    ("route", "user", "body"),
    [
        ("txt2img", "carol", lambda: CAT),
        ("img2img", "dave", lambda: {**CAT, "init_images": [_png_base64()], "denoising_strength": 0.5}),
        ("extra-single-image", "erin", lambda: {"image": _png_base64(), "upscaler_1": "Lanczos"}),
    ],
)
def test_a_client_that_disconnects_has_its_job_cancelled(server, queue, route, user, body):
    release = threading.Event()

    def hold(_engine, _progress, cancel):  # noqa: ANN001, ANN202
        deadline = time.monotonic() + WAIT
        while not release.wait(0.01) and not cancel.cancelled and time.monotonic() < deadline:
            pass

    blocker = queue.submit_call(hold, "someone", "test")
    try:
        host, port = server.removeprefix("http://").split(":")
        content = json.dumps(body()).encode()
        request = (
            f"POST /sdapi/v1/{route} HTTP/1.1\r\nHost: {host}:{port}\r\nx-user: {user}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(content)}\r\n\r\n"
        ).encode() + content
        with socket.create_connection((host, int(port))) as client:
            client.sendall(request)
            deadline = time.monotonic() + WAIT
            while not queue.jobs(user) and time.monotonic() < deadline:
                time.sleep(0.01)
            (job,) = queue.jobs(user)  # waiting behind the blocker
        deadline = time.monotonic() + WAIT
        while job.state is JobState.QUEUED and time.monotonic() < deadline:
            time.sleep(0.01)
        assert job.state is JobState.CANCELLED and queue.jobs(user) == []
    finally:
        release.set()
    assert blocker.wait(WAIT)
