"""Prompt text to weighted token chunks, as AUTOMATIC1111 reads prompts: attention syntax, BREAK, 75-token chunks.

Pure Python: no torch, and the tokenizer is only called (any Hugging Face CLIP tokenizer works), so the
UI can count tokens without the engine. `conditioning.py` turns the chunks into embeddings; the text reaching
here has had its comments, extra-network tags and scheduling resolved (`prompt_plan.py`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

CHUNK_LENGTH = 75  # prompt tokens per chunk; BOS and EOS make the 77 CLIP reads
COMMA_BACKTRACK = 20  # A1111's default `comma_padding_backtrack`
BREAK = "BREAK"
BREAK_WEIGHT = -1.0  # A1111 marks BREAK as the piece ("BREAK", -1.0)
ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1

# One alternative per piece of attention syntax; the order matters (escapes first, plain text last).
_ATTENTION_PIECE = re.compile(
    r"""
      \\[()\[\]\\]?        # an escaped bracket or backslash; a lone backslash is dropped, as in A1111
    | [(\[]                # an opening bracket
    | :\s*([+-]?[.\d]+)\s*\)  # ':1.2)' closing a weighted group; A1111 allows spaces: '(a: 1.2 )'
    | [)\]]                # a closing bracket
    | [^\\()\[\]:]+        # plain text
    | :                    # a colon that closes nothing is plain text
    """,
    re.X,
)
_BREAK_SPLIT = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """Split `text` into (piece, weight) pairs exactly as A1111's parser of the same name does.

    `(a)` multiplies by 1.1, `[a]` divides by 1.1, `(a:1.3)` multiplies by 1.3, nesting multiplies,
    `\\(` `\\)` `\\[` `\\]` `\\\\` are literal, unclosed brackets apply to the end of the text,
    `BREAK` becomes ("BREAK", -1.0), and neighbouring pieces of equal weight are merged.
    """
    pieces: list[list[Any]] = []
    round_starts: list[int] = []
    square_starts: list[int] = []

    def multiply_from(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            piece[1] *= factor

    for match in _ATTENTION_PIECE.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            pieces.append([token[1:], 1.0])
        elif token == "(":
            round_starts.append(len(pieces))
        elif token == "[":
            square_starts.append(len(pieces))
        elif weight is not None and round_starts:
            multiply_from(round_starts.pop(), _attention_weight(weight, text))
        elif token == ")" and round_starts:
            multiply_from(round_starts.pop(), ROUND_MULTIPLIER)
        elif token == "]" and square_starts:
            multiply_from(square_starts.pop(), SQUARE_MULTIPLIER)
        else:
            for index, part in enumerate(_BREAK_SPLIT.split(token)):
                if index:
                    pieces.append([BREAK, BREAK_WEIGHT])
                pieces.append([part, 1.0])
    for start in round_starts:
        multiply_from(start, ROUND_MULTIPLIER)
    for start in square_starts:
        multiply_from(start, SQUARE_MULTIPLIER)

    merged: list[tuple[str, float]] = []
    for piece, weight in pieces or [["", 1.0]]:
        if merged and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + piece, weight)
        else:
            merged.append((piece, weight))
    return merged


def _attention_weight(weight: str, text: str) -> float:
    try:
        return float(weight)
    except ValueError:
        raise ValueError(f"prompt: '{weight}' in {text!r} is not a weight; write a number, e.g. (word:1.2)") from None


class Tokenizer(Protocol):
    """What is used of a Hugging Face CLIP tokenizer."""

    bos_token_id: int
    eos_token_id: int
    pad_token_id: int

    def __call__(self, text: list[str], **kwargs: Any) -> Any: ...

    def get_vocab(self) -> dict[str, int]: ...

    def convert_tokens_to_ids(self, tokens: str) -> int | None: ...


@dataclass(frozen=True)
class EmbeddingMatch:
    """A textual-inversion embedding found in the token stream: its name, its vectors, the tokens it replaces."""

    name: str
    vector_count: int
    token_count: int


class EmbeddingMatcher(Protocol):
    """Finds a loaded embedding whose name's tokens start at `position` (the textual-inversion hook)."""

    def match(self, tokens: Sequence[int], position: int) -> EmbeddingMatch | None: ...


@dataclass(frozen=True)
class PromptChunk:
    """Up to 75 prompt tokens with their weights; `fixes` are (offset, embedding name) to put vectors at."""

    tokens: tuple[int, ...]
    weights: tuple[float, ...]
    fixes: tuple[tuple[int, str], ...] = ()

    def padded(self, bos: int, eos: int, pad: int) -> tuple[list[int], list[float]]:
        """The 77 ids CLIP reads (BOS, tokens, EOS, padding) and a weight for each (1.0 for the added ones)."""
        fill = CHUNK_LENGTH - len(self.tokens)
        return [bos, *self.tokens, eos, *[pad] * fill], [1.0, *self.weights, *[1.0] * (fill + 1)]


def _comma_id(tokenizer: Tokenizer) -> int | None:
    """The id of "," (get_vocab() would copy the whole 49k-entry vocabulary on every prompt)."""
    found = tokenizer.convert_tokens_to_ids(",</w>")
    return None if found is None or found == getattr(tokenizer, "unk_token_id", None) else found


def chunk_prompt(tokenizer: Tokenizer, prompt: str, embeddings: EmbeddingMatcher | None = None) -> list[PromptChunk]:
    """Weighted 75-token chunks of `prompt`, split as A1111 splits them.

    Each parsed piece is tokenized on its own. A chunk ends when it holds 75 tokens, except that when
    the last comma is within the last 20 tokens, what follows the comma moves to the next chunk; BREAK
    ends a chunk early; an embedding's vectors are never split across chunks. An empty prompt is one
    empty chunk.
    """
    pieces = parse_prompt_attention(prompt)
    ids = tokenizer([text for text, _ in pieces], truncation=False, add_special_tokens=False, verbose=False)
    comma = _comma_id(tokenizer)
    chunks: list[PromptChunk] = []
    tokens: list[int] = []
    weights: list[float] = []
    fixes: list[tuple[int, str]] = []
    last_comma = -1

    def close_chunk() -> None:
        nonlocal tokens, weights, fixes, last_comma
        chunks.append(PromptChunk(tuple(tokens), tuple(weights), tuple(fixes)))
        tokens, weights, fixes, last_comma = [], [], [], -1

    for piece_ids, (text, weight) in zip(ids["input_ids"], pieces, strict=True):
        if text == BREAK and weight == BREAK_WEIGHT:
            close_chunk()
            continue
        position = 0
        while position < len(piece_ids):
            token = piece_ids[position]
            if token == comma:
                last_comma = len(tokens)
            elif len(tokens) == CHUNK_LENGTH and last_comma != -1 and len(tokens) - last_comma <= COMMA_BACKTRACK:
                moved = slice(last_comma + 1, None)
                moved_tokens, moved_weights = tokens[moved], weights[moved]
                moved_fixes = [(offset - last_comma - 1, name) for offset, name in fixes if offset > last_comma]
                tokens, weights = tokens[: last_comma + 1], weights[: last_comma + 1]
                fixes = [fix for fix in fixes if fix[0] <= last_comma]
                close_chunk()
                tokens, weights, fixes = moved_tokens, moved_weights, moved_fixes
            if len(tokens) == CHUNK_LENGTH:
                close_chunk()
            found = embeddings.match(piece_ids, position) if embeddings is not None else None
            if found is None:
                tokens.append(token)
                weights.append(weight)
                position += 1
                continue
            if len(tokens) + found.vector_count > CHUNK_LENGTH:
                close_chunk()
            fixes.append((len(tokens), found.name))
            tokens += [0] * found.vector_count  # placeholders, replaced by the embedding's vectors
            weights += [weight] * found.vector_count
            position += found.token_count
    if tokens or not chunks:
        close_chunk()
    return chunks
