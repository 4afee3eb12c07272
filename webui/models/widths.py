"""Sizes a model's parts must agree on, checked against a header: a relabelled dtype or a broken merge moves them.

safetensors itself checks that each tensor's byte range holds dtype × shape (`safe_open` refuses a file where
they differ), so the one lie it cannot see is a consistent one: F32 data declared as F16 with a doubled shape.
Such a file still claims an architecture, and the widths every file of that architecture has, at any size,
give it away. The facts come from the family's description and the text encoders' (webui.families): a CLIP
text encoder reads its tokenizer's `max_length` positions (77); the VAE of a latent space with C channels maps
2C → 2C in `quant_conv` and C → C in `post_quant_conv` (LDM's `embed_dim`); a UNet denoises those C channels
(in: C, or 2C/2C+1 for instruct-pix2pix/inpainting UNets; out: C). A layer's weight and bias always agree on
the output width.
"""

from __future__ import annotations

from webui.families.encoders import ENCODERS
from webui.models.files import ModelFileError, TensorHeader
from webui.models.identity import Identity
from webui.models.kinds import Kind

_POSITION_KEYS = ("position_embedding.weight", "positional_embedding")
_UNET_PREFIXES = ("model.diffusion_model.", "unet/", "")
_UNET_IN = ("input_blocks.0.0.weight", "conv_in.weight")
_UNET_OUT = ("out.2.weight", "conv_out.weight")
_SHOWN = 3  # disagreements named in a problem


def check_widths(header: TensorHeader, identity: Identity, path: object) -> None:
    """Raise ModelFileError naming the tensors whose shapes contradict the architecture `identity` claims."""
    shapes = header.shapes
    found = _bias_mismatches(shapes) + _position_mismatches(shapes, identity)
    latent = identity.family.description.latent if identity.kind is not Kind.UNKNOWN else None
    if latent is not None:
        found += _latent_mismatches(shapes, identity, latent.vae.latent_channels)
    if found:
        shown = "; ".join(found[:_SHOWN]) + (f"; and {len(found) - _SHOWN} more" if len(found) > _SHOWN else "")
        raise ModelFileError(
            path,
            f"its tensor shapes contradict the {identity.family.label} {identity.kind.value} it claims to be "
            f"({shown}): a dtype was relabelled or the file is damaged; download it again",
        )


def _bias_mismatches(shapes: dict[str, tuple[int, ...]]) -> list[str]:
    found = []
    for key, bias in shapes.items():
        if not key.endswith(".bias") or len(bias) != 1:
            continue
        weight = shapes.get(key[: -len("bias")] + "weight")
        if weight and weight[0] != bias[0]:
            found.append(f"{key} has {bias[0]} outputs but its weight {weight[0]}")
    return found


def _position_mismatches(shapes: dict[str, tuple[int, ...]], identity: Identity) -> list[str]:
    lengths = {ENCODERS[encoder].max_length for encoder in identity.text_encoders if ENCODERS[encoder].width}
    if not lengths:
        return []
    return [
        f"{key} has {shape[0]} positions, not {' or '.join(map(str, sorted(lengths)))}"
        for key, shape in shapes.items()
        if key.endswith(_POSITION_KEYS) and shape and shape[0] not in lengths
    ]


def _latent_mismatches(shapes: dict[str, tuple[int, ...]], identity: Identity, channels: int) -> list[str]:
    found = []
    for key, shape in shapes.items():
        if key.endswith("post_quant_conv.weight") and shape[:2] != (channels, channels):
            found.append(f"{key} is {list(shape)}, not [{channels}, {channels}, 1, 1] ({channels} latent channels)")
        elif (key.endswith(".quant_conv.weight") or key == "quant_conv.weight") and shape[:2] != (2 * channels,) * 2:
            expected = f"[{2 * channels}, {2 * channels}, 1, 1]"
            found.append(f"{key} is {list(shape)}, not {expected} ({channels} latent channels)")
    if identity.kind in (Kind.CHECKPOINT, Kind.UNET):
        inputs = (channels, 2 * channels, 2 * channels + 1)  # txt2img, instruct-pix2pix, inpainting
        for key in (prefix + name for prefix in _UNET_PREFIXES for name in _UNET_IN):
            if key in shapes and shapes[key][1:2] and shapes[key][1] not in inputs:
                found.append(f"{key} takes {shapes[key][1]} channels, not {'/'.join(map(str, inputs))}")
        for key in (prefix + name for prefix in _UNET_PREFIXES for name in _UNET_OUT):
            if key in shapes and shapes[key] and shapes[key][0] != channels:
                found.append(f"{key} gives {shapes[key][0]} channels, not {channels}")
    return found
