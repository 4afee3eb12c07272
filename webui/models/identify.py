"""Identify a model file from its header: kind and family, by telltale keys and interface widths.

Rules look only at key structure and at widths every family keeps at any size (text-encoder
width, UNet cross-attention width, SDXL add-embedding input, linear vs conv projections), never
at block counts, so real files and the tiny test models are identified alike. LoRAs and
embeddings are handled in identify_networks.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache

from webui.families import Family
from webui.families.encoders import ENCODERS
from webui.models import family_tables
from webui.models.family_tables import UnetSignature
from webui.models.files import TensorHeader
from webui.models.identify_networks import identify_embedding, identify_lora, is_embedding, is_lora
from webui.models.identity import (
    ENCODER_BY_WIDTH,
    Identity,
    Shapes,
    declared_prediction,
    declares_zero_snr,
    encoder_label,
    family_from_metadata,
    has_key_prefix,
    unknown,
)
from webui.models.kinds import Kind, Prediction, Role, TextEncoderType

__all__ = ["Identity", "identify", "UNET_SIGNATURES", "split_components", "classify"]


# Read from the registered descriptions: the UNet widths that name each UNet family.
UNET_SIGNATURES: tuple[UnetSignature, ...] = family_tables.unet_signatures()


@dataclass(frozen=True)
class Component:
    """One recognised part of a file."""

    kind: Kind  # UNET (any denoiser), VAE or TEXT_ENCODER
    family: Family
    encoder: TextEncoderType | None = None
    note: str = ""
    compatible: tuple[Family, ...] = ()
    variant: str | None = None


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
    in_channels = conv_in[1] if conv_in is not None and len(conv_in) == 4 else None
    notes = []
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
            notes += _variant_notes(signature.family, in_channels)
            return Component(Kind.UNET, signature.family, note="; ".join([widths, *notes]))
    known = "; ".join(s.describe() for s in UNET_SIGNATURES)
    return Component(
        Kind.UNET,
        Family.UNKNOWN,
        note=f"UNet with cross-attention {context}/{'linear' if linear else 'conv'}/add-embedding "
        f"{add_in or 'none'} matches no known family (known: {known})",
    )


def _variant_notes(family: Family, in_channels: int | None) -> list[str]:
    """What a UNet with extra input channels is, from the family's description (inpainting, instruct-pix2pix)."""
    description = family.description
    plain = description.latent.channels if description.latent is not None else None
    if in_channels is None or in_channels == plain:
        return []
    variant = description.unet_variant(in_channels)
    if variant is None:
        return [f"unusual UNet ({in_channels} input channels, no known {family.label} variant)"]
    use = "txt2img runs it with the whole image masked" if variant.txt2img else variant.refusal
    return [f"{variant.name} UNet ({in_channels} input channels): {use}"]


def _denoiser(shapes: Shapes) -> Component | None:
    matches = [
        (family, telltale)
        for family, telltale in family_tables.denoiser_telltales()
        if has_key_prefix(shapes, *telltale.prefixes)
        and all(key in shapes for key in telltale.requires)
        and not (telltale.excludes and has_key_prefix(shapes, *telltale.excludes))
        and telltale.shapes_hold(shapes)
    ]
    if matches:  # the telltale with the most conditions wins (FLUX.1 Fill over FLUX.1, whatever the order)
        family, telltale = max(matches, key=lambda match: match[1].specificity)
        variant = family.description.variant_of(shapes)
        note = telltale.note + (f", {variant.label}" if variant is not None else "")
        return Component(Kind.UNET, family, note=note, variant=variant.name if variant is not None else None)
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
    families = family_tables.families_with_latent_channels(latent) if latent else ()
    if families:
        label = families[0].description.latent.vae.label
        return Component(Kind.VAE, families[0], note=label, compatible=families)
    return Component(
        Kind.VAE, Family.UNKNOWN, note=f"VAE with {latent or 'unknown'} latent channels (decoder.conv_in)"
    )


def _text_encoder(shapes: Shapes) -> Component | None:
    if _first(shapes, "layers.0.self_attn.q_norm.weight") and _first(shapes, "embed_tokens.weight"):
        return Component(Kind.TEXT_ENCODER, Family.UNKNOWN, TextEncoderType.QWEN3, note="Qwen3 language model")
    if "blk.0.attn_q_norm.weight" in shapes and "token_embd.weight" in shapes:  # llama.cpp names (GGUF)
        note = "Qwen3 language model (GGUF names)"
        return Component(Kind.TEXT_ENCODER, Family.UNKNOWN, TextEncoderType.QWEN3, note=note)
    if has_key_prefix(shapes, "encoder.block.", "transformer.encoder.block.") or "shared.weight" in shapes:
        return Component(Kind.TEXT_ENCODER, Family.UNKNOWN, TextEncoderType.T5, note="T5 encoder")
    if has_key_prefix(shapes, "enc.blk.") and "token_embd.weight" in shapes:  # llama.cpp names (city96's GGUF)
        return Component(Kind.TEXT_ENCODER, Family.UNKNOWN, TextEncoderType.T5, note="T5 encoder (GGUF names)")
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
        Kind.TEXT_ENCODER, Family.UNKNOWN, encoder, note=f"{ENCODERS[encoder].label} ({layout} layout)"
    )


def _looked_for() -> tuple[str, ...]:
    """What each classifier looks for, named when nothing matches (transformer telltales from the registry)."""
    telltales = ", ".join(
        f"{family.label} ({'/'.join(p + '*' for p in t.prefixes)})" for family, t in family_tables.denoiser_telltales()
    )
    return (
        "UNet (input_blocks.*/output_blocks.* or down_blocks.*/up_blocks.* + conv_in.weight, its family "
        f"from the attn2.to_k.weight width), {telltales}",
        "VAE (encoder.down.* or encoder.down_blocks.*)",
        "text encoders (embeddings.token_embedding.weight, OpenCLIP token_embedding.weight + "
        "transformer.resblocks.*, T5 encoder.block.*, Qwen3 layers.N.self_attn.q_norm + embed_tokens)",
    )


# What each group of keys is tried as, in order.
_CLASSIFIERS: tuple[Callable[[Shapes], Component | None], ...] = (_denoiser, _vae, _text_encoder)


@cache
def _prefix_pattern() -> re.Pattern[str]:
    return re.compile("|".join(re.escape(prefix) for prefix, _ in family_tables.component_prefixes()))


def split_components(shapes: Shapes) -> list[tuple[str, Family | None, Shapes]]:
    """Group keys by the registered families' component prefixes (prefix stripped), each with the family
    its place implies (if only one family puts a text encoder there); the unprefixed rest is the last group."""
    pattern = _prefix_pattern()
    groups: dict[str, Shapes] = {}
    rest: Shapes = {}
    for key, shape in shapes.items():
        found = pattern.match(key)
        if found is None:
            rest[key] = shape
        else:
            groups.setdefault(found.group(), {})[key[found.end() :]] = shape
    hints = dict(family_tables.component_prefixes())
    parts = [(prefix, hints[prefix], group) for prefix, group in groups.items()]
    return [*parts, ("", None, rest)] if rest else parts


def classify(shapes: Shapes) -> Component | None:
    """What one unprefixed group of keys is, or None when no classifier recognises it."""
    for classifier in _CLASSIFIERS:
        component = classifier(shapes)
        if component is not None:
            return component
    return None


def identify(header: TensorHeader, name: str = "") -> Identity:
    """Kind and family of a file from its header (and its file `name`, which may name a variant the weights'
    shapes cannot: SD3.5 Large Turbo). Never raises: unknown inputs give Kind.UNKNOWN with a detail naming the
    telltale keys that were looked for."""
    shapes, metadata = header.shapes, header.metadata
    if not shapes:
        return unknown("the file holds no tensors")
    if is_lora(shapes):
        return identify_lora(shapes, metadata)
    if is_embedding(shapes):
        return identify_embedding(shapes)
    refused = family_tables.refused_format(shapes)
    if refused is not None:
        family, problem = refused
        return Identity(Kind.UNKNOWN, family, detail=f"{family.label} file: {problem}", refused=problem)
    parts = []
    for _prefix, hint, group in split_components(shapes):
        component = classify(group)
        if component is not None:
            parts.append((component, hint))
    if not parts:
        looked_for = "; ".join(_looked_for())
        sample = ", ".join(sorted(shapes)[:4])
        return unknown(
            "no telltale keys of a known model: looked for LoRA (lora_down/lora_up, lora_A/lora_B, "
            "LyCORIS hada/lokr), embeddings (emb_params, clip_l + clip_g, string_to_param.*), "
            f"{looked_for}; the file has {len(shapes)} tensors, e.g. {sample}"
        )
    identity = _combine(parts, declared_prediction(shapes, metadata), family_from_metadata(metadata))
    if identity.kind in (Kind.CHECKPOINT, Kind.UNET) and declares_zero_snr(shapes):
        identity = replace(identity, zero_snr=True, detail=f"{identity.detail}; zero terminal SNR (ztsnr)")
    if identity.variant is not None:
        names = (name, metadata.get("modelspec.architecture", ""), metadata.get("modelspec.title", ""))
        refined = identity.family.description.refined(identity.variant, names)
        if refined != identity.variant:
            label = identity.family.description.variant(refined).label
            identity = replace(identity, variant=refined, detail=f"{identity.detail}; {label} by its name")
    return identity


def _denoiser_word(family: Family) -> str:
    """What the family calls its denoiser in a detail line: its role's name (UNet, transformer)."""
    roles = family.description.roles
    return "UNet" if not roles else {"unet": "UNet"}.get(family.description.denoiser.role.value, "transformer")


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
                detail=f"{family.label} {_denoiser_word(family)}: {unet.note}{declared}",
                compatible=(family,),
                variant=unet.variant,
            )
        description = family.description
        lacks = tuple(
            spec.role
            for spec in description.text_encoders
            if spec.encoder is not None and spec.encoder not in encoders and not spec.optional
        )
        if not vaes and description.has(Role.VAE):
            lacks += (Role.VAE,)
        no_vae = "no VAE inside: a VAE from vae/ is used unless one is chosen"
        notes = [unet.note + declared, encoder_label(encoders), "VAE" if vaes else no_vae]
        expected = description.encoder_types
        required = {spec.encoder for spec in description.text_encoders if not spec.optional}
        if expected and not required <= set(encoders) <= set(expected):
            notes.append(f"expected text encoders {encoder_label(expected)}")
        left_out = [s.encoder for s in description.text_encoders if s.optional and s.encoder not in encoders]
        if encoders and left_out:
            notes.append(f"without the optional {encoder_label(tuple(left_out))}")
        return Identity(
            Kind.CHECKPOINT,
            family,
            prediction,
            encoders,
            detail=f"{family.label} checkpoint: " + ", ".join(n for n in notes if n),
            compatible=(family,),
            lacks=lacks,
            variant=unet.variant,
        )
    if vaes and not encoders:
        vae = vaes[0]
        if hinted in vae.compatible:  # training metadata narrows a shared VAE architecture to its family
            latent = hinted.description.latent
            same = tuple(f for f in vae.compatible if not latent.vae.narrow_by_scaling or (
                f.description.latent.scaling_factor == latent.scaling_factor
                and f.description.latent.shift_factor == latent.shift_factor))  # fmt: skip
            scaling = f"scaling {latent.scaling_factor:g}" + (
                f", shift {latent.shift_factor:g}" if latent.shift_factor is not None else "")  # fmt: skip
            return Identity(
                Kind.VAE,
                hinted,
                detail=f"{vae.note}, metadata says {hinted.label} ({scaling})",
                compatible=same,  # only families with its latent scaling: another one washes images out
            )
        return Identity(Kind.VAE, vae.family, detail=vae.note, compatible=vae.compatible)
    if encoders and not vaes:
        prefix_hints = [hint for c, hint in parts if hint is not None and c.kind is Kind.TEXT_ENCODER]
        compatible = family_tables.encoder_set_families(frozenset(encoders))
        family = compatible[0] if compatible else Family.UNKNOWN
        if prefix_hints and prefix_hints[0] in compatible:
            family = prefix_hints[0]
        label = encoder_label(encoders)
        return Identity(
            Kind.TEXT_ENCODER, family, None, encoders, detail=f"text encoder: {label}", compatible=compatible
        )
    notes = [c.note for c, _ in parts if c.note]
    return unknown("parts of a model without a UNet: " + "; ".join(notes or ["VAE and text encoder(s)"]))
