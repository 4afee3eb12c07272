"""The ASGI front door every request passes first: Host and Origin checks, the login gate, login throttling.

Order, outermost first (server.create_app): Host/Origin (every mode: a page on another site, or a name rebound
to 127.0.0.1, gets nothing) → the login gate (with logins on: a stranger gets the login page, its assets and the
login form, nothing else; decided from headers alone, before any body is read) → the request guard (guard.py:
body caps, JSON checks, closed routes). Proxy headers are not trusted (uvicorn runs with proxy_headers=False):
the client is the socket's peer.
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urlsplit

from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from webui.security import check_basic_auth, check_password

LOGIN_BODY_LIMIT = 16 * 1024
LOGIN_PATHS = ("/login", "/login/")
# What the login page needs before anyone has logged in: the page itself and Gradio's static files.
PUBLIC_PREFIXES = ("/assets/", "/static/", "/svelte/", "/gradio_api/static/")
PUBLIC_PATHS = ("/favicon.ico", "/theme.css", "/gradio_api/theme.css", "/robots.txt", "/manifest.json")
LOGIN_PAGES = ("/",)
BASIC_AUTH_PREFIXES = ("/sdapi/", "/internal/", "/docs", "/openapi.json")  # the API's: a 401 asks for Basic auth
# Gradio embeds every endpoint's schema (model names and choices) in its login page; strangers get none of it.
_API_INFO = re.compile(rb"<script>window\.gradio_api_info = .*?;</script>", re.DOTALL)
_NO_API_INFO = b'<script>window.gradio_api_info = {"named_endpoints": {}, "unnamed_endpoints": {}};</script>'


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


class HostOriginMiddleware:
    """Refuses a request whose Host is not one of this server's names, or whose Origin is another site or `null`
    (a sandboxed or file:// page): DNS rebinding and cross-site requests get a 403, in every listening mode."""

    def __init__(self, app: ASGIApp, hosts: set[str]) -> None:
        self.app, self.hosts = app, {h.lower() for h in hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            headers = _headers(scope)
            host = headers.get("host", "").lower()
            origin = headers.get("origin")
            origin_host = None if origin is None else urlsplit(origin).netloc.lower()
            if host not in self.hosts or (origin is not None and origin_host not in self.hosts):
                refusal = PlainTextResponse("This server does not answer to that host or origin.", 403)
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


@dataclass
class LoginThrottle:
    """After `limit` failed password checks from one address within `window` seconds, that address waits until
    the oldest is `window` old. At most `max_clients` addresses are remembered (the oldest forgotten first)."""

    limit: int = 5
    window: float = 60.0
    max_clients: int = 10_000
    _failures: OrderedDict[str, deque[float]] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def blocked(self, client: str) -> bool:
        now = time.monotonic()
        with self._lock:
            recent = self._failures.get(client)
            if recent is None:
                return False
            self._forget_old(recent, now)
            if not recent:
                del self._failures[client]
            return len(recent) >= self.limit

    def failed(self, client: str) -> None:
        now = time.monotonic()
        with self._lock:
            recent = self._failures.pop(client, None) or deque()
            self._forget_old(recent, now)
            recent.append(now)
            self._failures[client] = recent  # the most recently failing address last
            while len(self._failures) > self.max_clients:
                self._failures.popitem(last=False)

    def _forget_old(self, recent: deque[float], now: float) -> None:
        while recent and now - recent[0] > self.window:
            recent.popleft()

    def __len__(self) -> int:
        """Addresses remembered."""
        return len(self._failures)


class LoginGate:
    """With logins on: who may pass. A session cookie of Gradio's login, or valid HTTP Basic credentials (the API),
    passes; a stranger gets the login page (its endpoint schema removed), its static files and the login form, and
    a 401 for everything else, before the request's body is read. Only failed password checks are counted against
    an address, synchronously when they happen (so concurrent guesses cannot overtake the count)."""

    def __init__(
        self,
        app: ASGIApp,
        credentials: dict[str, str],
        session_user: Callable[[dict[str, str]], str | None],
        throttle: LoginThrottle,
    ) -> None:
        self.app, self.credentials, self.session_user, self.throttle = app, credentials, session_user, throttle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        path = scope["path"]
        client = (scope.get("client") or ("unknown", 0))[0]
        if scope["type"] == "http" and scope["method"] == "POST" and path in LOGIN_PATHS:
            await self._login(scope, receive, send, client)
            return
        if self.session_user(_cookies(headers)) is not None:
            await self.app(scope, receive, send)
            return
        authorization = headers.get("authorization")
        if authorization is not None and authorization.lower().startswith("basic "):
            if self.throttle.blocked(client):
                await _too_many(scope, receive, send)
                return
            if check_basic_auth(authorization, self.credentials) is not None:
                await self.app(scope, receive, send)
                return
            self.throttle.failed(client)
        if scope["type"] == "http" and (path.startswith(PUBLIC_PREFIXES) or path in PUBLIC_PATHS):
            await self.app(scope, receive, send)
        elif scope["type"] == "http" and path in LOGIN_PAGES and scope["method"] in ("GET", "HEAD"):
            await _login_page(self.app, scope, receive, send)
        else:
            await _unauthorized(scope, receive, send, basic=path.startswith(BASIC_AUTH_PREFIXES))

    async def _login(self, scope: Scope, receive: Receive, send: Send, client: str) -> None:
        """Check the login form's password here (counted), and let Gradio set its session cookie when it is right."""
        if self.throttle.blocked(client):
            await _too_many(scope, receive, send)
            return
        body = await read_body(receive, LOGIN_BODY_LIMIT)
        if body is None:
            await PlainTextResponse("Content Too Large", 413)(scope, receive, send)
            return
        username, password = await _login_form(scope, body)
        if self.throttle.blocked(client):  # again: other guesses may have been counted while this body arrived
            await _too_many(scope, receive, send)
            return
        if not check_password(username.strip(), password, self.credentials):  # no await between check and count
            self.throttle.failed(client)
            await JSONResponse({"detail": "Incorrect credentials."}, 400)(scope, receive, send)
            return
        await self.app(scope, replay(body, receive), send)


def _cookies(headers: dict[str, str]) -> dict[str, str]:
    jar = SimpleCookie()
    try:
        jar.load(headers.get("cookie", ""))
    except CookieError:
        return {}
    return {key: morsel.value for key, morsel in jar.items()}


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None once it passes `limit` bytes."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives `body` (read already) once, then the connection's own messages (its disconnect)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


async def _login_form(scope: Scope, body: bytes) -> tuple[str, str]:
    """(username, password) of the login form, urlencoded (curl, gradio_client) or multipart (the page)."""
    from starlette.requests import Request

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    content_type = _headers(scope).get("content-type", "")
    if content_type.startswith("application/x-www-form-urlencoded") or not content_type:
        try:
            fields = parse_qs(body.decode("utf-8", "replace"), max_num_fields=10)
        except ValueError:  # more fields than a login form has
            return "", ""
        return (fields.get("username") or [""])[0], (fields.get("password") or [""])[0]
    try:
        form = await Request(scope, receive).form(max_files=0, max_fields=10)
    except (MultiPartException, HTTPException):  # a malformed form is a wrong password, not a server error
        return "", ""
    username, password = form.get("username"), form.get("password")
    return (username if isinstance(username, str) else ""), (password if isinstance(password, str) else "")


async def _login_page(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    """Gradio's login page for a stranger, with the endpoint schema it embeds replaced by an empty one. The page is
    fetched uncompressed so it can be edited; if its shape changed, nothing is sent rather than the schema."""
    plain = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k.lower() != b"accept-encoding"]}
    start: dict[str, Any] = {}
    chunks: list[bytes] = []

    async def capture(message: Message) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        page, found = _API_INFO.subn(_NO_API_INFO, b"".join(chunks))
        if start.get("status") == 200 and found != 1:
            await PlainTextResponse("The login page could not be prepared; see the server log.", 500)(
                scope, receive, send
            )
            return
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        await send({**start, "headers": [*headers, (b"content-length", str(len(page)).encode())]})
        await send({"type": "http.response.body", "body": page if scope["method"] != "HEAD" else b""})

    await app(plain, receive, capture)


async def _unauthorized(scope: Scope, receive: Receive, send: Send, basic: bool) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    headers = {"WWW-Authenticate": 'Basic realm="webui"'} if basic else None
    await JSONResponse({"detail": "Not authenticated: log in first"}, 401, headers=headers)(scope, receive, send)


async def _too_many(scope: Scope, receive: Receive, send: Send) -> None:
    message = {"detail": "Too many failed logins; wait a minute and try again."}
    await JSONResponse(message, 429, headers={"Retry-After": "60"})(scope, receive, send)
