"""Whether a model choice's components fit together: text encoders in the roles their architecture fills, and
the widths and latent channels the denoiser takes (checked before a pipeline is assembled)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from webui.families import Family
from webui.families.base import UnetVariant
from webui.models.kinds import Kind
from webui.models.loading import ComponentSource, Role


class ModelLoadError(ValueError):
    """A model choice could not be loaded; the message names the file and the mismatch. `role`: the component
    override at fault (a front end resets that choice), None when the checkpoint itself is."""

    def __init__(self, message: str, role: Role | None = None) -> None:
        super().__init__(message)
        self.role = role


def _width(encoder: torch.nn.Module) -> int:
    """A text encoder's output width (CLIP's hidden_size, T5's d_model)."""
    config = encoder.config
    return getattr(config, "hidden_size", None) or config.d_model


def encoder_roles(choice: Any, family: Family, identify: Callable[[Path], Any]) -> dict[Role, Path]:
    """The chosen text-encoder files by the role their identified architecture fills (CLIP-L and T5 may be
    given in either order, as `--text-encoder A --text-encoder B`); a file that no role takes keeps its slot."""
    specs = family.description.text_encoders
    given = [choice.override(spec.role) for spec in specs]
    found: dict[Role, Path] = {}
    for path in filter(None, given):
        identity = None if path.is_dir() else identify(path)
        encoders = identity.text_encoders if identity is not None and identity.kind is Kind.TEXT_ENCODER else ()
        roles = [spec.role for spec in specs if len(encoders) == 1 and spec.encoder is encoders[0]]
        if len(roles) == 1 and roles[0] not in found:
            found[roles[0]] = path
    if len(found) != len([p for p in given if p is not None]):
        return {}  # ambiguous: each file stays in the slot it was given for (and is checked there)
    return found


def check_fit(
    family: Family,
    modules: dict[Role, torch.nn.Module],
    sources: dict[Role, ComponentSource],
    choice: Any = None,
) -> UnetVariant | None:
    """A UNet's cross-attention takes the text encoders' features side by side; a transformer's inputs take
    each encoder's width (its DenoiserLoader's `fits`); the VAE's latents (packed 2x2 where the pipeline packs
    them) are the denoiser's input, or a UNet variant of the family's description takes extra channels.
    Returns that variant (None for the plain denoiser). Raises ModelLoadError naming the file that does not fit,
    and as its `role` the override of `choice` (a ModelChoice) at fault: the chosen part, else a chosen denoiser."""
    description = family.description
    denoiser_role = description.denoiser.role
    unet = modules[denoiser_role]

    def culprit(*roles: Role) -> Role | None:
        chosen = (*roles, denoiser_role)
        return next((role for role in chosen if choice is not None and choice.override(role) is not None), None)

    encoders = [spec.role for spec in description.text_encoders if spec.role in modules]
    widths = [_width(modules[spec.role]) for spec in description.text_encoders if spec.role in modules]
    context = getattr(unet.config, "cross_attention_dim", None)
    if context is not None and sum(widths) != context:
        raise ModelLoadError(
            f"{sources[denoiser_role].describe()}: the UNet expects text features of width {context}, "
            f"but the text encoder(s) give {'+'.join(map(str, widths))}",
            culprit(*encoders),
        )
    loader = description.denoiser_loader
    for attribute, role in loader.fits if loader is not None else ():
        if role not in modules:
            continue  # an optional encoder left out (SD3 without T5): the pipeline feeds zeros of the right width
        wanted, given = getattr(unet.config, attribute), _width(modules[role])
        if wanted != given:
            raise ModelLoadError(
                f"{sources[role].describe()}: the {family.label} transformer takes {role.label} features of "
                f"width {wanted} ({attribute}), this text encoder gives {given}",
                culprit(role),
            )
    vae = modules[Role.VAE]
    packed = 4 if description.pipeline is not None and description.pipeline.packed_latents else 1
    latent, takes = vae.config.latent_channels * packed, unet.config.in_channels
    if latent == takes:
        return None
    variant = description.unet_variant(takes)
    if variant is None:
        known = ", ".join(f"{v.in_channels} ({v.name})" for v in description.unet_variants)
        raise ModelLoadError(
            f"{sources[Role.VAE].describe()}: the VAE has {vae.config.latent_channels} latent channels, the "
            f"{denoiser_role.label} takes {takes // packed}, which is no {family.label} {denoiser_role.label} "
            f"(known: {latent // packed}{', ' + known if known else ''})",
            culprit(Role.VAE),
        )
    return variant
