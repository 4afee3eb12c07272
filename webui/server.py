"""The HTTP server: Gradio mounted in a FastAPI app with the A1111 API, behind the gate (webui/gate.py), and TLS."""

from __future__ import annotations

import html
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn
from fastapi import FastAPI, HTTPException, Request
from starlette.responses import JSONResponse
from starlette.routing import Mount

from webui import __version__
from webui.config import Settings
from webui.gate import HostOriginMiddleware, LoginGate, LoginThrottle
from webui.guard import MB, RequestGuard
from webui.security import (
    allowed_hosts,
    check_basic_auth,
    check_listen_policy,
    parse_credentials,
    server_urls,
)

if TYPE_CHECKING:
    import gradio as gr

    from webui.ui.context import UiContext

log = logging.getLogger(__name__)
HEARTBEAT_SECONDS = 3


def api_user_dependency(credentials: dict[str, str]) -> Any:
    """Who is calling the API: the Basic-auth user when logins are on (else 401), the client address when off."""

    def api_user(request: Request) -> str:
        if not credentials:
            return request.client.host if request.client else "local"
        user = check_basic_auth(request.headers.get("authorization"), credentials)
        if user is None:
            raise HTTPException(401, "Incorrect username or password", headers={"WWW-Authenticate": "Basic"})
        return user

    return api_user


@dataclass
class RunningServer:
    """A started server; `close()` stops it (tests and the bench run it on a thread)."""

    server: uvicorn.Server
    thread: threading.Thread | None
    blocks: gr.Blocks
    urls: list[str]

    def close(self, verbose: bool = False) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=30)


def cmd_flags(settings: Settings) -> dict[str, Any]:
    """A1111's /cmd-flags for this launch, under A1111's flag names; secrets never appear (auth is a yes/no)."""
    models = settings.models_dir
    return {
        "api": settings.api,
        "listen": settings.host not in ("127.0.0.1", "localhost", "::1"),
        "server_name": settings.host,
        "port": settings.port,
        "share": False,
        "data_dir": str(models.parent.resolve()),
        "models_dir": str(models.resolve()),
        "ckpt_dir": str((models / "checkpoints").resolve()),
        "vae_dir": str((models / "vae").resolve()),
        "lora_dir": str((models / "loras").resolve()),
        "embeddings_dir": str((models / "embeddings").resolve()),
        "gradio_auth": bool(settings.auth or settings.auth_file),
        "api_auth": bool(settings.auth or settings.auth_file),
        "tls_keyfile": settings.tls_keyfile is not None,
        "no_half": settings.precision == "fp32",
        "precision": settings.precision or "autocast",
        "device_id": settings.device,
    }


def add_api_docs(app: FastAPI, dependency: Any) -> None:
    """`/openapi.json` and `/docs` for the API routes (A1111 serves both with --api). The docs page is plain HTML
    built here from the schema, so it loads nothing from elsewhere; both ask for the API's login."""
    from fastapi import Depends
    from fastapi.responses import HTMLResponse

    app.title, app.version = "webui: the A1111-compatible API", __version__

    def schema() -> dict[str, Any]:
        return app.openapi()  # FastAPI's own, of the routes included in the schema (the API's)

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(dependency)])
    def openapi() -> dict[str, Any]:
        return schema()

    @app.get("/docs", include_in_schema=False, dependencies=[Depends(dependency)])
    def docs() -> HTMLResponse:
        rows = "".join(
            f"<tr><td>{method.upper()}</td><td><code>{html.escape(path)}</code></td>"
            f"<td>{html.escape(operation.get('summary', ''))}</td></tr>"
            for path, operations in schema()["paths"].items()
            for method, operation in operations.items()
        )
        page = (
            "<!doctype html><title>API</title><h1>A1111-compatible API</h1>"
            '<p>The full schema: <a href="/openapi.json">/openapi.json</a></p>'
            f"<table><tr><th>method</th><th>path</th><th>what</th></tr>{rows}</table>"
        )
        return HTMLResponse(page)


def private_temp_dir() -> Path:
    """Gradio's upload and cache folder for this user only (mode 0700), instead of /tmp/gradio, which every user of
    the machine shares and Gradio serves from: `$XDG_CACHE_HOME/webui/gradio` (default ~/.cache/webui/gradio), or
    a fresh private temporary folder when the home folder cannot be written."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folder = base / "webui" / "gradio"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o700)
    except OSError as error:
        fallback = Path(tempfile.mkdtemp(prefix="webui-gradio-"))  # mkdtemp makes it 0700
        log.warning("cannot use %s for uploads (%s); using %s", folder, error.strerror or error, fallback)
        return fallback
    return folder


def create_app(settings: Settings, context: UiContext, credentials: dict[str, str]) -> tuple[FastAPI, gr.Blocks]:
    """The ASGI app: our routes first, Gradio mounted at / (its own login when credentials are set), all behind the
    gate: Host/Origin checks in every mode, the login gate when credentials are set, body caps."""
    import gradio as gr

    from webui.app import build_app, launch_options

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("GRADIO_TEMP_DIR", str(private_temp_dir()))  # read by Gradio when it builds the app
    # How soon Gradio notices a closed page (its heartbeat; 15 s by default): the page's jobs are then cancelled.
    os.environ.setdefault("GRADIO_HEARTBEAT_INTERVAL", str(HEARTBEAT_SECONDS))
    blocks = build_app(settings, context)
    blocks.queue(default_concurrency_limit=None, api_open=False, max_size=settings.queue_size)
    outer = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)  # no schema endpoints beside the API's own
    if settings.api:
        from fastapi import Depends

        from webui.api import ApiOptions, build_api_router
        from webui.api.info_routes import build_internal_router

        options = ApiOptions.from_preferences(context.preferences.current)
        user = api_user_dependency(credentials)
        router = build_api_router(
            context.queue, context.library, options, current_user=user, styles=context.styles,
            cmd_flags=cmd_flags(settings),
        )  # fmt: skip
        outer.include_router(router)
        outer.include_router(build_internal_router(Depends(user)))
        add_api_docs(outer, user)
    launch = launch_options(settings, context)
    app = gr.mount_gradio_app(
        outer,
        blocks,
        path="/",
        auth=list(credentials.items()) or None,
        auth_message="Log in to the studio",
        allowed_paths=launch["allowed_paths"],
        blocked_paths=launch["blocked_paths"],
        max_file_size=f"{settings.max_upload_mb}mb",
        theme=launch["theme"],
        css=launch["css"],
        show_error=True,
        ssr_mode=False,
        footer_links=launch["footer_links"],
        run_history=False,  # its routes call the Hugging Face hub with this machine's token
        server_name=settings.host,
        server_port=settings.port,
    )
    gradio_app = next(route.app for route in app.routes if isinstance(route, Mount))
    from gradio.route_utils import FnIndexInferError

    for error in (TypeError, ValueError, KeyError, FnIndexInferError):
        gradio_app.add_exception_handler(error, _client_error)
    upload = settings.max_upload_mb * MB + MB  # one file and its multipart framing
    limits = {"/gradio_api/upload": upload, "/sdapi/v1/png-info": upload * 4 // 3 + MB}  # base64
    app.add_middleware(RequestGuard, limits=limits)
    if credentials:
        app.add_middleware(
            LoginGate, credentials=credentials, session_user=gradio_session_user(gradio_app), throttle=LoginThrottle()
        )
    app.add_middleware(HostOriginMiddleware, hosts=allowed_hosts(settings.host, settings.port))
    return app, blocks


def gradio_session_user(gradio_app: Any) -> Callable[[dict[str, str]], str | None]:
    """The user a request's cookies log in as, by Gradio's login (its `access-token-<cookie_id>` cookies)."""

    def user(cookies: dict[str, str]) -> str | None:
        for name in (f"access-token-{gradio_app.cookie_id}", f"access-token-unsecure-{gradio_app.cookie_id}"):
            token = cookies.get(name)
            if token and token in gradio_app.tokens:
                return gradio_app.tokens[token]
        return None

    return user


# Gradio routes that turn a client's malformed body into a TypeError/ValueError/KeyError (a 500): an upload part
# that is not a named file; an unknown endpoint, fn_index or arguments that do not fit it.
_CLIENT_ERROR_ROUTES = (
    "/gradio_api/upload",
    "/gradio_api/call/",
    "/gradio_api/run/",
    "/gradio_api/api/",
    "/gradio_api/queue/join",
)


async def _client_error(request: Request, error: Exception) -> JSONResponse:
    """A 400 saying what was wrong, for the routes above; any other route's error stays the server's (500)."""
    path = request.url.path
    if path == "/gradio_api/upload":
        detail = "upload: every part of the form must be a file with a file name (field `files`)"
        return JSONResponse({"detail": detail}, 400)
    if path.startswith(_CLIENT_ERROR_ROUTES):
        if type(error).__name__ == "FnIndexInferError":
            return JSONResponse({"detail": f"no such endpoint ({error}); see the API page for the names"}, 404)
        text = str(error).encode("utf-8", "backslashreplace").decode()[:300]
        return JSONResponse({"detail": f"the request does not fit this endpoint ({type(error).__name__}: {text})"}, 400)
    raise error


def start(settings: Settings, context: UiContext, block: bool = True) -> RunningServer:
    """Check the sharing policy, build the app, and serve it (on this thread, or a background one)."""
    credentials = parse_credentials(settings.auth, settings.auth_file)
    warning = check_listen_policy(settings.host, credentials, settings.insecure_no_auth)
    if warning:
        log.warning(warning)
        print(f"\n{'!' * 80}\n{warning}\n{'!' * 80}\n", flush=True)
    app, blocks = create_app(settings, context, credentials)
    tls = settings.tls_keyfile is not None
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        ssl_keyfile=str(settings.tls_keyfile) if tls else None,
        ssl_certfile=str(settings.tls_certfile) if tls else None,
        log_level="warning",
        proxy_headers=False,  # X-Forwarded-For would let any local process pick its address (and its login budget)
        timeout_graceful_shutdown=3,  # open event streams would otherwise hold a shutdown for long
    )
    server = uvicorn.Server(config)
    urls = server_urls(settings.host, settings.port, tls)
    print("webui is running. Open " + " or ".join(urls), flush=True)
    if block:
        server.run()
        return RunningServer(server, None, blocks, urls)
    thread = threading.Thread(target=server.run, name="webui-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start on {settings.host}:{settings.port}")
        time.sleep(0.05)
    return RunningServer(server, thread, blocks, urls)
