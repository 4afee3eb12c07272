"""Textual-inversion embeddings: vectors read safely from `embeddings/`, matched by name in prompts.

A prompt uses an embedding by writing its file name (A1111) or, for a diffusers file, the token it was
trained as (`<cat-toy>`, as diffusers' `load_textual_inversion` names it). Vectors are chosen by the text
encoder's width (768 CLIP-L, 1024 OpenCLIP-H, 1280 bigG), so an SDXL pair feeds both encoders; an embedding
made for another family, or one whose file cannot be read, is reported as skipped with the reason instead of
silently ignored or failing the whole generation.

Layouts read: A1111's `emb_params` and `string_to_param.*` (also the original textual-inversion repo's
pickles, whose `string_to_param` is a `torch.nn.ParameterDict`), one named tensor per text encoder (SDXL's
`clip_l` + `clip_g`), and diffusers' `learned_embeds.bin` / `.safetensors`: `{"<token>": (width,) or (n, width)}`.
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
    token: str | None = None  # the token a diffusers file was trained as (`<cat-toy>`), also usable in prompts

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(sorted(self.vectors))


def load_embedding(path: Path) -> Embedding:
    """Read an embedding file in any layout of the module docstring.

    Raises ModelFileError for a file that cannot be read safely and ValueError for one holding no vectors."""
    from webui.models.files import load_state_dict

    state = load_state_dict(path)
    keyed = _keyed_tensors()
    if any(key in state for key in keyed.values()):
        vectors = {width: state[key].float() for width, key in keyed.items() if key in state}
        return Embedding(path.stem, path, vectors)
    tensor = state.get("emb_params")
    if tensor is None:
        tensor = next((v for k, v in state.items() if k.startswith("string_to_param.")), None)
    token = None
    if tensor is None and len(state) == 1:  # diffusers: {"<token>": vectors}
        token, tensor = next(iter(state.items()))
    if tensor is None or tensor.ndim not in (1, 2):
        found = ", ".join(sorted(state)[:4]) or "no tensors"
        raise ValueError(
            f"{path.name}: no embedding vectors (looked for emb_params, string_to_param.*, clip_l/clip_g, or one "
            f"diffusers token tensor; found {found})"
        )
    tensor = tensor.float().reshape(-1, tensor.shape[-1])
    return Embedding(path.stem, path, {tensor.shape[-1]: tensor}, token=token)


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
        """The file's vectors, loaded once per file version; raises what `load_embedding` raises."""
        key = (str(path), path.stat().st_mtime_ns)
        if key not in self._loaded:
            self._loaded[key] = load_embedding(path)
        return self._loaded[key]

    def _token_names(self, path: Path) -> tuple[str, ...]:
        """A diffusers file's trained token, as a second prompt name (none when the file cannot be read)."""
        from webui.models.files import ModelFileError

        try:
            token = self._embedding(path).token
        except (ModelFileError, ValueError, OSError):
            return ()  # the file name still matches, and then reports why the file cannot be used
        return (token,) if token and token != path.stem else ()

    def matcher(self, tokenizer, width: int, all_widths: tuple[int, ...], use: EmbeddingUse) -> WidthMatcher:  # noqa: ANN001
        """A matcher for one encoder; an embedding must have vectors for every encoder of the model."""
        paths: dict[str, Path] = {}
        for path in self._available():
            paths.setdefault(path.stem, path)
            for token in self._token_names(path):
                paths.setdefault(token, path)
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
        from webui.models.files import ModelFileError

        for candidate, name in self._by_first.get(tokens[position], ()):
            if tuple(tokens[position : position + len(candidate)]) != candidate:
                continue
            try:
                embedding = self._load(self._paths[name])
            except (ModelFileError, ValueError, OSError) as error:
                problem = error.problem if isinstance(error, ModelFileError) else str(error)
                self.use.skipped[name] = f"{self._paths[name].name} cannot be used: {problem}"
                return None
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
