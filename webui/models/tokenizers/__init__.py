"""Tokenizers for every supported text encoder, found offline (user's `models/tokenizers/` first, then bundled).

The data folders beside this file (`clip/`, `t5/`, `qwen3/`) ship with the package, each with its
licence; `webui.models.tokenizer_bundle` writes them from the wheels they come from.
"""

from webui.models.tokenizers.clip_text import CLIPPromptTokenizer, clean_clip_text
from webui.models.tokenizers.lookup import (
    BUNDLED_DIR,
    CLIP_MAX_LENGTH,
    CLIP_PAD,
    OPEN_CLIP_PAD,
    TokenizerKind,
    TokenizerNotFoundError,
    TokenizerSource,
    clip_tokenizer_from_folder,
    find_tokenizer,
    load_clip_tokenizer,
    load_qwen3_tokenizer,
    load_t5_tokenizer,
    load_tokenizer,
)

__all__ = [
    "BUNDLED_DIR",
    "CLIP_MAX_LENGTH",
    "CLIP_PAD",
    "OPEN_CLIP_PAD",
    "CLIPPromptTokenizer",
    "TokenizerKind",
    "TokenizerNotFoundError",
    "TokenizerSource",
    "clean_clip_text",
    "clip_tokenizer_from_folder",
    "find_tokenizer",
    "load_clip_tokenizer",
    "load_qwen3_tokenizer",
    "load_t5_tokenizer",
    "load_tokenizer",
]
