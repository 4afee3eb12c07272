"""Chroma (Chroma1-HD and its fine-tunes): a FLUX-shaped transformer with its own guidance network, T5-XXL
only, the FLUX `ae` VAE, flow matching, real CFG with negative prompts.

Chroma (lodestones/Chroma) keeps FLUX.1's double and single blocks but drops their modulation inputs and
the CLIP pooled vector: one `distilled_guidance_layer.*` network computes every block's modulation from the
timestep. Files come in BFL-style names (with or without `model.diffusion_model.`) or diffusers' names;
chroma_keys.py converts with widths from the file. Conditioning is T5 alone (512 tokens, with the attention
mask the pipeline builds); CFG is classifier-free guidance with the negative prompt (ChromaPipeline's
`guidance_scale`), 3-5 by the model card. Latents are FLUX's (16 channels packed 2×2, scaling 0.3611, shift
0.1159). Single files as ComfyUI saves them: `model.diffusion_model.*`, `text_encoders.t5xxl.*`, `vae.*`.
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

DESCRIPTION = FamilyDescription(
    id="chroma",
    member="CHROMA",
    label="Chroma",
    supported=True,
    roles=(
        RoleSpec(Role.TRANSFORMER, Part.DENOISER, "diffusers.ChromaTransformer2DModel", flux.DIT_PREFIX),
        RoleSpec(Role.VAE, Part.VAE, "diffusers.AutoencoderKL", "vae."),
        RoleSpec(
            Role.TEXT_ENCODER,
            Part.TEXT_ENCODER,
            "transformers.T5EncoderModel",
            flux.T5_PREFIX,
            encoder=TextEncoderType.T5,
            tokenizer="tokenizer",
        ),
    ),
    latent=flux.DESCRIPTION.latent,
    recognition=Recognition(
        denoiser=(Telltale(("distilled_guidance_layer.",), "Chroma transformer (distilled_guidance_layer)"),),
        metadata_hints=("chroma",),
        lora_blocks=("double_blocks", "single_blocks", "single_transformer_blocks"),
        lora_transformer_widths=(flux.FLUX_WIDTH,),
        refuse=(flux.NF4,),
    ),
    scheduler=SchedulerSpec(kind=SchedulerKind.FLOW_MATCHING, samplers=("Euler",), default_sampler="Euler"),
    conditioning=PipelineEncoding(encode="webui.families.encoding:chroma", max_sequence_length=512),
    defaults=Defaults(sizes=flux.SIZES, steps=26, cfg_scale=4.0, vae_names=("flux",)),
    half_dtype="bfloat16",  # as FLUX.1: the transformer and T5 overflow in fp16
    denoiser_loader=DenoiserLoader(
        convert="webui.families.chroma_keys:original_to_diffusers",
        derive="webui.families.chroma_keys:derive_config",
        fits=(("joint_attention_dim", Role.TEXT_ENCODER),),
    ),
    pipeline=PipelineSpec("ChromaPipeline", absent=("image_encoder", "feature_extractor"), packed_latents=True),
    # Chroma LoRAs name FLUX.1's blocks (kohya, ComfyUI/BFL, diffusers/PEFT): FLUX.1's converter places them
    lora=LoraFacts(base_model_version="chroma", convert="webui.families.flux_lora:to_diffusers"),
    second_pass=SecondPass(
        latent_upscale=False,
        img2img=PipelineSpec(
            "ChromaImg2ImgPipeline", absent=("image_encoder", "feature_extractor"), packed_latents=True
        ),
    ),
    fixtures=FixtureSpec(writer="webui.families.chroma_fixtures:write_chroma_family"),
    bench=BenchSpec(),
)
