"""Prompt conditioning: equals diffusers for plain prompts; chunks, weights, BREAK and clip skip as A1111 has them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from webui.engine.conditioning import encode_prompts
from webui.families import Family
from webui.testing.tiny_models import tiny_pipeline

PROMPT = "a photo of a cat wearing a red hat"
LONG_PROMPT = "cat " * 100  # 100 tokens: two chunks
XL = (Family.SDXL, Family.SDXL_REFINER)


@pytest.fixture(scope="module")
def pipelines():
    """One tiny pipeline per family, built on first use and shared by the module's tests."""
    built: dict[Family, object] = {}

    def get(family: Family):
        if family not in built:
            built[family] = tiny_pipeline(family)
        return built[family]

    return get


def diffusers_embeds(pipe, family: Family, prompt: str, negative_prompt: str | None) -> tuple[torch.Tensor, ...]:
    """What diffusers' own encode_prompt gives (clip_skip unset, one image per prompt, with CFG)."""
    if family in XL:
        return pipe.encode_prompt(
            prompt,
            device="cpu",
            num_images_per_prompt=1,
            do_classifier_free_guidance=True,
            negative_prompt=negative_prompt,
        )
    return pipe.encode_prompt(prompt, "cpu", 1, True, negative_prompt=negative_prompt)


def as_tuple(cond) -> tuple[torch.Tensor, ...]:
    fields = (
        cond.prompt_embeds,
        cond.negative_prompt_embeds,
        cond.pooled_prompt_embeds,
        cond.negative_pooled_prompt_embeds,
    )
    return tuple(t for t in fields if t is not None)


@pytest.mark.parametrize("family", [Family.SD1, Family.SD2, Family.SDXL, Family.SDXL_REFINER], ids=lambda f: f.value)
def test_plain_prompt_equals_diffusers_encode_prompt(pipelines, family):
    pipe = pipelines(family)
    ours = as_tuple(encode_prompts(pipe, family, PROMPT, "blurry, low quality"))
    theirs = diffusers_embeds(pipe, family, PROMPT, "blurry, low quality")
    assert len(ours) == len(theirs)
    for mine, reference in zip(ours, theirs, strict=True):
        assert mine.shape == reference.shape and mine.dtype == reference.dtype
        assert torch.allclose(mine, reference, atol=0, rtol=0)


def test_sdxl_empty_negative_prompt_is_zeros_as_in_diffusers(pipelines):
    pipe = pipelines(Family.SDXL)
    cond = encode_prompts(pipe, Family.SDXL, PROMPT, "")
    assert not cond.negative_prompt_embeds.any() and not cond.negative_pooled_prompt_embeds.any()
    for mine, reference in zip(as_tuple(cond), diffusers_embeds(pipe, Family.SDXL, PROMPT, None), strict=True):
        assert torch.equal(mine, reference)


@pytest.mark.parametrize("family", [Family.SD1, Family.SDXL], ids=lambda f: f.value)
def test_100_token_prompt_gives_two_chunks_and_negative_is_padded_to_match(pipelines, family):
    pipe = pipelines(family)
    cond = encode_prompts(pipe, family, LONG_PROMPT, "blurry")
    width = 2048 if family is Family.SDXL else 768
    assert cond.prompt_embeds.shape == (1, 154, width)
    assert cond.negative_prompt_embeds.shape == (1, 154, width)
    # A1111 pads the shorter side with chunks of the empty prompt.
    empty = encode_prompts(pipe, family, "", "x").prompt_embeds
    assert torch.equal(cond.negative_prompt_embeds[:, 77:], empty)
    negative_alone = encode_prompts(pipe, family, "blurry", "x").prompt_embeds
    assert torch.equal(cond.negative_prompt_embeds[:, :77], negative_alone)
    if family is Family.SDXL:
        assert cond.pooled_prompt_embeds.shape == (1, 1280)


def test_longer_negative_pads_the_prompt(pipelines):
    cond = encode_prompts(pipelines(Family.SD1), Family.SD1, "cat", LONG_PROMPT)
    assert cond.prompt_embeds.shape == cond.negative_prompt_embeds.shape == (1, 154, 768)


def test_break_starts_a_new_chunk_encoded_on_its_own(pipelines):
    pipe = pipelines(Family.SD1)
    both = encode_prompts(pipe, Family.SD1, "a cat BREAK a dog", "").prompt_embeds
    assert both.shape == (1, 154, 768)
    assert torch.equal(both[:, :77], encode_prompts(pipe, Family.SD1, "a cat", "").prompt_embeds)
    assert torch.equal(both[:, 77:], encode_prompts(pipe, Family.SD1, "a dog", "").prompt_embeds)


@pytest.mark.parametrize("family", [Family.SD1, Family.SD2, Family.SDXL], ids=lambda f: f.value)
def test_weight_scales_the_token_then_restores_the_chunk_mean(pipelines, family):
    pipe = pipelines(family)
    plain = encode_prompts(pipe, family, "a cat on a hat", "").prompt_embeds[0]
    weighted = encode_prompts(pipe, family, "a (cat:1.5) on a hat", "").prompt_embeds[0]
    cat = 2  # BOS, "a", "cat"
    others = [i for i in range(77) if i != cat]
    # A1111's formula, per text encoder (SDXL: CLIP-L's 768 features, then OpenCLIP-G's 1280):
    # z * w, then z * (mean before / mean after).
    for features in [slice(0, 768), slice(768, None)] if family is Family.SDXL else [slice(None)]:
        z, z_weighted = plain[:, features], weighted[:, features]
        expected = z.clone()
        expected[cat] *= 1.5
        expected *= z.mean() / expected.mean()
        assert torch.allclose(z_weighted, expected, rtol=1e-4, atol=1e-6)  # a mean near 0 amplifies rounding
        assert torch.allclose(z_weighted.mean(), z.mean(), atol=1e-6)
        ratio_plain = z[cat].norm() / z[others].norm(dim=-1).mean()
        ratio_weighted = z_weighted[cat].norm() / z_weighted[others].norm(dim=-1).mean()
        assert ratio_weighted.item() == pytest.approx(1.5 * ratio_plain.item(), rel=1e-4)  # approx wants numbers


def test_weight_one_is_the_plain_word(pipelines):
    pipe = pipelines(Family.SD1)
    plain = encode_prompts(pipe, Family.SD1, "a cat on a hat", "")
    explicit = encode_prompts(pipe, Family.SD1, "a (cat:1.0) on a hat", "")
    assert torch.equal(plain.prompt_embeds, explicit.prompt_embeds)


def test_lora_tags_never_reach_the_text_encoder(pipelines):
    pipe = pipelines(Family.SD1)
    tagged = encode_prompts(pipe, Family.SD1, "a cat <lora:style:0.8>", "blurry <lora:neg:1>")
    plain = encode_prompts(pipe, Family.SD1, "a cat", "blurry")
    assert torch.equal(tagged.prompt_embeds, plain.prompt_embeds)
    assert torch.equal(tagged.negative_prompt_embeds, plain.negative_prompt_embeds)


def test_clip_skip_2_reads_the_layer_before_the_last_through_the_final_norm(pipelines):
    pipe = pipelines(Family.SD1)
    skip1 = encode_prompts(pipe, Family.SD1, PROMPT, "", clip_skip=1).prompt_embeds
    skip2 = encode_prompts(pipe, Family.SD1, PROMPT, "", clip_skip=2).prompt_embeds
    assert not torch.allclose(skip1, skip2)
    ids = pipe.tokenizer(PROMPT, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
        expected = pipe.text_encoder.final_layer_norm(hidden)
    assert torch.equal(skip2, expected)


@pytest.mark.parametrize(("family", "skip", "allowed"), [(Family.SD1, 3, "1..2"), (Family.SDXL, 2, "1..1")])
def test_clip_skip_beyond_the_encoder_is_refused_with_the_range(pipelines, family, skip, allowed):
    with pytest.raises(ValueError, match=rf"clip_skip: {skip} .*2 layers; allowed {allowed}"):
        encode_prompts(pipelines(family), family, PROMPT, "", clip_skip=skip)
    with pytest.raises(ValueError, match="clip_skip: 0"):
        encode_prompts(pipelines(family), family, PROMPT, "", clip_skip=0)


@pytest.mark.parametrize("family", [Family.FLUX, Family.SD3])
def test_a_family_without_clip_chunks_is_refused(family):
    allowed = "sd1, sd2, sdxl, sdxl_refiner"
    with pytest.raises(ValueError, match=f"family: A1111 prompt encoding supports {allowed}; got '{family.value}'"):
        encode_prompts(object(), family, PROMPT, "")


def test_batch_repeats_every_tensor(pipelines):
    cond = encode_prompts(pipelines(Family.SDXL), Family.SDXL, PROMPT, "blurry", batch=3)
    assert [t.shape[0] for t in as_tuple(cond)] == [3, 3, 3, 3]
    assert torch.equal(cond.prompt_embeds[0], cond.prompt_embeds[2])
    kwargs = cond.as_pipeline_kwargs()
    assert set(kwargs) == {
        "prompt_embeds",
        "negative_prompt_embeds",
        "pooled_prompt_embeds",
        "negative_pooled_prompt_embeds",
    }
    sd1 = encode_prompts(pipelines(Family.SD1), Family.SD1, PROMPT, "").as_pipeline_kwargs()
    assert set(sd1) == {"prompt_embeds", "negative_prompt_embeds"}


def run(pipe, **kwargs) -> np.ndarray:
    generator = torch.Generator("cpu").manual_seed(7)
    settings = dict(num_inference_steps=2, width=32, height=32, generator=generator, output_type="np")
    return pipe(**settings, **kwargs).images


@pytest.mark.slow
@pytest.mark.parametrize(
    ("family", "negative"),
    [(Family.SD1, "blurry"), (Family.SDXL, "blurry"), (Family.SDXL, "")],  # SD2 runs SD1's pipeline class
    ids=["sd1", "sdxl", "sdxl-empty-negative"],
)
def test_pipeline_given_our_kwargs_makes_the_same_image_as_given_strings(pipelines, family, negative):
    pipe = pipelines(family)
    cond = encode_prompts(pipe, family, PROMPT, negative)
    ours = run(pipe, **cond.as_pipeline_kwargs())
    # diffusers' own default for "no negative prompt" is None (SDXL then zeroes it, as we do for "").
    theirs = run(pipe, prompt=PROMPT, negative_prompt=negative or None)
    assert np.isfinite(ours).all()
    assert np.array_equal(ours, theirs)
