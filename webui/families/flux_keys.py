"""FLUX.1 transformer keys: BFL's names (`double_blocks.*`) to diffusers' and back, widths from the tensors.

diffusers' own converter (`convert_flux_transformer_checkpoint_to_diffusers`) assumes the released width
(3072) and block counts, so it fails on anything else; this one reads every width from the tensors it
splits, so real files and the tiny test models take the same path. The table follows the module names of
BFL's reference code (github.com/black-forest-labs/flux, `model.py` / `layers.py`) and of diffusers'
`FluxTransformer2DModel`. Fused projections are split along their output rows: `qkv` into three equal
parts, a single block's `linear1` into q, k, v (the block width each) and the MLP input (the rest). The
final modulation stores (shift, scale) in BFL's order and (scale, shift) in diffusers'.

Tensors may be torch tensors or diffusers' GGUFParameter (quantised rows split like any other rows).
`single_file_plan` is the same table as a per-key plan (webui.models.ldm_plan), from names and shapes alone: the
merger reads a transformer in either naming one tensor at a time and writes BFL's names.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

# BFL module (under double_blocks.N.) -> diffusers modules (under transformer_blocks.N.), split kind.
DOUBLE = (
    ("img_attn.qkv", ("attn.to_q", "attn.to_k", "attn.to_v"), "thirds"),
    ("txt_attn.qkv", ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"), "thirds"),
    ("img_attn.proj", ("attn.to_out.0",), None),
    ("txt_attn.proj", ("attn.to_add_out",), None),
    ("img_mlp.0", ("ff.net.0.proj",), None),
    ("img_mlp.2", ("ff.net.2",), None),
    ("txt_mlp.0", ("ff_context.net.0.proj",), None),
    ("txt_mlp.2", ("ff_context.net.2",), None),
    ("img_mod.lin", ("norm1.linear",), None),
    ("txt_mod.lin", ("norm1_context.linear",), None),
)
DOUBLE_NORMS = (
    ("img_attn.norm.query_norm.scale", "attn.norm_q.weight"),
    ("img_attn.norm.key_norm.scale", "attn.norm_k.weight"),
    ("txt_attn.norm.query_norm.scale", "attn.norm_added_q.weight"),
    ("txt_attn.norm.key_norm.scale", "attn.norm_added_k.weight"),
)
# under single_blocks.N. -> single_transformer_blocks.N.
SINGLE = (
    ("linear1", ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), "qkv_mlp"),
    ("linear2", ("proj_out",), None),
    ("modulation.lin", ("norm.linear",), None),
)
SINGLE_NORMS = (("norm.query_norm.scale", "attn.norm_q.weight"), ("norm.key_norm.scale", "attn.norm_k.weight"))
TOP = (
    ("img_in", ("x_embedder",), None),
    ("txt_in", ("context_embedder",), None),
    ("time_in.in_layer", ("time_text_embed.timestep_embedder.linear_1",), None),
    ("time_in.out_layer", ("time_text_embed.timestep_embedder.linear_2",), None),
    ("vector_in.in_layer", ("time_text_embed.text_embedder.linear_1",), None),
    ("vector_in.out_layer", ("time_text_embed.text_embedder.linear_2",), None),
    ("guidance_in.in_layer", ("time_text_embed.guidance_embedder.linear_1",), None),
    ("guidance_in.out_layer", ("time_text_embed.guidance_embedder.linear_2",), None),
    ("final_layer.linear", ("proj_out",), None),
    ("final_layer.adaLN_modulation.1", ("norm_out.linear",), "swap"),
)
_NORM_TABLES = (("double_blocks", DOUBLE_NORMS), ("single_blocks", SINGLE_NORMS))
_DIFFUSERS_KIND = {"double_blocks": "transformer_blocks", "single_blocks": "single_transformer_blocks"}
_BLOCK = re.compile(r"^(double_blocks|single_blocks)\.(\d+)\.(.+)$")
_DIFFUSERS_BLOCK = re.compile(r"^(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)$")


class FluxKeyError(ValueError):
    """A FLUX transformer state dict has keys or shapes the conversion does not know."""


def module_map() -> dict[str, tuple[tuple[str, ...], str | None]]:
    """BFL module name pattern -> (diffusers module names, split kind); `{}` stands for the block index."""
    table: dict[str, tuple[tuple[str, ...], str | None]] = {}
    for bfl, targets, split in DOUBLE:
        table[f"double_blocks.{{}}.{bfl}"] = (tuple(f"transformer_blocks.{{}}.{t}" for t in targets), split)
    for bfl, targets, split in SINGLE:
        table[f"single_blocks.{{}}.{bfl}"] = (tuple(f"single_transformer_blocks.{{}}.{t}" for t in targets), split)
    for bfl, targets, split in TOP:
        table[bfl] = (targets, split)
    return table


def _split_sizes(kind: str | None, rows: int, width: int) -> list[int]:
    if kind == "thirds":
        if rows % 3:
            raise FluxKeyError(f"a fused qkv projection has {rows} output rows, not a multiple of 3")
        return [rows // 3] * 3
    if kind == "qkv_mlp":  # q, k, v are the block width each; the MLP takes the rest
        if rows <= 3 * width:
            raise FluxKeyError(f"a single block's linear1 has {rows} output rows for width {width}")
        return [width, width, width, rows - 3 * width]
    return [rows]


def split_rows(tensor: Any, kind: str | None, width: int) -> list[Any]:
    """`tensor` (out rows first, or a bias) split as `kind` says; a swap exchanges its two halves."""
    if kind == "swap":
        first, second = tensor.chunk(2, dim=0)
        return [_cat([second, first])]
    sizes = _split_sizes(kind, tensor.shape[0], width)
    return list(tensor.split(sizes, dim=0)) if len(sizes) > 1 else [tensor]


def _cat(parts: list[Any]) -> Any:
    import torch

    return torch.cat(parts, dim=0)


def _module_of(key: str) -> tuple[str, str, str | None]:
    """(BFL module pattern with `{}`, the parameter suffix, the block index) of a BFL key."""
    match = _BLOCK.match(key)
    index = None
    if match:
        kind, index, rest = match.groups()
        key = f"{kind}.{{}}.{rest}"
    for suffix in (".weight", ".bias", ".scale"):
        if key.endswith(suffix):
            return key[: -len(suffix)], suffix, index
    return key, "", index


def is_bfl(keys: Iterable[str]) -> bool:
    return any(k.startswith(("double_blocks.", "single_blocks.")) for k in keys)


def hidden_width(shapes: dict[str, Any]) -> int:
    """The transformer's hidden width: `img_in`'s output rows (BFL) or `x_embedder`'s (diffusers)."""
    for key in ("img_in.weight", "x_embedder.weight"):
        if key in shapes:
            return int(_shape(shapes[key])[0])
    raise FluxKeyError("no img_in.weight / x_embedder.weight: not a FLUX transformer")


def _shape(value: Any) -> tuple[int, ...]:
    shape = getattr(value, "quant_shape", None) or getattr(value, "shape", value)
    return tuple(shape)


def bfl_to_diffusers(state: dict[str, Any]) -> dict[str, Any]:
    """A BFL-named FLUX transformer state dict (prefix stripped) renamed and split into diffusers' names.

    Raises FluxKeyError naming the first key it does not know (a variant or format this is not)."""
    if not is_bfl(state):
        return dict(state)
    width = hidden_width(state)
    table = module_map()
    norms = {f"double_blocks.{{}}.{b}": f"transformer_blocks.{{}}.{d}" for b, d in DOUBLE_NORMS}
    norms |= {f"single_blocks.{{}}.{b}": f"single_transformer_blocks.{{}}.{d}" for b, d in SINGLE_NORMS}
    out: dict[str, Any] = {}
    for key, tensor in state.items():
        pattern, suffix, index = _module_of(key)
        if pattern + suffix in norms:
            out[norms[pattern + suffix].format(index)] = tensor
            continue
        if pattern not in table:
            raise FluxKeyError(f"unknown FLUX transformer key {key!r}")
        targets, split = table[pattern]
        parts = split_rows(tensor, split, width) if len(targets) > 1 or split == "swap" else [tensor]
        for target, part in zip(targets, parts, strict=True):
            out[f"{target.format(index)}{suffix}"] = part
    return out


def _join(parts: list[Any], split: str | None) -> Any:
    if split == "swap":
        first, second = parts[0].chunk(2, dim=0)
        return _cat([second, first])
    return _cat(parts) if len(parts) > 1 else parts[0]


def diffusers_to_bfl(state: Mapping[str, Any], join: Callable[[list[Any], str | None], Any] = _join) -> dict[str, Any]:
    """The inverse of `bfl_to_diffusers`: diffusers' FluxTransformer2DModel names joined into BFL's.

    `join(parts, split)` makes one BFL value from its diffusers parts (in BFL's row order) and the split kind
    (None, "thirds", "qkv_mlp", "swap"); by default the tensors concatenated on dim 0, a swap's halves exchanged."""
    blocks = {"double_blocks": set(), "single_blocks": set()}
    for key in state:
        if match := _DIFFUSERS_BLOCK.match(key):
            kind = "double_blocks" if match.group(1) == "transformer_blocks" else "single_blocks"
            blocks[kind].add(int(match.group(2)))
    out: dict[str, Any] = {}
    for bfl, (targets, split) in module_map().items():
        kind = bfl.split(".", 1)[0]
        for index in sorted(blocks[kind]) if kind in blocks else [None]:
            for suffix in (".weight", ".bias"):
                names = [t.format(index) + suffix for t in targets]
                if not all(n in state for n in names):
                    continue
                out[bfl.format(index) + suffix] = join([state[n] for n in names], split)
    for kind, table in _NORM_TABLES:
        diffusers_kind = _DIFFUSERS_KIND[kind]
        for bfl, name in table:
            for index in sorted(blocks[kind]):
                if f"{diffusers_kind}.{index}.{name}" in state:
                    out[f"{kind}.{index}.{bfl}"] = join([state[f"{diffusers_kind}.{index}.{name}"]], None)
    return out


HEAD_WIDTH = 128  # attention head width of FLUX.1 (not stored in the file; TRAPS.md)
ROPE_AXES = (16, 56, 56)  # rotary axes of FLUX.1: they add up to the head width (not stored either)
MLP_RATIO = 4  # diffusers' FluxTransformer2DModel fixes it; a file with another ratio is refused


def _count(shapes: dict[str, Any], prefix: str) -> int:
    found = {int(k[len(prefix) :].split(".", 1)[0]) for k in shapes if k.startswith(prefix)}
    return max(found) + 1 if found else 0


def derive_config(shapes: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """FluxTransformer2DModel config from a diffusers-named state dict's shapes (`bfl_to_diffusers` output)
    over the bundled `base`: widths, block counts, the guidance embedder; head width and rope axes are facts.

    Raises FluxKeyError when the shapes do not fit those facts (another architecture)."""
    width = hidden_width(shapes)
    x_in = _shape(shapes["x_embedder.weight"])
    if width % HEAD_WIDTH:
        raise FluxKeyError(f"hidden width {width} is not a multiple of FLUX's {HEAD_WIDTH}-wide attention heads")
    mlp = shapes.get("transformer_blocks.0.ff.net.0.proj.weight")
    if mlp is not None and _shape(mlp)[0] != MLP_RATIO * width:
        raise FluxKeyError(f"MLP width {_shape(mlp)[0]} is not {MLP_RATIO} x {width}: not a FLUX.1 transformer")
    config = dict(base)
    config.update(
        in_channels=x_in[1],
        out_channels=_shape(shapes["proj_out.weight"])[0] if "proj_out.weight" in shapes else x_in[1],
        num_layers=_count(shapes, "transformer_blocks."),
        num_single_layers=_count(shapes, "single_transformer_blocks."),
        attention_head_dim=HEAD_WIDTH,
        num_attention_heads=width // HEAD_WIDTH,
        joint_attention_dim=_shape(shapes["context_embedder.weight"])[1],
        pooled_projection_dim=_shape(shapes["time_text_embed.text_embedder.linear_1.weight"])[1],
        guidance_embeds="time_text_embed.guidance_embedder.linear_1.weight" in shapes,
        axes_dims_rope=list(ROPE_AXES),
    )
    return config


def single_file_plan(shapes: Mapping[str, Any]) -> dict[str, Any]:
    """Every BFL-named key of the transformer (the single-file layout FLUX.1 files are distributed in) from the
    keys of a file in BFL's names (copied) or diffusers' (fused projections stacked on dim 0 in BFL's order, the
    final modulation's halves swapped): `webui.models.ldm_plan.Plan`, built from names and shapes alone.

    Raises FluxKeyError for a key neither naming knows (a ComfyUI scaled-fp8 file's `scale_weight` among them:
    its stored weights are not the weights)."""
    from webui.models.ldm_plan import KeySource, Op

    if is_bfl(shapes):
        table = module_map()
        for key in shapes:
            pattern, suffix, _index = _module_of(key)
            if pattern not in table and not _is_norm(pattern + suffix):
                raise FluxKeyError(f"unknown FLUX transformer key {key!r}")
        return {key: KeySource((key,)) for key in shapes}
    names = diffusers_to_bfl({key: key for key in shapes}, join=_plan_entry)
    used = {name for entry in names.values() for name in entry[0]}
    unknown = sorted(set(shapes) - used)
    if unknown:
        raise FluxKeyError(f"unknown FLUX transformer key {unknown[0]!r}")
    ops = {"stack": Op.STACK, "swap": Op.SWAP, None: Op.COPY}
    return {key: KeySource(tuple(parts), ops[kind]) for key, (parts, kind) in names.items()}


def _plan_entry(parts: list[Any], kind: str | None) -> tuple[list[Any], str | None]:
    return parts, "stack" if len(parts) > 1 else kind


def _is_norm(name: str) -> bool:
    return any(name == f"{kind}.{{}}.{bfl}" for kind, table in _NORM_TABLES for bfl, _ in table)
