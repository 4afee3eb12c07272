"""FLUX.2: Black Forest Labs' second transformer generation; recognised, not supported yet.

Its transformer shares modulation across blocks (`double_stream_modulation_img.*`,
`double_stream_modulation_txt.*`, `single_stream_modulation.*`), takes a Mistral text encoder and a new
32-channel VAE: nothing of FLUX.1's pipeline fits it.
"""

from __future__ import annotations

from webui.families.base import FamilyDescription, Recognition, Telltale

DESCRIPTION = FamilyDescription(
    id="flux2",
    member="FLUX2",
    label="FLUX.2",
    supported=False,
    recognition=Recognition(
        denoiser=(Telltale(("double_stream_modulation_img.",), "FLUX.2 transformer (double_stream_modulation_img)"),),
        metadata_hints=("flux.2", "flux-2"),
    ),
)
