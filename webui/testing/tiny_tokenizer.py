"""A tiny but real CLIP byte-level BPE tokenizer (vocab.json + merges.txt) for test models."""

from __future__ import annotations

import json
from collections import Counter
from functools import cache
from pathlib import Path

from transformers import CLIPTokenizer

from webui.models.tokenizer_bundle import bytes_to_unicode

MODEL_MAX_LENGTH = 77
BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
OPEN_CLIP_PAD = "!"  # SD2 / SDXL's second tokenizer pad with "!" (id 0 in the real vocab)
MERGE_COUNT = 320

# Words the merges are learned from: common prompt vocabulary, so prompts give whole-word tokens;
# anything else still tokenizes, down to single bytes.
_CORPUS = tuple(
    """
a an the of and with in on at by for to from photo photograph portrait painting drawing illustration
render art artwork style detailed highly intricate beautiful masterpiece best quality high resolution
cat cats dog dogs bird horse fox owl lion tiger rabbit fish dragon robot man woman girl boy child person
people face eyes hair smile red green blue yellow orange purple pink black white gray grey brown golden
silver dark light bright colorful hat hats dress shirt coat armor sword castle house city street forest
tree trees flower flowers garden mountain mountains river lake sea ocean beach sky cloud clouds sun moon
star stars night day morning evening sunset sunrise rain snow winter summer spring autumn landscape
scene background foreground cinematic lighting soft sharp focus depth field bokeh realistic realism
anime cartoon oil watercolor sketch digital concept fantasy science fiction futuristic ancient old new
small large big tiny huge little cute happy sad standing sitting walking running flying looking wearing
holding under over inside outside near far close up view wide angle shot camera lens film
tinytrigger trigger token embedding worst low quality blurry ugly deformed bad anatomy text watermark
""".split()
)


def corpus_words() -> tuple[str, ...]:
    """The words the tiny vocabularies are built from (CLIP's merges, T5's pieces)."""
    return _CORPUS


def _word_symbols(word: str, table: dict[int, str]) -> tuple[str, ...]:
    chars = [table[b] for b in word.encode("utf-8")]
    return (*chars[:-1], chars[-1] + "</w>")


def _learn_merges(count: int) -> list[tuple[str, str]]:
    table = bytes_to_unicode()
    words = Counter(_word_symbols(w, table) for w in _CORPUS)
    merges: list[tuple[str, str]] = []
    made: set[str] = set()
    while len(merges) < count:
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, freq in words.items():
            for pair in zip(symbols, symbols[1:], strict=False):
                pairs[pair] += freq
        # Most frequent first, ties broken alphabetically so the result never depends on dict order.
        candidates = sorted((p for p in pairs if p[0] + p[1] not in made), key=lambda p: (-pairs[p], p))
        if not candidates:
            break
        best = candidates[0]
        merges.append(best)
        made.add(best[0] + best[1])
        merged: Counter[tuple[str, ...]] = Counter()
        for symbols, freq in words.items():
            out: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged[tuple(out)] += freq
        words = merged
    return merges


@cache
def _vocab_and_merges() -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    base = list(bytes_to_unicode().values())
    merges = _learn_merges(MERGE_COUNT)
    # CLIP's order: bytes, bytes + "</w>", one token per merge, then the two specials (largest ids,
    # which the legacy `eos_token_id: 2` configs rely on: they pool at the argmax id).
    tokens = [*base, *(c + "</w>" for c in base), *(a + b for a, b in merges), BOS, EOS]
    return tuple(tokens), tuple(merges)


def tiny_vocab() -> dict[str, int]:
    """Token -> id for the tiny vocabulary (a fresh dict)."""
    tokens, _ = _vocab_and_merges()
    return {token: index for index, token in enumerate(tokens)}


def tiny_merges() -> list[tuple[str, str]]:
    return list(_vocab_and_merges()[1])


def tiny_vocab_size() -> int:
    return len(_vocab_and_merges()[0])


def write_tokenizer_files(folder: Path) -> list[Path]:
    """Write `vocab.json` and `merges.txt` the way OpenAI's CLIP tokenizer ships them."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
    vocab_path.write_text(json.dumps(tiny_vocab(), ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in tiny_merges())]
    merges_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [vocab_path, merges_path]


def build_tiny_tokenizer(pad_token: str = EOS) -> CLIPTokenizer:
    """A CLIPTokenizer over the tiny vocabulary; `pad_token="!"` for OpenCLIP-based encoders."""
    if pad_token not in (EOS, OPEN_CLIP_PAD):
        raise ValueError(f"pad_token must be {EOS!r} (CLIP-L) or {OPEN_CLIP_PAD!r} (OpenCLIP), got {pad_token!r}")
    return CLIPTokenizer(
        vocab=tiny_vocab(),
        merges=tiny_merges(),
        pad_token=pad_token,
        model_max_length=MODEL_MAX_LENGTH,
    )
