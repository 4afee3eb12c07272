"""Extra-network tags as A1111 handles them: every `<kind:…>` tag leaves the text, LoRA tags never sink a prompt."""

from __future__ import annotations

import pytest

from webui.engine.extra_networks import LoraTag, extract_lora_tags, parse_extra_networks


def test_lora_tags_are_removed_and_read_the_a1111_way():
    text, tags = extract_lora_tags("a cat <lora:styleA:0.8>, <lora:plain> <lora:split:0.3:0.7> <lyco:named:unet=0.2>")
    assert text == "a cat ,   "  # removed, not replaced: whitespace is left as A1111 leaves it
    assert tags == [
        LoraTag("styleA", unet_weight=0.8, te_weight=0.8),
        LoraTag("plain", unet_weight=1.0, te_weight=1.0),
        LoraTag("split", unet_weight=0.7, te_weight=0.3),  # A1111: <lora:name:te:unet>
        LoraTag("named", unet_weight=0.2, te_weight=1.0),  # `lyco` is the alias A1111's Lora extension registers
    ]
    assert extract_lora_tags("no tags (here:1.2)") == ("no tags (here:1.2)", [])


def test_lora_tag_is_frozen():
    with pytest.raises(AttributeError):
        LoraTag("x").name = "y"


# The minimal inputs: A1111 generates and reports the tag; nothing raises.
@pytest.mark.parametrize(
    ("tag", "reason"),
    [
        ("<lora:x:abc>", "weight 'abc' is not a finite number"),
        ("<lora:x:inf>", "weight 'inf' is not a finite number"),
        ("<lora:x:1:nan>", "UNet weight 'nan' is not a finite number"),
        ("<lora::1>", "the LoRA name is missing"),
    ],
)
def test_unreadable_lora_tags_are_skipped_with_the_reason(tag, reason):
    parsed = parse_extra_networks(f"a cat {tag}, sky")
    assert parsed.prompt == "a cat , sky" and parsed.loras == ()
    (skipped,) = parsed.skipped
    assert skipped.tag == tag and reason in skipped.reason
    assert parsed.warnings == [f"{tag}: {skipped.reason}"]


@pytest.mark.parametrize(
    ("tag", "lora", "note"),
    [
        ("<lora:x:1:1:4>", LoraTag("x", 1.0, 1.0), "dynamic rank"),  # A1111's 4th positional is dyn
        ("<lora:x:dyn=4>", LoraTag("x", 1.0, 1.0), "dynamic rank"),
        ("<lora:x:0.5:foo=2>", LoraTag("x", 0.5, 0.5), "unknown argument(s) foo"),
        ("<lora:x:25>", LoraTag("x", 10.0, 10.0), "clamped"),
        ("<lora:x:-12:3>", LoraTag("x", 3.0, -10.0), "clamped"),
    ],
)
def test_lora_tags_apply_what_they_can_and_note_the_rest(tag, lora, note):
    parsed = parse_extra_networks(f"a cat {tag}")
    assert parsed.loras == (lora,) and parsed.skipped == ()
    assert len(parsed.notes) == 1 and note in parsed.notes[0] and parsed.notes[0].startswith(tag)


def test_a_named_argument_before_the_name_is_read_as_a1111_reads_it():
    # ExtraNetworkParams: `a=b` is named, so the first positional argument, "1", is the LoRA's name.
    parsed = parse_extra_networks("<lora:a=b:1>")
    assert parsed.loras == (LoraTag("1", 1.0, 1.0),)
    assert "unknown argument(s) a" in parsed.notes[0]


@pytest.mark.parametrize("tag", ["<hypernet:x:1>", "<hypernet:anime:0.5>", "<ti:foo>", "<whatever:a:b:c>"])
def test_other_extra_networks_are_removed_and_reported_as_not_applied(tag):
    parsed = parse_extra_networks(f"a cat {tag} sky")
    assert parsed.prompt == "a cat  sky" and parsed.loras == ()
    assert [s.tag for s in parsed.skipped] == [tag] and "not supported" in parsed.skipped[0].reason


def test_text_in_angle_brackets_that_is_no_tag_stays():
    assert parse_extra_networks("a <cat> and <3 dogs").prompt == "a <cat> and <3 dogs"
