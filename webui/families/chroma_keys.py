"""Chroma transformer keys: BFL-style names (FLUX.1's blocks without their modulation inputs, plus
`distilled_guidance_layer.*`) to diffusers' `ChromaTransformer2DModel` names and back, widths from the tensors.

The blocks are FLUX.1's (flux_keys.py converts them); Chroma replaces the per-block modulation linears and the
final layer's adaLN with one "distilled guidance" network (lodestones/flow `chroma` model:
`distilled_guidance_layer.in_proj`, `layers.N.in_layer/out_layer`, `norms.N.scale`, `out_proj`), renamed as
diffusers' `convert_chroma_transformer_checkpoint_to_diffusers` does; that converter assumes the released
width (3072), so it is not used.
"""

from __future__ import annotations

import re
from typing import Any

from webui.families.flux_keys import _shape, bfl_to_diffusers, diffusers_to_bfl, hidden_width

GUIDANCE = "distilled_guidance_layer."
_LAYER = re.compile(r"^distilled_guidance_layer\.layers\.(\d+)\.(in_layer|out_layer)\.(weight|bias)$")
_NORM = re.compile(r"^distilled_guidance_layer\.norms\.(\d+)\.scale$")
_DIFFUSERS_LAYER = re.compile(r"^distilled_guidance_layer\.layers\.(\d+)\.(linear_1|linear_2)\.(weight|bias)$")
_DIFFUSERS_NORM = re.compile(r"^distilled_guidance_layer\.norms\.(\d+)\.weight$")
HEAD_WIDTH = 128  # as FLUX.1 (not stored in the file)
ROPE_AXES = (16, 56, 56)


def original_to_diffusers(state: dict[str, Any]) -> dict[str, Any]:
    """Chroma keys (prefix stripped) in diffusers' names; a diffusers-named state passes unchanged."""
    if not any(k.startswith(("double_blocks.", "single_blocks.")) for k in state):
        return dict(state)
    blocks = {k: v for k, v in state.items() if not k.startswith(GUIDANCE)}
    out = bfl_to_diffusers(blocks)
    for key, value in state.items():
        if (match := _LAYER.match(key)) is not None:
            index, layer, suffix = match.groups()
            name = "linear_1" if layer == "in_layer" else "linear_2"
            out[f"{GUIDANCE}layers.{index}.{name}.{suffix}"] = value
        elif (match := _NORM.match(key)) is not None:
            out[f"{GUIDANCE}norms.{match.group(1)}.weight"] = value
        elif key.startswith(GUIDANCE):
            out[key] = value  # in_proj, out_proj: the same names
    return out


def diffusers_to_original(state: dict[str, Any]) -> dict[str, Any]:
    """The inverse of `original_to_diffusers`."""
    out = diffusers_to_bfl({k: v for k, v in state.items() if not k.startswith(GUIDANCE)})
    for key, value in state.items():
        if (match := _DIFFUSERS_LAYER.match(key)) is not None:
            index, name, suffix = match.groups()
            layer = "in_layer" if name == "linear_1" else "out_layer"
            out[f"{GUIDANCE}layers.{index}.{layer}.{suffix}"] = value
        elif (match := _DIFFUSERS_NORM.match(key)) is not None:
            out[f"{GUIDANCE}norms.{match.group(1)}.scale"] = value
        elif key.startswith(GUIDANCE):
            out[key] = value
    return out


def _count(shapes: dict[str, Any], pattern: str) -> int:
    found = {int(m.group(1)) for k in shapes if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def derive_config(shapes: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """ChromaTransformer2DModel config from a diffusers-named state dict's shapes over the bundled `base`: width,
    block counts, T5 width, and the guidance network's input channels, hidden width and depth."""
    width = hidden_width(shapes)
    if width % HEAD_WIDTH:
        raise ValueError(f"hidden width {width} is not a multiple of Chroma's {HEAD_WIDTH}-wide attention heads")
    x_in = _shape(shapes["x_embedder.weight"])
    in_proj = _shape(shapes[f"{GUIDANCE}in_proj.weight"])  # (hidden, approximator channels)
    config = dict(base)
    config.update(
        in_channels=x_in[1],
        out_channels=_shape(shapes["proj_out.weight"])[0],
        num_layers=_count(shapes, r"transformer_blocks\.(\d+)\."),
        num_single_layers=_count(shapes, r"single_transformer_blocks\.(\d+)\."),
        attention_head_dim=HEAD_WIDTH,
        num_attention_heads=width // HEAD_WIDTH,
        joint_attention_dim=_shape(shapes["context_embedder.weight"])[1],
        axes_dims_rope=list(ROPE_AXES),
        approximator_num_channels=in_proj[1],
        approximator_hidden_dim=in_proj[0],
        approximator_layers=_count(shapes, r"distilled_guidance_layer\.layers\.(\d+)\."),
    )
    return config
