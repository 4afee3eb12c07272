"""Prompt embeddings as A1111 makes them (75-token chunks, weights, clip skip), in diffusers' pipeline kwargs.

For a plain prompt (no weights, at most 75 tokens, clip skip 1) the result equals diffusers' own
`encode_prompt`, so passing it to the pipeline changes nothing but what plain diffusers cannot do.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch

from webui.engine.embeddings import EmbeddingSet, EmbeddingUse, WidthMatcher
from webui.engine.extra_networks import extract_lora_tags
from webui.engine.limits import check_chunks
from webui.engine.prompts import CHUNK_LENGTH, PromptChunk, Tokenizer, chunk_prompt
from webui.families import DESCRIPTIONS, Family
from webui.families.base import ClipChunks

CHUNK_TOKENS = CHUNK_LENGTH + 2  # BOS + 75 + EOS


@dataclass(frozen=True)
class Conditioning:
    """Text conditioning for one batch: (batch, 77 × chunks, width) embeddings; pooled ones for SDXL."""

    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor
    pooled_prompt_embeds: torch.Tensor | None = None
    negative_pooled_prompt_embeds: torch.Tensor | None = None

    def as_pipeline_kwargs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments for a diffusers SD / SDXL pipeline call, in place of prompt= and negative_prompt=."""
        kwargs = {"prompt_embeds": self.prompt_embeds, "negative_prompt_embeds": self.negative_prompt_embeds}
        if self.pooled_prompt_embeds is not None:
            kwargs["pooled_prompt_embeds"] = self.pooled_prompt_embeds
            kwargs["negative_pooled_prompt_embeds"] = self.negative_pooled_prompt_embeds
        return kwargs


@dataclass(frozen=True)
class _Encoder:
    """One text encoder and how its hidden states become conditioning."""

    tokenizer: Tokenizer
    model: torch.nn.Module  # CLIPTextModel or CLIPTextModelWithProjection
    layer_from_end: int  # 1: the last hidden state
    final_norm: bool  # SD1/SD2 apply final_layer_norm; SDXL reads the raw hidden state
    pooled: bool = False  # SDXL: this encoder's text_embeds of the first chunk are the pooled output
    matcher: WidthMatcher | None = None  # textual-inversion embeddings this encoder can take


@dataclass(frozen=True)
class Encoded:
    """One text's conditioning: (1, 77 × chunks, width) embeddings, and the pooled output (SDXL) or None."""

    embeds: torch.Tensor
    pooled: torch.Tensor | None


class PromptEncoder:
    """A pipeline's tokenizer(s) and text encoder(s), read the A1111 way: `encode(text)` for one prompt text
    (attention weights, BREAK, embeddings and chunks resolved; no tags, comments or scheduling left)."""

    def __init__(
        self,
        pipeline: Any,
        family: Family,
        clip_skip: int = 1,
        embeddings: EmbeddingSet | None = None,
        use: EmbeddingUse | None = None,
    ) -> None:
        strategy = family.description.conditioning
        if not isinstance(strategy, ClipChunks):
            allowed = ", ".join(d.id for d in DESCRIPTIONS if isinstance(d.conditioning, ClipChunks))
            raise ValueError(f"family: A1111 prompt encoding supports {allowed}; got {family.value!r}")
        encoders = _encoders(pipeline, family, strategy, clip_skip)
        if embeddings is not None:
            use = use if use is not None else EmbeddingUse()
            widths = tuple(_text_model(e.model).config.hidden_size for e in encoders)
            encoders = [
                replace(e, matcher=embeddings.matcher(e.tokenizer, width, widths, use))
                for e, width in zip(encoders, widths, strict=True)
            ]
        self.encoders = encoders
        self.device = pipeline._execution_device  # where diffusers itself sends the token ids (offload-aware)
        # diffusers' and A1111's default for such models (SDXL): an empty negative prompt is all zeros
        self.zero_empty_negative = strategy.zero_empty_negative and _config(pipeline, "force_zeros_for_empty_prompt")

    def encode(self, text: str, field: str = "prompt") -> Encoded:
        """`field` names the request field `text` comes from, for the chunk limit's message."""
        with torch.no_grad():
            return _encode(self.encoders, text, self.device, field)

    def negative(self, text: str, like: Encoded) -> Encoded:
        """The negative prompt's conditioning; an empty one is zeros shaped like `like` where the family says so."""
        if self.zero_empty_negative and not text:
            return Encoded(torch.zeros_like(like.embeds), _zeros_like(like.pooled))
        return self.encode(text, "negative_prompt")

    def same_length(self, positive: Encoded, negative: Encoded) -> tuple[Encoded, Encoded]:
        """Pad the shorter conditioning with empty-prompt chunks, as A1111's `pad_cond_uncond` does."""
        with torch.no_grad():
            return _same_length(self.encoders, positive, negative, self.device)


def encode_prompts(
    pipeline: Any,
    family: Family,
    prompt: str,
    negative_prompt: str,
    clip_skip: int = 1,
    batch: int = 1,
    embeddings: EmbeddingSet | None = None,
    use: EmbeddingUse | None = None,
) -> Conditioning:
    """Encode `prompt` and `negative_prompt` with `pipeline`'s tokenizer(s) and text encoder(s), A1111 style.

    `clip_skip` counts as in A1111: 1 is the last layer, 2 the one before. Extra-network tags (`<lora:…>`) are
    removed from the text (the LoRA stack reads them separately). Each tensor is repeated `batch` times.
    Scheduling (`[a:b:5]`) and `AND` are not read here: `prompt_conditioning` builds those from a plan.
    """
    if batch < 1:
        raise ValueError(f"batch: {batch} is out of range; allowed 1 and more")
    encoder = PromptEncoder(pipeline, family, clip_skip, embeddings, use)
    positive = encoder.encode(extract_lora_tags(prompt)[0])
    negative = encoder.negative(extract_lora_tags(negative_prompt)[0], positive)
    return conditioning_of(*encoder.same_length(positive, negative), batch)


def conditioning_of(positive: Encoded, negative: Encoded, batch: int) -> Conditioning:
    """The pipeline's conditioning for `batch` images from one positive and one negative of the same length."""

    def repeat(tensor: torch.Tensor | None) -> torch.Tensor | None:
        return None if tensor is None else tensor.repeat(batch, *[1] * (tensor.ndim - 1))

    return Conditioning(
        prompt_embeds=repeat(positive.embeds),
        negative_prompt_embeds=repeat(negative.embeds),
        pooled_prompt_embeds=repeat(positive.pooled),
        negative_pooled_prompt_embeds=repeat(negative.pooled),
    )


def _encoders(pipeline: Any, family: Family, strategy: ClipChunks, clip_skip: int) -> list[_Encoder]:
    """The family's encoders present in the pipeline, each with the hidden layer its conditioning is read from."""
    encoders = [
        _Encoder(getattr(pipeline, spec.tokenizer), model, clip_skip + strategy.clip_skip_offset, strategy.final_norm)
        for spec in family.description.text_encoders
        if (model := getattr(pipeline, spec.role.value, None)) is not None
    ]
    if strategy.pooled:
        encoders[-1] = replace(encoders[-1], pooled=True)  # the last encoder's text_embeds
    for encoder in encoders:
        layers = _text_model(encoder.model).config.num_hidden_layers
        highest = layers - encoder.layer_from_end + clip_skip  # the skip that reads the first layer's output
        if not 1 <= clip_skip <= highest:
            raise ValueError(
                f"clip_skip: {clip_skip} is out of range for this {family.value} text encoder with {layers} layers;"
                f" allowed 1..{highest}"
            )
    return encoders


def _encode(encoders: list[_Encoder], prompt: str, device: torch.device, field: str = "prompt") -> Encoded:
    chunk_lists = [chunk_prompt(encoder.tokenizer, prompt, encoder.matcher) for encoder in encoders]
    check_chunks(field, max(len(chunks) for chunks in chunk_lists))  # before any encoder allocates for them
    if len({len(chunks) for chunks in chunk_lists}) > 1:
        raise ValueError(
            f"prompt {prompt!r}: the tokenizers split it into {[len(c) for c in chunk_lists]} chunks;"
            " the text encoders' tokenizers must share one vocabulary"
        )
    parts, pooled = [], None
    for encoder, chunks in zip(encoders, chunk_lists, strict=True):
        embeds, encoder_pooled = _encode_chunks(encoder, chunks, device)
        parts.append(embeds)
        pooled = encoder_pooled if encoder.pooled else pooled
    # diffusers casts to the (last) text encoder's dtype: text_encoder for SD1/SD2, text_encoder_2 for SDXL.
    return Encoded(torch.cat(parts, dim=-1).to(_dtype(encoders[-1].model)), pooled)


def _encode_chunks(
    encoder: _Encoder, chunks: list[PromptChunk], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(1, 77 × chunks, width) conditioning from one encoder, and its pooled output for the first chunk."""
    tokenizer = encoder.tokenizer
    padded = [chunk.padded(tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) for chunk in chunks]
    ids = torch.tensor([ids for ids, _ in padded], device=device)
    with _embeddings_placed(encoder, chunks):
        output = encoder.model(ids, output_hidden_states=True)  # all chunks in one batch
    if encoder.layer_from_end == 1 and encoder.final_norm:
        hidden = output.last_hidden_state
    else:
        hidden = output.hidden_states[-encoder.layer_from_end]
        if encoder.final_norm:
            hidden = _text_model(encoder.model).final_layer_norm(hidden)
    hidden = _emphasize(hidden, [weights for _, weights in padded])
    pooled = output.text_embeds[:1] if encoder.pooled else None
    return hidden.reshape(1, -1, hidden.shape[-1]), pooled


@contextmanager
def _embeddings_placed(encoder: _Encoder, chunks: list[PromptChunk]) -> Iterator[None]:
    """Put textual-inversion vectors where the chunks' placeholders are, via a hook on the token embedding."""
    fixes = [(row, offset, name) for row, chunk in enumerate(chunks) for offset, name in chunk.fixes]
    if not fixes or encoder.matcher is None:
        yield
        return
    matcher = encoder.matcher

    def place(_module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        for row, offset, name in fixes:
            vectors = matcher.vectors(name).to(device=output.device, dtype=output.dtype)
            output[row, 1 + offset : 1 + offset + vectors.shape[0]] = vectors  # + 1: after BOS
        return output

    handle = _text_model(encoder.model).embeddings.token_embedding.register_forward_hook(place)
    try:
        yield
    finally:
        handle.remove()


def _emphasize(hidden: torch.Tensor, weights: list[list[float]]) -> torch.Tensor:
    """A1111's "Original" emphasis: scale each token by its weight, then restore each chunk's mean."""
    if all(weight == 1.0 for chunk in weights for weight in chunk):
        return hidden  # exactly what diffusers computes, not merely within rounding
    multipliers = torch.tensor(weights, device=hidden.device, dtype=torch.float32)[:, :, None]
    original = hidden.float()
    weighted = original * multipliers
    weighted = weighted * (original.mean(dim=(1, 2), keepdim=True) / weighted.mean(dim=(1, 2), keepdim=True))
    return weighted.to(hidden.dtype)


def _same_length(
    encoders: list[_Encoder], positive: Encoded, negative: Encoded, device: torch.device
) -> tuple[Encoded, Encoded]:
    """Pad the shorter conditioning with empty-prompt chunks, as A1111's `pad_cond_uncond` does."""
    extra = (positive.embeds.shape[1] - negative.embeds.shape[1]) // CHUNK_TOKENS
    if extra == 0:
        return positive, negative
    empty = _encode(encoders, "", device, "negative_prompt").embeds.repeat(1, abs(extra), 1)
    if extra > 0:
        return positive, Encoded(torch.cat([negative.embeds, empty], dim=1), negative.pooled)
    return Encoded(torch.cat([positive.embeds, empty], dim=1), positive.pooled), negative


def _text_model(model: torch.nn.Module) -> Any:
    """The CLIPTextModel inside: transformers 5's CLIPTextModel is one; CLIPTextModelWithProjection holds one."""
    return getattr(model, "text_model", model)


def _dtype(model: torch.nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def _zeros_like(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else torch.zeros_like(tensor)


def _config(pipeline: Any, key: str) -> bool:
    return bool(getattr(pipeline.config, key, False))
