"""Prompt embeddings from the pipeline's own `encode_prompt` (T5 / CLIP / LLM, as the family says), cached per prompt.

Families whose description says `PipelineEncoding` take no A1111 weights or chunks: the text is what
diffusers encodes, so the result equals plain diffusers'. The embeddings of a prompt are kept in a small
LRU cache keyed by the text encoders' identities and LoRA state: a repeated prompt runs neither T5 nor
CLIP, which is what lets T5 (about 9.5 GB in bf16) rest in RAM under model offload.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import torch

DEFAULT_ENTRIES = 16


Embeds = dict[str, Any]  # pipeline argument -> a tensor, or a list of tensors (one per prompt, Z-Image)


@dataclass(frozen=True)
class PlainConditioning:
    """What the pipeline call takes instead of prompt strings, by its argument names (`prompt_embeds`,
    `pooled_prompt_embeds`, `prompt_attention_mask`, ...); the negative's under `negative_<name>`, only when
    CFG uses them."""

    positive: Embeds
    negative: Embeds | None = None

    def as_pipeline_kwargs(self) -> dict[str, Any]:
        kwargs = dict(self.positive)
        if self.negative is not None:
            kwargs.update({f"negative_{name}": value for name, value in self.negative.items()})
        return kwargs


def _moved(value: Any, device: Any) -> Any:
    if isinstance(value, list | tuple):
        return [item.to(device) for item in value]
    return value.to(device)


def _detached(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [item.detach().cpu() for item in value]
    return value.detach().cpu()


@dataclass
class EmbeddingCache:
    """LRU of (sequence, pooled) embeddings per (encoders, LoRA state, sequence length, prompt), on the CPU.

    `hits` / `misses` count look-ups (the bench reports the reuse)."""

    entries: int = DEFAULT_ENTRIES
    hits: int = 0
    misses: int = 0
    _store: OrderedDict[Hashable, Embeds] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, key: Hashable) -> Embeds | None:
        with self._lock:
            found = self._store.get(key)
            if found is None:
                self.misses += 1
                return None
            self._store.move_to_end(key)
            self.hits += 1
            return found

    def put(self, key: Hashable, value: Embeds) -> None:
        with self._lock:
            self._store[key] = value
            self._store.move_to_end(key)
            while len(self._store) > self.entries:
                self._store.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._store.clear()


Encode = Callable[[Any, str, Any, int], Embeds]


def _encode_one(
    pipeline: Any, encode: Encode, prompt: str, max_length: int, cache: EmbeddingCache | None, identity: Hashable
) -> Embeds:
    key = (identity, max_length, prompt)
    found = cache.get(key) if cache is not None else None
    device = pipeline._execution_device  # where diffusers itself runs the encoders (offload-aware)
    if found is not None:
        return {name: _moved(value, device) for name, value in found.items()}
    with torch.no_grad():
        embeds = encode(pipeline, prompt, device, max_length)
    if cache is not None:
        cache.put(key, {name: _detached(value) for name, value in embeds.items()})
    return embeds


def _repeated(value: Any, batch: int) -> Any:
    if isinstance(value, list | tuple):
        return list(value) * batch
    return value.repeat(batch, *[1] * (value.ndim - 1))


def encode_with_pipeline(
    pipeline: Any,
    prompt: str,
    negative_prompt: str,
    *,
    encode: Encode,
    use_negative: bool,
    max_length: int,
    batch: int = 1,
    cache: EmbeddingCache | None = None,
    identity: Hashable = None,
) -> PlainConditioning:
    """Embeddings for `prompt` (and `negative_prompt` when `use_negative`), each repeated `batch` times.

    `encode(pipeline, prompt, device, max_length) -> {argument: tensor}` is the family's adapter over its
    pipeline's `encode_prompt` (`PipelineEncoding.encode`). The texts come without extra-network tags (the
    engine removes them: the LoRA stack reads them); `identity` names the text encoders and their LoRA state in
    the cache key. `max_length`: the T5 / LLM sequence length (FLUX.1 dev 512, schnell 256, SD3 256)."""
    if batch < 1:
        raise ValueError(f"batch: {batch} is out of range; allowed 1 and more")
    positive = _encode_one(pipeline, encode, prompt, max_length, cache, identity)
    negative = None
    if use_negative:
        negative = _encode_one(pipeline, encode, negative_prompt, max_length, cache, identity)
        negative = {name: _repeated(value, batch) for name, value in negative.items()}
    return PlainConditioning({name: _repeated(value, batch) for name, value in positive.items()}, negative)
