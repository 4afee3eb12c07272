"""Identify a model file from its header: kind and family, by telltale keys and interface widths.

Rules look only at key structure and at widths every family keeps at any size (text-encoder
width, UNet cross-attention width, SDXL add-embedding input, linear vs conv projections), never
at block counts, so real files and the tiny test models are identified alike. LoRAs and
embeddings are handled in identify_networks.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from webui.models.files import TensorHeader
from webui.models.identify_networks import identify_embedding, identify_lora, is_embedding, is_lora
from webui.models.identity import (
    ENCODER_BY_WIDTH,
    ENCODER_LABELS,
    FAMILY_TEXT_ENCODERS,
    SD_VAE_FAMILIES,
    Identity,
    Shapes,
    declared_prediction,
    encoder_label,
    family_from_metadata,
    has_key_prefix,
    unknown,
)
from webui.models.kinds import Family, Kind, Prediction, TextEncoderType

__all__ = ["Identity", "identify", "UNET_SIGNATURES", "COMPONENT_PREFIXES"]


@dataclass(frozen=True)
class UnetSignature:
    """The interface widths that name a UNet family."""

    family: Family
    context_dim: int  # cross-attention (attn2.to_k) input width
    linear_proj: bool  # transformer proj_in is a Linear (2-D weight) rather than a 1x1 conv
    add_embedding_in: int | None  # SDXL's text_time embedding input (label_emb / add_embedding)

    def describe(self) -> str:
        proj = "linear" if self.linear_proj else "conv"
        return f"{self.family.label}: {self.context_dim}/{proj}/{self.add_embedding_in or 'none'}"


UNET_SIGNATURES: tuple[UnetSignature, ...] = (
    UnetSignature(Family.SD1, 768, linear_proj=False, add_embedding_in=None),
    UnetSignature(Family.SD2, 1024, linear_proj=True, add_embedding_in=None),
    UnetSignature(Family.SDXL, 2048, linear_proj=True, add_embedding_in=2816),  # 1280 pooled + 6 * 256
    UnetSignature(Family.SDXL_REFINER, 1280, linear_proj=True, add_embedding_in=2560),  # 1280 + 5 * 256
)

# Where components sit inside one file (LDM single files, SD3/FLUX bundles, our diffusers-folder
# headers), with the family a text encoder at that place implies. Keys under no prefix form one
# more group, which is the whole file for a component-only file.
COMPONENT_PREFIXES: tuple[tuple[str, Family | None], ...] = (
    ("model.diffusion_model.", None),
    ("first_stage_model.", None),
    ("cond_stage_model.transformer.", Family.SD1),
    ("cond_stage_model.model.", Family.SD2),
    ("conditioner.embedders.0.transformer.", Family.SDXL),
    ("conditioner.embedders.1.model.", Family.SDXL),
    ("conditioner.embedders.0.model.", Family.SDXL_REFINER),
    ("text_encoders.clip_l.", None),
    ("text_encoders.clip_g.", None),
    ("text_encoders.t5xxl.", None),
    ("vae.", None),
    ("unet/", None),
    ("transformer/", None),
    ("vae/", None),
    ("text_encoder/", None),
    ("text_encoder_2/", None),
    ("text_encoder_3/", None),
)

_PREFIX_PATTERN = re.compile("|".join(re.escape(prefix) for prefix, _ in COMPONENT_PREFIXES))


@dataclass(frozen=True)
class Component:
    """One recognised part of a file."""

    kind: Kind  # UNET (any denoiser), VAE or TEXT_ENCODER
    family: Family
    encoder: TextEncoderType | None = None
    note: str = ""
    compatible: tuple[Family, ...] = ()


def _first(shapes: Shapes, suffix: str) -> tuple[int, ...] | None:
    """The shape of the first key ending with `suffix` (one C-level search: headers have ~2500 keys)."""
    blob = "\n".join(shapes) + "\n"
    at = blob.find(suffix + "\n")
    if at < 0:
        return None
    start = blob.rfind("\n", 0, at) + 1
    return shapes[blob[start : at + len(suffix)]]


def _matrix(shape: tuple[int, ...] | None) -> tuple[int, ...] | None:
    """The shape if it is a weight with an input dimension (2-D or more), else None."""
    return shape if shape is not None and len(shape) >= 2 else None


def measure_unet(shapes: Shapes) -> Component:
    """A UNet (LDM or diffusers names, no prefix) matched against UNET_SIGNATURES by its widths."""
    to_k = _matrix(_first(shapes, "attn2.to_k.weight"))
    proj_in = _first(shapes, "proj_in.weight")
    add = _matrix(shapes.get("label_emb.0.0.weight") or shapes.get("add_embedding.linear_1.weight"))
    conv_in = shapes.get("input_blocks.0.0.weight") or shapes.get("conv_in.weight")
    notes = []
    if conv_in is not None and len(conv_in) == 4 and conv_in[1] != 4:
        variant = {9: "inpainting", 8: "instruct-pix2pix"}.get(conv_in[1], "unusual")
        notes.append(f"{variant} UNet ({conv_in[1]} input channels)")
    if to_k is None or proj_in is None:
        return Component(
            Kind.UNET, Family.UNKNOWN, note="UNet without cross-attention weights (attn2.to_k, proj_in)"
        )
    context, linear, add_in = to_k[1], len(proj_in) == 2, (add[1] if add else None)
    for signature in UNET_SIGNATURES:
        if signature.context_dim == context and signature.add_embedding_in == add_in:
            if signature.linear_proj != linear:
                notes.append(
                    f"unexpected {'linear' if linear else 'conv'} proj_in for {signature.family.label}"
                )
            widths = f"cross-attention {context}" + (f", add-embedding {add_in}" if add_in else "")
            return Component(Kind.UNET, signature.family, note="; ".join([widths, *notes]))
    known = "; ".join(s.describe() for s in UNET_SIGNATURES)
    return Component(
        Kind.UNET,
        Family.UNKNOWN,
        note=f"UNet with cross-attention {context}/{'linear' if linear else 'conv'}/add-embedding "
        f"{add_in or 'none'} matches no known family (known: {known})",
    )


def _denoiser(shapes: Shapes) -> Component | None:
    if has_key_prefix(shapes, "joint_blocks."):
        return Component(Kind.UNET, Family.SD3, note="MMDiT (joint_blocks)")
    if has_key_prefix(shapes, "double_blocks.", "single_blocks.", "single_transformer_blocks."):
        return Component(Kind.UNET, Family.FLUX, note="FLUX transformer (double/single blocks)")
    if has_key_prefix(shapes, "transformer_blocks.") and "context_embedder.weight" in shapes:
        return Component(Kind.UNET, Family.SD3, note="MMDiT (diffusers transformer_blocks)")
    ldm = has_key_prefix(shapes, "input_blocks.") and has_key_prefix(shapes, "output_blocks.")
    diffusers = (
        has_key_prefix(shapes, "down_blocks.")
        and has_key_prefix(shapes, "up_blocks.")
        and "conv_in.weight" in shapes
    )
    return measure_unet(shapes) if ldm or diffusers else None


def _vae(shapes: Shapes) -> Component | None:
    if not has_key_prefix(
        shapes, "encoder.down.", "decoder.up.", "encoder.down_blocks.", "decoder.up_blocks."
    ):
        return None
    conv_in = shapes.get("decoder.conv_in.weight")
    latent = conv_in[1] if conv_in and len(conv_in) == 4 else None
    if latent == 4:
        return Component(
            Kind.VAE, Family.SD1, note="SD-family VAE (SD1/SD2/SDXL)", compatible=SD_VAE_FAMILIES
        )
    if latent == 16:
        return Component(
            Kind.VAE, Family.FLUX, note="16-channel VAE (SD3/FLUX.1)", compatible=(Family.SD3, Family.FLUX)
        )
    return Component(
        Kind.VAE, Family.UNKNOWN, note=f"VAE with {latent or 'unknown'} latent channels (decoder.conv_in)"
    )


def _text_encoder(shapes: Shapes) -> Component | None:
    if has_key_prefix(shapes, "encoder.block.", "transformer.encoder.block.") or "shared.weight" in shapes:
        return Component(
            Kind.TEXT_ENCODER, Family.FLUX, TextEncoderType.T5, compatible=(Family.SD3, Family.FLUX)
        )
    token = _first(
        shapes, "embeddings.token_embedding.weight"
    )  # Hugging Face CLIP, with or without text_model.
    layout = "Hugging Face"
    if token is None and (
        "positional_embedding" in shapes or has_key_prefix(shapes, "transformer.resblocks.")
    ):
        token, layout = shapes.get("token_embedding.weight"), "OpenCLIP"
    if token is None or len(token) != 2:
        return None
    encoder = ENCODER_BY_WIDTH.get(token[1])
    if encoder is None:
        return Component(Kind.TEXT_ENCODER, Family.UNKNOWN, note=f"text encoder of unknown width {token[1]}")
    return Component(
        Kind.TEXT_ENCODER, Family.UNKNOWN, encoder, note=f"{ENCODER_LABELS[encoder]} ({layout} layout)"
    )


# What each group of keys is tried as, in order, with the telltales named when nothing matches.
_CLASSIFIERS: tuple[tuple[Callable[[Shapes], Component | None], str], ...] = (
    (
        _denoiser,
        "UNet (input_blocks.*/output_blocks.* or down_blocks.*/up_blocks.* + conv_in.weight, its family "
        "from the attn2.to_k.weight width), "
        "SD3 (joint_blocks.*), FLUX.1 (double_blocks.*, single_blocks.*)",
    ),
    (_vae, "VAE (encoder.down.* or encoder.down_blocks.*)"),
    (
        _text_encoder,
        "text encoders (embeddings.token_embedding.weight, OpenCLIP token_embedding.weight + "
        "transformer.resblocks.*, T5 encoder.block.*)",
    ),
)
# Text-encoder sets on their own: (family, every family they fit).
_ENCODER_SET_FAMILIES: dict[frozenset[TextEncoderType], tuple[Family, tuple[Family, ...]]] = {
    frozenset({TextEncoderType.CLIP_L}): (Family.SD1, (Family.SD1, Family.SDXL)),
    frozenset({TextEncoderType.OPEN_CLIP_H}): (Family.SD2, (Family.SD2,)),
    frozenset({TextEncoderType.OPEN_CLIP_G}): (Family.SDXL, (Family.SDXL, Family.SDXL_REFINER)),
    frozenset({TextEncoderType.CLIP_L, TextEncoderType.OPEN_CLIP_G}): (Family.SDXL, (Family.SDXL,)),
    frozenset({TextEncoderType.T5}): (Family.FLUX, (Family.FLUX, Family.SD3)),
    frozenset({TextEncoderType.CLIP_L, TextEncoderType.T5}): (Family.FLUX, (Family.FLUX,)),
    frozenset({TextEncoderType.CLIP_L, TextEncoderType.OPEN_CLIP_G, TextEncoderType.T5}): (
        Family.SD3,
        (Family.SD3,),
    ),
}


def split_components(shapes: Shapes) -> list[tuple[str, Family | None, Shapes]]:
    """Group keys by COMPONENT_PREFIXES (prefix stripped); the unprefixed rest is the last group."""
    groups: dict[str, Shapes] = {}
    rest: Shapes = {}
    for key, shape in shapes.items():
        found = _PREFIX_PATTERN.match(key)
        if found is None:
            rest[key] = shape
        else:
            groups.setdefault(found.group(), {})[key[found.end() :]] = shape
    hints = dict(COMPONENT_PREFIXES)
    parts = [(prefix, hints[prefix], group) for prefix, group in groups.items()]
    return [*parts, ("", None, rest)] if rest else parts


def classify(shapes: Shapes) -> Component | None:
    """What one unprefixed group of keys is, or None when no classifier recognises it."""
    for classifier, _ in _CLASSIFIERS:
        component = classifier(shapes)
        if component is not None:
            return component
    return None


def identify(header: TensorHeader) -> Identity:
    """Kind and family of a file from its header alone. Never raises: unknown inputs give Kind.UNKNOWN
    with a detail naming the telltale keys that were looked for."""
    shapes, metadata = header.shapes, header.metadata
    if not shapes:
        return unknown("the file holds no tensors")
    if is_lora(shapes):
        return identify_lora(shapes, metadata)
    if is_embedding(shapes):
        return identify_embedding(shapes)
    parts = []
    for _prefix, hint, group in split_components(shapes):
        component = classify(group)
        if component is not None:
            parts.append((component, hint))
    if not parts:
        looked_for = "; ".join(describe for _, describe in _CLASSIFIERS)
        sample = ", ".join(sorted(shapes)[:4])
        return unknown(
            "no telltale keys of a known model: looked for LoRA (lora_down/lora_up, lora_A/lora_B, "
            "LyCORIS hada/lokr), embeddings (emb_params, clip_l + clip_g, string_to_param.*), "
            f"{looked_for}; the file has {len(shapes)} tensors, e.g. {sample}"
        )
    return _combine(parts, declared_prediction(shapes, metadata), family_from_metadata(metadata))


def _combine(
    parts: list[tuple[Component, Family | None]], prediction: Prediction | None, hinted: Family | None
) -> Identity:
    denoisers = [c for c, _ in parts if c.kind is Kind.UNET]
    vaes = [c for c, _ in parts if c.kind is Kind.VAE]
    encoders = tuple(c.encoder for c, _ in parts if c.kind is Kind.TEXT_ENCODER and c.encoder is not None)
    if denoisers:
        unet = denoisers[0]
        family = unet.family
        declared = f", declares {prediction.value}" if prediction else ""
        if not vaes and not encoders:
            return Identity(
                Kind.UNET,
                family,
                prediction,
                detail=f"{family.label} UNet: {unet.note}{declared}",
                compatible=(family,),
            )
        notes = [unet.note + declared, encoder_label(encoders), "VAE" if vaes else "no VAE inside: choose one"]
        expected = FAMILY_TEXT_ENCODERS.get(family)
        if expected is not None and set(encoders) != set(expected):
            notes.append(f"expected text encoders {encoder_label(expected)}")
        return Identity(
            Kind.CHECKPOINT,
            family,
            prediction,
            encoders,
            detail=f"{family.label} checkpoint: " + ", ".join(n for n in notes if n),
            compatible=(family,),
        )
    if vaes and not encoders:
        vae = vaes[0]
        if hinted in vae.compatible:  # training metadata narrows an SD VAE to its family
            return Identity(
                Kind.VAE,
                hinted,
                detail=f"{vae.note}, metadata says {hinted.label}",
                compatible=vae.compatible,
            )
        return Identity(Kind.VAE, vae.family, detail=vae.note, compatible=vae.compatible)
    if encoders and not vaes:
        prefix_hints = [hint for c, hint in parts if hint is not None and c.kind is Kind.TEXT_ENCODER]
        family, compatible = _ENCODER_SET_FAMILIES.get(frozenset(encoders), (Family.UNKNOWN, ()))
        if prefix_hints and prefix_hints[0] in compatible:
            family = prefix_hints[0]
        label = encoder_label(encoders)
        return Identity(
            Kind.TEXT_ENCODER, family, None, encoders, detail=f"text encoder: {label}", compatible=compatible
        )
    notes = [c.note for c, _ in parts if c.note]
    return unknown("parts of a model without a UNet: " + "; ".join(notes or ["VAE and text encoder(s)"]))
