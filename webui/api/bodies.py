"""JSON request bodies checked before FastAPI parses them, and 422 answers that always render.

Python's json module reads `NaN`, `Infinity`, `-Infinity` and `1e309` as floats, and `"\\ud800"` as a string no
UTF-8 encoder takes; a 422 that echoes either cannot be written back as JSON: the answer became a 500 and a reset
connection. Here a non-finite number or an unpaired surrogate anywhere in a body, or nesting deeper than
MAX_JSON_DEPTH, is a 422 naming where it is, and every 422's echoed inputs are made JSON-safe (and short).
The pattern is FastAPI's documented custom `APIRoute` class (fastapi.tiangolo.com/how-to/custom-request-and-route/).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

MAX_JSON_DEPTH = 64  # A1111 bodies nest a few levels (alwayson_scripts args); thousands is an attack
_ECHO_CHARS = 200  # an echoed string longer than this is cut
_ECHO_ITEMS = 20


class _NonFinite:
    def __init__(self, text: str) -> None:
        self.text = text


def _number(text: str) -> float | _NonFinite:
    value = float(text)
    return value if math.isfinite(value) else _NonFinite(text)


def body_problem(body: bytes) -> dict[str, Any] | None:
    """A validation error (FastAPI's shape) for a JSON body holding a non-finite number or nested too deep;
    None for a body that is fine, or not JSON at all (FastAPI reports that itself)."""
    try:
        data = json.loads(body, parse_constant=_NonFinite, parse_float=_number)
    except RecursionError:
        return _error(("body",), f"the JSON is nested thousands deep; the limit is {MAX_JSON_DEPTH}", None)
    except (ValueError, UnicodeDecodeError):
        return None
    stack: list[tuple[Any, tuple[Any, ...]]] = [(data, ("body",))]
    while stack:
        value, loc = stack.pop()
        name = loc[-1] if len(loc) > 1 else "body"
        if isinstance(value, _NonFinite):
            return _error(loc, f"{name}: {value.text} is not a finite number; send a number", value.text)
        if isinstance(value, str) and not _is_text(value):
            return _error(loc, f"{name}: holds an unpaired surrogate, which is not text; send valid Unicode", value)
        if len(loc) > MAX_JSON_DEPTH + 1 and isinstance(value, dict | list):
            return _error(loc[:3], f"the JSON is nested more than {MAX_JSON_DEPTH} deep", None)
        if isinstance(value, dict):
            bad_key = next((key for key in value if not _is_text(key)), None)
            if bad_key is not None:
                return _error((*loc, bad_key), "a key holds an unpaired surrogate; send valid Unicode", bad_key)
            stack.extend((item, (*loc, key)) for key, item in value.items())
        elif isinstance(value, list):
            stack.extend((item, (*loc, index)) for index, item in enumerate(value))
    return None


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _error(loc: tuple[Any, ...], message: str, value: Any) -> dict[str, Any]:
    return {"type": "value_error", "loc": loc, "msg": message, "input": value}


def json_safe(value: Any, depth: int = 0) -> Any:
    """`value` as something json.dumps(allow_nan=False) then UTF-8 can write: non-finite floats as text, lone
    surrogates escaped, long strings and containers cut (an error echoes what was sent, not all of it)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        text = value if len(value) <= _ECHO_CHARS else value[:_ECHO_CHARS] + "…"
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, bytes):
        return json_safe(value.decode("utf-8", "replace"), depth)
    if depth > 8:
        return "…"
    if isinstance(value, dict):
        items = list(value.items())[:_ECHO_ITEMS]
        return {str(json_safe(k, depth + 1)): json_safe(v, depth + 1) for k, v in items}
    if isinstance(value, list | tuple):
        return [json_safe(item, depth + 1) for item in value[:_ECHO_ITEMS]]
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 1024:
        return f"<a {value.bit_length()}-bit integer>"  # Python will not print more than 4300 digits
    if value is None or isinstance(value, bool | int | float):
        return value
    return json_safe(str(value), depth)


class CheckedJSONRoute(APIRoute):
    """An APIRoute whose body is checked by `body_problem` first, and whose 422s are made JSON-safe."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def checked(request: Request) -> Response:
            if request.method in ("POST", "PUT", "PATCH"):
                problem = body_problem(await request.body())
                if problem is not None:
                    raise RequestValidationError([json_safe(problem)])
            try:
                return await handle(request)
            except RequestValidationError as error:
                raise RequestValidationError([json_safe(e) for e in error.errors()]) from None

        return checked
