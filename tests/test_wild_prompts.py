"""Prompts from the wild (issue 13): an SDXL prompt past 77 tokens, which was right before and stays right.

A1111 splits a long prompt into 75-token chunks, encodes each on its own (BOS + 75 + EOS) and concatenates
them; SDXL's pooled embedding is the first chunk's. Both encoders (CLIP-L and bigG) follow the same chunks.
"""

from __future__ import annotations

import torch

from webui.engine.conditioning import encode_prompts
from webui.families import Family
from webui.testing.tiny import tiny_pipeline


def test_sdxl_prompt_past_77_tokens_is_two_chunks_each_encoded_alone():
    pipe = tiny_pipeline(Family.SDXL)
    ids = pipe.tokenizer("cat", add_special_tokens=False)["input_ids"]
    assert len(ids) == 1  # one token per word, so 100 words are 100 tokens
    long = encode_prompts(pipe, Family.SDXL, " ".join(["cat"] * 100), "")
    first = encode_prompts(pipe, Family.SDXL, " ".join(["cat"] * 75), "")
    rest = encode_prompts(pipe, Family.SDXL, " ".join(["cat"] * 25), "")
    assert long.prompt_embeds.shape == (1, 154, 2048)
    torch.testing.assert_close(long.prompt_embeds[:, :77], first.prompt_embeds, rtol=0, atol=0)
    torch.testing.assert_close(long.prompt_embeds[:, 77:], rest.prompt_embeds, rtol=0, atol=0)
    torch.testing.assert_close(long.pooled_prompt_embeds, first.pooled_prompt_embeds, rtol=0, atol=1e-6)
    assert torch.count_nonzero(long.negative_prompt_embeds) == 0 and long.negative_prompt_embeds.shape[1] == 154
    image = pipe(
        **long.as_pipeline_kwargs(), num_inference_steps=2, width=32, height=32, output_type="np",
        generator=torch.Generator().manual_seed(1),
    ).images  # fmt: skip
    assert image.shape == (1, 32, 32, 3) and bool((image == image).all())
