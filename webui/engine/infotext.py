"""A1111 "infotext": the `parameters` text every image carries, written and parsed back."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

# A1111's own pattern for `Key: value` pairs: a value is either a JSON string or runs to the next comma.
_PAIR = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def number_text(value: float) -> str:
    """A float as A1111's UI writes it, at full precision: `7` for 7.0, `4.1234567`, never rounded."""
    return str(int(value)) if value.is_integer() and abs(value) < 1e16 else repr(value)


def quote(value: Any) -> str:
    text = number_text(value) if isinstance(value, float) else str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    return text


def format_infotext(prompt: str, negative_prompt: str, params: Mapping[str, Any]) -> str:
    """Prompt line(s), `Negative prompt: …` (if any), then `Key: value, …` with keys that have no value left out."""
    pairs = ", ".join(f"{key}: {quote(value)}" for key, value in params.items() if value is not None and value != "")
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(pairs)
    return "\n".join(lines)


def parse_infotext(text: str) -> tuple[str, str, dict[str, str]]:
    """(prompt, negative prompt, {key: value}) from infotext, read as A1111's `parse_generation_parameters`:
    the last line holds the parameters when it has at least three `Key: value` pairs (so a single line of
    parameters is parameters, with no prompt); every other line is stripped (an indented `  Negative prompt:`
    starts the negative prompt, trailing spaces go); CRLF line ends are read as LF."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").strip().split("\n")
    params_line = ""
    if len(_PAIR.findall(lines[-1])) >= 3:
        params_line = lines.pop()
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    in_negative = False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:") :].strip()
        (negative_lines if in_negative else prompt_lines).append(line)
    params = {key.strip(): unquote(value.strip()) for key, value in _PAIR.findall(params_line)}
    return "\n".join(prompt_lines), "\n".join(negative_lines), params
