"""The CLIP tokenizer, found offline: the models folder first, then the local Hugging Face cache."""

from __future__ import annotations

from pathlib import Path

from transformers import CLIPTokenizer

TOKENIZER_SUBDIR = Path("tokenizers") / "clip"
# Repositories whose cached copies hold the CLIP BPE files, with the subfolder they sit in.
HF_CACHE_SOURCES = (
    ("openai/clip-vit-large-patch14", ""),
    ("stable-diffusion-v1-5/stable-diffusion-v1-5", "tokenizer"),
    ("stabilityai/stable-diffusion-xl-base-1.0", "tokenizer"),
)


class TokenizerNotFoundError(FileNotFoundError):
    pass


def _from_hf_cache() -> tuple[Path, Path] | None:
    from huggingface_hub import try_to_load_from_cache

    for repo, sub in HF_CACHE_SOURCES:
        prefix = f"{sub}/" if sub else ""
        vocab = try_to_load_from_cache(repo, f"{prefix}vocab.json")
        merges = try_to_load_from_cache(repo, f"{prefix}merges.txt")
        if isinstance(vocab, str) and isinstance(merges, str):
            return Path(vocab), Path(merges)
    return None


def find_clip_bpe(models_dir: Path) -> tuple[Path, Path]:
    """(vocab.json, merges.txt) of the CLIP tokenizer, or an error saying exactly what to put where."""
    folder = models_dir / TOKENIZER_SUBDIR
    vocab, merges = folder / "vocab.json", folder / "merges.txt"
    if vocab.is_file() and merges.is_file():
        return vocab, merges
    cached = _from_hf_cache()
    if cached is not None:
        return cached
    raise TokenizerNotFoundError(
        f"CLIP tokenizer not found. Put vocab.json and merges.txt of openai/clip-vit-large-patch14 in "
        f"{folder.resolve()}/ (or have that repository in your Hugging Face cache); nothing is downloaded."
    )


def load_clip_tokenizer(models_dir: Path, pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    """SD1 and SDXL's first encoder pad with <|endoftext|>; OpenCLIP encoders (SD2, SDXL's second) pad with '!'."""
    vocab, merges = find_clip_bpe(models_dir)
    return CLIPTokenizer(str(vocab), str(merges), model_max_length=77, pad_token=pad_token)
