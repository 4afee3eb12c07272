"""Stable Diffusion 3 / 3.5: recognised and listed as not supported yet.

An MMDiT transformer (`joint_blocks.*`; diffusers `transformer_blocks.*` with `context_embedder`), CLIP-L +
CLIP-G + T5-XXL (T5 optional), the 16-channel VAE with SD3's scaling 1.5305 and shift 0.0609, flow
matching with shift 3.0. Single files as Stability's sd3_medium_incl_clips_t5xxlfp16.safetensors.
Latent-to-RGB factors are ComfyUI's `SD3` latent format's.
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
)
from webui.families.flux import CLIP_L_PREFIX, DIT_PREFIX, T5_PREFIX, VAE_16
from webui.models.kinds import Role, TextEncoderType

DESCRIPTION = FamilyDescription(
    id="sd3",
    member="SD3",
    label="SD3",
    supported=False,
    roles=(
        RoleSpec(Role.TRANSFORMER, Part.DENOISER, "diffusers.SD3Transformer2DModel", DIT_PREFIX),
        RoleSpec(Role.VAE, Part.VAE, "diffusers.AutoencoderKL", "first_stage_model."),
        RoleSpec(
            Role.TEXT_ENCODER,
            Part.TEXT_ENCODER,
            "transformers.CLIPTextModelWithProjection",
            CLIP_L_PREFIX,
            encoder=TextEncoderType.CLIP_L,
            tokenizer="tokenizer",
        ),
        RoleSpec(
            Role.TEXT_ENCODER_2,
            Part.TEXT_ENCODER,
            "transformers.CLIPTextModelWithProjection",
            "text_encoders.clip_g.",
            encoder=TextEncoderType.OPEN_CLIP_G,
            tokenizer="tokenizer_2",
        ),
        RoleSpec(
            Role.TEXT_ENCODER_3,
            Part.TEXT_ENCODER,
            "transformers.T5EncoderModel",
            T5_PREFIX,
            encoder=TextEncoderType.T5,
            tokenizer="tokenizer_3",
            optional=True,
        ),
    ),
    latent=LatentFormat(
        vae=VAE_16,
        scaling_factor=1.5305,
        shift_factor=0.0609,
        rgb_factors=(
            (-0.0922, -0.0175, 0.0749),
            (0.0311, 0.0633, 0.0954),
            (0.1994, 0.0927, 0.0458),
            (0.0856, 0.0339, 0.0902),
            (0.0587, 0.0272, -0.0496),
            (-0.0006, 0.1104, 0.0309),
            (0.0978, 0.0306, 0.0427),
            (-0.0042, 0.1038, 0.1358),
            (-0.0194, 0.0020, 0.0669),
            (-0.0488, 0.0130, -0.0268),
            (0.0922, 0.0988, 0.0951),
            (-0.0278, 0.0524, -0.0542),
            (0.0332, 0.0456, 0.0895),
            (-0.0069, -0.0030, -0.0810),
            (-0.0596, -0.0465, -0.0293),
            (-0.1448, -0.1463, -0.1189),
        ),
        rgb_bias=(0.2394, 0.2135, 0.1925),
    ),
    recognition=Recognition(
        denoiser=(
            Telltale(("joint_blocks.",), "MMDiT (joint_blocks)"),
            Telltale(
                ("transformer_blocks.",),
                "MMDiT (diffusers transformer_blocks)",
                requires=("context_embedder.weight",),
                excludes=("single_transformer_blocks.",),  # FLUX's diffusers names have both
            ),
        ),
        metadata_hints=("stable-diffusion-3", "sd3"),
        lora_blocks=("joint_blocks",),
        lora_transformer_widths=(1536, 2432),  # 3 Medium / 3.5 Medium: 24 heads × 64; 3.5 Large: 38 × 64
    ),
    scheduler=SchedulerSpec(kind=SchedulerKind.FLOW_MATCHING),
    defaults=Defaults(sizes=((1024, 1024),)),
    second_pass=SecondPass(latent_upscale=False),
)
