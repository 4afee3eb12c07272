"""The login gate on a stand-in app: what strangers get, what is counted as a failed login, bodies left unread."""

from __future__ import annotations

import asyncio
import base64

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse
from starlette.routing import Route

from webui.gate import LoginGate, LoginThrottle

CREDENTIALS = {"alice": "correct horse"}
PAGE = (
    "<html><script>window.gradio_config = {};</script>"
    '<script>window.gradio_api_info = {"named_endpoints": {"/generate": {"enum": ["secret-model.safetensors"]}}};'
    "</script></html>"
)


def basic(user: str = "alice", password: str = "correct horse") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def stand_in(throttle: LoginThrottle) -> tuple[LoginGate, dict]:
    """A Starlette app standing in for Gradio + the API, behind the gate; `seen` counts what reached it."""
    seen = {"logins": 0, "bodies": 0}

    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse(PAGE)

    async def login(request: Request) -> JSONResponse:
        seen["logins"] += 1
        response = JSONResponse({"success": True})
        response.set_cookie("session", "token-1")
        return response

    async def api(request: Request) -> PlainTextResponse:
        seen["bodies"] += len(await request.body())
        return PlainTextResponse("bad field", status_code=int(request.query_params.get("status", 200)))

    async def asset(request: Request) -> PlainTextResponse:
        return PlainTextResponse("body{}")

    routes = [
        Route("/", page),
        Route("/login", login, methods=["POST"]),
        Route("/sdapi/v1/txt2img", api, methods=["GET", "POST"]),
        Route("/config", api),
        Route("/assets/index.css", asset),
    ]
    sessions = {"token-1": "alice"}
    gate = LoginGate(Starlette(routes=routes), CREDENTIALS, lambda cookies: sessions.get(cookies.get("session", "")),
                     throttle)  # fmt: skip
    return gate, seen


@pytest.fixture
def gate() -> tuple[httpx.AsyncClient, dict]:
    app, seen = stand_in(LoginThrottle(limit=5, window=60))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:7860"), seen


def run(coroutine):  # noqa: ANN001, ANN201
    return asyncio.run(coroutine)


def test_a_stranger_gets_the_login_page_without_the_schema_and_assets_only(gate):
    client, seen = gate

    async def visit() -> list[httpx.Response]:
        return [await client.get(path) for path in ("/", "/assets/index.css", "/config", "/sdapi/v1/txt2img")]

    page, asset, config, api = run(visit())
    assert page.status_code == 200 and "secret-model" not in page.text and "gradio_api_info" in page.text
    assert asset.status_code == 200
    assert config.status_code == 401 and api.status_code == 401 and api.headers["www-authenticate"].startswith("Basic")
    assert seen["bodies"] == 0


def test_a_logged_in_browser_and_basic_credentials_pass(gate):
    client, _ = gate

    async def visit() -> tuple[httpx.Response, ...]:
        login = await client.post("/login", data={"username": "alice", "password": "correct horse"})
        page = await client.get("/")  # the session cookie is sent from now on
        api = await client.get("/sdapi/v1/txt2img", headers=basic(), cookies={})
        return login, page, api

    login, page, api = run(visit())
    assert login.status_code == 200 and page.status_code == 200 and "secret-model" in page.text
    assert api.status_code == 200


def test_unauthenticated_bodies_are_never_read(gate):
    client, seen = gate
    response = run(client.post("/sdapi/v1/txt2img", content=b"x" * 5_000_000))
    assert response.status_code == 401 and seen["bodies"] == 0


def test_forty_concurrent_wrong_passwords_get_five_checks(gate):
    client, seen = gate

    async def guess(number: int) -> int:
        form = {"username": "alice", "password": f"guess-{number}"}
        return (await client.post("/login", data=form)).status_code

    async def storm() -> list[int]:
        return await asyncio.gather(*(guess(n) for n in range(40)))

    codes = run(storm())
    assert sorted(codes) == [400] * 5 + [429] * 35
    right = run(client.post("/login", data={"username": "alice", "password": "correct horse"}))
    assert right.status_code == 429 and seen["logins"] == 0  # locked out for the window, checked by no one


def test_guesses_whose_bodies_arrive_late_are_counted_before_they_are_checked():
    """Slow clients: every guess passes the first check while its body is on its way; each is checked only after
    the count says it may be."""
    app, seen = stand_in(LoginThrottle(limit=5, window=60))
    bodies_may_come = asyncio.Event()

    async def call(number: int) -> int:
        body = f"username=alice&password=guess-{number}".encode()
        sent = False

        async def receive() -> dict:
            nonlocal sent
            if not sent:
                await bodies_may_come.wait()  # the headers came long ago
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return {"type": "http.disconnect"}

        status: list[int] = []

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        scope = {"type": "http", "method": "POST", "path": "/login", "headers": [], "client": ("10.0.0.9", 1),
                 "query_string": b"", "root_path": "", "scheme": "http", "server": ("127.0.0.1", 7860)}  # fmt: skip
        await app(scope, receive, send)
        return status[0]

    async def storm() -> list[int]:
        calls = [asyncio.ensure_future(call(n)) for n in range(20)]
        await asyncio.sleep(0.05)  # every request is waiting for its body
        bodies_may_come.set()
        return await asyncio.gather(*calls)

    assert sorted(run(storm())) == [400] * 5 + [429] * 15
    assert seen["logins"] == 0


def test_only_failed_password_checks_count(gate):
    client, seen = gate

    async def noise() -> list[int]:
        codes = [(await client.get("/sdapi/v1/txt2img")).status_code for _ in range(8)]  # no credentials: 401
        codes += [(await client.get("/sdapi/v1/txt2img?status=400", headers=basic())).status_code for _ in range(8)]
        codes += [(await client.get("/sdapi/v1/txt2img", headers={"Authorization": "Basic !!"})).status_code]
        return codes

    assert run(noise()) == [401] * 8 + [400] * 8 + [401]
    login = run(client.post("/login", data={"username": "alice", "password": "correct horse"}))
    assert login.status_code == 200 and seen["logins"] == 1


def test_wrong_basic_credentials_count_and_lock_out(gate):
    client, _ = gate

    async def guesses() -> list[int]:
        return [(await client.get("/sdapi/v1/txt2img", headers=basic(password=f"g{n}"))).status_code for n in range(7)]

    assert run(guesses()) == [401] * 5 + [429] * 2
    assert run(client.get("/sdapi/v1/txt2img", headers=basic())).status_code == 429


def test_a_malformed_login_form_is_a_failed_login_not_a_crash(gate):
    client, _ = gate
    multipart = {"content-type": "multipart/form-data; boundary=x"}
    assert run(client.post("/login", content=b"--x\r\nbroken", headers=multipart)).status_code == 400
    assert run(client.post("/login", content=b"&".join([b"a=1"] * 50))).status_code == 400
    assert run(client.post("/login", content=b"y" * 100_000)).status_code == 413
