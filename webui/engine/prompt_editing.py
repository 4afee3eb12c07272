"""A1111's prompt editing and alternation: the prompt text in force at each denoising step.

Syntax (A1111 wiki, "Prompt editing" and "Alternating words"), nestable:
- `[from:to:when]` — `from` until step `when`, then `to`; `[to:when]` adds `to` after `when`; `[from::when]`
  removes `from` after `when`. `when` written with a '.' is a fraction of the steps (`0.25`), else a step
  number (`5`); spaces around it are allowed.
- `[a|b|c]` — a different option at every step (a, b, c, a, ...); an empty option is allowed (`[fe|]male`).
- Brackets that form none of these stay text: `(a:1.2)` and `[a]` are attention syntax for the next stage.

A1111 parses this with a lark grammar (`modules/prompt_parser.py`); this is a hand-written recursive-descent
parser for the same language, with the same results: a prompt the grammar rejects (a '|' outside brackets, a
trailing lone backslash) is not scheduled at all and is used as written for every step, and brackets that open
no construct at the top level are plain text. A schedule is A1111's list of `(end_at_step, text)`: the text is
used up to and including model call `end_at_step` (counting calls from 0, as A1111's denoiser does).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# lark's common.SIGNED_NUMBER, which A1111's grammar imports for `when`.
_NUMBER = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*\]")
_SYNTAX = frozenset("[]():|")
_TOP_LEVEL_TEXT = frozenset("[]():")  # brackets and colons that open nothing are text at the top level only


@dataclass(frozen=True)
class _Scheduled:
    before: tuple[_Node, ...]
    after: tuple[_Node, ...]
    when: str  # as written: "5" is a step, "0.5" a fraction


@dataclass(frozen=True)
class _Alternate:
    options: tuple[tuple[_Node, ...], ...]


_Node = str | _Scheduled | _Alternate


class _NotScheduled(Exception):
    """The prompt is outside the grammar: A1111 uses it as written, unscheduled."""


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text

    def top(self) -> tuple[_Node, ...]:
        nodes: list[_Node] = []
        position = 0
        while position < len(self.text):
            part, position = self.prompt(position)
            nodes += part
            if position < len(self.text):
                if self.text[position] not in _TOP_LEVEL_TEXT:
                    raise _NotScheduled
                nodes.append(self.text[position])
                position += 1
        return tuple(nodes)

    def prompt(self, position: int) -> tuple[list[_Node], int]:
        """Text and constructs up to the first character a prompt cannot hold (a delimiter or a failed construct)."""
        text = self.text
        nodes: list[_Node] = []
        while position < len(text):
            char = text[position]
            if char == "\\":
                if position + 1 == len(text):
                    break  # a lone trailing backslash is outside the grammar
                nodes.append(text[position : position + 2])
                position += 2
            elif char not in _SYNTAX:
                nodes.append(char)
                position += 1
            elif char in "([":
                found = self.paren(position) if char == "(" else self.bracket(position)
                if found is None:
                    break
                nodes += found[0]
                position = found[1]
            else:
                break
        return nodes, position

    def paren(self, position: int) -> tuple[list[_Node], int] | None:
        """`(prompt)` or `(prompt:prompt)`: kept as text (attention syntax), constructs inside still scheduled."""
        first, end = self.prompt(position + 1)
        nodes: list[_Node] = ["(", *first]
        if end < len(self.text) and self.text[end] == ":":
            second, end = self.prompt(end + 1)
            nodes += [":", *second]
        if end < len(self.text) and self.text[end] == ")":
            return [*nodes, ")"], end + 1
        return None

    def bracket(self, position: int) -> tuple[list[_Node], int] | None:
        text = self.text
        first, end = self.prompt(position + 1)
        if end >= len(text):
            return None
        if text[end] == "]":
            return ["[", *first, "]"], end + 1
        if text[end] == "|":
            options = [tuple(first)]
            while end < len(text) and text[end] == "|":
                option, end = self.prompt(end + 1)
                options.append(tuple(option))
            if end < len(text) and text[end] == "]":
                return [_Alternate(tuple(options))], end + 1
            return None
        if text[end] == ":":
            number = _NUMBER.match(text, end + 1)
            if number is not None:  # [to:when]
                return [_Scheduled((), tuple(first), number.group(1))], number.end()
            second, end = self.prompt(end + 1)
            if end < len(text) and text[end] == ":":
                number = _NUMBER.match(text, end + 1)
                if number is not None:  # [from:to:when]
                    return [_Scheduled(tuple(first), tuple(second), number.group(1))], number.end()
        return None


def _end_step(when: str, steps: int) -> int:
    """A1111's step for `when`: a number with '.' is a fraction of the steps, else a step; at most `steps`."""
    value = float(when)
    if "." in when:
        value *= steps
    return min(steps, int(value))


def _collect(nodes: tuple[_Node, ...], steps: int, found: set[int]) -> None:
    for node in nodes:
        if isinstance(node, _Scheduled):
            step = _end_step(node.when, steps)
            if step >= 1:
                found.add(step)
            _collect(node.before, steps, found)
            _collect(node.after, steps, found)
        elif isinstance(node, _Alternate):
            found.update(range(1, steps + 1))
            for option in node.options:
                _collect(option, steps, found)


def _text_at(nodes: tuple[_Node, ...], step: int, steps: int) -> str:
    out: list[str] = []
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, _Scheduled):
            chosen = node.before if step <= _end_step(node.when, steps) else node.after
            out.append(_text_at(chosen, step, steps))
        else:
            out.append(_text_at(node.options[(step - 1) % len(node.options)], step, steps))
    return "".join(out)


def prompt_schedule(prompt: str, steps: int) -> list[tuple[int, str]]:
    """A1111's schedule for `prompt` over `steps` steps: `[(end_at_step, text), ...]`, ascending, last = steps.

    >>> prompt_schedule("a [b:c:0.5]", 10)
    [(5, 'a b'), (10, 'a c')]
    """
    if steps < 1:
        raise ValueError(f"steps: {steps} is out of range; allowed 1 and more")
    try:
        nodes = _Parser(prompt).top()
    except _NotScheduled:
        return [(steps, prompt)]
    found = {steps}
    _collect(nodes, steps, found)
    return [(step, _text_at(nodes, step, steps)) for step in sorted(found)]


def entry_at(ends: list[int] | tuple[int, ...], model_call: int) -> int:
    """Index of the schedule entry in force at model call `model_call` (0-based), as A1111's
    `reconstruct_cond_batch`: the first entry whose end step is at least the call's number.

    Past the last end (samplers that call the model twice per step, like Heun, make more calls than steps)
    the last entry stays in force; A1111 falls back to the first entry there, which undoes the edit."""
    for index, end in enumerate(ends):
        if model_call <= end:
            return index
    return len(ends) - 1
