"""ldm_writer is the exact inverse of diffusers' own single-file converters."""

from __future__ import annotations

from functools import cache

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
    create_diffusers_clip_model_from_ldm,
)
from safetensors import safe_open
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from webui.families import Family
from webui.models.ldm_writer import (
    clip_l_to_ldm,
    open_clip_to_ldm,
    pipeline_to_ldm,
    save_single_file,
    unet_to_ldm,
    vae_to_ldm,
)
from webui.testing.tiny import UNET_FAMILIES, build_tiny_pipeline, stem

# Where each family's text encoders sit in a single file, and the class diffusers loads them as.
ENCODERS = {
    Family.SD1: [("text_encoder", CLIPTextModel)],
    Family.SD2: [("text_encoder", CLIPTextModel)],
    Family.SDXL: [("text_encoder", CLIPTextModel), ("text_encoder_2", CLIPTextModelWithProjection)],
    Family.SDXL_REFINER: [("text_encoder_2", CLIPTextModelWithProjection)],
}


@cache
def components(family: Family) -> dict:
    return build_tiny_pipeline(family)


@cache
def ldm(family: Family) -> dict[str, torch.Tensor]:
    return pipeline_to_ldm(components(family), family)


def assert_same_tensors(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str) -> None:
    assert set(got) == set(expected), f"{what}: keys differ: {sorted(set(got) ^ set(expected))[:8]}"
    different = [k for k in expected if got[k].shape != expected[k].shape or not torch.equal(got[k], expected[k])]
    assert not different, f"{what}: tensors differ: {different[:8]}"


def without_text_model(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("text_model."): v for k, v in state.items()}


pytestmark = pytest.mark.usefixtures("one_torch_thread")
families = pytest.mark.parametrize("family", UNET_FAMILIES, ids=lambda f: f.value)


@families
def test_unet_round_trips_through_diffusers_converter(family):
    unet = components(family)["unet"]
    back = convert_ldm_unet_checkpoint(ldm(family), dict(unet.config))
    assert_same_tensors(back, unet.state_dict(), f"{family.value} unet")


@families
def test_vae_round_trips_through_diffusers_converter(family):
    vae = components(family)["vae"]
    back = convert_ldm_vae_checkpoint(ldm(family), dict(vae.config))
    assert_same_tensors(back, vae.state_dict(), f"{family.value} vae")


@families
def test_text_encoders_round_trip_through_diffusers_clip_loader(family, tiny_models_dir):
    folder = tiny_models_dir / f"checkpoints/{stem(family)}-diffusers"
    for name, model_class in ENCODERS[family]:
        model = create_diffusers_clip_model_from_ldm(
            model_class, ldm(family), subfolder=name, config=str(folder), local_files_only=True
        )
        assert_same_tensors(model.state_dict(), components(family)[name].state_dict(), f"{family.value} {name}")


@families
def test_unet_from_single_file_gives_identical_weights(family, tiny_models_dir):
    folder = tiny_models_dir / f"checkpoints/{stem(family)}-diffusers"
    loaded = UNet2DConditionModel.from_single_file(
        ldm(family), config=str(folder), subfolder="unet", local_files_only=True
    )
    assert_same_tensors(loaded.state_dict(), components(family)["unet"].state_dict(), f"{family.value} unet")


def test_vae_from_single_file_gives_identical_weights(tiny_models_dir):
    folder = tiny_models_dir / "checkpoints/tiny-sd1-diffusers"
    loaded = AutoencoderKL.from_single_file(ldm(Family.SD1), config=str(folder), subfolder="vae", local_files_only=True)
    assert_same_tensors(loaded.state_dict(), components(Family.SD1)["vae"].state_dict(), "sd1 vae")


def test_open_clip_projection_is_stored_transposed_and_qkv_stacked():
    encoder = components(Family.SDXL)["text_encoder_2"]
    state = encoder.state_dict()
    out = open_clip_to_ldm(state)
    assert torch.equal(out["model.text_projection"], state["text_projection.weight"].T)
    q, k, v = (state[f"text_model.encoder.layers.1.self_attn.{p}_proj.weight"] for p in "qkv")
    assert torch.equal(out["model.transformer.resblocks.1.attn.in_proj_weight"], torch.cat([q, k, v]))
    assert torch.equal(
        convert_open_clip_checkpoint(encoder, out, prefix="model.")["text_projection.weight"],
        state["text_projection.weight"],
    )


def test_clip_l_keys_carry_text_model_like_real_files():
    keys = clip_l_to_ldm(components(Family.SD1)["text_encoder"].state_dict())
    assert "transformer.text_model.embeddings.position_embedding.weight" in keys
    assert "transformer.text_model.final_layer_norm.weight" in keys
    assert all(k.startswith("transformer.text_model.") for k in keys)


def test_projection_shapes_follow_the_family():
    sd1, sd2 = ldm(Family.SD1), ldm(Family.SD2)
    key = "model.diffusion_model.input_blocks.1.1.proj_in.weight"
    assert sd1[key].ndim == 4  # SD1: 1x1 conv
    assert sd2[key].ndim == 2  # SD2 / SDXL: linear
    attention = sd1["first_stage_model.encoder.mid.attn_1.q.weight"]
    assert attention.ndim == 4 and attention.shape[2:] == (1, 1)


def test_family_prefixes_match_what_model_sites_ship():
    roots = {
        Family.SD1: {"model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.text_model."},
        Family.SD2: {"model.diffusion_model.", "first_stage_model.", "cond_stage_model.model."},
        Family.SDXL: {
            "model.diffusion_model.",
            "first_stage_model.",
            "conditioner.embedders.0.transformer.text_model.",
            "conditioner.embedders.1.model.",
        },
        Family.SDXL_REFINER: {"model.diffusion_model.", "first_stage_model.", "conditioner.embedders.0.model."},
    }
    for family, prefixes in roots.items():
        keys = ldm(family)
        assert all(any(k.startswith(p) for p in prefixes) for k in keys), family
        assert all(any(k.startswith(p) for k in keys) for p in prefixes), family
    assert "label_emb.0.0.weight" in unet_to_ldm(
        components(Family.SDXL)["unet"].state_dict(), components(Family.SDXL)["unet"].config
    )


def test_deeper_unet_and_vae_round_trip():
    """Any level count, layers per block and transformer depth: the mapping comes from the config."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 32, 64),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "CrossAttnUpBlock2D"),
        transformer_layers_per_block=(1, 1, 3),
        cross_attention_dim=32,
        attention_head_dim=(1, 1, 2),
        use_linear_projection=True,
        class_embed_type="projection",
        projection_class_embeddings_input_dim=16,
    )
    out = unet_to_ldm(unet.state_dict(), unet.config)
    assert "input_blocks.8.1.transformer_blocks.2.attn2.to_k.weight" in out
    assert "output_blocks.2.2.conv.weight" in out  # upsampler after an attention: index 2
    assert "output_blocks.5.1.conv.weight" in out  # upsampler right after a resnet: index 1
    back = convert_ldm_unet_checkpoint({f"model.diffusion_model.{k}": v for k, v in out.items()}, dict(unet.config))
    assert_same_tensors(back, unet.state_dict(), "deep unet")

    vae = AutoencoderKL(
        block_out_channels=(32, 32, 64),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=2,
    )
    back = convert_ldm_vae_checkpoint(vae_to_ldm(vae.state_dict(), vae.config), dict(vae.config))
    assert_same_tensors(back, vae.state_dict(), "deep vae")


def test_errors_name_what_is_wrong():
    unet = components(Family.SD1)["unet"]
    with pytest.raises(ValueError, match="layers_per_block"):
        unet_to_ldm(unet.state_dict(), {**unet.config, "layers_per_block": (1, 1)})
    with pytest.raises(ValueError, match="down_blocks.9.resnets.0.norm1.weight"):
        unet_to_ldm({"down_blocks.9.resnets.0.norm1.weight": torch.zeros(1)}, unet.config)
    with pytest.raises(ValueError, match="text_encoder"):
        pipeline_to_ldm({**components(Family.SD1), "text_encoder": None}, Family.SD1)
    with pytest.raises(ValueError, match="flux"):
        pipeline_to_ldm(components(Family.SD1), Family.FLUX)
    with pytest.raises(ValueError, match="text_projection"):
        clip_l_to_ldm({"text_projection.weight": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match=r"only \['q'\]"):
        open_clip_to_ldm({"encoder.layers.0.self_attn.q_proj.weight": torch.zeros(2, 2)})


def test_save_single_file_casts_and_keeps_metadata(tmp_path):
    path = save_single_file(
        {"a": torch.ones(2, 3), "ids": torch.arange(3)}, tmp_path / "x.safetensors", {"k": "v"}, torch.float16
    )
    with safe_open(path, "pt") as f:
        assert f.metadata() == {"k": "v"}
        assert f.get_tensor("a").dtype == torch.float16 and f.get_tensor("ids").dtype == torch.int64
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]  # no temp file left behind
    with pytest.raises(TypeError, match="'k'"):
        save_single_file({"a": torch.ones(1)}, tmp_path / "y.safetensors", {"k": 1})


def test_test_session_cannot_reach_the_hub():
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE
