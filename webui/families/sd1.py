"""Stable Diffusion 1.x: CLIP-L text encoder, 4-channel KL-f8 VAE, epsilon prediction, 512 px.

Single-file layout as the original CompVis LDM checkpoints (v1-5-pruned-emaonly.safetensors) store it;
the tiny fixtures follow TINY_SPEC.md; the latent-to-RGB factors are ComfyUI's `SD15` latent format's.
"""

from __future__ import annotations

from webui.families.base import (
    BenchSpec,
    BlockGroup,
    CheckpointLayout,
    ClipChunks,
    Defaults,
    FamilyDescription,
    FixtureSpec,
    LatentFormat,
    LoraFacts,
    Part,
    PipelineSpec,
    Recognition,
    RoleSpec,
    SchedulerSpec,
    SecondPass,
    UnetFacts,
    UnetVariant,
    VaeArchitecture,
    VariantInput,
    frozen,
)
from webui.models.kinds import Role, TextEncoderType

# The shared pieces the other SD families reuse (they import these names from here).
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD_VAE = VaeArchitecture("SD-family VAE (SD1/SD2/SDXL)", latent_channels=4)
SD_LATENT = LatentFormat(
    vae=SD_VAE,
    scaling_factor=0.18215,
    rgb_factors=(
        (0.3512, 0.2297, 0.3227),
        (0.3250, 0.4974, 0.2350),
        (-0.2829, 0.1762, 0.2721),
        (-0.2120, -0.2616, -0.7177),
    ),
)
UNET_ROLE = RoleSpec(Role.UNET, Part.DENOISER, "diffusers.UNet2DConditionModel", UNET_PREFIX, CheckpointLayout.LDM_UNET)
VAE_ROLE = RoleSpec(Role.VAE, Part.VAE, "diffusers.AutoencoderKL", VAE_PREFIX, CheckpointLayout.LDM_VAE)
SD_PIPELINE = PipelineSpec(
    "StableDiffusionPipeline",
    absent=("safety_checker", "feature_extractor"),
    flags=frozen(requires_safety_checker=False),
)
# UNets with extra input channels (runwayml/stable-diffusion-inpainting, timbrooks/instruct-pix2pix), shared with SD2.
SD_VARIANTS = (
    UnetVariant(
        "inpainting",
        9,
        PipelineSpec("StableDiffusionInpaintPipeline", SD_PIPELINE.absent, SD_PIPELINE.flags),
        txt2img=VariantInput.FULL_MASK,
    ),
    UnetVariant(
        "instruct-pix2pix",
        8,
        PipelineSpec("StableDiffusionInstructPix2PixPipeline", SD_PIPELINE.absent, SD_PIPELINE.flags),
        refusal="an instruct-pix2pix model edits an input image by an instruction, so txt2img cannot run it "
        "(with its own image conditioning, which img2img here does not give it yet); pick a regular checkpoint",
    ),
)
# What a no-VAE SD1/SD2 checkpoint gets: stabilityai/sd-vae-ft-mse-original's files, the peers' usual choice.
SD_VAE_NAMES = ("vae-ft-mse-840000", "vae-ft-ema-560000")
# The same components as an image-to-image pipeline (hires fix, img2img).
SD_SECOND_PASS = SecondPass(
    img2img=PipelineSpec(
        "StableDiffusionImg2ImgPipeline",
        absent=("safety_checker", "feature_extractor"),
        flags=frozen(requires_safety_checker=False),
    )
)
# The UNet's blocks as A1111's per-block merge weights name them (IN00.., M00, OUT00..).
UNET_BLOCKS = (
    BlockGroup("IN", "input_blocks."),
    BlockGroup("M", "middle_block.", numbered=False),
    BlockGroup("OUT", "output_blocks."),
)
# A1111's default sampler and schedule since 1.9 ("DPM++ 2M", whose Automatic schedule is Karras), for every SD family.
A1111_SAMPLING = SchedulerSpec(default_sampler="DPM++ 2M", default_schedule="Karras")
SD1_SIZES = ((512, 512), (512, 768), (768, 512), (640, 512), (512, 640))
# The tiny UNet's blocks (TINY_SPEC.md): attention on the first level, as SD1/SD2 attend at the latent's full
# resolution (prompts then act on the last steps' detail too, as they do in the real models).
TINY_SD_BLOCKS = frozen(
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
)
TINY_WRITER = "webui.testing.tiny:write_unet_family"
# Real SD1 configs narrowed and made shallower: about 230 M parameters, a 460 MB fp16 checkpoint.
SMALL_BENCH = frozen(
    unet=frozen(block_out_channels=[160, 320, 640, 640], layers_per_block=1),
    vae=frozen(block_out_channels=[64, 128, 256, 256], layers_per_block=1),
    text_encoder=frozen(num_hidden_layers=4),
)

DESCRIPTION = FamilyDescription(
    id="sd1",
    member="SD1",
    label="SD1.x",
    supported=True,
    roles=(
        UNET_ROLE,
        VAE_ROLE,
        RoleSpec(
            Role.TEXT_ENCODER,
            Part.TEXT_ENCODER,
            "transformers.CLIPTextModel",
            "cond_stage_model.transformer.",
            CheckpointLayout.HF_CLIP,
            encoder=TextEncoderType.CLIP_L,
            tokenizer="tokenizer",
        ),
    ),
    latent=SD_LATENT,
    unet=UnetFacts(context_dim=768, linear_proj=False, add_embedding_in=None, head_channels=None),
    recognition=Recognition(metadata_hints=("v1",)),
    scheduler=A1111_SAMPLING,
    conditioning=ClipChunks(),
    defaults=Defaults(sizes=SD1_SIZES, vae_names=SD_VAE_NAMES),
    pipeline=SD_PIPELINE,
    second_pass=SD_SECOND_PASS,
    lora=LoraFacts(kohya_text_encoders=((Role.TEXT_ENCODER, "lora_te_"),), base_model_version="sd_v1"),
    merge_blocks=UNET_BLOCKS,
    unet_variants=SD_VARIANTS,
    fixtures=FixtureSpec(
        writer=TINY_WRITER,
        unet=frozen(TINY_SD_BLOCKS, cross_attention_dim=768, attention_head_dim=8),
        text_encoder_files=((Role.TEXT_ENCODER, "hf"), (Role.TEXT_ENCODER, "ldm")),
        pickle=True,
        alt_vae=True,
        loras=True,
    ),
    bench=BenchSpec(tiny=True, small=SMALL_BENCH, full=True),
)
