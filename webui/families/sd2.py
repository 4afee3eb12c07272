"""Stable Diffusion 2.x (512 epsilon and 768 v-prediction): OpenCLIP-H text encoder, SD1's VAE and latents.

The prediction type is not in the weights: a file declares it (modelspec metadata, ComfyUI's `v_pred` key,
an A1111 `.yaml` beside it) or the bundled epsilon config applies. Single-file layout as Stability's
v2-1_768-ema-pruned.safetensors; the tiny fixtures are v-prediction files declaring themselves each way.
"""

from __future__ import annotations

from webui.families.base import (
    CheckpointLayout,
    ClipChunks,
    Defaults,
    FamilyDescription,
    FixtureSpec,
    LoraFacts,
    Part,
    Recognition,
    RoleSpec,
    UnetFacts,
    frozen,
)
from webui.families.sd1 import (
    A1111_SAMPLING,
    SD1_SIZES,
    SD_LATENT,
    SD_PIPELINE,
    SD_SECOND_PASS,
    SD_VAE_NAMES,
    SD_VARIANTS,
    TINY_SD_BLOCKS,
    TINY_WRITER,
    UNET_BLOCKS,
    UNET_ROLE,
    VAE_ROLE,
)
from webui.models.kinds import Prediction, Role, TextEncoderType

# SAI model-spec header, as Stability's own SD2 v-prediction files declare themselves.
_MODELSPEC = frozen(
    {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "stable-diffusion-v2-768-v",
        "modelspec.implementation": "https://github.com/Stability-AI/stablediffusion",
        "modelspec.title": "tiny-sd2",
        "modelspec.prediction_type": "v",
    }
)
# A1111 reads `<checkpoint stem>.yaml` beside a checkpoint; SD2-v files ship with one saying "v".
_YAML = """\
model:
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    parameterization: "v"
    linear_start: 0.00085
    linear_end: 0.0120
    timesteps: 1000
    first_stage_key: "jpg"
    cond_stage_key: "txt"
    image_size: 16
    channels: 4
    scale_factor: 0.18215
    use_ema: False
    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params:
        use_checkpoint: False
        image_size: 16
        in_channels: 4
        out_channels: 4
        model_channels: 32
        attention_resolutions: [1]
        num_res_blocks: 1
        channel_mult: [1, 2]
        num_head_channels: 64
        use_linear_in_transformer: True
        transformer_depth: 1
        context_dim: 1024
    first_stage_config:
      target: ldm.models.autoencoder.AutoencoderKL
      params:
        embed_dim: 4
        ddconfig:
          double_z: true
          z_channels: 4
          resolution: 32
          in_channels: 3
          out_ch: 3
          ch: 32
          ch_mult: [1, 2]
          num_res_blocks: 1
          attn_resolutions: []
          dropout: 0.0
    cond_stage_config:
      target: ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder
      params:
        freeze: True
        layer: "penultimate"
"""

DESCRIPTION = FamilyDescription(
    id="sd2",
    member="SD2",
    label="SD2.x",
    supported=True,
    roles=(
        UNET_ROLE,
        VAE_ROLE,
        RoleSpec(
            Role.TEXT_ENCODER,
            Part.TEXT_ENCODER,
            "transformers.CLIPTextModel",
            "cond_stage_model.model.",
            CheckpointLayout.OPEN_CLIP,
            encoder=TextEncoderType.OPEN_CLIP_H,
            tokenizer="tokenizer",
            truncate_to_config_layers=True,
        ),
    ),
    latent=SD_LATENT,
    unet=UnetFacts(context_dim=1024, linear_proj=True, add_embedding_in=None, head_channels=64),
    recognition=Recognition(metadata_hints=("v2",), metadata_flags=(("ss_v2", "true"),)),
    # SD2's diffusers text encoder already lacks OpenCLIP's last layer: clip skip 1 reads the last hidden state.
    scheduler=A1111_SAMPLING,
    conditioning=ClipChunks(),
    defaults=Defaults(
        sizes=SD1_SIZES,
        sizes_v_prediction=((768, 768), (768, 1024), (1024, 768), (768, 576), (576, 768)),
        vae_names=SD_VAE_NAMES,
    ),
    pipeline=SD_PIPELINE,
    second_pass=SD_SECOND_PASS,
    lora=LoraFacts(
        kohya_text_encoders=((Role.TEXT_ENCODER, "lora_te_"),),
        base_model_version="sd_v2",
        metadata=frozen(ss_v2="True", ss_v_parameterization="True"),
    ),
    merge_blocks=UNET_BLOCKS,
    unet_variants=SD_VARIANTS,  # stabilityai/stable-diffusion-2-inpainting
    fixtures=FixtureSpec(
        writer=TINY_WRITER,
        # upcast_attention as stabilityai/stable-diffusion-2-1 ships it
        unet=frozen(TINY_SD_BLOCKS, cross_attention_dim=1024, use_linear_projection=True, upcast_attention=True),
        prediction=Prediction.V,
        text_encoder_files=((Role.TEXT_ENCODER, "hf"), (Role.TEXT_ENCODER, "ldm")),
        checkpoint_markers=("v_pred",),  # ComfyUI's marker key for v-prediction files
        checkpoint_metadata=_MODELSPEC,
        checkpoint_yaml=_YAML,
        pickle=True,
        loras=True,
    ),
)
