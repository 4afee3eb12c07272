"""FLUX.1 and its relatives identified from stripped real-shape headers (shapes only, built on the meta device)."""

from __future__ import annotations

from functools import cache

import pytest
import torch

from webui.families import Family
from webui.families.flux_keys import diffusers_to_bfl
from webui.models.derive import bundled_config
from webui.models.files import TensorHeader
from webui.models.identify import identify
from webui.models.kinds import FileFormat, Kind, TextEncoderType
from webui.models.ldm_writer import vae_to_ldm

Shapes = dict[str, tuple[int, ...]]
DIT = "model.diffusion_model."


def ident(shapes: Shapes, metadata: dict[str, str] | None = None):
    return identify(TensorHeader(shapes=shapes, dtypes={}, metadata=metadata or {}, format=FileFormat.SAFETENSORS))


def _shapes(state: dict[str, torch.Tensor]) -> Shapes:
    return {k: tuple(v.shape) for k, v in state.items()}


@cache
def transformer(guidance: bool = True, in_channels: int = 64, bfl: bool = True) -> Shapes:
    """The released FLUX.1 transformer's header (19 double, 38 single blocks, width 3072)."""
    from diffusers import FluxTransformer2DModel

    config = {k: v for k, v in bundled_config(Family.FLUX, "transformer").items() if not k.startswith("_")}
    config.update(guidance_embeds=guidance, in_channels=in_channels, out_channels=64)
    with torch.device("meta"):
        state = FluxTransformer2DModel(**config).state_dict()
    return _shapes(diffusers_to_bfl(state) if bfl else state)


@cache
def t5() -> Shapes:
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        **{k: v for k, v in bundled_config(Family.FLUX, "text_encoder_2").items() if k != "architectures"}
    )
    with torch.device("meta"):
        state = T5EncoderModel(config).state_dict()
    return {k: v for k, v in _shapes(state).items() if k != "encoder.embed_tokens.weight"}


@cache
def clip_l() -> Shapes:
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        state = CLIPTextModel(CLIPTextConfig(**bundled_config(Family.FLUX, "text_encoder"))).state_dict()
    return {f"text_model.{k}": v for k, v in _shapes(state).items()}


@cache
def ae() -> Shapes:
    from diffusers import AutoencoderKL

    config = {k: v for k, v in bundled_config(Family.FLUX, "vae").items() if not k.startswith("_")}
    with torch.device("meta"):
        vae = AutoencoderKL(**config)
    return _shapes(vae_to_ldm(vae.state_dict(), vae.config))


def test_flux_dev_transformer_in_bfl_names_with_and_without_the_prefix():
    for shapes in (transformer(), {DIT + k: v for k, v in transformer().items()}):
        identity = ident(shapes)
        assert (identity.kind, identity.family, identity.variant, identity.supported) == (
            Kind.UNET,
            Family.FLUX,
            "dev",
            True,
        )
        assert "FLUX.1 dev" in identity.detail


def test_flux_schnell_has_no_guidance_embedder():
    identity = ident(transformer(guidance=False))
    assert (identity.family, identity.variant) == (Family.FLUX, "schnell")


def test_diffusers_named_transformer_is_flux_not_sd3():
    identity = ident(transformer(bfl=False))
    assert (identity.kind, identity.family, identity.variant) == (Kind.UNET, Family.FLUX, "dev")


@pytest.mark.parametrize(
    ("inputs", "family"), [(384, Family.FLUX_FILL), (128, Family.FLUX_CONTROL)], ids=["fill", "depth-canny"]
)
def test_flux_tools_are_their_own_unsupported_families(inputs, family):
    for bfl in (True, False):
        identity = ident(transformer(in_channels=inputs, bfl=bfl))
        assert (identity.kind, identity.family, identity.supported) == (Kind.UNET, family, False)


def test_chroma_is_recognised_and_never_filed_as_flux():
    shapes = {k: v for k, v in transformer(guidance=False).items() if not k.startswith(("vector_in.", "time_in."))}
    shapes = {k: v for k, v in shapes.items() if "_mod." not in k and "modulation" not in k}
    shapes |= {
        "distilled_guidance_layer.in_proj.weight": (5120, 64),
        "distilled_guidance_layer.layers.0.in_layer.weight": (5120, 5120),
        "distilled_guidance_layer.out_proj.weight": (3072, 5120),
    }
    identity = ident(shapes)
    assert (identity.family, identity.supported) == (Family.CHROMA, True)
    assert "not supported" not in identity.detail or identity.detail


def test_flux2_is_recognised_and_never_filed_as_flux():
    shapes = {
        "double_blocks.0.img_attn.qkv.weight": (18432, 6144),
        "double_stream_modulation_img.lin.weight": (36864, 6144),
        "double_stream_modulation_txt.lin.weight": (36864, 6144),
        "single_stream_modulation.lin.weight": (18432, 6144),
        "single_blocks.0.linear1.weight": (55296, 6144),
        "img_in.weight": (6144, 128),
        "txt_in.weight": (6144, 15360),
    }
    identity = ident({DIT + k: v for k, v in shapes.items()})
    assert (identity.kind, identity.family, identity.supported) == (Kind.UNET, Family.FLUX2, False)


def test_all_in_one_checkpoint_as_comfyui_saves_it():
    shapes = {DIT + k: v for k, v in transformer().items()}
    shapes |= {f"text_encoders.clip_l.transformer.{k}": v for k, v in clip_l().items()}
    shapes |= {f"text_encoders.t5xxl.transformer.{k}": v for k, v in t5().items()}
    shapes |= {f"vae.{k}": v for k, v in ae().items()}
    identity = ident(shapes)
    assert (identity.kind, identity.family, identity.variant) == (Kind.CHECKPOINT, Family.FLUX, "dev")
    assert identity.text_encoders == (TextEncoderType.CLIP_L, TextEncoderType.T5)
    assert "expected" not in identity.detail


@pytest.mark.parametrize(
    ("shapes", "encoder"),
    [
        (clip_l, TextEncoderType.CLIP_L),  # clip_l.safetensors
        (t5, TextEncoderType.T5),  # t5xxl_fp16.safetensors
    ],
)
def test_text_encoder_files(shapes, encoder):
    identity = ident(shapes())
    assert identity.kind is Kind.TEXT_ENCODER and identity.text_encoders == (encoder,)
    assert Family.FLUX in identity.compatible


def test_t5_in_llama_cpp_names_as_city96s_gguf():
    shapes = {
        "token_embd.weight": (32128, 4096),
        "enc.blk.0.attn_q.weight": (4096, 4096),
        "enc.blk.0.attn_rel_b.weight": (32, 64),
        "enc.blk.0.ffn_gate.weight": (10240, 4096),
        "enc.output_norm.weight": (4096,),
    }
    identity = ident(shapes)
    assert (identity.kind, identity.text_encoders) == (Kind.TEXT_ENCODER, (TextEncoderType.T5,))


def test_the_16_channel_ae_is_a_flux_vae():
    identity = ident(ae())
    assert (identity.kind, identity.family) == (Kind.VAE, Family.FLUX)
    assert Family.SD3 in identity.compatible


def test_bnb_nf4_file_is_refused_with_advice():
    shapes = {DIT + k: v for k, v in transformer().items()}
    shapes[DIT + "double_blocks.0.img_attn.qkv.weight"] = (14155776, 1)
    shapes[DIT + "double_blocks.0.img_attn.qkv.weight.absmax"] = (442368,)
    shapes[DIT + "double_blocks.0.img_attn.qkv.weight.quant_map"] = (16,)
    shapes[DIT + "double_blocks.0.img_attn.qkv.weight.quant_state.bitsandbytes__nf4"] = (98,)
    identity = ident(shapes)
    assert identity.family is Family.FLUX and not identity.supported
    assert "NF4" in identity.detail and "GGUF" in identity.detail and "fp8" in identity.detail
