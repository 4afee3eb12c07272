"""Load a Qwen3 language model as a text encoder (Z-Image's Qwen3-4B) from a single file, offline.

Layouts: transformers' `Qwen3ForCausalLM` names (`model.layers.N.*`, `model.embed_tokens.weight`, `lm_head`
dropped) or `Qwen3Model` names (`layers.N.*`), any prefix before them (ComfyUI's all-in-one
`text_encoders.qwen3_4b.transformer.`), fp8 and ComfyUI scaled fp8 (folded), and GGUF files in llama.cpp's
names (`blk.N.attn_q.weight`, `token_embd.weight`; the table is llama.cpp's Qwen3 tensor map, which keeps q and
k unpermuted for Qwen models), dequantised on load. The config is the bundled
Qwen3-4B one with what the tensors show: vocabulary, width, layers, head width (the q/k norm's length),
query and key/value head counts, MLP width. The model is built by transformers' own
`Qwen3Model.from_pretrained(None, config=..., state_dict=...)`.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from webui.models.loading_dit import fold_scaled_fp8

_ROOTS = ("layers.", "embed_tokens.", "norm.")
# llama.cpp tensor names (under blk.N.) -> transformers' Qwen3Model names (under layers.N.)
GGUF_NAMES = (
    ("attn_norm", "input_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("attn_q_norm", "self_attn.q_norm"),
    ("attn_k_norm", "self_attn.k_norm"),
    ("ffn_norm", "post_attention_layernorm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
)
_GGUF_BLOCK = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.weight$")


def _from_gguf_names(state: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor

    names = dict(GGUF_NAMES)
    out: dict[str, Any] = {}
    for key, value in state.items():
        value = dequantize_gguf_tensor(value).to(dtype) if hasattr(value, "quant_type") else value
        if key == "token_embd.weight":
            out["embed_tokens.weight"] = value
        elif key == "output_norm.weight":
            out["norm.weight"] = value
        elif key == "output.weight":
            continue  # the language-model head: not part of the encoder
        elif (match := _GGUF_BLOCK.match(key)) and match.group(2) in names:
            out[f"layers.{match.group(1)}.{names[match.group(2)]}.weight"] = value
        else:
            raise Qwen3LoadError(f"unknown GGUF Qwen3 tensor {key!r}")
    return out


class Qwen3LoadError(ValueError):
    """The tensors are not a Qwen3 model this loader knows."""


def normalise_qwen3(state: dict[str, Any], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Any layout above as `Qwen3Model` names (`embed_tokens.weight`, `layers.N.*`, `norm.weight`)."""
    if "token_embd.weight" in state:
        state = _from_gguf_names(state, dtype)
    out: dict[str, torch.Tensor] = {}
    for key, value in fold_scaled_fp8(state, dtype).items():
        for root in _ROOTS:
            at = key.find(root)
            if at == 0 or (at > 0 and key[at - 1] == "."):
                out[key[at:]] = value
                break
    if "embed_tokens.weight" not in out:
        raise Qwen3LoadError("no Qwen3 token embedding (embed_tokens.weight / model.embed_tokens.weight)")
    return out


def derive_qwen3_config(base: dict[str, Any], state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The Qwen3 config (bundled Qwen3-4B) with the widths and counts the tensors show."""
    attention = "layers.0.self_attn."
    try:
        vocab, width = state["embed_tokens.weight"].shape
        head = state[attention + "q_norm.weight"].shape[0]
        queries = state[attention + "q_proj.weight"].shape[0]
        keys = state[attention + "k_proj.weight"].shape[0]
        mlp = state["layers.0.mlp.gate_proj.weight"].shape[0]
    except KeyError as error:
        raise Qwen3LoadError(f"a Qwen3 model needs {error.args[0]!r}") from None
    layers = {int(m.group(1)) for k in state if (m := re.match(r"layers\.(\d+)\.", k))}
    config = dict(base)
    config.update(
        vocab_size=vocab,
        hidden_size=width,
        num_hidden_layers=max(layers) + 1,
        head_dim=head,
        num_attention_heads=queries // head,
        num_key_value_heads=keys // head,
        intermediate_size=mlp,
    )
    config.pop("layer_types", None)  # one per layer in the real config; rebuilt from the count
    return config


def load_qwen3(state: dict[str, Any], base: dict[str, Any], dtype: torch.dtype) -> torch.nn.Module:
    """A transformers Qwen3Model in `dtype`; raises Qwen3LoadError naming what is missing."""
    from transformers import Qwen3Config, Qwen3Model

    state = normalise_qwen3(state, dtype)
    config = Qwen3Config(**{k: v for k, v in derive_qwen3_config(base, state).items() if k != "architectures"})
    model = Qwen3Model.from_pretrained(None, config=config, state_dict=state, torch_dtype=dtype)
    return model.eval()
