"""Per-step conditioning: prompt editing and AND inside a diffusers pipeline call give what a reference gives."""

from __future__ import annotations

import diffusers
import pytest
import torch

from webui.engine.conditioning import PromptEncoder, encode_prompts
from webui.engine.prompt_conditioning import ConditioningHook, encode_plan
from webui.engine.prompt_plan import plan_prompt
from webui.families import Family
from webui.testing.tiny_models import tiny_pipeline

STEPS = 4
SIZE = 64
SEED = 3


@pytest.fixture(scope="module")
def pipelines():
    cache = {}

    def get(family: Family):
        if family not in cache:
            pipe = tiny_pipeline(family)
            pipe.set_progress_bar_config(disable=True)
            cache[family] = pipe
        return cache[family]

    return get


def run(pipe, conditioning_kwargs: dict, cfg: float = 5.0, **kwargs) -> torch.Tensor:
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)  # one UNet call per step
    return pipe(
        **conditioning_kwargs,
        num_inference_steps=STEPS,
        guidance_scale=cfg,
        width=SIZE,
        height=SIZE,
        generator=torch.Generator("cpu").manual_seed(SEED),
        output_type="latent",
        **kwargs,
    ).images


def ours(pipe, family: Family, prompt: str, negative: str = "blurry", cfg: float = 5.0) -> torch.Tensor:
    plan = plan_prompt(prompt, negative, STEPS)
    conditioning = encode_plan(PromptEncoder(pipe, family), plan, 1)
    if conditioning.plain:
        return run(pipe, conditioning.first().as_pipeline_kwargs(), cfg)
    with ConditioningHook(conditioning, cfg).installed(pipe.unet):
        return run(pipe, conditioning.first().as_pipeline_kwargs(), cfg)


@pytest.mark.parametrize("family", [Family.SD1, Family.SDXL])
def test_prompt_editing_equals_swapping_the_embeddings_between_steps(pipelines, family):
    """Reference: diffusers' own callback_on_step_end swaps the pipeline's embeddings where A1111 switches:
    "[cat:dog:2]" over 4 steps is "cat" for model calls 0..2 and "dog" for call 3."""
    pipe = pipelines(family)
    cat = encode_prompts(pipe, family, "a cat", "blurry")
    dog = encode_prompts(pipe, family, "a dog", "blurry")

    def swap(_pipe, step: int, _timestep, tensors: dict) -> dict:
        if step == 2:  # after call 2, before call 3
            tensors["prompt_embeds"] = torch.cat([dog.negative_prompt_embeds, dog.prompt_embeds])
            if family is Family.SDXL:
                tensors["add_text_embeds"] = torch.cat([dog.negative_pooled_prompt_embeds, dog.pooled_prompt_embeds])
        return tensors

    names = ["prompt_embeds", "add_text_embeds"] if family is Family.SDXL else ["prompt_embeds"]
    reference = run(pipe, cat.as_pipeline_kwargs(), callback_on_step_end=swap, callback_on_step_end_tensor_inputs=names)
    edited = ours(pipe, family, "a [cat:dog:2]")
    torch.testing.assert_close(edited, reference, rtol=1e-5, atol=1e-6)
    assert (edited - run(pipe, cat.as_pipeline_kwargs())).abs().max() > 1e-4  # the swap changed something


def test_and_combines_the_parts_as_composable_diffusion(pipelines):
    """Reference: a hand-written denoising loop calling the UNet on each part separately and combining
    uncond + cfg · Σ weight · (cond − uncond) (Liu et al. 2022; A1111's combine_denoised)."""
    family = Family.SD1
    pipe = pipelines(family)
    cfg = 5.0
    parts = [encode_prompts(pipe, family, text, "blurry") for text in ("a cat", "a dog")]
    weights = [1.0, 0.5]
    scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(STEPS)
    shape = (1, pipe.unet.config.in_channels, SIZE // pipe.vae_scale_factor, SIZE // pipe.vae_scale_factor)
    latents = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(SEED)) * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:
            model_input = scheduler.scale_model_input(latents, t)
            uncond = pipe.unet(model_input, t, encoder_hidden_states=parts[0].negative_prompt_embeds).sample
            guided = uncond.clone()
            for weight, part in zip(weights, parts, strict=True):
                cond = pipe.unet(model_input, t, encoder_hidden_states=part.prompt_embeds).sample
                guided += cfg * weight * (cond - uncond)
            latents = scheduler.step(guided, t, latents).prev_sample
    torch.testing.assert_close(ours(pipe, family, "a cat AND a dog:0.5", cfg=cfg), latents, rtol=1e-4, atol=1e-4)


def test_a_single_parts_weight_scales_the_guidance(pipelines):
    pipe = pipelines(Family.SD1)
    torch.testing.assert_close(ours(pipe, Family.SD1, "a cat:2", cfg=3.0), ours(pipe, Family.SD1, "a cat", cfg=6.0))


def test_equal_halves_of_one_prompt_are_that_prompt(pipelines):
    pipe = pipelines(Family.SDXL)
    halves = ours(pipe, Family.SDXL, "a cat :0.5 AND a cat :0.5")
    torch.testing.assert_close(halves, ours(pipe, Family.SDXL, "a cat"), rtol=1e-4, atol=1e-5)


def test_and_works_without_classifier_free_guidance(pipelines):
    """At CFG 1 diffusers skips the unconditional pass; an AND prompt still needs it (A1111 always runs it)."""
    pipe = pipelines(Family.SD1)
    both = ours(pipe, Family.SD1, "a cat AND a dog", cfg=1.0)
    assert torch.isfinite(both).all()
    assert (both - ours(pipe, Family.SD1, "a cat", cfg=1.0)).abs().max() > 1e-4


def test_a_negative_prompt_can_be_edited_too(pipelines):
    pipe = pipelines(Family.SD1)
    edited = ours(pipe, Family.SD1, "a cat", negative="[blurry:sharp:2]")
    assert (edited - ours(pipe, Family.SD1, "a cat", negative="blurry")).abs().max() > 1e-4
    assert (edited - ours(pipe, Family.SD1, "a cat", negative="sharp")).abs().max() > 1e-4


def test_parts_of_different_lengths_are_padded_as_a1111(pipelines):
    pipe = pipelines(Family.SD1)
    plan = plan_prompt("a cat AND " + "dog " * 90, "", STEPS)
    conditioning = encode_plan(PromptEncoder(pipe, Family.SD1), plan, 2)
    uncond, conds = conditioning.at_call(0)
    assert [c.embeds.shape[1] for _, c in conds] == [154, 154] and uncond.embeds.shape[1] == 154
    short = encode_prompts(pipe, Family.SD1, "a cat", "").prompt_embeds
    torch.testing.assert_close(conds[0][1].embeds[:, :77], short)
    torch.testing.assert_close(conds[0][1].embeds[:, 77:], short[:, -1:].repeat(1, 77, 1))  # last vector repeated
    assert conditioning.first().prompt_embeds.shape[0] == 2  # repeated for the batch
