"""Sizes a model's parts must agree on, checked against a header: a relabelled dtype or a broken merge moves them.

safetensors itself checks that each tensor's byte range holds dtype × shape (`safe_open` refuses a file where
they differ), so the one lie it cannot see is a consistent one: F32 data declared as F16 with a doubled shape.
Such a file still claims an architecture, and the widths every file of that architecture has, at any size,
give it away. The facts, from the original LDM configs (CompVis/stable-diffusion, Stability-AI/generative-models):
CLIP and OpenCLIP text encoders read 77 positions; the SD-family VAE has 4 latent channels (`embed_dim: 4`,
so `quant_conv` maps 8 → 8 and `post_quant_conv` 4 → 4); its UNets denoise those 4 channels (in: 4, or 8/9 for
instruct-pix2pix/inpainting; out: 4). A layer's weight and bias always agree on the output width.
"""

from __future__ import annotations

from webui.models.files import ModelFileError, TensorHeader
from webui.models.identity import Identity
from webui.models.kinds import Kind

CLIP_POSITIONS = 77
SD_LATENT_CHANNELS = 4
SD_UNET_IN_CHANNELS = (4, 8, 9)  # txt2img, instruct-pix2pix, inpainting
_POSITION_KEYS = ("position_embedding.weight", "positional_embedding")
_UNET_PREFIXES = ("model.diffusion_model.", "unet/", "")
_UNET_IN = ("input_blocks.0.0.weight", "conv_in.weight")
_UNET_OUT = ("out.2.weight", "conv_out.weight")
_SHOWN = 3  # disagreements named in a problem


def check_widths(header: TensorHeader, identity: Identity, path: object) -> None:
    """Raise ModelFileError naming the tensors whose shapes contradict the architecture `identity` claims."""
    found = _bias_mismatches(header.shapes)
    if identity.kind is not Kind.UNKNOWN and identity.family.supported:  # the SD families, whose facts are above
        found += _sd_mismatches(header.shapes, identity)
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


def _sd_mismatches(shapes: dict[str, tuple[int, ...]], identity: Identity) -> list[str]:
    found = []
    for key, shape in shapes.items():
        if key.endswith(_POSITION_KEYS) and shape and shape[0] != CLIP_POSITIONS:
            found.append(f"{key} has {shape[0]} positions, not {CLIP_POSITIONS}")
        elif key.endswith("post_quant_conv.weight") and shape[:2] != (SD_LATENT_CHANNELS,) * 2:
            found.append(f"{key} is {list(shape)}, not [4, 4, 1, 1] (4 latent channels)")
        elif key.endswith(".quant_conv.weight") or key == "quant_conv.weight":
            if shape[:2] != (2 * SD_LATENT_CHANNELS,) * 2:
                found.append(f"{key} is {list(shape)}, not [8, 8, 1, 1] (4 latent channels)")
    if identity.kind in (Kind.CHECKPOINT, Kind.UNET):
        for prefix in _UNET_PREFIXES:
            for key in (prefix + name for name in _UNET_IN):
                if key in shapes and shapes[key][1:2] and shapes[key][1] not in SD_UNET_IN_CHANNELS:
                    found.append(f"{key} takes {shapes[key][1]} channels, not 4 (or 8/9)")
            for key in (prefix + name for name in _UNET_OUT):
                if key in shapes and shapes[key] and shapes[key][0] != SD_LATENT_CHANNELS:
                    found.append(f"{key} gives {shapes[key][0]} channels, not 4")
    return found
