"""Who may reach the server: credentials, the listen policy, this server's names and addresses, password checks."""

from __future__ import annotations

import base64
import ipaddress
import secrets
import socket
from collections.abc import Iterable
from pathlib import Path

import psutil


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


def check_password(user: str, password: str, credentials: dict[str, str]) -> bool:
    """Whether `password` is `user`'s, compared in constant time (an unknown user takes as long)."""
    expected = credentials.get(user)
    matches = secrets.compare_digest(password.encode(), (expected or "\0" + password).encode())
    return expected is not None and matches


def check_basic_auth(header: str | None, credentials: dict[str, str]) -> str | None:
    """The user name when an `Authorization: Basic …` header holds valid credentials, else None."""
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        user, _, password = base64.b64decode(header[6:].strip()).decode("utf-8").partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return user if check_password(user, password, credentials) else None
