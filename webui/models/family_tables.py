"""Identification tables derived from the registered family descriptions (no family is named here).

Each function is a pure function of the registry, computed once on first use.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache

from webui.families import DESCRIPTIONS, Family, FamilyDescription, family_of
from webui.families.base import Part, Telltale
from webui.models.kinds import Role, TextEncoderType


@dataclass(frozen=True)
class UnetSignature:
    """The interface widths that name a UNet family (from its description's UnetFacts)."""

    family: Family
    context_dim: int
    linear_proj: bool
    add_embedding_in: int | None

    def describe(self) -> str:
        proj = "linear" if self.linear_proj else "conv"
        return f"{self.family.label}: {self.context_dim}/{proj}/{self.add_embedding_in or 'none'}"


@cache
def unet_signatures() -> tuple[UnetSignature, ...]:
    return tuple(
        UnetSignature(family_of(d), d.unet.context_dim, d.unet.linear_proj, d.unet.add_embedding_in)
        for d in DESCRIPTIONS
        if d.unet is not None
    )


def family_by_context_dim(context: int) -> Family:
    """The UNet family whose cross-attention width is `context` (the width of the text it was trained on)."""
    return next((s.family for s in unet_signatures() if s.context_dim == context), Family.UNKNOWN)


@cache
def denoiser_telltales() -> tuple[tuple[Family, Telltale], ...]:
    return tuple((family_of(d), t) for d in DESCRIPTIONS for t in d.recognition.denoiser)


def refused_format(shapes: Iterable[str]) -> tuple[Family, str] | None:
    """(family, problem) when a key ends with a format marker some family refuses (bnb-NF4 FLUX files)."""
    markers = [(family_of(d), suffix, problem) for d in DESCRIPTIONS for suffix, problem in d.recognition.refuse]
    if not markers:
        return None
    for key in shapes:
        for family, suffix, problem in markers:
            if key.endswith(suffix):
                return family, problem
    return None


@cache
def families_with_latent_channels(channels: int) -> tuple[Family, ...]:
    """Families whose VAE has `channels` latent channels, in registration order (the first owns a lone VAE)."""
    return tuple(family_of(d) for d in DESCRIPTIONS if d.latent is not None and d.latent.channels == channels)


def takes_encoders(description: FamilyDescription, encoders: Iterable[TextEncoderType]) -> bool:
    return set(encoders) <= set(description.encoder_types)


@cache
def encoder_set_families(encoders: frozenset[TextEncoderType]) -> tuple[Family, ...]:
    """Families a set of text encoders can serve, in registration order (the first is the set's family)."""
    return tuple(family_of(d) for d in DESCRIPTIONS if encoders and takes_encoders(d, encoders))


@cache
def first_family_with_encoder(encoder: TextEncoderType) -> Family:
    """The first registered family with a text encoder of this architecture (a lone embedding's family)."""
    return next((family_of(d) for d in DESCRIPTIONS if encoder in d.encoder_types), Family.UNKNOWN)


@cache
def component_prefixes() -> tuple[tuple[str, Family | None], ...]:
    """Where components sit inside one file: every family's single-file prefixes and diffusers subfolders,
    longest first. A text-encoder prefix used by one family alone names that family; others name none."""
    owners: dict[str, set[Family]] = {}
    for d in DESCRIPTIONS:
        for spec in d.roles:
            if spec.checkpoint_prefix:
                hinted = owners.setdefault(spec.checkpoint_prefix, set())
                if spec.part is Part.TEXT_ENCODER:
                    hinted.add(family_of(d))
            owners.setdefault(f"{spec.role.value}/", set())
    hints = {prefix: next(iter(found)) if len(found) == 1 else None for prefix, found in owners.items()}
    return tuple(sorted(hints.items(), key=lambda item: -len(item[0])))


@cache
def kohya_role_families() -> tuple[tuple[Family, frozenset[Role]], ...]:
    """Each family with the text-encoder roles its kohya LoRAs name (lora_te1_, lora_te2_, ...)."""
    return tuple(
        (family_of(d), frozenset(role for role, _ in d.lora.kohya_text_encoders))
        for d in DESCRIPTIONS
        if d.lora.kohya_text_encoders
    )


@cache
def embedding_keys() -> tuple[tuple[Family, tuple[tuple[TextEncoderType, str], ...]], ...]:
    """Families whose embeddings hold one named tensor per text encoder: (family, ((encoder, key), ...))."""
    out = []
    for d in DESCRIPTIONS:
        if d.embedding is not None:
            out.append((family_of(d), tuple((d.role(role).encoder, key) for role, key in d.embedding.keys)))
    return tuple(out)

