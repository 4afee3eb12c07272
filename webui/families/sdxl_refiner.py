"""The SDXL refiner: an img2img UNet over SDXL latents, conditioned by OpenCLIP-bigG alone.

Its UNet takes the pooled bigG embedding plus 5 time ids (size, crop, aesthetic score: 1280 + 5 × 256);
single-file layout as stabilityai's sd_xl_refiner_1.0.safetensors (bigG at `conditioner.embedders.0`).
It loads, but txt2img refuses it: it refines an existing image.
"""

from __future__ import annotations

from webui.families.base import (
    Defaults,
    FamilyDescription,
    FixtureSpec,
    PipelineSpec,
    Recognition,
    SecondPass,
    UnetFacts,
    frozen,
)
from webui.families.sd1 import TINY_WRITER, UNET_BLOCKS, UNET_ROLE, VAE_ROLE
from webui.families.sdxl import (
    TIME_EMBED,
    TINY_XL_BLOCKS,
    XL_CONDITIONING,
    XL_LATENT,
    XL_SCHEDULER,
    XL_SIZES,
    XL_VAE_NAMES,
    bigg_role,
)
from webui.models.kinds import Role

REFINER_PIPELINE = PipelineSpec(
    "StableDiffusionXLImg2ImgPipeline",
    absent=("text_encoder", "tokenizer"),
    flags=frozen(requires_aesthetics_score=True, force_zeros_for_empty_prompt=False),
)

DESCRIPTION = FamilyDescription(
    id="sdxl_refiner",
    member="SDXL_REFINER",
    label="SDXL refiner",
    supported=True,
    roles=(UNET_ROLE, VAE_ROLE, bigg_role("conditioner.embedders.0.model.")),
    latent=XL_LATENT,
    unet=UnetFacts(context_dim=1280, linear_proj=True, add_embedding_in=1280 + 5 * TIME_EMBED, head_channels=64),
    recognition=Recognition(metadata_hints=("refiner",)),
    conditioning=XL_CONDITIONING,
    scheduler=XL_SCHEDULER,
    defaults=Defaults(sizes=XL_SIZES, vae_names=XL_VAE_NAMES),
    pipeline=REFINER_PIPELINE,
    # It refines: its img2img pipeline is its only one, and it finishes what an SDXL base started.
    second_pass=SecondPass(img2img=REFINER_PIPELINE, handoff=True),
    merge_blocks=UNET_BLOCKS,
    txt2img=False,
    fixtures=FixtureSpec(
        writer=TINY_WRITER,
        unet=frozen(TINY_XL_BLOCKS, cross_attention_dim=1280, projection_class_embeddings_input_dim=1280 + 5 * 256),
        vae_force_upcast=True,
        text_encoder_files=((Role.TEXT_ENCODER_2, "ldm"),),
    ),
)
