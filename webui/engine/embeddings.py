"""Textual-inversion embeddings: vectors read safely from `embeddings/`, matched by name in prompts.

A prompt uses an embedding by writing its file name. Vectors are chosen by the text encoder's
width (768 CLIP-L, 1024 OpenCLIP-H, 1280 bigG), so an SDXL pair feeds both encoders and an
embedding made for another family is reported as skipped instead of silently ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from webui.engine.prompts import EmbeddingMatch
from webui.families.encoders import ENCODERS
from webui.models.family_tables import embedding_keys


def _keyed_tensors() -> dict[int, str]:
    """Encoder width -> tensor name, for families whose embeddings hold one named tensor per text encoder
    (from their descriptions: `clip_l` + `clip_g`)."""
    return {ENCODERS[encoder].width: key for _, keys in embedding_keys() for encoder, key in keys}


@dataclass(frozen=True)
class Embedding:
    name: str
    path: Path
    vectors: dict[int, torch.Tensor]  # encoder width → (n, width)

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(sorted(self.vectors))


def load_embedding(path: Path) -> Embedding:
    """Read an embedding file in A1111 (`emb_params`, `string_to_param`) or SDXL (`clip_l` + `clip_g`) form."""
    from webui.models.files import load_state_dict

    state = load_state_dict(path)
    vectors: dict[int, torch.Tensor] = {}
    keyed = _keyed_tensors()
    if any(key in state for key in keyed.values()):
        for width, key in keyed.items():
            if key in state:
                vectors[width] = state[key].float()
    else:
        tensor = state.get("emb_params")
        if tensor is None:
            tensor = next((v for k, v in state.items() if k.startswith("string_to_param.")), None)
        if tensor is None:
            raise ValueError(f"{path.name}: no embedding vectors (emb_params, string_to_param, clip_l/clip_g)")
        tensor = tensor.float().reshape(-1, tensor.shape[-1])
        vectors[tensor.shape[-1]] = tensor
    return Embedding(path.stem, path, vectors)


@dataclass
class EmbeddingUse:
    """What a prompt used: embeddings applied, and those skipped with the reason."""

    used: dict[str, Path] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


class EmbeddingSet:
    """The embeddings a request can use; vectors are loaded on first use and kept (they are tiny)."""

    def __init__(self, available: Callable[[], Iterable[Path]]) -> None:
        self._available = available
        self._loaded: dict[tuple[str, int], Embedding] = {}

    def _embedding(self, path: Path) -> Embedding:
        key = (str(path), path.stat().st_mtime_ns)
        if key not in self._loaded:
            self._loaded[key] = load_embedding(path)
        return self._loaded[key]

    def matcher(self, tokenizer, width: int, all_widths: tuple[int, ...], use: EmbeddingUse) -> WidthMatcher:  # noqa: ANN001
        """A matcher for one encoder; an embedding must have vectors for every encoder of the model."""
        paths = {path.stem: path for path in self._available()}
        return WidthMatcher(tokenizer, width, all_widths, paths, self._embedding, use)


class WidthMatcher:
    """Finds embedding names in a token stream for one encoder; the `EmbeddingMatcher` of prompts.py."""

    def __init__(  # noqa: ANN001
        self, tokenizer, width: int, all_widths: tuple[int, ...], paths: dict[str, Path], load, use: EmbeddingUse
    ) -> None:
        self.width, self.all_widths, self._paths, self._load, self.use = width, all_widths, paths, load, use
        names = sorted(paths, key=len, reverse=True)
        ids = tokenizer(names, add_special_tokens=False, verbose=False)["input_ids"] if names else []
        by_first: dict[int, list[tuple[tuple[int, ...], str]]] = {}
        for name, tokens in zip(names, ids, strict=True):
            if tokens:
                by_first.setdefault(tokens[0], []).append((tuple(tokens), name))
        for candidates in by_first.values():
            candidates.sort(key=lambda item: len(item[0]), reverse=True)  # the longest name wins
        self._by_first = by_first

    def match(self, tokens: Sequence[int], position: int) -> EmbeddingMatch | None:
        for candidate, name in self._by_first.get(tokens[position], ()):
            if tuple(tokens[position : position + len(candidate)]) != candidate:
                continue
            embedding = self._load(self._paths[name])
            if any(width not in embedding.vectors for width in self.all_widths):
                have = "+".join(map(str, embedding.widths))
                need = "+".join(map(str, self.all_widths))
                self.use.skipped[name] = f"its vectors are for text encoder width {have}; this model needs {need}"
                return None
            self.use.used[name] = embedding.path
            return EmbeddingMatch(name, embedding.vectors[self.width].shape[0], len(candidate))
        return None

    def vectors(self, name: str) -> torch.Tensor:
        return self._load(self._paths[name]).vectors[self.width]
