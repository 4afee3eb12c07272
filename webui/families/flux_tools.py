"""FLUX.1 Fill and FLUX.1 Depth/Canny: FLUX.1 transformers with image conditioning, recognised, not supported yet.

Black Forest Labs' FLUX.1 Tools widen the transformer's input: `img_in` takes the 64 packed latent inputs
plus the packed conditioning (Fill: masked image and mask, 384 in all; Depth and Canny: a control image,
128). Their pipelines (diffusers' FluxFillPipeline, FluxControlPipeline) need an input image, which
txt2img does not have; they are listed with that reason rather than filed as FLUX.1.
"""

from __future__ import annotations

from webui.families.base import FamilyDescription, Recognition, Telltale
from webui.families.flux import NOT_A_MODEL

FILL_INPUTS = 384
CONTROL_INPUTS = 128


def _telltales(inputs: int, label: str) -> tuple[Telltale, ...]:
    return (
        Telltale(
            ("double_blocks.",),
            f"{label} transformer (img_in takes {inputs})",
            shapes=(("img_in.weight", 1, inputs),),
            excludes=NOT_A_MODEL,
        ),
        Telltale(
            ("single_transformer_blocks.",),
            f"{label} transformer, diffusers names (x_embedder takes {inputs})",
            shapes=(("x_embedder.weight", 1, inputs),),
            excludes=NOT_A_MODEL,
        ),
    )


FILL = FamilyDescription(
    id="flux_fill",
    member="FLUX_FILL",
    label="FLUX.1 Fill",
    supported=False,
    recognition=Recognition(denoiser=_telltales(FILL_INPUTS, "FLUX.1 Fill"), metadata_hints=("flux-1-fill",)),
)
CONTROL = FamilyDescription(
    id="flux_control",
    member="FLUX_CONTROL",
    label="FLUX.1 Depth/Canny",
    supported=False,
    recognition=Recognition(denoiser=_telltales(CONTROL_INPUTS, "FLUX.1 Depth/Canny")),
)
