"""Stable Diffusion 3 / 3.5 (SD3 Medium, SD3.5 Large, Large Turbo, Medium): MMDiT, CLIP-L + CLIP-G + T5, flow matching.

The transformer comes in Stability's names (`joint_blocks.N.x_block.*` / `context_block.*`, `x_embedder`,
`pos_embed`), with or without `model.diffusion_model.`, or diffusers' (`transformer_blocks.*` with
`context_embedder`); sd3_keys.py converts, widths from the file. Variants by the weights: SD3.5 Medium has a
second image attention (`attn2`) in its first blocks, SD3.5 Large (and Large Turbo, the same shapes) RMS q/k
norms, SD3 Medium neither. Text: CLIP-L and CLIP-G (both with projection; pooled 768 + 1280 = 2048) and
T5-XXL, which is optional as in diffusers (without it the T5 part of the sequence is zeros). The 16-channel VAE
has SD3's scaling 1.5305 and shift 0.0609 (the FLUX `ae` has the same shapes: see webui.families.vae_facts).
Flow matching with shift 3.0 for every variant; real CFG with negative prompts. Single files as Stability
ships them (sd3.5_large.safetensors: transformer only or with `text_encoders.clip_l.*`, `text_encoders.clip_g.*`
(Hugging Face names under `transformer.`), `text_encoders.t5xxl.*`, `first_stage_model.*`), split files as
ComfyUI keeps them, diffusers folders. Defaults are the model cards' (steps, CFG). Latent-to-RGB factors are
ComfyUI's `SD3` latent format's.
"""

from __future__ import annotations

from webui.families.base import (
    BenchSpec,
    Defaults,
    DenoiserLoader,
    FamilyDescription,
    FixtureSpec,
    LatentFormat,
    LoraFacts,
    Part,
    PipelineEncoding,
    PipelineSpec,
    Recognition,
    RoleSpec,
    SchedulerKind,
    SchedulerSpec,
    SecondPass,
    Telltale,
    Variant,
)
from webui.families.flux import CLIP_L_PREFIX, DIT_PREFIX, T5_PREFIX, VAE_16
from webui.models.kinds import Role, TextEncoderType

VAE_NAMES = ("sd3",)  # sd3_vae, sd3.5_vae: a no-VAE file takes one of these before any 16-channel VAE
SIZES = ((1024, 1024), (896, 1152), (1152, 896), (832, 1216), (1216, 832), (768, 1344), (1344, 768))
QK_NORM = "joint_blocks.0.x_block.attn.ln_q.weight|transformer_blocks.0.attn.norm_q.weight"
DUAL_ATTENTION = "joint_blocks.0.x_block.attn2.qkv.weight|transformer_blocks.0.attn2.to_q.weight"
T5_LENGTH = 256  # StableDiffusion3Pipeline's default max_sequence_length
MEDIUM_35 = Variant(
    "3.5-medium",
    "SD3.5 Medium",
    requires=(DUAL_ATTENTION,),
    defaults=Defaults(sizes=SIZES, steps=40, cfg_scale=4.5, vae_names=VAE_NAMES),
    max_sequence_length=T5_LENGTH,
)
LARGE_35 = Variant(
    "3.5-large",
    "SD3.5 Large",
    requires=(QK_NORM,),
    defaults=Defaults(sizes=SIZES, steps=28, cfg_scale=3.5, vae_names=VAE_NAMES),
    max_sequence_length=T5_LENGTH,
)
LARGE_TURBO_35 = Variant(
    "3.5-large-turbo",
    "SD3.5 Large Turbo",
    requires=(QK_NORM,),
    defaults=Defaults(sizes=SIZES, steps=4, cfg_scale=1.0, negative_prompt=False, vae_names=VAE_NAMES),
    max_sequence_length=T5_LENGTH,
    refines="3.5-large",  # Large's shapes: its model card's 4 steps without CFG, when its name says turbo
    name_hints=("turbo",),
)
MEDIUM_3 = Variant(
    "3-medium",
    "SD3 Medium",
    absent=(QK_NORM,),
    defaults=Defaults(sizes=SIZES, steps=28, cfg_scale=7.0, vae_names=VAE_NAMES),
    max_sequence_length=T5_LENGTH,
)

DESCRIPTION = FamilyDescription(
    id="sd3",
    member="SD3",
    label="SD3",
    supported=True,
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
        metadata_hints=("stable-diffusion-3", "stable-diffusion-v3", "sd3"),  # SAI model spec names
        lora_blocks=("joint_blocks",),
        lora_transformer_widths=(1536, 2432),  # 3 Medium / 3.5 Medium: 24 heads × 64; 3.5 Large: 38 × 64
    ),
    scheduler=SchedulerSpec(kind=SchedulerKind.FLOW_MATCHING, samplers=("Euler",), default_sampler="Euler"),
    conditioning=PipelineEncoding(encode="webui.families.encoding:sd3", max_sequence_length=T5_LENGTH),
    defaults=LARGE_35.defaults,
    variants=(MEDIUM_35, LARGE_35, LARGE_TURBO_35, MEDIUM_3),
    half_dtype="bfloat16",  # T5 overflows in fp16
    denoiser_loader=DenoiserLoader(
        convert="webui.families.sd3_keys:original_to_diffusers",
        derive="webui.families.sd3_keys:derive_config",
        fits=(("joint_attention_dim", Role.TEXT_ENCODER_3),),
    ),
    pipeline=PipelineSpec("StableDiffusion3Pipeline", absent=("image_encoder", "feature_extractor")),
    lora=LoraFacts(
        kohya_text_encoders=(
            (Role.TEXT_ENCODER, "lora_te1_"),
            (Role.TEXT_ENCODER_2, "lora_te2_"),
            (Role.TEXT_ENCODER_3, "lora_te3_"),
        ),
        base_model_version="sd3",
        convert="webui.families.sd3_lora:to_diffusers",
    ),
    second_pass=SecondPass(
        latent_upscale=False,
        img2img=PipelineSpec("StableDiffusion3Img2ImgPipeline", absent=("image_encoder", "feature_extractor")),
    ),
    fixtures=FixtureSpec(writer="webui.families.sd3_fixtures:write_sd3_family"),
    bench=BenchSpec(),
)
