"""Finding and loading a tokenizer offline: the user's `models/tokenizers/<kind>/` first, then the bundled copy.

The bundled copies live beside this module (`clip/`, `t5/`, `qwen3/`, each with its LICENSE and a
NOTICE naming its source; `python -m webui.models.tokenizer_bundle` writes them). Nothing is
downloaded and no Hugging Face cache is read. A diffusers folder's own `tokenizer/` is not looked up
here: the pipeline manager loads it for that folder.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from webui.models.tokenizers.clip_text import CLIPPromptTokenizer

BUNDLED_DIR = Path(__file__).resolve().parent
USER_SUBDIR = "tokenizers"
CLIP_MAX_LENGTH = 77  # BOS + 75 tokens + EOS; CLIPTokenizer overflows when padding without it (TRAPS.md)
CLIP_PAD = "<|endoftext|>"  # OpenAI CLIP-L pads with its EOS (SD1, SDXL's first encoder, FLUX, SD3)
OPEN_CLIP_PAD = "!"  # OpenCLIP encoders pad with id 0 (SD2, SDXL's second encoder, SD3's CLIP-G)


class TokenizerNotFoundError(FileNotFoundError):
    """A tokenizer's files are missing or incomplete; the message says which files go where."""


class TokenizerKind(Enum):
    """A tokenizer family, named by its folder under `models/tokenizers/` and in the package."""

    CLIP = "clip"
    T5 = "t5"
    QWEN3 = "qwen3"

    @property
    def files(self) -> tuple[str, ...]:
        """The files a user's folder must hold (Hugging Face's names)."""
        return ("vocab.json", "merges.txt") if self is TokenizerKind.CLIP else ("tokenizer.json",)

    @property
    def description(self) -> str:
        return {
            TokenizerKind.CLIP: "the CLIP BPE tokenizer (openai/clip-vit-large-patch14's)",
            TokenizerKind.T5: "the T5 v1.1 tokenizer (google/t5-v1_1-xxl's)",
            TokenizerKind.QWEN3: "the Qwen3 tokenizer (Qwen/Qwen3-4B's)",
        }[self]


@dataclass(frozen=True)
class TokenizerSource:
    """Where a tokenizer's files were found: the folder, and whether it is the package's copy."""

    kind: TokenizerKind
    folder: Path
    bundled: bool


def _present(folder: Path, name: str) -> bool:
    return (folder / name).is_file() or (name == "tokenizer.json" and (folder / f"{name}.gz").is_file())


def find_tokenizer(models_dir: Path, kind: TokenizerKind) -> TokenizerSource:
    """The user's `models_dir/tokenizers/<kind>/` when it holds the kind's files, else the bundled copy.

    A user folder holding only some of the files is an error (it was meant to be used), not a reason
    to fall back silently. Raises TokenizerNotFoundError naming the missing files and the folder."""
    user = models_dir / USER_SUBDIR / kind.value
    present = [name for name in kind.files if _present(user, name)]
    if len(present) == len(kind.files):
        return TokenizerSource(kind, user, bundled=False)
    if present:
        missing = [name for name in kind.files if name not in present]
        raise TokenizerNotFoundError(
            f"{user.resolve()}: has {', '.join(present)} but not {', '.join(missing)} of {kind.description}; "
            f"add {' and '.join(missing)} or empty the folder to use the copy bundled with webui"
        )
    bundled = BUNDLED_DIR / kind.value
    if not all(_present(bundled, name) for name in kind.files):
        raise TokenizerNotFoundError(
            f"{bundled}: the bundled copy of {kind.description} is missing (a broken install?); reinstall webui "
            f"or put {' and '.join(kind.files)} in {user.resolve()}/"
        )
    return TokenizerSource(kind, bundled, bundled=True)


def _read_json(folder: Path, name: str) -> Any:
    plain, packed = folder / name, folder / f"{name}.gz"
    try:
        text = plain.read_text(encoding="utf-8") if plain.is_file() else gzip.decompress(packed.read_bytes()).decode()
        return json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise TokenizerNotFoundError(f"{plain if plain.is_file() else packed}: unreadable ({error})") from error


def clip_tokenizer_from_folder(folder: Path, pad_token: str = CLIP_PAD) -> CLIPPromptTokenizer:
    """A CLIP tokenizer (with CLIP's text cleaning) from a folder holding vocab.json and merges.txt.

    Raises TokenizerNotFoundError when either file is unreadable."""
    vocab = _read_json(folder, "vocab.json")
    try:
        lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise TokenizerNotFoundError(f"{folder / 'merges.txt'}: unreadable ({error})") from error
    merge_lines = [line for line in lines if line and not line.startswith("#version")]
    merges = [tuple(line.split()) for line in merge_lines]
    bad = next((line for line, pair in zip(merge_lines, merges, strict=True) if len(pair) != 2), None)
    if not isinstance(vocab, dict) or bad is not None:
        raise TokenizerNotFoundError(
            f"{folder}: vocab.json must map tokens to ids and merges.txt hold one pair per line (found {bad!r})"
        )
    return CLIPPromptTokenizer(vocab=vocab, merges=merges, model_max_length=CLIP_MAX_LENGTH, pad_token=pad_token)


def load_clip_tokenizer(models_dir: Path, pad_token: str = CLIP_PAD) -> CLIPPromptTokenizer:
    """The CLIP tokenizer: `models_dir/tokenizers/clip/` if present, else the bundled one (49,408 tokens).

    `pad_token`: CLIP_PAD ("<|endoftext|>") for OpenAI CLIP-L, OPEN_CLIP_PAD ("!") for OpenCLIP
    encoders. Texts are cleaned as CLIP cleans them (see `clip_text`); `model_max_length` is 77.
    Raises TokenizerNotFoundError (see `find_tokenizer`)."""
    return clip_tokenizer_from_folder(find_tokenizer(models_dir, TokenizerKind.CLIP).folder, pad_token)


def load_t5_tokenizer(models_dir: Path, max_length: int) -> Any:
    """The T5 v1.1 tokenizer (32,100 pieces + `</s>` appended): `models_dir/tokenizers/t5/` if it holds
    a `tokenizer.json`, else the bundled one.

    `max_length`: the family's T5 sequence length in tokens (FLUX.1 schnell 256, dev 512, SD3 256).
    Raises TokenizerNotFoundError (see `find_tokenizer`), ValueError for a max_length below 1."""
    from transformers import T5TokenizerFast

    if max_length < 1:
        raise ValueError(f"max_length: {max_length} is not a token count (use the family's, e.g. 256 or 512)")
    folder = find_tokenizer(models_dir, TokenizerKind.T5).folder
    try:
        return T5TokenizerFast.from_pretrained(folder, model_max_length=max_length, local_files_only=True)
    except (OSError, ValueError) as error:
        raise TokenizerNotFoundError(f"{folder}: not a T5 tokenizer folder ({error})") from error


def load_qwen3_tokenizer(models_dir: Path) -> Any:
    """The Qwen3 tokenizer (151,669 tokens; `tokenizer.json` or `.json.gz` with its tokenizer_config.json):
    `models_dir/tokenizers/qwen3/` if present, else the bundled one.

    Raises TokenizerNotFoundError (see `find_tokenizer`)."""
    from tokenizers import Tokenizer
    from transformers import Qwen2Tokenizer

    folder = find_tokenizer(models_dir, TokenizerKind.QWEN3).folder
    backend = Tokenizer.from_str(json.dumps(_read_json(folder, "tokenizer.json")))
    config = _read_json(folder, "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
    keys = (
        "eos_token",
        "pad_token",
        "model_max_length",
        "additional_special_tokens",
        "add_bos_token",
        "errors",
        "chat_template",  # Z-Image's pipeline wraps the prompt in it
    )
    return Qwen2Tokenizer(tokenizer_object=backend, **{key: config[key] for key in keys if key in config})


def load_tokenizer(
    kind: TokenizerKind, models_dir: Path, own: Path | None = None, *, pad_token: str = CLIP_PAD, max_length: int = 512
) -> Any:
    """The tokenizer of `kind`: a diffusers folder's own `own` folder when given (its files are authoritative for
    it), else `models_dir/tokenizers/<kind>/`, else the bundled copy. `pad_token` is CLIP's, `max_length` T5's.
    Raises TokenizerNotFoundError (see `find_tokenizer`)."""
    if own is not None:
        if kind is TokenizerKind.CLIP:
            return CLIPPromptTokenizer.from_pretrained(own, local_files_only=True)
        from transformers import AutoTokenizer, T5TokenizerFast

        loader = T5TokenizerFast if kind is TokenizerKind.T5 else AutoTokenizer
        return loader.from_pretrained(own, local_files_only=True)
    if kind is TokenizerKind.CLIP:
        return load_clip_tokenizer(models_dir, pad_token=pad_token)
    if kind is TokenizerKind.T5:
        return load_t5_tokenizer(models_dir, max_length)
    return load_qwen3_tokenizer(models_dir)
