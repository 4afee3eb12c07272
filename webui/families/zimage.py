"""Z-Image (Turbo and Base): a single-stream DiT conditioned on a Qwen3-4B language model, the FLUX `ae`
VAE, flow matching with shift 3.0.

The transformer (`ZImageTransformer2DModel`) comes in the original names (`x_embedder`, `cap_embedder`,
`noise_refiner.*`, `context_refiner.*`, `layers.N.attention.qkv`, `final_layer`, `cap_pad_token`), with or
without `model.diffusion_model.`, or in diffusers' names; zimage_keys.py converts. The text encoder is Qwen3-4B
as one file (transformers' names, fp16/bf16/fp8); its prompt is wrapped in Qwen3's chat template and the
second-to-last hidden state is the conditioning (ZImagePipeline). Its tokenizer: `models/tokenizers/qwen3/`,
else the bundled one. Turbo runs 8 denoising steps (9 inference steps) without CFG (its model card's
guidance 0 is CFG 1 here); Base takes real CFG with negative prompts. The two have the same shapes: Turbo's
defaults are the family's. Latents are FLUX's `ae` (16 channels, scaling 0.3611, shift 0.1159), not packed.
"""

from __future__ import annotations

from webui.families import flux
from webui.families.base import (
    BenchSpec,
    Defaults,
    DenoiserLoader,
    FamilyDescription,
    FixtureSpec,
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
)
from webui.models.kinds import Role, TextEncoderType

QWEN3_PREFIX = "text_encoders.qwen3_4b.transformer."  # ComfyUI's all-in-one files

DESCRIPTION = FamilyDescription(
    id="zimage",
    member="ZIMAGE",
    label="Z-Image",
    supported=True,
    roles=(
        RoleSpec(Role.TRANSFORMER, Part.DENOISER, "diffusers.ZImageTransformer2DModel", flux.DIT_PREFIX),
        RoleSpec(Role.VAE, Part.VAE, "diffusers.AutoencoderKL", "vae."),
        RoleSpec(
            Role.TEXT_ENCODER,
            Part.TEXT_ENCODER,
            "transformers.Qwen3Model",
            QWEN3_PREFIX,
            encoder=TextEncoderType.QWEN3,
            tokenizer="tokenizer",
        ),
    ),
    latent=flux.DESCRIPTION.latent,
    recognition=Recognition(
        denoiser=(
            Telltale(("cap_embedder.",), "Z-Image transformer (cap_embedder, refiners)", requires=("cap_pad_token",)),
        ),
        metadata_hints=("z-image", "z_image", "zimage"),
        lora_blocks=("noise_refiner", "context_refiner"),  # in every Z-Image LoRA that trains the refiners
        lora_weak=("lora_unet_layers_",),
    ),
    scheduler=SchedulerSpec(kind=SchedulerKind.FLOW_MATCHING, samplers=("Euler",), default_sampler="Euler"),
    conditioning=PipelineEncoding(encode="webui.families.encoding:z_image", max_sequence_length=512),
    defaults=Defaults(sizes=flux.SIZES, steps=9, cfg_scale=1.0, negative_prompt=False, vae_names=("flux",)),
    half_dtype="bfloat16",
    denoiser_loader=DenoiserLoader(
        convert="webui.families.zimage_keys:original_to_diffusers",
        derive="webui.families.zimage_keys:derive_config",
        fits=(("cap_feat_dim", Role.TEXT_ENCODER),),
    ),
    pipeline=PipelineSpec("ZImagePipeline", cfg_offset=1.0),
    lora=LoraFacts(base_model_version="zimage", convert="webui.families.zimage_lora:to_diffusers"),
    second_pass=SecondPass(latent_upscale=False, img2img=PipelineSpec("ZImageImg2ImgPipeline", cfg_offset=1.0)),
    fixtures=FixtureSpec(writer="webui.families.zimage_fixtures:write_zimage_family"),
    bench=BenchSpec(),
)
