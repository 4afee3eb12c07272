"""Load a T5 encoder (FLUX.1's and SD3's T5-XXL) from any layout: Hugging Face names, ComfyUI's, GGUF.

Layouts: `t5xxl_fp16.safetensors` (Hugging Face names, with or without `encoder.embed_tokens.weight`),
all-in-one checkpoints (`text_encoders.t5xxl.transformer.*`), fp8 and ComfyUI scaled fp8, and city96's GGUF
files in llama.cpp's names (`enc.blk.N.attn_q.weight`, `token_embd.weight`; the table is llama.cpp's T5
encoder tensor map), dequantised on load. The config comes from the bundled T5 v1.1 XXL config with the
widths, layer and head counts the tensors show, and the model is built by transformers' own
`from_pretrained(None, config=..., state_dict=...)`, which ties the token embedding (diffusers' single-file
T5 helper leaves it on the meta device: TRAPS.md).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from webui.models.loading_dit import fold_scaled_fp8, is_gguf_state

# llama.cpp tensor names -> transformers' T5EncoderModel names ({} is the block index)
_GGUF_NAMES = (
    ("attn_q", "layer.0.SelfAttention.q"),
    ("attn_k", "layer.0.SelfAttention.k"),
    ("attn_v", "layer.0.SelfAttention.v"),
    ("attn_o", "layer.0.SelfAttention.o"),
    ("attn_rel_b", "layer.0.SelfAttention.relative_attention_bias"),
    ("attn_norm", "layer.0.layer_norm"),
    ("ffn_gate", "layer.1.DenseReluDense.wi_0"),
    ("ffn_up", "layer.1.DenseReluDense.wi_1"),
    ("ffn_down", "layer.1.DenseReluDense.wo"),
    ("ffn_norm", "layer.1.layer_norm"),
)
_GGUF_BLOCK = re.compile(r"^enc\.blk\.(\d+)\.([a-z_]+)\.weight$")
_ROOTS = ("encoder.", "shared.")


class T5LoadError(ValueError):
    """The tensors are not a T5 encoder this loader knows."""


def _from_gguf_names(state: dict[str, Any]) -> dict[str, Any]:
    names = dict(_GGUF_NAMES)
    out: dict[str, Any] = {}
    for key, value in state.items():
        if key == "token_embd.weight":
            out["shared.weight"] = value
        elif key == "enc.output_norm.weight":
            out["encoder.final_layer_norm.weight"] = value
        elif (match := _GGUF_BLOCK.match(key)) and match.group(2) in names:
            out[f"encoder.block.{match.group(1)}.{names[match.group(2)]}.weight"] = value
        elif key.startswith("dec."):
            continue  # a full encoder-decoder conversion: the encoder is all FLUX needs
        else:
            raise T5LoadError(f"unknown GGUF T5 tensor {key!r}")
    return out


def _dequantised(state: dict[str, Any], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor

    return {k: dequantize_gguf_tensor(v).to(dtype) if hasattr(v, "quant_type") else v for k, v in state.items()}


def normalise_t5(state: dict[str, Any], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Any T5 layout as transformers' T5EncoderModel names (`shared.weight`, `encoder.block.N.*`), in plain
    tensors: GGUF dequantised, scaled fp8 folded, prefixes before `encoder.` / `shared.` dropped."""
    if is_gguf_state(state) or any(k.startswith("enc.blk.") for k in state):
        state = _dequantised(_from_gguf_names(state), dtype)
    out: dict[str, torch.Tensor] = {}
    for key, value in fold_scaled_fp8(state, dtype).items():
        at = min((i for root in _ROOTS if (i := _root_at(key, root)) >= 0), default=-1)
        if at < 0 or key.startswith("decoder.", at):
            continue  # lm_head, decoder halves of full T5 files
        out[key[at:]] = value
    if "shared.weight" not in out and "encoder.embed_tokens.weight" in out:
        out["shared.weight"] = out["encoder.embed_tokens.weight"]
    out.pop("encoder.embed_tokens.weight", None)  # tied to shared.weight
    if "shared.weight" not in out:
        raise T5LoadError("no T5 token embedding (shared.weight / encoder.embed_tokens.weight / token_embd.weight)")
    return out


def _root_at(key: str, root: str) -> int:
    at = key.find(root)
    return at if at == 0 or (at > 0 and key[at - 1] == ".") else -1


def _blocks(state: dict[str, Any]) -> int:
    found = {int(m.group(1)) for k in state if (m := re.match(r"encoder\.block\.(\d+)\.", k))}
    return max(found) + 1 if found else 0


def derive_t5_config(base: dict[str, Any], state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The T5 config (bundled T5 v1.1 XXL) with what the tensors show: width, vocabulary, layers, heads
    (the relative attention bias has one column per head), per-head width, feed-forward width and gating."""
    attention = "encoder.block.0.layer.0.SelfAttention."
    try:
        vocab, width = state["shared.weight"].shape
        inner = state[attention + "q.weight"].shape[0]
        heads = state[attention + "relative_attention_bias.weight"].shape[1]
    except KeyError as error:
        raise T5LoadError(f"a T5 encoder needs {error.args[0]!r}") from None
    gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in state
    ff_key = "encoder.block.0.layer.1.DenseReluDense." + ("wi_0.weight" if gated else "wi.weight")
    if ff_key not in state:
        raise T5LoadError(f"a T5 encoder needs {ff_key!r}")
    config = dict(base)
    config.update(
        vocab_size=vocab,
        d_model=width,
        num_layers=_blocks(state),
        num_heads=heads,
        d_kv=inner // heads,
        d_ff=state[ff_key].shape[0],
        feed_forward_proj=config.get("feed_forward_proj", "gated-gelu") if gated else "relu",
    )
    return config


def load_t5(state: dict[str, Any], base: dict[str, Any], dtype: torch.dtype) -> torch.nn.Module:
    """A T5EncoderModel in `dtype` from tensors in any layout above; raises T5LoadError naming what is missing."""
    from transformers import T5Config, T5EncoderModel

    state = normalise_t5(state, dtype)
    config = T5Config(**{k: v for k, v in derive_t5_config(base, state).items() if k != "architectures"})
    model = T5EncoderModel.from_pretrained(None, config=config, state_dict=state, torch_dtype=dtype)
    return model.eval()
