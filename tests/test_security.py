"""Security building blocks: credentials, the listen policy, Basic auth, Host/Origin checks, the login gate."""

from __future__ import annotations

import base64

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from webui.gate import HostOriginMiddleware, LoginThrottle
from webui.security import (
    InsecureListenError,
    check_basic_auth,
    check_listen_policy,
    parse_credentials,
)


def test_credentials_from_flags_and_file_never_echo_a_bad_secret(tmp_path):
    auth_file = tmp_path / "users.txt"
    auth_file.write_text("# family\nalice:s3cret:with:colons\n\nbob:pw\n")
    assert parse_credentials(["carol:x"], auth_file) == {"carol": "x", "alice": "s3cret:with:colons", "bob": "pw"}
    with pytest.raises(ValueError, match="--auth entry 1") as error:
        parse_credentials(["hunter2"])
    assert "hunter2" not in str(error.value)


def test_listening_beyond_loopback_needs_a_password():
    assert check_listen_policy("127.0.0.1", {}, False) is None
    assert check_listen_policy("0.0.0.0", {"a": "b"}, False) is None
    with pytest.raises(InsecureListenError, match="--auth"):
        check_listen_policy("0.0.0.0", {}, False)
    assert "NO password" in check_listen_policy("192.168.1.5", {}, True)


def test_basic_auth_header():
    good = "Basic " + base64.b64encode(b"alice:pw").decode()
    bad = "Basic " + base64.b64encode(b"alice:nope").decode()
    assert check_basic_auth(good, {"alice": "pw"}) == "alice"
    assert check_basic_auth(bad, {"alice": "pw"}) is None
    assert check_basic_auth("Basic !!!", {"alice": "pw"}) is None and check_basic_auth(None, {"a": "b"}) is None


def _app(middleware, **kwargs) -> TestClient:
    async def ok(request):
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/", ok)])
    app.add_middleware(middleware, **kwargs)
    return TestClient(app, base_url="http://studio.lan:7860")


def test_host_and_origin_must_be_this_server():
    client = _app(HostOriginMiddleware, hosts={"studio.lan:7860"})
    assert client.get("/").status_code == 200
    assert client.get("/", headers={"Origin": "http://studio.lan:7860"}).status_code == 200
    assert client.get("/", headers={"Origin": "http://evil.example"}).status_code == 403
    assert client.get("/", headers={"Origin": "null"}).status_code == 403  # sandboxed iframes, file:// pages
    assert client.get("/", headers={"Host": "evil.example"}).status_code == 403


def test_the_throttle_table_is_bounded():
    throttle = LoginThrottle(limit=2, max_clients=100)
    for number in range(1000):
        throttle.failed(f"10.0.{number // 256}.{number % 256}")
    assert len(throttle) == 100
    throttle.failed("10.0.3.231")
    assert throttle.blocked("10.0.3.231") and not throttle.blocked("10.0.0.1")  # the oldest were forgotten
