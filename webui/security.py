"""Who may reach the server: credentials, LAN addresses, Host/Origin checks and login throttling."""

from __future__ import annotations

import base64
import ipaddress
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import psutil
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

LOGIN_PATHS = ("/login", "/login/")


class InsecureListenError(SystemExit):
    """Refusing to listen beyond this machine without a password."""


def parse_credentials(pairs: Iterable[str], auth_file: Path | None = None) -> dict[str, str]:
    """`user:pass` pairs from --auth (repeatable) and --auth-file (one a line; # comments and blanks skipped)."""
    lines = list(pairs)
    if auth_file is not None:
        lines += [line.strip() for line in auth_file.read_text(encoding="utf-8").splitlines()]
    credentials: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user.strip() or not password:
            where = f"{auth_file}, entry {number}" if auth_file else f"--auth entry {number}"
            raise ValueError(f"auth: {where} is not USER:PASSWORD")  # never echo the secret itself
        credentials[user.strip()] = password
    return credentials


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_listen_policy(host: str, credentials: dict[str, str], insecure_no_auth: bool) -> str | None:
    """None when fine; a loud warning for --insecure-no-auth; raises when listening openly without auth."""
    if is_loopback(host) or credentials:
        return None
    if not insecure_no_auth:
        raise InsecureListenError(
            f"Refusing to listen on {host} without a password: anyone on your network could use this machine. "
            "Add --auth USER:PASSWORD (or --auth-file FILE), or pass --insecure-no-auth if you really mean it."
        )
    return (
        f"WARNING: listening on {host} with NO password (--insecure-no-auth). Anyone who can reach this "
        "machine can generate images and read your outputs."
    )


def lan_addresses() -> list[str]:
    """This machine's IPv4 addresses other devices can use (loopback and link-local left out)."""
    found = []
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family != socket.AF_INET:
                continue
            ip = ipaddress.ip_address(address.address)
            if not (ip.is_loopback or ip.is_link_local):
                found.append(address.address)
    return sorted(set(found))


def server_urls(host: str, port: int, tls: bool) -> list[str]:
    scheme = "https" if tls else "http"
    hosts = lan_addresses() if host in ("0.0.0.0", "::") else [host]
    return [f"{scheme}://{h}:{port}" for h in hosts] or [f"{scheme}://127.0.0.1:{port}"]


def allowed_hosts(host: str, port: int) -> set[str]:
    """Host header values a browser may legitimately send to this server."""
    names = {"localhost", "127.0.0.1", "[::1]", socket.gethostname(), socket.getfqdn()}
    names |= set(lan_addresses()) if host in ("0.0.0.0", "::") else {host}
    return names | {f"{name}:{port}" for name in names}


def check_basic_auth(header: str | None, credentials: dict[str, str]) -> str | None:
    """The user name when an `Authorization: Basic …` header holds valid credentials, else None."""
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        user, _, password = base64.b64decode(header[6:].strip()).decode("utf-8").partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    expected = credentials.get(user)
    if expected is None or not secrets.compare_digest(password.encode(), expected.encode()):
        return None
    return user


class HostOriginMiddleware:
    """Rejects requests whose Host is not this server, or whose Origin is another site (DNS rebinding, CSRF)."""

    def __init__(self, app: ASGIApp, hosts: set[str]) -> None:
        self.app, self.hosts = app, {h.lower() for h in hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            host = headers.get("host", "").lower()
            origin = headers.get("origin")
            origin_host = urlsplit(origin).netloc.lower() if origin and origin != "null" else None
            if host not in self.hosts or (origin_host is not None and origin_host not in self.hosts):
                refusal = PlainTextResponse("This server does not answer to that host or origin.", 403)
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


@dataclass
class LoginThrottle:
    """After `limit` failed logins from one address within `window` seconds, that address waits `window`."""

    limit: int = 5
    window: float = 60.0
    _failures: dict[str, deque[float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def blocked(self, client: str) -> bool:
        now = time.monotonic()
        with self._lock:
            recent = self._failures.get(client, deque())
            while recent and now - recent[0] > self.window:
                recent.popleft()
            return len(recent) >= self.limit

    def failed(self, client: str) -> None:
        with self._lock:
            self._failures.setdefault(client, deque()).append(time.monotonic())


class LoginThrottleMiddleware:
    """Counts failed POST /login (Gradio answers 400) and refused API credentials per client address; then 429."""

    def __init__(self, app: ASGIApp, throttle: LoginThrottle) -> None:
        self.app, self.throttle = app, throttle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = (scope.get("client") or ("unknown", 0))[0]
        is_login = scope["method"] == "POST" and scope["path"] in LOGIN_PATHS
        # A wrong password: a failed login form, or credentials sent to the API and refused.
        tried_password = is_login or any(key.lower() == b"authorization" for key, _ in scope["headers"])
        if self.throttle.blocked(client) and (is_login or scope["path"].startswith("/sdapi/")):
            message = {"detail": "Too many failed logins; wait a minute and try again."}
            await JSONResponse(message, 429)(scope, receive, send)
            return

        async def watch(message: dict) -> None:
            if message["type"] == "http.response.start":
                status = message["status"]
                if tried_password and status in (400, 401):
                    self.throttle.failed(client)
            await send(message)

        await self.app(scope, receive, watch)
