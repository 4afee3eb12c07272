"""Tiny random Z-Image models (TINY_SPEC.md) in every layout people keep, for tests and the tiny bench.

Interface widths stay real: 16 latent channels in 2×2 patches, 128-wide heads with rope axes (32, 48, 48),
Qwen3's 2560-wide features into `cap_embedder`. Everything else is tiny: width 256 (two heads), one layer and
one refiner layer each; a two-layer Qwen3 of width 2560 with two 128-wide query heads, one key/value head and a
32-wide MLP over a byte-level vocabulary of 261 tokens (the 256 bytes and Qwen3's chat special tokens), whose
tokenizer (with the bundled Qwen3 chat template) is written to `tokenizers/qwen3/`; the FLUX.1 fixtures' `ae`.
Weights are fp8-exact, so bf16 and fp16 files hold the same numbers.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from webui.families import FamilyDescription, family_of
from webui.models.kinds import Kind, TextEncoderType

QWEN3_TOKENIZER_DIR = "tokenizers/qwen3"
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")
QWEN3_DIMS = {"num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 32}


def _family() -> Any:
    from webui.families import Family

    return Family("zimage")


def write_qwen3_tokenizer(folder: Path) -> Path:
    """A byte-level BPE tokenizer without merges (one token per byte) with Qwen3's special tokens and the
    bundled Qwen3 chat template, as `tokenizer.json` + `tokenizer_config.json`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from webui.models.tokenizers import BUNDLED_DIR

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokenizer = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    bundled = json.loads((BUNDLED_DIR / "qwen3" / "tokenizer_config.json").read_text())
    config = {"chat_template": bundled["chat_template"], "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
              "model_max_length": 131072, "add_bos_token": False}  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def build_tokenizer() -> Any:
    from webui.models.tokenizers import load_qwen3_tokenizer

    with tempfile.TemporaryDirectory() as models:
        write_qwen3_tokenizer(Path(models) / QWEN3_TOKENIZER_DIR)
        return load_qwen3_tokenizer(Path(models))


def build_text_encoder(seed: int = 0) -> torch.nn.Module:
    from transformers import Qwen3Config, Qwen3Model

    from webui.families.flux_fixtures import _round_fp8
    from webui.models.derive import bundled_config
    from webui.testing.tiny_models import _build, _component_seed

    base = {k: v for k, v in bundled_config(_family(), "text_encoder").items() if k != "architectures"}
    base.update(QWEN3_DIMS, vocab_size=256 + len(SPECIAL_TOKENS), max_position_embeddings=1024)
    model = _build(lambda: Qwen3Model(Qwen3Config(**base)), _component_seed(_family(), seed, "qwen3"))
    _round_fp8(model)
    return model


def build_transformer(seed: int = 0) -> torch.nn.Module:
    from diffusers import ZImageTransformer2DModel

    from webui.families.flux_fixtures import _round_fp8
    from webui.testing.tiny_models import _build, _component_seed

    def make() -> torch.nn.Module:
        sizes = {"axes_dims": [32, 48, 48], "axes_lens": [1024, 512, 512]}
        return ZImageTransformer2DModel(dim=256, n_layers=1, n_refiner_layers=1, n_heads=2, n_kv_heads=2,
                                        cap_feat_dim=2560, **sizes)  # fmt: skip

    model = _build(make, _component_seed(_family(), seed, "transformer"))
    _round_fp8(model)
    return model


def build_components(seed: int = 0) -> dict[str, Any]:
    """ZImagePipeline components (diffusers' names); the files `write_zimage_family` writes hold seed 0's."""
    import diffusers

    from webui.families.flux_fixtures import build_vae
    from webui.models.derive import bundled_config

    config = bundled_config(_family(), "scheduler")
    scheduler = getattr(diffusers, config.pop("_class_name")).from_config(config)
    return {
        "transformer": build_transformer(seed),
        "vae": build_vae(seed),  # FLUX.1's `ae`
        "text_encoder": build_text_encoder(seed),
        "tokenizer": build_tokenizer(),
        "scheduler": scheduler,
    }


def pipeline(components: dict[str, Any]) -> Any:
    """Plain diffusers ZImagePipeline over `components` (the reference the engine is compared with)."""
    pipe = _family().description.pipeline.create(components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def write_zimage_family(root: Path, description: FamilyDescription) -> list[Any]:
    """Every Z-Image layout of the tiny models under `root`; returns FixtureFiles."""
    from webui.families.zimage import QWEN3_PREFIX
    from webui.families.zimage_keys import diffusers_to_original
    from webui.models.ldm_writer import save_single_file, vae_to_ldm
    from webui.testing.tiny import FixtureFile, stem

    family = family_of(description)
    name = stem(family)
    files: list[FixtureFile] = []

    def tensors(relative: str, kind: Kind, layout: str, state: dict, dtype: Any, encoder: Any = None) -> None:
        files.append(FixtureFile(relative, kind, family, layout, encoder))
        save_single_file(state, root / relative, dtype=dtype)

    write_qwen3_tokenizer(root / QWEN3_TOKENIZER_DIR)
    parts = build_components()
    original = diffusers_to_original(parts["transformer"].state_dict())
    tensors(f"diffusion_models/{name}.safetensors", Kind.UNET, "transformer-original", original, torch.bfloat16)
    qwen = {f"model.{k}": v for k, v in parts["text_encoder"].state_dict().items()}  # Qwen3ForCausalLM names
    tensors(f"text_encoders/{name}-qwen3.safetensors", Kind.TEXT_ENCODER, "qwen3", qwen, torch.bfloat16,
            TextEncoderType.QWEN3)  # fmt: skip
    vae = parts["vae"]
    aio = {
        **{f"model.diffusion_model.{k}": v.to(torch.bfloat16) for k, v in original.items()},
        **{f"{QWEN3_PREFIX}{k}": v.to(torch.bfloat16) for k, v in qwen.items()},
        **{f"vae.{k}": v for k, v in vae_to_ldm(vae.state_dict(), vae.config).items()},
    }
    tensors(f"checkpoints/{name}-aio.safetensors", Kind.CHECKPOINT, "all-in-one", aio, None)
    folder = f"checkpoints/{name}-diffusers"
    files.append(FixtureFile(folder, Kind.CHECKPOINT, family, "diffusers-folder"))
    pipeline(parts).save_pretrained(root / folder, safe_serialization=True)
    return files
