"""Prompt editing, alternation, AND and comments: the texts and weights A1111 conditions on at each step."""

from __future__ import annotations

import pytest

from webui.engine.prompt_editing import entry_at, prompt_schedule
from webui.engine.prompt_plan import plan_prompt, split_and, strip_comments

# The doctest of A1111's modules/prompt_parser.py::get_learned_conditioning_prompt_schedules (10 steps),
# as its parser answers. One doctest there is stale ("a [{b|d{:.5] c", marked "not handling this right now"):
# A1111's parser rejects that prompt (a '|' outside an alternation) and leaves it unscheduled; so does ours.
A1111_SCHEDULES = [
    ("test", [(10, "test")]),
    ("a [b:3]", [(3, "a "), (10, "a b")]),
    ("a [b: 3]", [(3, "a "), (10, "a b")]),
    ("a [[[b]]:2]", [(2, "a "), (10, "a [[b]]")]),
    ("[(a:2):3]", [(3, ""), (10, "(a:2)")]),
    ("a [b : c : 1] d", [(1, "a b  d"), (10, "a  c  d")]),
    ("a[b:[c:d:2]:1]e", [(1, "abe"), (2, "ace"), (10, "ade")]),
    ("a [unbalanced", [(10, "a [unbalanced")]),
    ("a [b:.5] c", [(5, "a  c"), (10, "a b c")]),
    ("a [{b|d{:.5] c", [(10, "a [{b|d{:.5] c")]),
    ("((a][:b:c [d:3]", [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
    ("[a|(b:1.1)]", [(step, "a" if step % 2 else "(b:1.1)") for step in range(1, 11)]),
    ("[fe|]male", [(step, "female" if step % 2 else "male") for step in range(1, 11)]),
    ("[fe|||]male", [(step, "female" if step % 4 == 1 else "male") for step in range(1, 11)]),
]


@pytest.mark.parametrize(("prompt", "expected"), A1111_SCHEDULES, ids=[p for p, _ in A1111_SCHEDULES])
def test_schedules_are_a1111s(prompt, expected):
    assert prompt_schedule(prompt, 10) == expected


# The minimal inputs, 20 steps.
@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a [b:c:0.5]", [(10, "a b"), (20, "a c")]),  # b for the first half of the steps, then c
        ("a [b:5]", [(5, "a "), (20, "a b")]),  # b added after step 5
        ("a [b::5]", [(5, "a b"), (20, "a ")]),  # b removed after step 5
        ("[a:[b:c:0.75]:0.25]", [(5, "a"), (15, "b"), (20, "c")]),  # nested
        ("x [a:b:25]", [(20, "x a")]),  # past the last step: never switches
        ("x [a:b:0]", [(20, "x b")]),  # at 0: switched from the start
        ("(cat:1.2) [dog:fox:2]", [(2, "(cat:1.2) dog"), (20, "(cat:1.2) fox")]),  # attention syntax stays text
        ("a | b [c:d:2]", [(20, "a | b [c:d:2]")]),  # '|' outside brackets: A1111 schedules nothing
        ("\\[a:b:2\\]", [(20, "\\[a:b:2\\]")]),  # escaped brackets are text
    ],
)
def test_prompt_editing_follows_a1111(prompt, expected):
    assert prompt_schedule(prompt, 20) == expected


def test_alternation_changes_every_step():
    assert [text for _, text in prompt_schedule("a [cat|dog|fox]", 6)] == ["a cat", "a dog", "a fox"] * 2


def test_the_entry_in_force_at_a_model_call_is_a1111s():
    ends = [5, 10]  # "[a:b:5]" over 10 steps: A1111 uses a for calls 0..5, b for 6..10
    assert [entry_at(ends, call) for call in range(11)] == [0] * 6 + [1] * 5
    assert entry_at(ends, 15) == 1  # calls past the steps (Heun's second evaluations) keep the last text


def test_steps_must_be_positive():
    with pytest.raises(ValueError, match="^steps: 0"):
        prompt_schedule("a", 0)


# -- AND and its weights --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("prompt", "parts"),
    [
        ("a cat AND a dog", [("a cat", 1.0), (" a dog", 1.0)]),
        ("a cat :1.5 AND a dog:-0.5", [("a cat", 1.5), (" a dog", -0.5)]),
        ("aspect ratio 16:9", [("aspect ratio 16", 9.0)]),  # A1111 reads a trailing :N as a weight, AND or not
        ("(a:1.2)", [("(a:1.2)", 1.0)]),
        ("ANDROID AND", [("ANDROID", 1.0), ("", 1.0)]),  # AND is a word of its own
        ("a cat.", [("a cat.", 1.0)]),
    ],
)
def test_and_splits_into_weighted_parts_as_a1111(prompt, parts):
    assert split_and(prompt) == parts


# -- the whole plan -------------------------------------------------------------------------------------
def test_comments_drop_whole_lines_and_their_tags():
    assert strip_comments("a cat\n# not this: dog <lora:x:1>\nsky") == "a cat\nsky"  # the example
    assert strip_comments("a cat # not this\nsky") == "a cat \nsky"
    plan = plan_prompt("a cat\n# not this: dog <lora:x:1>\nsky", "", 20)
    assert plan.parts[0].text == "a cat\nsky" and plan.networks.loras == ()
    assert plan.prompt == "a cat\nsky"  # what the infotext records


def test_plan_of_a_plain_prompt_is_plain():
    plan = plan_prompt("a (cat:1.2) <lora:x:0.5>", "blurry", 20)
    assert plan.plain and plan.texts == ["a (cat:1.2)", "blurry"]  # A1111 strips what trails a part
    assert [lora.name for lora in plan.networks.loras] == ["x"]


def test_plan_keeps_parts_weights_and_schedules_and_the_negatives_schedule():
    plan = plan_prompt("a [cat:dog:2] AND sky:0.5", "[blurry::1]", 4)
    assert not plan.plain
    assert [(p.text, p.weight, p.schedule) for p in plan.parts] == [
        ("a [cat:dog:2]", 1.0, ((2, "a cat"), (4, "a dog"))),
        (" sky", 0.5, ((4, " sky"),)),
    ]
    assert plan.negative == ((1, "blurry"), (4, ""))
    assert plan_prompt("a cat", "x AND y", 4).negative == ((4, "x AND y"),)  # no AND in negatives
