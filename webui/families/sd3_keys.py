"""SD3 / SD3.5 MMDiT keys: Stability's names (`joint_blocks.*`) to diffusers' and back, widths from the tensors.

The table follows Stability's reference code (github.com/Stability-AI/sd3-ref, `mmditx.py`: `x_block` /
`context_block`, fused `attn.qkv`, `adaLN_modulation.1`, `mlp.fc1/fc2`) and diffusers'
`SD3Transformer2DModel` (the same renames diffusers' `convert_sd3_transformer_checkpoint_to_diffusers`
does). Fused qkv projections are split into three equal row blocks; a modulation holding only (shift, scale)
— the last context block, which has no attention output or MLP, and the final layer — is stored as
(shift, scale) by Stability and (scale, shift) by diffusers. SD3.5 Medium's second image attention
(`x_block.attn2.*`) and the RMS q/k norms of SD3.5 (`ln_q` / `ln_k`) map like the first attention's.
"""

from __future__ import annotations

import re
from typing import Any

from webui.families.flux_keys import _cat, _shape, split_rows

# Stability module (under joint_blocks.N.) -> diffusers modules (under transformer_blocks.N.), split kind.
BLOCK = (
    ("x_block.attn.qkv", ("attn.to_q", "attn.to_k", "attn.to_v"), "thirds"),
    ("x_block.attn.proj", ("attn.to_out.0",), None),
    ("x_block.attn.ln_q", ("attn.norm_q",), None),
    ("x_block.attn.ln_k", ("attn.norm_k",), None),
    ("x_block.attn2.qkv", ("attn2.to_q", "attn2.to_k", "attn2.to_v"), "thirds"),
    ("x_block.attn2.proj", ("attn2.to_out.0",), None),
    ("x_block.attn2.ln_q", ("attn2.norm_q",), None),
    ("x_block.attn2.ln_k", ("attn2.norm_k",), None),
    ("x_block.adaLN_modulation.1", ("norm1.linear",), None),
    ("x_block.mlp.fc1", ("ff.net.0.proj",), None),
    ("x_block.mlp.fc2", ("ff.net.2",), None),
    ("context_block.attn.qkv", ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"), "thirds"),
    ("context_block.attn.proj", ("attn.to_add_out",), None),
    ("context_block.attn.ln_q", ("attn.norm_added_q",), None),
    ("context_block.attn.ln_k", ("attn.norm_added_k",), None),
    ("context_block.adaLN_modulation.1", ("norm1_context.linear",), "swap_if_pre_only"),
    ("context_block.mlp.fc1", ("ff_context.net.0.proj",), None),
    ("context_block.mlp.fc2", ("ff_context.net.2",), None),
)
TOP = (
    ("x_embedder.proj", ("pos_embed.proj",), None),
    ("t_embedder.mlp.0", ("time_text_embed.timestep_embedder.linear_1",), None),
    ("t_embedder.mlp.2", ("time_text_embed.timestep_embedder.linear_2",), None),
    ("y_embedder.mlp.0", ("time_text_embed.text_embedder.linear_1",), None),
    ("y_embedder.mlp.2", ("time_text_embed.text_embedder.linear_2",), None),
    ("context_embedder", ("context_embedder",), None),
    ("final_layer.linear", ("proj_out",), None),
    ("final_layer.adaLN_modulation.1", ("norm_out.linear",), "swap"),
)
POS_EMBED = ("pos_embed", "pos_embed.pos_embed")  # a bare parameter, no .weight
_BLOCK = re.compile(r"^joint_blocks\.(\d+)\.(.+)\.(weight|bias)$")
_DIFFUSERS_BLOCK = re.compile(r"^transformer_blocks\.(\d+)\.(.+)\.(weight|bias)$")
HEAD_WIDTH = 64  # attention head width of every SD3 / SD3.5 MMDiT (not stored in the file)


class SD3KeyError(ValueError):
    """An SD3 transformer state dict has keys or shapes the conversion does not know."""


def is_original(keys: Any) -> bool:
    return any(k.startswith("joint_blocks.") for k in keys)


def _width(state: dict[str, Any]) -> int:
    for key in ("context_embedder.weight",):
        if key in state:
            return int(_shape(state[key])[0])
    raise SD3KeyError("no context_embedder.weight: not an SD3 transformer")


def _split(tensor: Any, kind: str | None, width: int) -> list[Any]:
    if kind == "swap_if_pre_only":  # the last context block modulates (shift, scale) only
        kind = "swap" if _shape(tensor)[0] == 2 * width else None
    if kind == "swap" or kind == "thirds":
        return split_rows(tensor, kind, width)
    return [tensor]


def original_to_diffusers(state: dict[str, Any]) -> dict[str, Any]:
    """Stability-named SD3 transformer keys (prefix stripped) renamed and split into diffusers' names; a
    diffusers-named state passes unchanged. Raises SD3KeyError naming the first key it does not know."""
    if not is_original(state):
        return dict(state)
    width = _width(state)
    block = {name: (targets, split) for name, targets, split in BLOCK}
    top = {name: (targets, split) for name, targets, split in TOP}
    out: dict[str, Any] = {}
    for key, tensor in state.items():
        if key == POS_EMBED[0]:
            out[POS_EMBED[1]] = tensor
            continue
        match = _BLOCK.match(key)
        if match:
            index, module, suffix = match.groups()
            if module not in block:
                raise SD3KeyError(f"unknown SD3 transformer key {key!r}")
            targets, split = block[module]
            targets = tuple(f"transformer_blocks.{index}.{t}" for t in targets)
        else:
            module, _, suffix = key.rpartition(".")
            if module not in top:
                raise SD3KeyError(f"unknown SD3 transformer key {key!r}")
            targets, split = top[module]
        parts = _split(tensor, split, width)
        for target, part in zip(targets, parts, strict=True):
            out[f"{target}.{suffix}"] = part
    return out


def diffusers_to_original(state: dict[str, Any]) -> dict[str, Any]:
    """The inverse of `original_to_diffusers`: diffusers' SD3Transformer2DModel names joined into Stability's."""
    width = _width(state)
    out: dict[str, Any] = {}
    if POS_EMBED[1] in state:
        out[POS_EMBED[0]] = state[POS_EMBED[1]]
    indices = sorted({int(m.group(1)) for k in state if (m := _DIFFUSERS_BLOCK.match(k))})
    tables = [(name, targets, split, None) for name, targets, split in TOP]
    tables += [(f"joint_blocks.{i}.{n}", tuple(f"transformer_blocks.{i}.{t}" for t in ts), s, i) for i in indices
               for n, ts, s in BLOCK]  # fmt: skip
    for name, targets, split, _index in tables:
        for suffix in (".weight", ".bias"):
            names = [t + suffix for t in targets]
            if not all(n in state for n in names):
                continue
            parts = [state[n] for n in names]
            joined = _cat(parts) if len(parts) > 1 else parts[0]
            if split == "swap" or (split == "swap_if_pre_only" and _shape(joined)[0] == 2 * width):
                first, second = joined.chunk(2, dim=0)
                joined = _cat([second, first])
            out[name + suffix] = joined
    return out


def _count(shapes: dict[str, Any]) -> int:
    found = {int(m.group(1)) for k in shapes if (m := _DIFFUSERS_BLOCK.match(k))}
    return max(found) + 1 if found else 0


def derive_config(shapes: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """SD3Transformer2DModel config from a diffusers-named state dict's shapes over the bundled `base`: width
    and heads (64 wide each), patch size, block count, the text and pooled widths, the position-embedding grid
    (SD3.5 Medium's is 384, the others' 192), SD3.5 Medium's dual-attention blocks and the RMS q/k norms.

    Raises SD3KeyError when a shape does not fit (another architecture)."""
    try:
        proj = _shape(shapes["pos_embed.proj.weight"])  # (width, in_channels, patch, patch)
        context = _shape(shapes["context_embedder.weight"])  # (width, joint_attention_dim)
        pooled = _shape(shapes["time_text_embed.text_embedder.linear_1.weight"])
        grid = _shape(shapes["pos_embed.pos_embed"])  # (1, size * size, width)
        out = _shape(shapes["proj_out.weight"])  # (patch * patch * out_channels, width)
    except KeyError as error:
        raise SD3KeyError(f"an SD3 transformer needs {error.args[0]!r}") from None
    width, patch = proj[0], proj[2]
    if width % HEAD_WIDTH:
        raise SD3KeyError(f"hidden width {width} is not a multiple of SD3's {HEAD_WIDTH}-wide attention heads")
    size = round(grid[1] ** 0.5)
    if size * size != grid[1]:
        raise SD3KeyError(f"position embedding of {grid[1]} entries is not a square grid")
    dual = sorted({int(m.group(1)) for k in shapes if (m := _DIFFUSERS_BLOCK.match(k)) and ".attn2." in k})
    config = dict(base)
    config.update(
        patch_size=patch,
        in_channels=proj[1],
        out_channels=out[0] // (patch * patch),
        num_layers=_count(shapes),
        attention_head_dim=HEAD_WIDTH,
        num_attention_heads=width // HEAD_WIDTH,
        joint_attention_dim=context[1],
        caption_projection_dim=width,
        pooled_projection_dim=pooled[1],
        pos_embed_max_size=size,
        dual_attention_layers=dual,
        qk_norm="rms_norm" if "transformer_blocks.0.attn.norm_q.weight" in shapes else None,
    )
    return config
