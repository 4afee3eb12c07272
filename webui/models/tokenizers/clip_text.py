"""CLIP's own text cleaning in front of transformers' CLIP BPE, so prompts tokenize as OpenAI's CLIP does.

OpenAI's `clip/simple_tokenizer.py` (also open_clip's, and transformers' slow tokenizer where ftfy is
installed, as in A1111) cleans text before its BPE: `ftfy.fix_text` (mojibake, curly quotes to
straight ones, ligatures, full-width letters, control characters, NFC), HTML entities unescaped twice,
runs of whitespace to one space, then Python's `str.lower()`. transformers 5's `CLIPTokenizer` only
applies NFC, a whitespace collapse and a per-character lower case in its backend normaliser, so
`it’s`, `&amp;`, `ﬁ` or a word-final `Σ` gave other ids than CLIP's. `CLIPPromptTokenizer` runs
CLIP's cleaning on every text it encodes and drops the backend normaliser (the cleaning already did
its work; NFC after unescaping would differ from CLIP). The regex split and BPE stay transformers'.
"""

from __future__ import annotations

import html
from typing import Any

import ftfy
import regex
from transformers import CLIPTokenizer

_WHITESPACE = regex.compile(r"\s+")


def clean_clip_text(text: str) -> str:
    """The text CLIP's BPE sees: `whitespace_clean(basic_clean(text)).lower()` of openai/CLIP."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return _WHITESPACE.sub(" ", text).strip().lower()


def _clean(text: Any) -> Any:
    """Clean a text, a batch of texts, or (text, pair) tuples; anything else passes through for the
    tokenizer's own input check to reject."""
    if isinstance(text, str):
        return clean_clip_text(text)
    if isinstance(text, (list, tuple)):
        return type(text)(_clean(item) for item in text)
    return text


class CLIPPromptTokenizer(CLIPTokenizer):
    """transformers' `CLIPTokenizer` (fast, byte-level BPE) with CLIP's text cleaning on every encode.

    Same constructor and `from_pretrained` as `CLIPTokenizer`; decoding is unchanged."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.backend_tokenizer.normalizer = None

    def _encode_plus(self, text: Any, text_pair: Any = None, *args: Any, **kwargs: Any) -> Any:
        if not kwargs.get("is_split_into_words", False):
            text, text_pair = _clean(text), _clean(text_pair)
        return super()._encode_plus(text, text_pair, *args, **kwargs)
