"""Prompt embeddings from the pipeline's own `encode_prompt` (FLUX.1: T5 sequence + CLIP pooled), cached per prompt.

Families whose description says `PipelineEncoding` take no A1111 weights or chunks: the text is what
diffusers encodes, so the result equals plain diffusers'. The embeddings of a prompt are kept in a small
LRU cache keyed by the text encoders' identities and LoRA state: a repeated prompt runs neither T5 nor
CLIP, which is what lets T5 (about 9.5 GB in bf16) rest in RAM under model offload.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import torch

DEFAULT_ENTRIES = 16


@dataclass(frozen=True)
class PlainConditioning:
    """What the pipeline call takes instead of prompt strings; negatives only when true CFG uses them."""

    prompt_embeds: torch.Tensor
    pooled_prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor | None = None
    negative_pooled_prompt_embeds: torch.Tensor | None = None

    def as_pipeline_kwargs(self) -> dict[str, torch.Tensor]:
        kwargs = {"prompt_embeds": self.prompt_embeds, "pooled_prompt_embeds": self.pooled_prompt_embeds}
        if self.negative_prompt_embeds is not None:
            kwargs["negative_prompt_embeds"] = self.negative_prompt_embeds
            kwargs["negative_pooled_prompt_embeds"] = self.negative_pooled_prompt_embeds
        return kwargs


@dataclass
class EmbeddingCache:
    """LRU of (sequence, pooled) embeddings per (encoders, LoRA state, sequence length, prompt), on the CPU.

    `hits` / `misses` count look-ups (the bench reports the reuse)."""

    entries: int = DEFAULT_ENTRIES
    hits: int = 0
    misses: int = 0
    _store: OrderedDict[Hashable, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, key: Hashable) -> tuple[torch.Tensor, torch.Tensor] | None:
        with self._lock:
            found = self._store.get(key)
            if found is None:
                self.misses += 1
                return None
            self._store.move_to_end(key)
            self.hits += 1
            return found

    def put(self, key: Hashable, value: tuple[torch.Tensor, torch.Tensor]) -> None:
        with self._lock:
            self._store[key] = value
            self._store.move_to_end(key)
            while len(self._store) > self.entries:
                self._store.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._store.clear()


def _encode_one(
    pipeline: Any, prompt: str, max_length: int, cache: EmbeddingCache | None, identity: Hashable
) -> tuple[torch.Tensor, torch.Tensor]:
    key = (identity, max_length, prompt)
    found = cache.get(key) if cache is not None else None
    device = pipeline._execution_device  # where diffusers itself runs the encoders (offload-aware)
    if found is not None:
        return found[0].to(device), found[1].to(device)
    with torch.no_grad():
        embeds, pooled, _ids = pipeline.encode_prompt(
            prompt=prompt, prompt_2=None, device=device, num_images_per_prompt=1, max_sequence_length=max_length
        )
    if cache is not None:
        cache.put(key, (embeds.detach().cpu(), pooled.detach().cpu()))
    return embeds, pooled


def encode_with_pipeline(
    pipeline: Any,
    prompt: str,
    negative_prompt: str,
    *,
    use_negative: bool,
    max_length: int,
    batch: int = 1,
    cache: EmbeddingCache | None = None,
    identity: Hashable = None,
) -> PlainConditioning:
    """Embeddings for `prompt` (and `negative_prompt` when `use_negative`), each repeated `batch` times.

    The texts come without extra-network tags (the engine removes them: the LoRA stack reads them); `identity`
    names the text encoders and their LoRA state in the cache key. `max_length`: the T5 sequence length
    (FLUX.1 dev 512, schnell 256)."""
    if batch < 1:
        raise ValueError(f"batch: {batch} is out of range; allowed 1 and more")
    embeds, pooled = _encode_one(pipeline, prompt, max_length, cache, identity)
    negative = negative_pooled = None
    if use_negative:
        negative, negative_pooled = _encode_one(pipeline, negative_prompt, max_length, cache, identity)

    def repeat(tensor: torch.Tensor | None) -> torch.Tensor | None:
        return None if tensor is None else tensor.repeat(batch, *[1] * (tensor.ndim - 1))

    return PlainConditioning(repeat(embeds), repeat(pooled), repeat(negative), repeat(negative_pooled))
