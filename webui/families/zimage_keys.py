"""Z-Image transformer keys: the original single-file names to diffusers' `ZImageTransformer2DModel` and back.

The renames are diffusers' own (`convert_z_image_transformer_checkpoint_to_diffusers`, which reads no width:
`x_embedder.` / `final_layer.` under the patch size's `all_x_embedder.2-1.` / `all_final_layer.2-1.`,
`attention.out` -> `attention.to_out.0`, `q_norm` / `k_norm` -> `norm_q` / `norm_k`, the fused
`attention.qkv` split into three equal row blocks); it is called on a copy. The config is read from the
shapes: width, layers, refiner layers, head width (the q norm's length), query and key/value heads, the
Qwen3 feature width, latent channels; the rope axes (32, 48, 48) are facts of the model, not stored.
"""

from __future__ import annotations

import re
from typing import Any

from webui.families.flux_keys import _cat, _shape

PATCH = "2-1"  # patch 2, frame patch 1: the released models'
_RENAMES = (
    (f"all_final_layer.{PATCH}.", "final_layer."),
    (f"all_x_embedder.{PATCH}.", "x_embedder."),
    (".attention.to_out.0.", ".attention.out."),
    (".attention.norm_k.", ".attention.k_norm."),
    (".attention.norm_q.", ".attention.q_norm."),
)


def is_original(keys: Any) -> bool:
    return any(k.startswith(("x_embedder.", "final_layer.")) or ".attention.qkv." in k for k in keys)


def original_to_diffusers(state: dict[str, Any]) -> dict[str, Any]:
    """Original Z-Image keys (prefix stripped) in diffusers' names; diffusers-named states pass unchanged."""
    if not is_original(state):
        return dict(state)
    from diffusers.loaders.single_file_utils import convert_z_image_transformer_checkpoint_to_diffusers

    return convert_z_image_transformer_checkpoint_to_diffusers(dict(state))


def diffusers_to_original(state: dict[str, Any]) -> dict[str, Any]:
    """The inverse of `original_to_diffusers` (q, k, v joined into `attention.qkv`)."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        if ".attention.to_k." in key or ".attention.to_v." in key:
            continue
        if ".attention.to_q." in key:
            parts = [state[key.replace(".to_q.", name)] for name in (".to_q.", ".to_k.", ".to_v.")]
            out[key.replace(".attention.to_q.", ".attention.qkv.")] = _cat(parts)
            continue
        for new, old in _RENAMES:
            key = key.replace(new, old)
        out[key] = value
    return out


def _count(shapes: dict[str, Any], prefix: str) -> int:
    found = {int(m.group(1)) for k in shapes if (m := re.match(rf"{re.escape(prefix)}(\d+)\.", k))}
    return max(found) + 1 if found else 0


def derive_config(shapes: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """ZImageTransformer2DModel config from a diffusers-named state dict's shapes over the bundled `base`."""
    try:
        x_in = _shape(shapes[f"all_x_embedder.{PATCH}.weight"])  # (dim, patch * patch * channels)
        head = _shape(shapes["layers.0.attention.norm_q.weight"])[0]
        keys = _shape(shapes["layers.0.attention.to_k.weight"])[0]
        caption = _shape(shapes["cap_embedder.1.weight"])  # (dim, Qwen3 width)
    except KeyError as error:
        raise ValueError(f"a Z-Image transformer needs {error.args[0]!r}") from None
    dim = x_in[0]
    config = dict(base)
    config.update(
        dim=dim,
        in_channels=x_in[1] // 4,
        n_layers=_count(shapes, "layers."),
        n_refiner_layers=_count(shapes, "noise_refiner."),
        n_heads=dim // head,
        n_kv_heads=keys // head,
        cap_feat_dim=caption[1],
    )
    return config
