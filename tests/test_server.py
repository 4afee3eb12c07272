"""The launched server (loopback only): logins on every route, only outputs/ served, API over Basic auth."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from tests.ui_server import free_port
from webui.config import Settings

USER, PASSWORD = "alice", "correct horse"


@pytest.fixture(scope="module")
def server(tiny_models_dir, tmp_path_factory):
    yield from _served(tiny_models_dir, tmp_path_factory)


@pytest.fixture
def lone_server(tiny_models_dir, tmp_path_factory):
    """A server of its own, for a test that locks its client out."""
    yield from _served(tiny_models_dir, tmp_path_factory)


def _served(tiny_models_dir, tmp_path_factory):
    from webui.app import open_context, serve

    scratch = tmp_path_factory.mktemp("server")
    settings = Settings(
        models_dir=tiny_models_dir,
        outputs_dir=scratch / "outputs",
        port=free_port(),
        settings_file=scratch / "config" / "settings.json",
        auth=(f"{USER}:{PASSWORD}",),
        api=True,
    )
    context = open_context(settings)
    running, url = serve(settings, block=False, context=context)
    try:
        yield url.rstrip("/"), settings
    finally:
        running.close()
        context.queue.stop(timeout=30)
        context.library.stop_background_hashing()


def basic(user=USER, password=PASSWORD) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


PROTECTED = [
    ("GET", "/config"),
    ("GET", "/gradio_api/info"),
    ("POST", "/gradio_api/queue/join"),
    ("POST", "/gradio_api/upload"),
    ("GET", "/gradio_api/file=outputs"),
    ("GET", "/sdapi/v1/sd-models"),
    ("POST", "/sdapi/v1/txt2img"),
    ("GET", "/sdapi/v1/options"),
    ("POST", "/sdapi/v1/interrupt"),
    ("GET", "/sdapi/v1/progress"),
    ("GET", "/sdapi/v1/cmd-flags"),
    ("POST", "/sdapi/v1/skip"),
    ("POST", "/sdapi/v1/unload-checkpoint"),
    ("GET", "/internal/ping"),
    ("GET", "/docs"),
    ("GET", "/openapi.json"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_every_route_refuses_a_stranger(server, method, path):
    url, _ = server
    response = httpx.request(method, url + path, json={}, timeout=30)
    assert response.status_code in (401, 403), (path, response.status_code, response.text[:200])


def test_the_page_is_a_login_until_logged_in_and_secrets_are_never_echoed(server):
    url, _ = server
    page = httpx.get(url + "/", timeout=30)
    assert page.status_code == 200 and PASSWORD not in page.text
    config = httpx.get(url + "/config", timeout=30)
    assert PASSWORD not in config.text
    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.post("/login", data={"username": USER, "password": PASSWORD}).status_code == 200
        config = client.get("/config")
        assert config.status_code == 200 and PASSWORD not in config.text


def test_api_with_basic_auth_generates(server):
    url, _ = server
    body = {"prompt": "a red hat", "steps": 2, "width": 32, "height": 32, "seed": 3,
            "override_settings": {"sd_model_checkpoint": "tiny-sd1"}}  # fmt: skip
    refused = httpx.post(url + "/sdapi/v1/txt2img", json=body, headers=basic(password="wrong"), timeout=60)
    assert refused.status_code == 401
    response = httpx.post(url + "/sdapi/v1/txt2img", json=body, headers=basic(), timeout=120)
    assert response.status_code == 200 and len(response.json()["images"]) == 1


def test_only_outputs_are_served_and_traversal_leaks_nothing(server, tiny_models_dir):
    url, settings = server
    with httpx.Client(base_url=url, timeout=30) as client:
        client.post("/login", data={"username": USER, "password": PASSWORD})
        outputs = settings.outputs_dir.resolve()
        (outputs / "txt2img").mkdir(parents=True, exist_ok=True)
        inside = outputs / "txt2img" / "visible.txt"
        inside.write_text("fine")
        secret = tiny_models_dir.resolve() / "checkpoints" / "tiny-sd1.safetensors"
        link = outputs / "txt2img" / "link-out.safetensors"
        if not link.exists():
            link.symlink_to(secret)
        assert client.get(f"/gradio_api/file={inside}").status_code == 200
        readme = Path("README.md").resolve()
        payloads = [
            str(secret),
            str(readme),
            "/etc/passwd",
            f"{outputs}/../../../../etc/passwd",
            quote(f"{outputs}/../../../../etc/passwd", safe=""),
            f"{outputs}/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
            str(link),
            str(settings.settings_path),
            "..%2f..%2f..%2fetc%2fpasswd",
        ]
        for payload in payloads:
            response = client.get(f"/gradio_api/file={payload}")
            assert response.status_code in (400, 403, 404), (payload, response.status_code)
            assert b"root:" not in response.content and b"safetensors" not in response.content[:64]


def test_failed_logins_are_throttled(lone_server):
    url, _ = lone_server
    with httpx.Client(base_url=url, timeout=30) as client:
        codes = [client.post("/login", data={"username": USER, "password": "nope"}).status_code for _ in range(7)]
    assert codes[:5] == [400] * 5 and set(codes[5:]) == {429}
    assert httpx.post(url + "/login", data={"username": USER, "password": PASSWORD}, timeout=30).status_code == 429


def test_listening_on_the_network_without_a_password_refuses_to_start(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "launch.py", "--listen", "--models-dir", str(tmp_path), "--outputs-dir", str(tmp_path / "o"),
         "--port", str(free_port()), "--settings-file", str(tmp_path / "s.json")],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert result.returncode != 0
    assert "--auth" in result.stderr and "Refusing to listen" in result.stderr


def test_four_clients_ten_jobs_each_all_complete_one_pipeline_call_at_a_time(server, monkeypatch):
    import json
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from webui.engine.txt2img import Engine

    url, _ = server
    active, peak, lock = [0], [0], threading.Lock()
    real_denoise = Engine.denoise

    def counted(self, *args, **kwargs):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            return real_denoise(self, *args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(Engine, "denoise", counted)

    def client(number: int) -> list[int]:
        seeds = []
        with httpx.Client(base_url=url, headers=basic(), timeout=300) as http:
            for job in range(10):
                body = {"prompt": "a hat", "steps": 1, "width": 32, "height": 32, "seed": 1000 * number + job,
                        "override_settings": {"sd_model_checkpoint": "tiny-sd1"}}  # fmt: skip
                response = http.post("/sdapi/v1/txt2img", json=body)
                assert response.status_code == 200, response.text[:300]
                seeds.append(json.loads(response.json()["info"])["seed"])
        return seeds

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(client, range(4)))
    assert results == [[1000 * n + j for j in range(10)] for n in range(4)]
    assert peak[0] == 1
