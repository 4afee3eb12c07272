"""What any request may carry, logged in or not: body size caps, JSON checks, and the routes closed to everyone.

- Bodies: at most `limit` bytes (uploads: their own cap), answered 413 as soon as the Content-Length or the bytes
  so far pass it (starlette's RequestBodyLimitMiddleware).
- JSON bodies (any route, Gradio's included): NaN, ±Infinity, 1e309, nesting deeper than 64 and unpaired
  surrogates are a 422 naming where (webui.api.bodies), before a route parses them into a 500.
- Closed: Gradio's routes for features this studio does not use (its vibe-coding editor, screen recording, the
  Hugging Face Spaces proxy, dev reload, monitoring, custom components): 404 for everyone.
"""

from __future__ import annotations

from starlette.middleware.body_limit import RequestBodyLimitMiddleware
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from webui.api.bodies import body_problem, json_safe
from webui.gate import read_body, replay

MB = 2**20
DEFAULT_BODY_LIMIT = 8 * MB  # any request but an upload: a 32 KB prompt is far below, a 10 MB one is refused
CLOSED_PREFIXES = (
    "/gradio_api/vibe-",
    "/gradio_api/undo-vibe-edit",
    "/gradio_api/process_recording",
    "/gradio_api/proxy=",
    "/gradio_api/dev/",
    "/gradio_api/custom_component/",
    "/monitoring",
)
_BODY_METHODS = ("POST", "PUT", "PATCH", "DELETE")


class RequestGuard:
    """Body caps (`limit`, or `limits[path]`), JSON checks and closed routes, for every HTTP request."""

    def __init__(self, app: ASGIApp, limit: int = DEFAULT_BODY_LIMIT, limits: dict[str, int] | None = None) -> None:
        self.app, self.limit = app, limit
        self.limited = {path: RequestBodyLimitMiddleware(app, size) for path, size in (limits or {}).items()}
        self.default = RequestBodyLimitMiddleware(app, limit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path.startswith(CLOSED_PREFIXES):
            await PlainTextResponse("Not Found", 404)(scope, receive, send)
            return
        if path in self.limited:
            await self.limited[path](scope, receive, send)
            return
        content_type = dict(scope["headers"]).get(b"content-type", b"").split(b";")[0].strip().lower()
        if scope["method"] not in _BODY_METHODS or content_type != b"application/json":
            await self.default(scope, receive, send)
            return
        body = await read_body(receive, self.limit)
        if body is None:
            await PlainTextResponse("Content Too Large", 413)(scope, receive, send)
            return
        problem = body_problem(body)
        if problem is not None:
            await JSONResponse({"detail": [json_safe(problem)]}, 422)(scope, receive, send)
            return
        await self.app(scope, replay(body, receive), send)
