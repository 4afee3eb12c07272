"""Prompt parsing as A1111 does it: attention syntax, BREAK, 75-token chunks and A1111's token counts."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from webui.engine.prompt_plan import chunked_count, count_prompt_tokens
from webui.engine.prompts import EmbeddingMatch, chunk_prompt, parse_prompt_attention
from webui.testing.tiny_tokenizer import EOS, OPEN_CLIP_PAD, build_tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer(EOS)


# The examples in the docstring of A1111's modules/prompt_parser.py::parse_prompt_attention, verbatim.
A1111_EXAMPLES = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [
            ("a ", 1.0),
            ("house", 1.5730000000000004),
            (" ", 1.1),
            ("on", 1.0),
            (" a ", 1.1),
            ("hill", 0.55),
            (", sun, ", 1.1),
            ("sky", 1.4641000000000006),
            (".", 1.1),
        ],
    ),
]


@pytest.mark.parametrize(("text", "expected"), A1111_EXAMPLES, ids=[t for t, _ in A1111_EXAMPLES])
def test_parser_gives_a1111_documented_results(text, expected):
    assert parse_prompt_attention(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", [("", 1.0)]),
        ("[a]", [("a", 1 / 1.1)]),
        ("((a))", [("a", 1.1 * 1.1)]),
        ("(a:0.5) (b:0.5)", [("a", 0.5), (" ", 1.0), ("b", 0.5)]),
        ("[unclosed", [("unclosed", 1 / 1.1)]),
        ("closed) too] many", [("closed) too] many", 1.0)]),
        ("x:1.2) y", [("x:1.2) y", 1.0)]),  # a weight with no open bracket is text
        ("a \\\\ b", [("a \\ b", 1.0)]),
        ("a\\b", [("ab", 1.0)]),  # A1111 drops a lone backslash
        ("(\\(a\\):1.5)", [("(a)", 1.5)]),  # escapes take the enclosing weight
        ("time: noon", [("time: noon", 1.0)]),
        # A1111 allows spaces (and line breaks) around a weight; the minimal inputs:
        ("(a: 1.2)", [("a", 1.2)]),
        ("(a:1.2 )", [("a", 1.2)]),
        ("(a:\n1.2)", [("a", 1.2)]),
        ("(masterpiece: 1.2), (best quality : 1.1)", [("masterpiece", 1.2), (", ", 1.0), ("best quality ", 1.1)]),
        ("x: 1.2) y", [("x: 1.2) y", 1.0)]),  # still text with no open bracket
    ],
)
def test_parser_edge_cases_follow_a1111(text, expected):
    # pytest.approx takes flat numbers only (pytest >= 9.2): texts compared exactly, weights approximately.
    parsed = parse_prompt_attention(text)
    assert [piece for piece, _ in parsed] == [piece for piece, _ in expected]
    assert [weight for _, weight in parsed] == pytest.approx([weight for _, weight in expected])


def test_break_is_its_own_piece_with_weight_minus_one():
    assert parse_prompt_attention("a cat BREAK a dog") == [("a cat", 1.0), ("BREAK", -1.0), ("a dog", 1.0)]
    assert parse_prompt_attention("BREAKFAST") == [("BREAKFAST", 1.0)]


def test_unreadable_weight_names_itself():
    with pytest.raises(ValueError, match=r"'1\.2\.3'.*\(word:1\.2\)"):
        parse_prompt_attention("(a:1.2.3)")


def count_tokens(tokenizer, text: str) -> list[int]:
    return [len(chunk.tokens) for chunk in chunk_prompt(tokenizer, text)]


def test_tokens_are_chunked_per_75_tokens(tokenizer):
    assert count_tokens(tokenizer, "") == [0]
    assert count_tokens(tokenizer, "cat") == [1]
    assert count_tokens(tokenizer, "cat " * 80) == [75, 5]
    assert count_tokens(tokenizer, "cat " * 150) == [75, 75]
    assert count_tokens(tokenizer, "(cat:1.3) " * 80) == [75, 5]


def test_break_starts_a_new_chunk(tokenizer):
    assert count_tokens(tokenizer, "cat BREAK dog dog") == [1, 2]
    assert count_tokens(tokenizer, "cat BREAK") == [1]


def test_chunk_moves_text_after_a_comma_in_its_last_20_tokens(tokenizer):
    near = "cat " * 70 + ", " + "dog " * 10
    assert count_tokens(tokenizer, near) == [71, 10]
    first, second = chunk_prompt(tokenizer, near)
    assert first.tokens[-1] == tokenizer.get_vocab()[",</w>"]
    assert set(second.tokens) == {tokenizer.get_vocab()["dog</w>"]}
    far = "cat " * 50 + ", " + "dog " * 30
    assert count_tokens(tokenizer, far) == [75, 6]


# A1111's counter (update_token_counter): every chunk but the last counts 75, over the ceiling of 75s.
@pytest.mark.parametrize(
    ("prompt", "shown"),
    [
        ("", "0/75"),
        ("cat", "1/75"),
        ("a BREAK b", "76/150"),  # the example: the chunk BREAK closes counts 75
        ("cat BREAK", "75/75"),
        ("cat " * 80, "80/150"),
        ("cat " * 70 + ", " + "dog " * 10, "85/150"),  # the comma-moved chunk's padding counts
    ],
)
def test_token_counter_counts_as_a1111_shows_it(tokenizer, prompt, shown):
    assert str(count_prompt_tokens(tokenizer, prompt, steps=20)) == shown


@pytest.mark.parametrize(
    ("prompt", "counted_as"),
    [
        ("(cat:1.3) " * 80 + "<lora:x:1>", "(cat:1.3) " * 80),  # tags are not tokens
        ("a cat\n# a comment: many words that would be tokens <lora:y:1>\nsky", "a cat\nsky"),  # nor comments
        ("a [cat:long dog name here:5]", "a long dog name here"),  # the longest step's text counts
        ("a [cat|long dog name here]", "a long dog name here"),
        ("a cat AND a dog on a hill:2", "a dog on a hill"),  # the longest AND part, its weight not counted
    ],
)
def test_token_counter_counts_what_is_encoded(tokenizer, prompt, counted_as):
    ours, plain = count_prompt_tokens(tokenizer, prompt, steps=20), count_prompt_tokens(tokenizer, counted_as, steps=20)
    assert (ours.tokens, ours.limit) == (plain.tokens, plain.limit)


def test_token_counter_reports_and_weights_including_a_trailing_colon_number(tokenizer):
    assert count_prompt_tokens(tokenizer, "aspect ratio 16:9").weights == (9.0,)
    assert count_prompt_tokens(tokenizer, "a cat AND a dog:0.5").weights == (1.0, 0.5)
    assert count_prompt_tokens(tokenizer, "a cat").weights == ()
    assert count_prompt_tokens(tokenizer, "a cat AND a dog", positive=False).weights == ()  # negatives have no AND
    assert chunked_count(tokenizer, "cat " * 80) == 80


def test_chunks_carry_each_tokens_weight(tokenizer):
    (chunk,) = chunk_prompt(tokenizer, "a (cat:1.5) [dog]")
    vocab = tokenizer.get_vocab()
    assert chunk.tokens == (vocab["a</w>"], vocab["cat</w>"], vocab["dog</w>"])
    assert chunk.weights == pytest.approx((1.0, 1.5, 1 / 1.1))


@pytest.mark.parametrize("pad_token", [EOS, OPEN_CLIP_PAD])
def test_padded_chunk_is_bos_tokens_eos_then_the_tokenizers_pad(pad_token):
    tokenizer = build_tiny_tokenizer(pad_token)
    (chunk,) = chunk_prompt(tokenizer, "(cat:2)")
    ids, weights = chunk.padded(tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    plain = tokenizer("cat", padding="max_length", max_length=77).input_ids
    assert ids == plain  # what diffusers feeds the text encoder
    assert weights == [1.0, 2.0] + [1.0] * 75


class _OneEmbedding:
    """Pretends 'tinytrigger' is a loaded 3-vector textual-inversion embedding."""

    def __init__(self, tokenizer) -> None:
        self.ids = tokenizer(["tinytrigger"], add_special_tokens=False)["input_ids"][0]

    def match(self, tokens: Sequence[int], position: int) -> EmbeddingMatch | None:
        if list(tokens[position : position + len(self.ids)]) == self.ids:
            return EmbeddingMatch("tinytrigger", vector_count=3, token_count=len(self.ids))
        return None


def test_embedding_hook_places_vectors_and_never_splits_them(tokenizer):
    matcher = _OneEmbedding(tokenizer)
    (chunk,) = chunk_prompt(tokenizer, "a (tinytrigger:1.2) cat", matcher)
    assert chunk.fixes == ((1, "tinytrigger"),)
    assert chunk.tokens[1:4] == (0, 0, 0) and chunk.weights[1:4] == pytest.approx((1.2,) * 3)
    first, second = chunk_prompt(tokenizer, "cat " * 74 + "tinytrigger", matcher)
    assert len(first.tokens) == 74 and first.fixes == ()
    assert second.fixes == ((0, "tinytrigger"),)
