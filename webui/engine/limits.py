"""What a generation request may hold, checked without torch: its fields' ranges, how large its prompts and LoRA
lists may be, and the error every front end turns into a 422.

GenerationRequest checks itself with these; the CLI calls `check_fields` on the flags it was given before it imports
torch and diffusers, so a typo is answered in a fraction of a second rather than after the libraries load.

The size limits are generous for real prompts and stop the ones that take a server down: memory grows with the
conditioning length (each 75-token chunk adds a 77-token block that every cross-attention layer attends to),
and every LoRA is a file to read and an adapter to apply.

- MAX_PROMPT_CHARS: 32,768 characters per prompt (A1111 users write 300+ tokens, about 1,500 characters); the
  chunk limit below usually stops a CLIP-encoded prompt first.
- MAX_PROMPT_CHUNKS: 32 chunks of 75 tokens (2,400 tokens) per prompt after tokenizing, BREAK counted.
- MAX_LORAS: 32 LoRAs per request, the stack and the prompt's `<lora:…>` tags together.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

MAX_PROMPT_CHARS = 32_768
MAX_PROMPT_CHUNKS = 32
MAX_LORAS = 32

MIN_SIDE = 16
MAX_SIDE = 4096
MAX_STEPS = 150  # the UI's slider, as A1111's
MAX_CFG = 30.0  # the UI's slider, as A1111's
# What a request may ask for (A1111's API has no limits; these keep a request finite). Sides that are not a
# multiple of 8 are accepted as A1111 accepts them: the latent is side // 8, the image side // 8 * 8.
STEPS_LIMIT = 1000
CFG_LIMIT = 100.0
LATENT_FACTOR = 8
# field: (lowest, highest) allowed, inclusive; a field that is None is not checked (eta: the sampler's default;
# distilled_guidance: the family's default)
RANGES: Mapping[str, tuple[float, float]] = MappingProxyType(
    {
        "steps": (1, STEPS_LIMIT),
        "cfg_scale": (0.0, CFG_LIMIT),
        "width": (MIN_SIDE, MAX_SIDE),
        "height": (MIN_SIDE, MAX_SIDE),
        "seed": (-1, 2**32 - 1),
        "subseed": (-1, 2**32 - 1),
        "subseed_strength": (0.0, 1.0),
        "eta": (0.0, 10.0),
        "batch_size": (1, 8),
        "batch_count": (1, 100),
        "clip_skip": (1, 12),
        "distilled_guidance": (0.0, 30.0),
    }
)
LORA_WEIGHTS = (-10.0, 10.0)  # a LoRA's UNet and text-encoder weights


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


def _check_range(name: str, value: float, low: float, high: float) -> None:
    check_finite(name, value)
    if not low <= value <= high:
        raise ValueError(f"{name}: {value} is out of range; allowed {low}..{high}")


def check_fields(values: Mapping[str, Any]) -> None:
    """Raise ValueError naming the first bad field among those present in `values` (request field names: those
    of RANGES, sampler, schedule)."""
    from webui.engine.samplers import SCHEDULE_TYPES, supported_schedules  # samplers raises this module's errors

    for name, (low, high) in RANGES.items():
        if values.get(name) is not None:
            _check_range(name, values[name], low, high)
    schedule, sampler = values.get("schedule"), values.get("sampler")
    if schedule is not None and schedule not in SCHEDULE_TYPES:
        raise ValueError(f"schedule: unknown {schedule!r}; allowed: {', '.join(SCHEDULE_TYPES)}")
    if sampler is not None:
        allowed = supported_schedules(sampler)  # raises for an unknown sampler, naming the field
        if schedule is not None and schedule not in allowed:
            raise ValueError(f"schedule: {sampler!r} cannot use {schedule!r}; it supports {', '.join(allowed)}")


def check_lora_weights(name: str, unet_weight: float, te_weight: float) -> None:
    """ValueError naming `name` (the LoRA or the flag) when a weight is outside LORA_WEIGHTS."""
    low, high = LORA_WEIGHTS
    for what, value in (("unet_weight", unet_weight), ("te_weight", te_weight)):
        check_finite(what, value)
        if not low <= value <= high:
            raise ValueError(f"{name}: {what} {value} is out of range; allowed {low:g}..{high:g}")
