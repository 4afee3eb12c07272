"""Identification from stripped headers: every family and kind, real-size and tiny, and the unknowns."""

from __future__ import annotations

import random

import pytest
from stripped_headers import (
    FAMILIES,
    diffusers_shapes,
    kohya_lora,
    ldm_checkpoint,
    peft_lora,
    under,
    with_prefix,
)

from webui.families import Family
from webui.models.files import TensorHeader
from webui.models.identify import UNET_SIGNATURES, identify
from webui.models.kinds import FileFormat, Kind, Prediction, TextEncoderType

L, H, G, T5 = (
    TextEncoderType.CLIP_L,
    TextEncoderType.OPEN_CLIP_H,
    TextEncoderType.OPEN_CLIP_G,
    TextEncoderType.T5,
)
ENCODERS_BY_NAME = {
    Family.SD1: ("unet", "vae", "text_encoder"),
    Family.SD2: ("unet", "vae", "text_encoder"),
    Family.SDXL: ("unet", "vae", "text_encoder", "text_encoder_2"),
    Family.SDXL_REFINER: ("unet", "vae", "text_encoder_2"),
}
ENCODERS = {Family.SD1: (L,), Family.SD2: (H,), Family.SDXL: (L, G), Family.SDXL_REFINER: (G,)}
SIZES = pytest.mark.parametrize("tiny", [False, True], ids=["real", "tiny"])
EACH_FAMILY = pytest.mark.parametrize("family", FAMILIES, ids=[f.value for f in FAMILIES])
UNET_PREFIX = "model.diffusion_model."
TE_PREFIXES = {
    Family.SD1: {"text_encoder": "cond_stage_model.transformer."},
    Family.SD2: {"text_encoder": "cond_stage_model.model."},
    Family.SDXL: {
        "text_encoder": "conditioner.embedders.0.transformer.",
        "text_encoder_2": "conditioner.embedders.1.model.",
    },
    Family.SDXL_REFINER: {"text_encoder_2": "conditioner.embedders.0.model."},
}


def ident(shapes: dict, metadata: dict | None = None):
    return identify(TensorHeader(shapes=dict(shapes), metadata=metadata or {}))


# --- full checkpoints and components, every family, real size and tiny -------------------------


@SIZES
@EACH_FAMILY
def test_ldm_checkpoint_is_identified_with_its_text_encoders(family, tiny):
    identity = ident(ldm_checkpoint(family, tiny))
    assert (identity.kind, identity.family) == (Kind.CHECKPOINT, family)
    assert identity.text_encoders == ENCODERS[family]
    assert identity.prediction is None and identity.lora_touches_text_encoder is None
    assert identity.supported


@SIZES
@EACH_FAMILY
def test_diffusers_folder_header_is_a_checkpoint(family, tiny):
    shapes = {}
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if name in ENCODERS_BY_NAME[family]:
            shapes.update(with_prefix(f"{name}/", diffusers_shapes(family, name, tiny)))
    header = TensorHeader(shapes=shapes, metadata={}, format=FileFormat.DIFFUSERS)
    identity = identify(header)
    assert (identity.kind, identity.family, identity.text_encoders) == (
        Kind.CHECKPOINT,
        family,
        ENCODERS[family],
    )


@SIZES
@EACH_FAMILY
@pytest.mark.parametrize("layout", ["ldm", "ldm-prefixed", "diffusers"])
def test_unet_only_file_in_any_naming(family, tiny, layout):
    if layout == "diffusers":
        shapes = diffusers_shapes(family, "unet", tiny)
    else:
        shapes = under(UNET_PREFIX, ldm_checkpoint(family, tiny))
        shapes = with_prefix(UNET_PREFIX, shapes) if layout == "ldm-prefixed" else shapes
    identity = ident(shapes)
    assert (identity.kind, identity.family, identity.text_encoders) == (Kind.UNET, family, ())


@SIZES
@EACH_FAMILY
@pytest.mark.parametrize("layout", ["ldm", "first_stage_model", "diffusers"])
def test_vae_fits_every_sd_family(family, tiny, layout):
    if layout == "diffusers":
        shapes = diffusers_shapes(family, "vae", tiny)
    else:
        shapes = under("first_stage_model.", ldm_checkpoint(family, tiny))
        shapes = with_prefix("first_stage_model.", shapes) if layout == "first_stage_model" else shapes
    identity = ident(shapes)
    assert identity.kind is Kind.VAE
    assert identity.family is not Family.UNKNOWN and identity.supported
    assert all(identity.fits(f) for f in FAMILIES)
    assert "SD1/SD2/SDXL" in identity.detail


def test_vae_family_is_narrowed_by_training_metadata():
    shapes = diffusers_shapes(Family.SDXL, "vae", True)
    identity = ident(shapes, {"modelspec.architecture": "stable-diffusion-xl-v1-base/vae"})
    assert identity.family is Family.SDXL and identity.fits(Family.SD1)


@SIZES
@EACH_FAMILY
def test_text_encoder_files_in_every_layout(family, tiny):
    checkpoint = ldm_checkpoint(family, tiny)
    for name, prefix in TE_PREFIXES[family].items():
        hf = diffusers_shapes(family, name, tiny)  # transformers 5: no text_model. level
        expected = (L,) if prefix.endswith("transformer.") else ((G,) if name == "text_encoder_2" else (H,))
        layouts = {
            "transformers-5": hf,
            "with text_model.": {
                ("text_model." + k if not k.startswith("text_projection") else k): s for k, s in hf.items()
            },
            "ldm-prefixed": under_prefix(checkpoint, prefix),
            "bare ldm": under(prefix, checkpoint),
        }
        for layout, shapes in layouts.items():
            identity = ident(shapes)
            assert identity.kind is Kind.TEXT_ENCODER, layout
            assert identity.text_encoders == expected, layout
            assert identity.fits(family), layout


def under_prefix(shapes, prefix):
    return {k: s for k, s in shapes.items() if k.startswith(prefix)}


def test_text_encoder_family_follows_its_place_in_the_checkpoint():
    sdxl_g = under_prefix(ldm_checkpoint(Family.SDXL, True), "conditioner.embedders.1.model.")
    refiner_g = under_prefix(ldm_checkpoint(Family.SDXL_REFINER, True), "conditioner.embedders.0.model.")
    assert ident(sdxl_g).family is Family.SDXL
    assert ident(refiner_g).family is Family.SDXL_REFINER
    sd1_l = ident(diffusers_shapes(Family.SD1, "text_encoder", True))
    assert sd1_l.family is Family.SD1 and sd1_l.fits(Family.SDXL)


def test_unet_signatures_are_distinct():
    keys = {(s.context_dim, s.linear_proj, s.add_embedding_in) for s in UNET_SIGNATURES}
    assert len(keys) == len(UNET_SIGNATURES) == 4


def test_inpainting_unet_is_noted():
    shapes = dict(ldm_checkpoint(Family.SD1, True))
    key = UNET_PREFIX + "input_blocks.0.0.weight"
    shapes[key] = (shapes[key][0], 9, 3, 3)
    identity = ident(shapes)
    assert identity.family is Family.SD1 and "inpainting" in identity.detail


def test_checkpoint_without_vae_says_so():
    shapes = {
        k: s for k, s in ldm_checkpoint(Family.SD1, True).items() if not k.startswith("first_stage_model.")
    }
    identity = ident(shapes)
    assert identity.kind is Kind.CHECKPOINT and "no VAE" in identity.detail


def test_checkpoint_extras_do_not_confuse_identification():
    shapes = dict(ldm_checkpoint(Family.SD2, True))
    shapes.update({"alphas_cumprod": (1000,), "model_ema.decay": (), "model_ema.num_updates": ()})
    assert ident(shapes).family is Family.SD2


# --- prediction type: only when the file declares it ---------------------------------------------


@pytest.mark.parametrize(
    "metadata, extra, expected",
    [
        ({}, {}, None),
        ({"modelspec.prediction_type": "v"}, {}, Prediction.V),
        ({"modelspec.prediction_type": "v_prediction"}, {}, Prediction.V),
        ({"modelspec.prediction_type": "epsilon"}, {}, Prediction.EPSILON),
        ({"diffusers.prediction_type": "v_prediction"}, {}, Prediction.V),
        ({}, {"v_pred": (0,)}, Prediction.V),
        ({}, {"edm_vpred.sigma_max": ()}, Prediction.V),
    ],
)
def test_prediction_is_reported_only_when_declared(metadata, extra, expected):
    shapes = {**ldm_checkpoint(Family.SD2, True), **extra}
    identity = ident(shapes, metadata)
    assert identity.family is Family.SD2 and identity.prediction is expected


# --- LoRAs ----------------------------------------------------------------------------------------


def _unet(family, tiny=True):
    return diffusers_shapes(family, "unet", tiny)


def _te(family, name="text_encoder", tiny=True):
    return {"text_model." + k: s for k, s in diffusers_shapes(family, name, tiny).items()}


@SIZES
@pytest.mark.parametrize("family", [Family.SD1, Family.SD2], ids=["sd1", "sd2"])
def test_kohya_lora_targets_family_and_text_encoder(family, tiny):
    shapes = {
        **kohya_lora(_unet(family, tiny), "lora_unet_"),
        **kohya_lora(_te(family, tiny=tiny), "lora_te_"),
    }
    identity = ident(shapes)
    assert (identity.kind, identity.family) == (Kind.LORA, family)
    assert identity.lora_touches_text_encoder is True
    assert identity.text_encoders == ENCODERS[family]


def test_kohya_unet_only_lora_does_not_touch_text_encoder():
    identity = ident(kohya_lora(_unet(Family.SD1), "lora_unet_"))
    assert (identity.family, identity.lora_touches_text_encoder, identity.text_encoders) == (
        Family.SD1,
        False,
        (),
    )


@SIZES
def test_kohya_sdxl_lora_in_ldm_names_with_both_text_encoders(tiny):
    unet = under(UNET_PREFIX, ldm_checkpoint(Family.SDXL, tiny))
    shapes = {
        **kohya_lora(unet, "lora_unet_", only=("attn", "proj_in")),
        **kohya_lora(_te(Family.SDXL, tiny=tiny), "lora_te1_"),
        **kohya_lora(_te(Family.SDXL, "text_encoder_2", tiny=tiny), "lora_te2_"),
    }
    identity = ident(shapes)
    assert (identity.kind, identity.family, identity.text_encoders) == (Kind.LORA, Family.SDXL, (L, G))
    assert identity.lora_touches_text_encoder is True


def test_kohya_refiner_lora_by_cross_attention_width():
    identity = ident(kohya_lora(_unet(Family.SDXL_REFINER), "lora_unet_"))
    assert identity.family is Family.SDXL_REFINER


@SIZES
def test_peft_sdxl_lora_with_both_text_encoders(tiny):
    shapes = {
        **peft_lora(_unet(Family.SDXL, tiny), "unet."),
        **peft_lora(_te(Family.SDXL, tiny=tiny), "text_encoder."),
        **peft_lora(_te(Family.SDXL, "text_encoder_2", tiny=tiny), "text_encoder_2."),
    }
    identity = ident(shapes)
    assert (identity.kind, identity.family, identity.text_encoders) == (Kind.LORA, Family.SDXL, (L, G))
    assert identity.lora_touches_text_encoder is True and "diffusers/PEFT" in identity.detail


def test_peft_unet_only_lora():
    identity = ident(peft_lora(_unet(Family.SD2), "unet."))
    assert (identity.family, identity.lora_touches_text_encoder) == (Family.SD2, False)


def test_old_diffusers_lora_names():
    old = {}
    for key, shape in peft_lora(_unet(Family.SD1), "unet.").items():
        old[key.replace(".lora_A.", ".lora.down.").replace(".lora_B.", ".lora.up.")] = shape
    processor = {
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_lora.down.weight": (
            4,
            768,
        ),
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_lora.up.weight": (32, 4),
    }
    assert ident(old).family is Family.SD1
    assert ident(processor).family is Family.SD1 and ident(processor).kind is Kind.LORA


def test_lycoris_loha_and_lokr_are_loras():
    base = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    loha = {
        f"{base}.hada_w1_a": (32, 4),
        f"{base}.hada_w1_b": (4, 1024),
        f"{base}.hada_w2_a": (32, 4),
        f"{base}.hada_w2_b": (4, 1024),
        f"{base}.alpha": (),
    }
    lokr = {f"{base}.lokr_w1": (4, 8), f"{base}.lokr_w2": (8, 96), f"{base}.alpha": ()}
    assert (ident(loha).kind, ident(loha).family) == (Kind.LORA, Family.SD2)
    assert "LoHa" in ident(loha).detail
    assert (ident(lokr).kind, ident(lokr).family) == (Kind.LORA, Family.SD1)  # in = 8 * 96 = 768


def test_lora_family_falls_back_to_training_metadata():
    shapes = kohya_lora(_unet(Family.SD1), "lora_unet_", only=("attn1",))
    assert ident(shapes).family is Family.UNKNOWN
    assert "attn2" in ident(shapes).detail
    hinted = ident(shapes, {"ss_base_model_version": "sd_v1"})
    assert hinted.family is Family.SD1 and "metadata" in hinted.detail


@pytest.mark.parametrize(
    "shapes, family",
    [
        (
            {
                "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": (16, 3072),
                "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": (9216, 16),
            },
            Family.FLUX,
        ),
        ({"transformer.single_transformer_blocks.0.attn.to_k.lora_A.weight": (16, 3072)}, Family.FLUX),
        ({"transformer.transformer_blocks.0.attn.to_k.lora_A.weight": (16, 1536)}, Family.SD3),
        ({"lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight": (16, 1536)}, Family.SD3),
    ],
)
def test_flux_and_sd3_loras_are_named_and_supported_as_their_family_is(shapes, family):
    identity = ident(shapes)
    assert (identity.kind, identity.family, identity.supported) == (Kind.LORA, family, family.supported)


# --- embeddings -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shapes, family, encoders",
    [
        ({"emb_params": (4, 768)}, Family.SD1, (L,)),
        ({"emb_params": (2, 1024)}, Family.SD2, (H,)),
        ({"clip_l": (3, 768), "clip_g": (3, 1280)}, Family.SDXL, (L, G)),
        ({"string_to_token.*": (), "string_to_param.*": (5, 768)}, Family.SD1, (L,)),
        ({"<my-token>": (768,)}, Family.SD1, (L,)),
    ],
)
def test_embeddings(shapes, family, encoders):
    identity = ident(shapes)
    assert (identity.kind, identity.family, identity.text_encoders) == (Kind.EMBEDDING, family, encoders)


# --- SD3, FLUX.1 and unknown files: named, not supported, never a crash ---------------------------

FLUX_UNET = {
    "double_blocks.0.img_attn.norm.key_norm.scale": (128,),
    "double_blocks.0.img_attn.qkv.weight": (9216, 3072),
    "single_blocks.0.linear1.weight": (21504, 3072),
    "img_in.weight": (3072, 64),
}
SD3_PARTS = {
    "model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias": (9216,),
    "model.diffusion_model.x_embedder.proj.weight": (1536, 16, 2, 2),
    "first_stage_model.decoder.conv_in.weight": (512, 16, 3, 3),
    "first_stage_model.encoder.down.0.block.0.conv1.weight": (128, 128, 3, 3),
    "text_encoders.clip_l.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
    "text_encoders.clip_g.transformer.text_model.embeddings.token_embedding.weight": (49408, 1280),
    "text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.weight": (4096, 4096),
}


@pytest.mark.parametrize(
    "shapes, kind, family",
    [
        (FLUX_UNET, Kind.UNET, Family.FLUX),
        (with_prefix(UNET_PREFIX, FLUX_UNET), Kind.UNET, Family.FLUX),
        (
            {
                **with_prefix(UNET_PREFIX, FLUX_UNET),
                "vae.decoder.conv_in.weight": (512, 16, 3, 3),
                "vae.encoder.down.0.block.0.conv1.weight": (128, 128, 3, 3),
            },
            Kind.CHECKPOINT,
            Family.FLUX,
        ),
        (SD3_PARTS, Kind.CHECKPOINT, Family.SD3),
        (under(UNET_PREFIX, SD3_PARTS), Kind.UNET, Family.SD3),
        (
            {
                "transformer_blocks.0.attn.add_k_proj.weight": (1536, 1536),
                "context_embedder.weight": (1536, 4096),
                "pos_embed.proj.weight": (1536, 16, 2, 2),
            },
            Kind.UNET,
            Family.SD3,
        ),
        (
            {"encoder.block.0.layer.0.SelfAttention.q.weight": (4096, 4096), "shared.weight": (32128, 4096)},
            Kind.TEXT_ENCODER,
            Family.FLUX,
        ),
        (
            {
                "decoder.conv_in.weight": (512, 16, 3, 3),
                "encoder.down.0.block.0.conv1.weight": (128, 128, 3, 3),
            },
            Kind.VAE,
            Family.FLUX,
        ),
    ],
)
def test_sd3_and_flux_are_named_and_supported_as_their_family_is(shapes, kind, family):
    identity = ident(shapes)
    assert (identity.kind, identity.family, identity.supported) == (kind, family, family.supported)
    assert family.supported


def test_sd3_checkpoint_lists_its_three_text_encoders():
    assert ident(SD3_PARTS).text_encoders == (L, G, T5)


def test_unknown_file_names_the_telltales_it_looked_for():
    identity = ident({"backbone.layer1.weight": (64, 3, 7, 7), "head.fc.weight": (1000, 2048)})
    assert (identity.kind, identity.family, identity.supported) == (Kind.UNKNOWN, Family.UNKNOWN, False)
    for telltale in (
        "lora_down",
        "emb_params",
        "attn2",
        "input_blocks",
        "joint_blocks",
        "double_blocks",
        "encoder.down",
        "token_embedding",
        "backbone.layer1.weight",
    ):
        assert telltale in identity.detail


def test_empty_header_is_unknown():
    assert ident({}).kind is Kind.UNKNOWN


def test_unet_of_unknown_width_names_the_known_signatures():
    shapes = dict(diffusers_shapes(Family.SD1, "unet", True))
    key = next(k for k in shapes if k.endswith("attn2.to_k.weight"))
    shapes[key] = (shapes[key][0], 4096)
    identity = ident(shapes)
    assert (identity.kind, identity.family) == (Kind.UNET, Family.UNKNOWN)
    assert "4096" in identity.detail and "SD1.x: 768" in identity.detail


@pytest.mark.parametrize("seed", range(5))
def test_malformed_shapes_never_crash(seed):
    """Telltale keys with nonsense shapes (scalars, vectors) must give an answer, not an exception."""
    rng = random.Random(seed)
    keys = list(ldm_checkpoint(Family.SDXL, True)) + list(kohya_lora(_unet(Family.SD1), "lora_unet_"))
    keys += ["emb_params", "clip_l", "string_to_param.*", "v_pred", "shared.weight", "double_blocks.0.x"]
    for _ in range(20):
        sample = rng.sample(keys, k=rng.randint(1, 40))
        shapes = {k: tuple(rng.randint(0, 3000) for _ in range(rng.randint(0, 3))) for k in sample}
        identity = ident(shapes)
        assert isinstance(identity.kind, Kind) and identity.detail
