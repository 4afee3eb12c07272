"""How large a request may be (prompt text, prompt chunks, LoRAs), and the error every front end turns into a 422.

The limits are generous for real prompts and stop the ones that take a server down: memory grows with the
conditioning length (each 75-token chunk adds a 77-token block that every cross-attention layer attends to),
and every LoRA is a file to read and an adapter to apply.

- MAX_PROMPT_CHARS: 32,768 characters per prompt (A1111 users write 300+ tokens, about 1,500 characters); the
  chunk limit below usually stops a CLIP-encoded prompt first.
- MAX_PROMPT_CHUNKS: 32 chunks of 75 tokens (2,400 tokens) per prompt after tokenizing, BREAK counted.
- MAX_LORAS: 32 LoRAs per request, the stack and the prompt's `<lora:…>` tags together.
"""

from __future__ import annotations

import math

MAX_PROMPT_CHARS = 32_768
MAX_PROMPT_CHUNKS = 32
MAX_LORAS = 32


class RequestError(ValueError):
    """A request the engine cannot run as given; `field` names the request field (`prompt`, `model`, ...).
    Front ends answer it as a bad request (the API: 422 naming the field), never as a server error."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def check_text(field: str, text: str) -> None:
    """A prompt must be text a PNG and a tokenizer can hold: at most MAX_PROMPT_CHARS, valid Unicode."""
    if not isinstance(text, str):
        raise RequestError(field, f"{type(text).__name__} is not text")
    if len(text) > MAX_PROMPT_CHARS:
        raise RequestError(
            field, f"{len(text):,} characters; the limit is {MAX_PROMPT_CHARS:,} characters; shorten it"
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise RequestError(
            field,
            f"holds an unpaired surrogate ({text[error.start]!r} at character {error.start}), which is not text; "
            "send valid Unicode (UTF-8)",
        ) from None


def check_finite(field: str, value: float) -> None:
    """NaN and infinities are not numbers any setting accepts (JSON clients can send them)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise RequestError(field, f"{value} is not a finite number")


def check_chunks(field: str, chunks: int) -> None:
    if chunks > MAX_PROMPT_CHUNKS:
        raise RequestError(
            field,
            f"{chunks} chunks of 75 tokens ({chunks * 75:,} tokens); the limit is {MAX_PROMPT_CHUNKS} chunks "
            f"({MAX_PROMPT_CHUNKS * 75:,} tokens); shorten it",
        )
