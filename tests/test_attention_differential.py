"""Differential test: our attention parser against an independent reading of A1111's published grammar.

The reference below is written from the grammar as A1111 documents it (the docstring of
`modules/prompt_parser.py::parse_prompt_attention` and its token list), as a character scanner rather than
a regular expression, so the two implementations share nothing but the specification:

- `\\(` `\\)` `\\[` `\\]` `\\\\` are the literal character; any other backslash is dropped;
- `(` and `[` open a group; `)` closes the innermost `(` group with ×1.1, `]` the innermost `[` with ÷1.1;
- `:` + optional whitespace + a number made of [+-]?[.0-9]+ + optional whitespace + `)` closes the innermost
  `(` group with that number as its multiplier (a number `float` cannot read is an error);
- a closer with no group open, and a `:` that closes nothing, are text;
- groups left open at the end apply to the end of the text (round ones first, then square ones);
- in text, a whole word `BREAK` with the whitespace around it becomes the piece ("BREAK", -1);
- neighbouring pieces of equal weight are merged; an empty prompt is [("", 1.0)].

Thousands of generated prompts (fixed seed) must parse to exactly the same pieces and weights.
"""

from __future__ import annotations

import random
import re

import pytest

from webui.engine.prompts import parse_prompt_attention

ESCAPABLE = "()[]\\"
DIGITS = "0123456789."


def _split_break(text: str) -> list[str | None]:
    """The text's parts around each whole-word BREAK (None marks a BREAK), whitespace around it dropped."""
    out: list[str | None] = []
    current, index = "", 0
    while index < len(text):
        is_word_start = index == 0 or not (text[index - 1].isalnum() or text[index - 1] == "_")
        end = index + len("BREAK")
        is_word_end = end >= len(text) or not (text[end].isalnum() or text[end] == "_")
        if text.startswith("BREAK", index) and is_word_start and is_word_end:
            out += [current.rstrip(), None]
            current, index = "", end
            while index < len(text) and text[index].isspace():
                index += 1
            continue
        current += text[index]
        index += 1
    return [*out, current]


def _weight_close(text: str, index: int) -> tuple[str, int] | None:
    """At a ':' — the number and the index after the ')' if a weighted close starts here."""
    position = index + 1
    while position < len(text) and text[position].isspace():
        position += 1
    start = position
    if position < len(text) and text[position] in "+-":
        position += 1
    digits_start = position
    while position < len(text) and text[position] in DIGITS:
        position += 1
    if position == digits_start:
        return None
    after = position  # the digits run as far as they go; a shorter run is followed by a digit, never by ')'
    while after < len(text) and text[after].isspace():
        after += 1
    if after < len(text) and text[after] == ")":
        return text[start:position], after + 1
    return None


def reference_attention(text: str) -> list[tuple[str, float]]:
    pieces: list[list] = []
    rounds: list[int] = []
    squares: list[int] = []

    def scale(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            piece[1] *= factor

    def add_text(chunk: str) -> None:
        for part in _split_break(chunk):
            pieces.append(["BREAK", -1.0] if part is None else [part, 1.0])

    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\":
            following = text[index + 1] if index + 1 < len(text) else ""
            if following and following in ESCAPABLE:
                pieces.append([following, 1.0])
                index += 2
            else:
                pieces.append(["", 1.0])
                index += 1
        elif char == "(":
            rounds.append(len(pieces))
            index += 1
        elif char == "[":
            squares.append(len(pieces))
            index += 1
        elif char == ":" and (close := _weight_close(text, index)) is not None:
            number, after = close
            if rounds:
                scale(rounds.pop(), float(number))
            else:
                add_text(text[index:after])
            index = after
        elif char == ")" and rounds:
            scale(rounds.pop(), 1.1)
            index += 1
        elif char == "]" and squares:
            scale(squares.pop(), 1 / 1.1)
            index += 1
        elif char in "()[]:":
            add_text(char)
            index += 1
        else:
            end = index
            while end < len(text) and text[end] not in "\\()[]:":
                end += 1
            add_text(text[index:end])
            index = end
    for start in rounds:
        scale(start, 1.1)
    for start in squares:
        scale(start, 1 / 1.1)
    if not pieces:
        pieces = [["", 1.0]]
    merged: list[list] = []
    for piece in pieces:
        if merged and merged[-1][1] == piece[1]:
            merged[-1][0] += piece[0]
        else:
            merged.append(list(piece))
    return [(text, weight) for text, weight in merged]


FRAGMENTS = [
    "a cat", "masterpiece", " ", ", ", "\n", "best quality", "BREAK", " BREAK ", "BREAKFAST", "xBREAK",
    "(", ")", "[", "]", ":", "::", ":1.2)", ": 1.3 )", ":\n0.8)", ":-0.5)", ":+2)", ":1.2", "1.5", ".5)",
    "\\(", "\\)", "\\[", "\\]", "\\\\", "\\", "\\x", "((", "))", "[[", "]]", "(sky:1.1)", "[dog]", "16:9",
    ":.)", ": )",
]  # fmt: skip


def _corpus(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(0, 12))) for _ in range(count)]


def test_reference_agrees_with_a1111s_documented_examples():
    assert reference_attention("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).") == [
        ("a ", 1.0),
        ("house", 1.5730000000000004),
        (" ", 1.1),
        ("on", 1.0),
        (" a ", 1.1),
        ("hill", 0.55),
        (", sun, ", 1.1),
        ("sky", 1.4641000000000006),
        (".", 1.1),
    ]
    assert reference_attention("\\(literal\\]") == [("(literal]", 1.0)]
    assert reference_attention("(unbalanced") == [("unbalanced", 1.1)]


def test_our_parser_equals_the_reference_on_a_generated_corpus():
    corpus = _corpus(4000, seed=20240517)
    differing = []
    for prompt in corpus:
        try:
            expected = reference_attention(prompt)
        except ValueError:
            with pytest.raises(ValueError):
                parse_prompt_attention(prompt)
            continue
        if parse_prompt_attention(prompt) != expected:
            differing.append(prompt)
    assert differing == [], f"{len(differing)} of {len(corpus)} prompts differ, e.g. {differing[:5]!r}"
    # The corpus exercises every rule: weights with spaces, escapes, BREAK, unbalanced and stray brackets.
    joined = "".join(corpus)
    for needle in (": 1.3 )", "\\(", "BREAK", "]]", "16:9"):
        assert needle in joined
    assert sum(bool(re.search(r"\(\s*[^()]*:\s*[\d.]+\s*\)", p)) for p in corpus) > 100
