"""A prompt as A1111 runs it: `#` comments dropped, extra-network tags taken out, `AND` parts with their weights,
each part's text scheduled over the steps; and A1111's token count for the counters.

The order is A1111's: its Comments script strips comments first (option `enable_prompt_comments`, on by
default), then `extra_networks.parse_prompts` removes the tags, then `get_multicond_prompt_list` splits the
positive prompt on `AND` and reads a trailing `:weight` off each part, then each part is scheduled
(`prompt_editing.prompt_schedule`). The negative prompt is scheduled too, but never split on `AND`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from webui.engine.extra_networks import ExtraNetworks, parse_extra_networks
from webui.engine.prompt_editing import prompt_schedule
from webui.engine.prompts import (
    BREAK,
    BREAK_WEIGHT,
    CHUNK_LENGTH,
    EmbeddingMatcher,
    Tokenizer,
    chunk_prompt,
    parse_prompt_attention,
)

_WHOLE_LINE_COMMENT = re.compile(r"(^|\n)#[^\n]*(\n|$)")  # A1111's two patterns, applied in this order
_LINE_END_COMMENT = re.compile(r"#[^\n]*(\n|$)")
_AND = re.compile(r"\bAND\b")
# A part's trailing weight, as A1111's `re_weight`: `text :1.5`; `aspect ratio 16:9` reads as weight 9.
_PART_WEIGHT = re.compile(r"(.*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*", re.S)

Schedule = tuple[tuple[int, str], ...]


def strip_comments(text: str) -> str:
    """Drop `#` comments as A1111 does: a whole comment line goes with its line break; a comment after text
    leaves the line break. `<lora:…>` tags inside comments go with them."""
    return _LINE_END_COMMENT.sub("\n", _WHOLE_LINE_COMMENT.sub("\n", text))


def split_and(text: str) -> list[tuple[str, float]]:
    """Composable-diffusion parts of a positive prompt: `(text, weight)` for each `AND`-separated part."""
    parts = []
    for part in _AND.split(text):
        match = _PART_WEIGHT.fullmatch(part)
        assert match is not None  # the pattern matches any string
        parts.append((match.group(1), float(match.group(2)) if match.group(2) is not None else 1.0))
    return parts


@dataclass(frozen=True)
class ComposablePart:
    """One `AND` part: its text (tags and weight removed), its weight, its schedule over the steps."""

    text: str
    weight: float
    schedule: Schedule


@dataclass(frozen=True)
class PromptPlan:
    """What the conditioning is built from. `prompt`/`negative_prompt` are the texts without comments (what the
    infotext records; tags stay in them), `parts` the positive's AND parts, `negative` the negative's schedule."""

    prompt: str
    negative_prompt: str
    parts: tuple[ComposablePart, ...]
    negative: Schedule
    networks: ExtraNetworks

    @property
    def plain(self) -> bool:
        """One part of weight 1 and no scheduling on either side: the pipeline's own single conditioning."""
        return len(self.parts) == 1 and self.parts[0].weight == 1.0 and len(self.parts[0].schedule) == 1 and (
            len(self.negative) == 1
        )

    @property
    def texts(self) -> list[str]:
        """Every text the plan conditions on, each once (positive parts first)."""
        found = [text for part in self.parts for _, text in part.schedule] + [text for _, text in self.negative]
        return list(dict.fromkeys(found))

    @property
    def warnings(self) -> list[str]:
        out = list(self.networks.warnings)
        for part in self.parts:
            if not math.isfinite(part.weight):
                out.append(f"AND part {part.text!r}: weight {part.weight} is not finite")
        return out


def plan_prompt(prompt: str, negative_prompt: str, steps: int) -> PromptPlan:
    """The plan for one request (see the module docstring). Never raises on prompt syntax: what cannot be read
    as editing or weights stays text, and skipped tags are listed in `networks.skipped`."""
    prompt = strip_comments(prompt)
    negative_prompt = strip_comments(negative_prompt)
    networks = parse_extra_networks(prompt)
    parts = tuple(
        ComposablePart(text, weight, tuple(prompt_schedule(text, steps))) for text, weight in split_and(networks.prompt)
    )
    negative = tuple(prompt_schedule(parse_extra_networks(negative_prompt).prompt, steps))
    return PromptPlan(prompt, negative_prompt, parts, negative, networks)


@dataclass(frozen=True)
class TokenCount:
    """A1111's counter: `tokens` counts 75 for every chunk but the last (BREAK and comma-moved chunks included),
    `limit` is 75 per chunk; taken over the schedule text (and AND part) with the most tokens."""

    tokens: int
    limit: int
    weights: tuple[float, ...] = ()  # the AND parts' weights, when any is not 1

    def __str__(self) -> str:
        return f"{self.tokens}/{self.limit}"


def chunked_count(tokenizer: Tokenizer, text: str, embeddings: EmbeddingMatcher | None = None) -> int:
    """A1111's token count of one text: 75 per closed chunk plus the last chunk's tokens; a chunk closed by a
    trailing BREAK is closed too (`cat BREAK` counts 75)."""
    chunks = chunk_prompt(tokenizer, text, embeddings)
    pieces = [piece for piece in parse_prompt_attention(text) if piece[0] or piece[1] == BREAK_WEIGHT]
    if pieces and pieces[-1] == (BREAK, BREAK_WEIGHT):
        return CHUNK_LENGTH * len(chunks)
    return CHUNK_LENGTH * (len(chunks) - 1) + len(chunks[-1].tokens)


def count_prompt_tokens(tokenizer: Tokenizer, prompt: str, steps: int = 20, positive: bool = True) -> TokenCount:
    """The token counter under a prompt box, as A1111 computes it (`update_token_counter`)."""
    text = parse_extra_networks(strip_comments(prompt)).prompt
    parts = split_and(text) if positive else [(text, 1.0)]
    schedule_texts = [entry for part, _ in parts for _, entry in prompt_schedule(part, max(1, steps))]
    tokens = max(chunked_count(tokenizer, entry) for entry in schedule_texts)
    limit = math.ceil(max(tokens, 1) / CHUNK_LENGTH) * CHUNK_LENGTH
    weights = tuple(weight for _, weight in parts)
    return TokenCount(tokens, limit, weights if any(w != 1.0 for w in weights) or len(weights) > 1 else ())
