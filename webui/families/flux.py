"""FLUX.1 (dev, schnell): a DiT transformer, CLIP-L + T5-XXL, the 16-channel `ae` VAE, flow matching.

The transformer comes in BFL's names (`double_blocks.*`, `single_blocks.*`, `img_in`, `txt_in`, `time_in`,
`vector_in`, `guidance_in` for dev), with or without `model.diffusion_model.`, or diffusers' names
(`transformer_blocks.*`, `single_transformer_blocks.*`); flux_keys.py converts, with widths read from the
file. CLIP-L gives the pooled vector (768, `vector_in`), T5 the sequence (4096, `txt_in`); the `ae` VAE has
no quant convs, scaling 0.3611 and shift 0.1159. dev is guidance-distilled (Forge's "Distilled CFG Scale",
3.5) and shifts its schedule with the resolution; schnell runs 1-4 steps with shift 1 (TRAPS.md: the two
repos ship different scheduler configs). Latent-to-RGB factors are ComfyUI's `Flux` latent format's.
Single files as ComfyUI writes them: `model.diffusion_model.*`, `text_encoders.clip_l.*`,
`text_encoders.t5xxl.*`, `vae.*`. Fill/Depth/Canny, Chroma and FLUX.2 are families of their own.
"""

from __future__ import annotations

from webui.families.base import (
    BenchSpec,
    BlockGroup,
    CheckpointLayout,
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
    VaeArchitecture,
    Variant,
)
from webui.models.kinds import Role, TextEncoderType

# The 16-channel KL VAE: FLUX's `ae` and the SD3 VAE share shapes; only weights and scaling differ.
VAE_16 = VaeArchitecture("16-channel VAE (SD3/FLUX.1)", latent_channels=16, narrow_by_scaling=True)
DIT_PREFIX = "model.diffusion_model."
CLIP_L_PREFIX = "text_encoders.clip_l."
T5_PREFIX = "text_encoders.t5xxl."
FLUX_WIDTH = 3072  # the transformer's hidden width (24 heads × 128)
LATENT_INPUTS = 64  # img_in's input: 16 latent channels packed 2×2
GUIDANCE_KEY = "guidance_in.in_layer.weight|time_text_embed.guidance_embedder.linear_1.weight"
SIZES = ((1024, 1024), (896, 1152), (1152, 896), (832, 1216), (1216, 832), (768, 1344), (1344, 768))
NOT_A_MODEL = ("distilled_guidance_layer.", "double_stream_modulation_img.")  # Chroma's, FLUX.2's
NF4 = (
    "bitsandbytes__nf4",
    "a bitsandbytes NF4 file, which this app cannot load: use a GGUF (Q8_0, Q5_K_S, Q4_K_S) or an fp8 "
    "(e4m3fn) version of the same model",
)
# Per-block merge weights as supermerger names FLUX's blocks (BLOCKIDFLUX): IN (the input embedders, ComfyUI
# ModelMergeFlux1's img_in/time_in/guidance_in/vector_in/txt_in), D00..D18 the double blocks, S00..S37 the single
# blocks, OUT (final_layer); both text encoders and the VAE are BASE.
MERGE_BLOCKS = (
    BlockGroup("IN", ("img_in.", "time_in.", "guidance_in.", "vector_in.", "txt_in."), numbered=False, alone="IN"),
    BlockGroup("D", "double_blocks."),
    BlockGroup("S", "single_blocks."),
    BlockGroup("OUT", "final_layer.", numbered=False, alone="OUT"),
)
DEV = Variant(
    "dev",
    "FLUX.1 dev",
    requires=(GUIDANCE_KEY,),
    scheduler="scheduler",
    defaults=Defaults(sizes=SIZES, steps=20, cfg_scale=1.0, distilled_guidance=3.5, negative_prompt=False),
    max_sequence_length=512,
    distilled_guidance=True,
)
SCHNELL = Variant(
    "schnell",
    "FLUX.1 schnell",
    absent=(GUIDANCE_KEY,),
    scheduler="scheduler_schnell",
    defaults=Defaults(sizes=SIZES, steps=4, cfg_scale=1.0, negative_prompt=False),
    max_sequence_length=256,
)

DESCRIPTION = FamilyDescription(
    id="flux",
    member="FLUX",
    label="FLUX.1",
    supported=True,
    roles=(
        RoleSpec(
            Role.TRANSFORMER,
            Part.DENOISER,
            "diffusers.FluxTransformer2DModel",
            DIT_PREFIX,
            CheckpointLayout.ORIGINAL_DIT,
            component_prefix="",  # flux1-dev.safetensors: BFL names, no prefix
        ),
        # `vae.` in ComfyUI's all-in-one files; ae.safetensors has the LDM names without a prefix
        RoleSpec(Role.VAE, Part.VAE, "diffusers.AutoencoderKL", "vae.", CheckpointLayout.LDM_VAE, component_prefix=""),
        RoleSpec(
            Role.TEXT_ENCODER,
            Part.TEXT_ENCODER,
            "transformers.CLIPTextModel",
            CLIP_L_PREFIX,
            CheckpointLayout.HF_TRANSFORMER,
            encoder=TextEncoderType.CLIP_L,
            tokenizer="tokenizer",
        ),
        RoleSpec(
            Role.TEXT_ENCODER_2,
            Part.TEXT_ENCODER,
            "transformers.T5EncoderModel",
            T5_PREFIX,
            CheckpointLayout.HF_TRANSFORMER,
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
                ("double_blocks.", "single_blocks."),
                "FLUX.1 transformer (BFL double/single blocks)",
                requires=("img_in.weight",),
                excludes=NOT_A_MODEL,
                shapes=(("img_in.weight", 1, LATENT_INPUTS),),
            ),
            Telltale(
                ("single_transformer_blocks.",),
                "FLUX.1 transformer (diffusers names)",
                requires=("x_embedder.weight",),
                excludes=NOT_A_MODEL,
                shapes=(("x_embedder.weight", 1, LATENT_INPUTS),),
            ),
        ),
        metadata_hints=("flux",),
        lora_blocks=("double_blocks", "single_blocks", "single_transformer_blocks"),
        lora_transformer_widths=(FLUX_WIDTH,),
        refuse=(NF4,),
    ),
    scheduler=SchedulerSpec(kind=SchedulerKind.FLOW_MATCHING, samplers=("Euler",), default_sampler="Euler"),
    conditioning=PipelineEncoding(encode="webui.families.encoding:flux"),
    defaults=DEV.defaults,
    variants=(DEV, SCHNELL),
    half_dtype="bfloat16",  # FLUX.1 and T5 overflow in fp16
    denoiser_loader=DenoiserLoader(
        convert="webui.families.flux_keys:bfl_to_diffusers",
        derive="webui.families.flux_keys:derive_config",
        fits=(("joint_attention_dim", Role.TEXT_ENCODER_2), ("pooled_projection_dim", Role.TEXT_ENCODER)),
        single_file_plan="webui.families.flux_keys:single_file_plan",
    ),
    pipeline=PipelineSpec(
        "FluxPipeline",
        absent=("image_encoder", "feature_extractor"),
        cfg_argument="true_cfg_scale",
        guidance_argument="guidance_scale",
        packed_latents=True,
    ),
    lora=LoraFacts(
        kohya_text_encoders=((Role.TEXT_ENCODER, "lora_te1_"), (Role.TEXT_ENCODER_2, "lora_te2_")),
        base_model_version="flux1",
        convert="webui.families.flux_lora:to_diffusers",
    ),
    # Hires. fix and img2img: pixel-space upscalers only (flow latents do not survive resampling); no refiner.
    second_pass=SecondPass(
        latent_upscale=False,
        img2img=PipelineSpec(
            "FluxImg2ImgPipeline",
            absent=("image_encoder", "feature_extractor"),
            cfg_argument="true_cfg_scale",
            guidance_argument="guidance_scale",
            packed_latents=True,
        ),
    ),
    merge_blocks=MERGE_BLOCKS,
    fixtures=FixtureSpec(writer="webui.families.flux_fixtures:write_flux_family", loras=True),
    bench=BenchSpec(),  # transformer figures (webui.bench.dit_figures): tiny fixtures, real-shape steps on CUDA
)
