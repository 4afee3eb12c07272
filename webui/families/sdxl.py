"""Stable Diffusion XL base: CLIP-L + OpenCLIP-bigG text encoders, its own VAE weights and latent scaling.

Single-file layout as stabilityai's sd_xl_base_1.0.safetensors (`conditioner.embedders.N.*`); the UNet
takes the pooled bigG embedding plus 6 size/crop time ids (add-embedding input 1280 + 6 × 256 = 2816).
Latent-to-RGB factors are ComfyUI's `SDXL` latent format's.
"""

from __future__ import annotations

from dataclasses import replace

from webui.families.base import (
    BenchSpec,
    CheckpointLayout,
    ClipChunks,
    Defaults,
    EmbeddingFormat,
    FamilyDescription,
    FixtureSpec,
    LatentFormat,
    LoraFacts,
    Part,
    PipelineSpec,
    Recognition,
    RoleSpec,
    SecondPass,
    UnetFacts,
    UnetVariant,
    VariantInput,
    frozen,
)
from webui.families.sd1 import A1111_SAMPLING, SD_VAE, TINY_WRITER, UNET_BLOCKS, UNET_ROLE, VAE_ROLE
from webui.models.kinds import Role, TextEncoderType

XL_LATENT = LatentFormat(
    vae=SD_VAE,
    scaling_factor=0.13025,
    rgb_factors=(
        (0.3651, 0.4232, 0.4341),
        (-0.2533, -0.0042, 0.1068),
        (0.1076, 0.1111, -0.0362),
        (-0.3165, -0.2492, -0.2188),
    ),
    rgb_bias=(0.1084, -0.0175, -0.0011),
)
XL_SIZES = ((1024, 1024), (896, 1152), (1152, 896), (832, 1216), (1216, 832), (768, 1344), (1344, 768))
# NVIDIA's "Align Your Steps" how-to page: the 10-step noise levels for SDXL (A1111 uses them as its table).
XL_SCHEDULER = replace(
    A1111_SAMPLING, align_your_steps=(14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029)
)
# diffusers reads hidden_states[-2] without the final norm (its clip_skip=None); clip skip shifts from there.
# The base's img2img pipeline (hires fix, img2img); its pipelines take denoising_end / denoising_start.
XL_SECOND_PASS = SecondPass(
    img2img=PipelineSpec("StableDiffusionXLImg2ImgPipeline", flags=frozen(requires_aesthetics_score=False)),
    handoff=True,
)
XL_CONDITIONING = ClipChunks(clip_skip_offset=1, pooled=True, zero_empty_negative=True)
TIME_EMBED = 256  # addition_time_embed_dim: each size/crop/score number is embedded 256 wide
# The tiny XL UNet (TINY_SPEC.md): three levels, attention (two transformer layers) on the deepest only, so that
# the native 1024x1024 (a 128x128 latent) attends over 32x32 positions and runs in seconds.
TINY_XL_BLOCKS = frozen(
    block_out_channels=(32, 64, 64),
    down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 1, 2),
    addition_embed_type="text_time",
    addition_time_embed_dim=TIME_EMBED,
    use_linear_projection=True,
)


# What a no-VAE SDXL checkpoint gets: stabilityai/sdxl-vae's sdxl_vae.safetensors, or madebyollin's fp16 fix.
XL_VAE_NAMES = ("sdxl_vae", "sdxl-vae")
# diffusers/stable-diffusion-xl-1.0-inpainting-0.1 and diffusers/sdxl-instructpix2pix-768.
XL_VARIANTS = (
    UnetVariant("inpainting", 9, PipelineSpec("StableDiffusionXLInpaintPipeline"), txt2img=VariantInput.FULL_MASK),
    UnetVariant(
        "instruct-pix2pix",
        8,
        PipelineSpec("StableDiffusionXLInstructPix2PixPipeline"),
        refusal="an instruct-pix2pix model edits an input image by an instruction, so txt2img cannot run it "
        "(with its own image conditioning, which img2img here does not give it yet); pick a regular checkpoint",
    ),
)


def bigg_role(prefix: str) -> RoleSpec:
    """OpenCLIP-bigG with its projection (the pooled output), stored at `prefix` in OpenCLIP layout."""
    return RoleSpec(
        Role.TEXT_ENCODER_2,
        Part.TEXT_ENCODER,
        "transformers.CLIPTextModelWithProjection",
        prefix,
        CheckpointLayout.OPEN_CLIP,
        encoder=TextEncoderType.OPEN_CLIP_G,
        tokenizer="tokenizer_2",
    )


DESCRIPTION = FamilyDescription(
    id="sdxl",
    member="SDXL",
    label="SDXL",
    supported=True,
    roles=(
        UNET_ROLE,
        VAE_ROLE,
        RoleSpec(
            Role.TEXT_ENCODER,
            Part.TEXT_ENCODER,
            "transformers.CLIPTextModel",
            "conditioner.embedders.0.transformer.",
            CheckpointLayout.HF_CLIP,
            encoder=TextEncoderType.CLIP_L,
            tokenizer="tokenizer",
        ),
        bigg_role("conditioner.embedders.1.model."),
    ),
    latent=XL_LATENT,
    unet=UnetFacts(context_dim=2048, linear_proj=True, add_embedding_in=1280 + 6 * TIME_EMBED, head_channels=64),
    recognition=Recognition(
        metadata_hints=("sdxl", "-xl"),
        lora_weak=("lora_unet_input_blocks_", "lora_unet_output_blocks_"),  # sd-scripts' SDXL module names
    ),
    conditioning=XL_CONDITIONING,
    scheduler=XL_SCHEDULER,
    defaults=Defaults(sizes=XL_SIZES, vae_names=XL_VAE_NAMES),
    pipeline=PipelineSpec("StableDiffusionXLPipeline"),
    second_pass=XL_SECOND_PASS,
    lora=LoraFacts(
        kohya_text_encoders=((Role.TEXT_ENCODER, "lora_te1_"), (Role.TEXT_ENCODER_2, "lora_te2_")),
        kohya_unet_names="ldm",
        base_model_version="sdxl_base_v1-0",
    ),
    merge_blocks=UNET_BLOCKS,
    unet_variants=XL_VARIANTS,
    embedding=EmbeddingFormat(keys=((Role.TEXT_ENCODER, "clip_l"), (Role.TEXT_ENCODER_2, "clip_g"))),
    fixtures=FixtureSpec(
        writer=TINY_WRITER,
        unet=frozen(TINY_XL_BLOCKS, cross_attention_dim=2048, projection_class_embeddings_input_dim=1280 + 6 * 256),
        vae_force_upcast=True,
        # bigG is the largest tensor set by far: one file, in transformers 5 names (the refiner writes LDM).
        text_encoder_files=((Role.TEXT_ENCODER, "hf"), (Role.TEXT_ENCODER, "ldm"), (Role.TEXT_ENCODER_2, "hf5")),
        pickle=True,
        loras=True,
        unet_only_lora=True,
    ),
    bench=BenchSpec(full=True),
)
