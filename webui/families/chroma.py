"""Chroma: a FLUX-shaped transformer with its own guidance network and no CLIP; recognised, not supported yet.

Chroma (lodestones/Chroma, Chroma1-HD) replaces FLUX.1's per-block modulation inputs with
`distilled_guidance_layer.*` and is conditioned on T5-XXL alone, with real CFG. Issue 17 brings it in.
"""

from __future__ import annotations

from webui.families.base import FamilyDescription, Recognition, Telltale

DESCRIPTION = FamilyDescription(
    id="chroma",
    member="CHROMA",
    label="Chroma",
    supported=False,
    recognition=Recognition(
        denoiser=(Telltale(("distilled_guidance_layer.",), "Chroma transformer (distilled_guidance_layer)"),),
        metadata_hints=("chroma",),
    ),
)
