"""Infotext as A1111 writes and reads it, and Send to txt2img that fills every field it can."""

from __future__ import annotations

import pytest

from webui.engine.infotext import format_infotext, parse_infotext
from webui.engine.reproduce import request_from_infotext
from webui.models.library import open_library
from webui.ui import adapter


@pytest.fixture(scope="module")
def library(tiny_models_dir):
    lib = open_library(tiny_models_dir)
    lib.scan()
    return lib


def test_floats_are_written_at_full_precision():
    text = format_infotext("a", "", {"Steps": 20, "CFG scale": 4.1234567, "Variation seed strength": 0.3, "x": 7.0})
    assert text == "a\nSteps: 20, CFG scale: 4.1234567, Variation seed strength: 0.3, x: 7"


@pytest.mark.parametrize(
    ("text", "prompt", "negative"),
    [
        ("a cat\n  Negative prompt: dog\nSteps: 20, Sampler: Euler a, CFG scale: 7", "a cat", "dog"),  # indented
        ("a cat\r\nNegative prompt: dog\r\nSteps: 20, Sampler: Euler a, CFG scale: 7\r\n", "a cat", "dog"),  # CRLF
        ("a cat   \nsecond line  \nSteps: 20, Sampler: Euler a, CFG scale: 7", "a cat\nsecond line", ""),
        ("Steps: 20, Sampler: Euler a, CFG scale: 7", "", ""),  # parameters only
        ("just a prompt: with a colon", "just a prompt: with a colon", ""),  # too few pairs to be parameters
    ],
)
def test_parsing_follows_a1111(text, prompt, negative):
    parsed_prompt, parsed_negative, params = parse_infotext(text)
    assert (parsed_prompt, parsed_negative) == (prompt, negative)
    if "Steps" in text:
        assert params == {"Steps": "20", "Sampler": "Euler a", "CFG scale": "7"}


# The infotexts, each valid A1111 output, each of which failed wholesale before.
A1111_INFOTEXTS = {
    "Euler a + Karras": ("Sampler: Euler a, Schedule type: Karras", {"sampler": "Euler a", "schedule": "Karras"}),
    "DDIM + Karras": ("Sampler: DDIM, Schedule type: Karras", {"sampler": "DDIM", "schedule": "Karras"}),
    "AYS": ("Sampler: DPM++ 2M, Schedule type: Align Your Steps", {"schedule": "Align Your Steps"}),
    "Uniform": ("Sampler: Euler, Schedule type: Uniform", {"schedule": "Uniform"}),
    "Polyexponential": ("Sampler: Euler, Schedule type: Polyexponential", {"schedule": "Polyexponential"}),
    "KL Optimal": ("Sampler: Euler, Schedule type: KL Optimal", {"schedule": "KL Optimal"}),
    "Simple": ("Sampler: Euler, Schedule type: Simple", {"schedule": "Simple"}),
    "Normal": ("Sampler: Euler, Schedule type: Normal", {"schedule": "Normal"}),
    "DDIM schedule": ("Sampler: Euler, Schedule type: DDIM", {"schedule": "DDIM"}),
    "odd size": ("Size: 513x512", {"width": 513, "height": 512}),
    "200 steps": ("Steps: 200", {"steps": 200}),
    "restart": ("Sampler: Restart, Schedule type: Exponential", {"sampler": "Restart", "schedule": "Exponential"}),
}


@pytest.mark.parametrize("case", list(A1111_INFOTEXTS))
def test_every_valid_a1111_infotext_fills_the_request(library, case):
    pairs, expected = A1111_INFOTEXTS[case]
    text = f"a cat\nNegative prompt: blurry\nSteps: 20, CFG scale: 7, Seed: 5, Model: tiny-sd1, {pairs}"
    reproduction = request_from_infotext(text, library)
    assert reproduction.request is not None, reproduction.notes
    for name, value in expected.items():
        assert getattr(reproduction.request, name) == value
    assert reproduction.request.prompt == "a cat" and reproduction.request.seed == 5
    assert reproduction.notes == []


def test_send_to_txt2img_fits_what_the_sliders_cannot_take_and_says_so(library):
    text = "a cat\nSteps: 200, Sampler: Euler a, Schedule type: Karras, CFG scale: 35, Seed: 5, Size: 513x2100"
    reproduction = request_from_infotext(text, library)
    values = adapter.values_from_reproduction(reproduction, text, library)
    notes = adapter.fit_to_widgets(values)
    assert (values["steps"], values["cfg_scale"], values["width"], values["height"]) == (150, 30.0, 512, 2048)
    assert values["sampler"] == "Euler a" and values["schedule"] == "Karras" and values["seed"] == 5
    assert notes == [
        "steps: 200 is outside what the slider takes; set to 150",
        "cfg_scale: 35.0 is outside what the slider takes; set to 30.0",
        "width: 513 is outside what the slider takes; set to 512",
        "height: 2100 is outside what the slider takes; set to 2048",
    ]


def test_values_that_cannot_be_used_are_left_at_their_default_with_a_note(library):
    text = (
        "a cat\nSteps: 0, Sampler: Fancy Sampler, Schedule type: Turbo, CFG scale: x, Seed: 5, Size: 8x32, "
        "Clip skip: 40, Variation seed strength: 3, Model: tiny-sd1"
    )
    reproduction = request_from_infotext(text, library)
    assert reproduction.request is not None and reproduction.request.seed == 5
    request = reproduction.request
    assert (request.steps, request.cfg_scale, request.width, request.clip_skip) == (20, 7.0, 512, 1)
    notes = "\n".join(reproduction.notes)
    for expected in ("Sampler: 'Fancy Sampler' is unknown", "Schedule type: 'Turbo' is unknown", "CFG scale: 'x'",
                     "steps: 0 is out of range", "width: 8 is out of range", "clip_skip: 40",
                     "subseed_strength: 3.0"):  # fmt: skip
        assert expected in notes


def test_a_hypernet_key_is_reported_and_its_tag_added_as_a1111_does(library):
    reproduction = request_from_infotext("a cat\nSteps: 20, Seed: 1, Hypernet: anime, Hypernet strength: 0.5", library)
    assert reproduction.values["prompt"] == "a cat<hypernet:anime:0.5>"
    assert any(note.startswith("Hypernet: anime") for note in reproduction.notes)


def test_variation_seed_and_eta_are_read_back(library):
    text = "a cat\nSteps: 20, Sampler: Euler a, Seed: 1, Variation seed: 9, Variation seed strength: 0.25, Eta: 0.5"
    request = request_from_infotext(f"{text}, Model: tiny-sd1", library).request
    assert (request.subseed, request.subseed_strength, request.eta) == (9, 0.25, 0.5)
