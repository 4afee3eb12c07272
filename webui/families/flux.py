"""FLUX.1 (dev, schnell): recognised and listed as not supported yet.

A DiT transformer (`double_blocks.*`, `single_blocks.*`; diffusers `single_transformer_blocks.*`), CLIP-L
for the pooled vector and T5-XXL for the sequence, the 16-channel `ae` VAE (scaling 0.3611, shift 0.1159),
flow matching with distilled guidance. Latent-to-RGB factors are ComfyUI's `Flux` latent format's.
Loading and generation come with the FLUX.1 work (issue 15's second half): fill in the pipeline,
conditioning, fixtures and set `supported`.
"""

from __future__ import annotations

from webui.families.base import (
    Defaults,
    FamilyDescription,
    LatentFormat,
    Part,
    Recognition,
    RoleSpec,
    SchedulerKind,
    SchedulerSpec,
    SecondPass,
    Telltale,
    VaeArchitecture,
)
from webui.models.kinds import Role, TextEncoderType

# The 16-channel KL VAE: FLUX's `ae` and the SD3 VAE share shapes; only weights and scaling differ.
VAE_16 = VaeArchitecture("16-channel VAE (SD3/FLUX.1)", latent_channels=16)
DIT_PREFIX = "model.diffusion_model."
CLIP_L_PREFIX = "text_encoders.clip_l."
T5_PREFIX = "text_encoders.t5xxl."
FLUX_WIDTH = 3072  # the transformer's hidden width (24 heads × 128)

DESCRIPTION = FamilyDescription(
    id="flux",
    member="FLUX",
    label="FLUX.1",
    supported=False,
    roles=(
        RoleSpec(Role.TRANSFORMER, Part.DENOISER, "diffusers.FluxTransformer2DModel", DIT_PREFIX),
        RoleSpec(Role.VAE, Part.VAE, "diffusers.AutoencoderKL", "vae."),
        RoleSpec(
            Role.TEXT_ENCODER,
            Part.TEXT_ENCODER,
            "transformers.CLIPTextModel",
            CLIP_L_PREFIX,
            encoder=TextEncoderType.CLIP_L,
            tokenizer="tokenizer",
        ),
        RoleSpec(
            Role.TEXT_ENCODER_2,
            Part.TEXT_ENCODER,
            "transformers.T5EncoderModel",
            T5_PREFIX,
            encoder=TextEncoderType.T5,
            tokenizer="tokenizer_2",
        ),
    ),
    latent=LatentFormat(
        vae=VAE_16,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        rgb_factors=(
            (-0.0346, 0.0244, 0.0681),
            (0.0034, 0.0210, 0.0687),
            (0.0275, -0.0668, -0.0433),
            (-0.0174, 0.0160, 0.0617),
            (0.0859, 0.0721, 0.0329),
            (0.0004, 0.0383, 0.0115),
            (0.0405, 0.0861, 0.0915),
            (-0.0236, -0.0185, -0.0259),
            (-0.0245, 0.0250, 0.1180),
            (0.1008, 0.0755, -0.0421),
            (-0.0515, 0.0201, 0.0011),
            (0.0428, -0.0012, -0.0036),
            (0.0817, 0.0765, 0.0749),
            (-0.1264, -0.0522, -0.1103),
            (-0.0280, -0.0881, -0.0499),
            (-0.1262, -0.0982, -0.0778),
        ),
        rgb_bias=(-0.0329, -0.0718, -0.0851),
    ),
    recognition=Recognition(
        denoiser=(
            Telltale(
                ("double_blocks.", "single_blocks.", "single_transformer_blocks."),
                "FLUX transformer (double/single blocks)",
            ),
        ),
        metadata_hints=("flux",),
        lora_blocks=("double_blocks", "single_blocks", "single_transformer_blocks"),
        lora_transformer_widths=(FLUX_WIDTH,),
    ),
    scheduler=SchedulerSpec(kind=SchedulerKind.FLOW_MATCHING),
    defaults=Defaults(sizes=((1024, 1024),), cfg_scale=1.0, distilled_guidance=3.5, negative_prompt=False),
    second_pass=SecondPass(latent_upscale=False),
)
