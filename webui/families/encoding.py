"""Each pipeline-encoded family's adapter over its diffusers pipeline's `encode_prompt`: one prompt in, the
pipeline call's embedding arguments out (`PipelineEncoding.encode` names one of these).

The pipelines' `encode_prompt` signatures and return tuples differ (diffusers 0.42: FluxPipeline,
StableDiffusion3Pipeline, ChromaPipeline, ZImagePipeline); each adapter calls it as the pipeline's own
`__call__` would for a positive prompt without CFG, so the embeddings equal plain diffusers'.
"""

from __future__ import annotations

from typing import Any


def flux(pipeline: Any, prompt: str, device: Any, max_length: int) -> dict[str, Any]:
    """FLUX.1: T5 sequence (`prompt_embeds`, (1, tokens, 4096)) and CLIP-L pooled (`pooled_prompt_embeds`, (1, 768))."""
    embeds, pooled, _ids = pipeline.encode_prompt(
        prompt=prompt, prompt_2=None, device=device, num_images_per_prompt=1, max_sequence_length=max_length
    )
    return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}


def sd3(pipeline: Any, prompt: str, device: Any, max_length: int) -> dict[str, Any]:
    """SD3: CLIP-L and CLIP-G penultimate states side by side, padded to T5's width, then T5's tokens
    (`prompt_embeds`, (1, 77 + tokens, 4096); zeros for T5 when the pipeline has none) and both pooled
    outputs (`pooled_prompt_embeds`, (1, 2048))."""
    embeds, _negative, pooled, _negative_pooled = pipeline.encode_prompt(
        prompt=prompt,
        prompt_2=None,
        prompt_3=None,
        device=device,
        num_images_per_prompt=1,
        do_classifier_free_guidance=False,
        max_sequence_length=max_length,
    )
    return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}


def chroma(pipeline: Any, prompt: str, device: Any, max_length: int) -> dict[str, Any]:
    """Chroma: T5's tokens (`prompt_embeds`, (1, tokens, 4096)) and the attention mask the pipeline builds for
    them (`prompt_attention_mask`: the text up to its first padding token)."""
    embeds, _ids, mask, *_negative = pipeline.encode_prompt(
        prompt=prompt,
        negative_prompt=None,
        device=device,
        num_images_per_prompt=1,
        do_classifier_free_guidance=False,
        max_sequence_length=max_length,
    )
    return {"prompt_embeds": embeds, "prompt_attention_mask": mask}


def z_image(pipeline: Any, prompt: str, device: Any, max_length: int) -> dict[str, Any]:
    """Z-Image: the Qwen3 hidden states of the chat-templated prompt, one (tokens, width) tensor per prompt
    without padding (`prompt_embeds`, a list)."""
    embeds, _negative = pipeline.encode_prompt(
        prompt=prompt, device=device, do_classifier_free_guidance=False, max_sequence_length=max_length
    )
    return {"prompt_embeds": list(embeds)}
