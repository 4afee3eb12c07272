"""A tiny but real T5 (SentencePiece Unigram) tokenizer, `tokenizer.json` as Hugging Face's T5 v1.1 ships it.

Ids as T5's: `<pad>` 0, `</s>` 1, `<unk>` 2; whole words of the tiny CLIP corpus as `▁word` pieces, then
single characters, so any prompt tokenizes; `</s>` is appended to every sequence as T5's post-processor does.
"""

from __future__ import annotations

import string
from functools import cache
from pathlib import Path
from typing import Any

from webui.testing.tiny_tokenizer import corpus_words

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"


@cache
def _pieces() -> tuple[tuple[str, float], ...]:
    words = [(f"▁{word}", -float(len(word) < 3) - 2.0) for word in sorted(set(corpus_words()))]
    chars = [(c, -8.0) for c in string.ascii_lowercase + string.digits + string.punctuation]
    chars += [(f"▁{c}", -9.0) for c in string.ascii_lowercase] + [("▁", -6.0)]
    return ((PAD, 0.0), (EOS, 0.0), (UNK, 0.0), *words, *chars)


def tiny_t5_vocab_size() -> int:
    return len(_pieces())


def build_tiny_t5_tokenizer(max_length: int = 512) -> Any:
    """A transformers T5 tokenizer over the tiny vocabulary (the fast, tokenizer.json-backed class)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    backend = Tokenizer(models.Unigram(list(_pieces()), unk_id=2))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    backend.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, 1)]
    )
    return T5TokenizerFast(
        tokenizer_object=backend, eos_token=EOS, unk_token=UNK, pad_token=PAD, extra_ids=0, model_max_length=max_length
    )


def write_t5_tokenizer(folder: Path) -> Path:
    """`tokenizer.json` (+ its config) in `folder`, as `models/tokenizers/t5/` takes it."""
    folder.mkdir(parents=True, exist_ok=True)
    build_tiny_t5_tokenizer().save_pretrained(folder)
    return folder / "tokenizer.json"
