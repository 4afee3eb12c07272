"""The launched server (127.0.0.1) against strangers, rebinding pages and bad clients: every route enumerated.

The route list comes from the app object itself (FastAPI's and Gradio's routes, the API's), so a route added
later is probed too. A stranger gets a refusal (401/403/404/405) or a public static asset, never the library.
"""

from __future__ import annotations

import base64
import json
import os
import re
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil
import pytest
from starlette.routing import Mount

from tests.ui_server import free_port
from webui.config import Settings
from webui.gate import LOGIN_PATHS, PUBLIC_PATHS, PUBLIC_PREFIXES

USER, PASSWORD = "alice", "correct horse"
PUBLIC_PAGES = ("/",)  # the login page (its endpoint schema removed)


def _serve(models_dir: Path, scratch: Path, **options):  # noqa: ANN202
    from webui.app import open_context, serve

    settings = Settings(
        models_dir=models_dir,
        outputs_dir=scratch / "outputs",
        port=free_port(),
        settings_file=scratch / "config" / "settings.json",
        **options,
    )
    context = open_context(settings)
    running, url = serve(settings, block=False, context=context)
    return running, url.rstrip("/"), settings, context


def _stop(running, context) -> None:  # noqa: ANN001
    running.close()
    context.queue.stop(timeout=30)
    context.library.stop_background_hashing()


@pytest.fixture(scope="module")
def server(tiny_models_dir, tmp_path_factory):
    running, url, settings, context = _serve(
        tiny_models_dir, tmp_path_factory.mktemp("gate"), auth=(f"{USER}:{PASSWORD}",), api=True
    )
    yield running, url, settings
    _stop(running, context)


@pytest.fixture
def lone_server(tiny_models_dir, tmp_path_factory):
    """A server of its own, for a test that locks its client out."""
    running, url, settings, context = _serve(
        tiny_models_dir, tmp_path_factory.mktemp("lone"), auth=(f"{USER}:{PASSWORD}",), api=True
    )
    yield url
    _stop(running, context)


@pytest.fixture(scope="module")
def open_server(tiny_models_dir, tmp_path_factory):
    """The default mode: loopback, no logins."""
    running, url, settings, context = _serve(tiny_models_dir, tmp_path_factory.mktemp("open"))
    yield url
    _stop(running, context)


@contextmanager
def logged_in(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=60) as client:
        assert client.post("/login", data={"username": USER, "password": PASSWORD}).status_code == 200
        yield client


def app_routes(app, prefix: str = "") -> list[tuple[str, str]]:  # noqa: ANN001
    """(method, path) of every route of an ASGI app, through mounts and included routers."""
    try:
        from fastapi.routing import iter_route_contexts  # FastAPI 0.165+: routers are included lazily

        routes = list(iter_route_contexts(app.routes))
    except ImportError:
        routes = list(app.routes)
    found = []
    for route in routes:
        original = getattr(route, "original_route", route)
        if isinstance(original, Mount):
            found += app_routes(original.app, prefix + original.path)
            continue
        for method in sorted(getattr(route, "methods", None) or {"GET"}):
            found.append((method, prefix + route.path))
    return sorted(set(found))


def leaks(text: str, settings: Settings) -> list[str]:
    """What of the library or the machine a text gives away."""
    needles = ["tiny-sd", str(settings.models_dir.resolve()), str(settings.outputs_dir.resolve()), PASSWORD]
    return [needle for needle in needles if needle in text]


def test_every_route_refuses_a_stranger_or_is_a_public_asset(server):
    running, url, settings = server
    routes = app_routes(running.server.config.app)
    assert len(routes) > 60 and ("POST", "/sdapi/v1/txt2img") in routes and ("POST", "/gradio_api/queue/join") in routes
    answered = Counter()
    with httpx.Client(base_url=url, timeout=30) as client:
        for method, template in routes:
            path = re.sub(r"\{[^}]+\}", "x", template)
            response = client.request(method, path, json={} if method in ("POST", "PUT", "PATCH") else None)
            public = path in PUBLIC_PAGES or path.startswith(PUBLIC_PREFIXES) or path in PUBLIC_PATHS
            if path in LOGIN_PATHS:  # the login form: a wrong (here: no) password is refused
                assert response.status_code == 400, (method, path, response.status_code)
            elif not public:
                assert response.status_code in (401, 403, 404, 405), (method, path, response.status_code)
            assert not leaks(response.text, settings), (method, path)
            if response.status_code < 300:
                answered["2xx"] += 1
    print(f"\nroutes probed: {len(routes)}; answered a stranger with 2xx: {answered['2xx']} (public assets/pages)")


def test_the_login_page_and_run_history_tell_a_stranger_nothing(server):
    _, url, settings = server
    with httpx.Client(base_url=url, timeout=30) as client:
        for path in ("/", "/?view=api", "/gradio_api/runs", "/gradio_api/info", "/config", "/gradio_api/openapi.json"):
            response = client.get(path)
            assert not leaks(response.text, settings), path
            assert path == "/" or path.startswith("/?") or response.status_code == 401, (path, response.status_code)
        page = client.get("/").text
        assert "auth_required" in page and "named_endpoints" in page
        assert client.post("/gradio_api/run-history/connect", json={}).status_code in (401, 404)
    with logged_in(url) as client:
        assert client.get("/gradio_api/run-history/buckets").status_code == 404  # turned off, not only hidden
        assert "tiny-sd1" in client.get("/config").text  # the same page, logged in, is the studio


def test_no_dropdown_value_is_a_path(server):
    _, url, settings = server
    with logged_in(url) as client:
        config = client.get("/config").json()
    values = []
    for component in config["components"]:
        props = component.get("props", {})
        values += [choice[1] if isinstance(choice, list) else choice for choice in props.get("choices") or []]
        if component.get("type") == "dropdown":
            values.append(props.get("value"))
    texts = [str(v) for v in values if v is not None]
    assert texts and not [t for t in texts if t.startswith("/") or str(settings.models_dir.resolve()) in t]
    assert "lora: tiny-sd1-kohya.safetensors" in texts  # the Models tab names files by kind and title


def test_an_unauthenticated_200_mb_body_is_refused_unread(server):
    _, url, _ = server
    process = psutil.Process()
    before = process.memory_info().rss
    sent = 0

    def body():  # noqa: ANN202
        nonlocal sent
        chunk = b" " * 2**20
        for _ in range(200):
            sent += len(chunk)
            yield chunk

    try:
        response = httpx.post(url + "/sdapi/v1/txt2img", content=body(), timeout=60,
                              headers={"content-type": "application/json"})  # fmt: skip
        assert response.status_code == 401
    except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
        pass  # the server answered and closed before the client finished sending: also unread
    assert process.memory_info().rss - before < 100 * 2**20  # the server runs in this process
    with logged_in(url) as client:
        big = client.post("/gradio_api/queue/join", content=b"[" + b" " * (9 * 2**20) + b"]",
                          headers={"content-type": "application/json"})  # fmt: skip
        assert big.status_code == 413


def test_forty_concurrent_wrong_logins_get_five_checks_whatever_x_forwarded_for_says(lone_server):
    url = lone_server
    codes: list[int] = []
    lock = threading.Lock()

    def guess(number: int) -> None:
        response = httpx.post(url + "/login", data={"username": USER, "password": f"guess {number}"},
                              headers={"X-Forwarded-For": f"203.0.113.{number}"}, timeout=60)  # fmt: skip
        with lock:
            codes.append(response.status_code)

    threads = [threading.Thread(target=guess, args=(n,)) for n in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(codes) == [400] * 5 + [429] * 35
    refused = httpx.post(url + "/login", data={"username": USER, "password": PASSWORD}, timeout=60,
                         headers={"X-Forwarded-For": "198.51.100.7"})  # fmt: skip
    assert refused.status_code == 429


def test_correct_credentials_survive_requests_that_were_not_password_failures(lone_server):
    url = lone_server
    auth = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
    for _ in range(8):
        assert httpx.get(url + "/sdapi/v1/sd-models", timeout=30).status_code == 401  # no credentials at all
        assert httpx.get(url + "/config", timeout=30).status_code == 401  # not logged in yet
        bad = httpx.post(url + "/sdapi/v1/txt2img", json={"steps": 0}, headers=auth, timeout=30)
        assert bad.status_code == 422  # a bad field from a client with the right password
        broken = httpx.post(url + "/sdapi/v1/png-info", json={"image": "!!"}, headers=auth, timeout=30)
        assert broken.status_code == 422
    assert httpx.get(url + "/sdapi/v1/sd-models", headers=auth, timeout=30).status_code == 200
    assert httpx.post(url + "/login", data={"username": USER, "password": PASSWORD}, timeout=30).status_code == 200


def test_default_mode_checks_host_and_origin(open_server):
    url = open_server
    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/config").status_code == 200
        for headers in ({"Host": "evil.example"}, {"Host": "evil.example:7860"}, {"Origin": "http://evil.example"},
                        {"Origin": "null"}, {"Host": "0.0.0.0"}):  # fmt: skip
            for path in ("/", "/config", "/gradio_api/info"):
                response = client.get(path, headers=headers)
                assert response.status_code == 403, (headers, path)
                assert "access-control-allow-origin" not in response.headers
        local = client.get("/config", headers={"Origin": url})
        assert local.status_code == 200


def test_uploads_go_to_the_studios_own_folder_and_a_nameless_part_is_a_400(server):
    _, url, _ = server
    with logged_in(url) as client:
        uploaded = client.post("/gradio_api/upload", files={"files": ("note.txt", b"hello")})
        assert uploaded.status_code == 200
        (path,) = uploaded.json()
        assert Path(path).is_relative_to(os.environ["GRADIO_TEMP_DIR"]) and not path.startswith("/tmp/gradio/")
        assert oct(Path(os.environ["GRADIO_TEMP_DIR"]).stat().st_mode & 0o777) == "0o700"
        boundary = "b0undary"
        part = f'--{boundary}\r\nContent-Disposition: form-data; name="files"\r\n\r\nhello\r\n--{boundary}--\r\n'
        nameless = client.post("/gradio_api/upload", content=part.encode(),
                               headers={"content-type": f"multipart/form-data; boundary={boundary}"})  # fmt: skip
        assert nameless.status_code == 400 and "file name" in nameless.json()["detail"]


BAD_BODIES = [
    "{}", "[]", "null", "NaN", '{"a": NaN}', '{"data": [Infinity]}', "[" * 5000 + "]" * 5000, '{"x":', '"\\ud800"',
    '{"data": ["\\ud800"]}', "1e309", '{"fn_index": 99999, "data": []}', '{"data": {"a": 1}}', '{"image": 5}',
    '{"prompt": ["a"]}', '{"event_id": null}', '{"fn_index": -1, "session_hash": "x", "data": [1, 2]}',
]  # fmt: skip


def test_bad_bodies_to_every_post_route_are_never_a_5xx(server):
    running, url, settings = server
    posts = [path for method, path in app_routes(running.server.config.app) if method == "POST"]
    # txt2img's bad bodies: test_api_bad_input; the login form's: test_gate (here they would lock this client out)
    posts = [re.sub(r"\{[^}]+\}", "x", p) for p in posts if "txt2img" not in p and p not in LOGIN_PATHS]
    statuses = Counter()
    with logged_in(url) as client:
        for path in posts:
            for text in BAD_BODIES:
                response = client.post(path, content=text.encode("utf-8", "surrogatepass"),
                                       headers={"content-type": "application/json"})  # fmt: skip
                statuses[response.status_code // 100] += 1
                assert response.status_code < 500, (path, text[:40], response.status_code, response.text[:200])
                json.dumps(response.text)  # whatever came back is printable
    print(f"\nbad bodies sent: {sum(statuses.values())} to {len(posts)} routes; answers by class: {dict(statuses)}")


@pytest.mark.browser
@pytest.mark.slow
def test_a_browser_logs_in_through_the_login_page(server):
    playwright_api = pytest.importorskip("playwright.sync_api")
    chromium = Path("/usr/bin/chromium")
    if not chromium.is_file():
        pytest.skip(f"no Chromium at {chromium}")
    _, url, _ = server
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=["--headless", "--no-sandbox"])
        try:
            page = browser.new_page()
            page.set_default_timeout(60_000)
            refused: list[str] = []
            page.on("response", lambda r: refused.append(f"{r.status} {r.url}") if r.status >= 400 else None)
            page.goto(url)
            page.fill("input[type=password]", PASSWORD)
            page.fill("input[type=text]", USER)
            page.click("button:has-text('Login')")
            page.wait_for_selector("#txt2img-generate")
            assert refused == []  # the login page needed nothing the gate keeps from strangers
        finally:
            browser.close()
