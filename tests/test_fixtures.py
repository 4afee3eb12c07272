"""The tiny-model builder: deterministic, runnable, and the same weights in every layout it writes."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

import numpy as np
import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import CLIPTokenizer

from webui.families import Family
from webui.models.kinds import Kind, Prediction, TextEncoderType
from webui.models.ldm_writer import UNET_PREFIX, VAE_PREFIX
from webui.testing.tiny import (
    ALT_VAE_SEED,
    MANIFEST_NAME,
    TOKENIZER_DIR,
    UNET_FAMILIES,
    FixtureFile,
    build_tiny_pipeline,
    stem,
    tiny_pipeline,
)
from webui.testing.tiny_models import assemble_pipeline, build_tiny_unet, build_tiny_vae, pipeline_class
from webui.testing.tiny_tokenizer import build_tiny_tokenizer, tiny_vocab_size

pytestmark = pytest.mark.usefixtures("one_torch_thread")
families = pytest.mark.parametrize("family", UNET_FAMILIES, ids=lambda f: f.value)
lora_families = pytest.mark.parametrize("family", [Family.SD1, Family.SD2, Family.SDXL], ids=lambda f: f.value)


@cache
def reference(family: Family) -> dict:
    """The components every layout of `family` on disk must hold (read-only: never load LoRAs into them)."""
    return build_tiny_pipeline(family)


def generate(pipe, family: Family, prompt: str = "a photo of a cat in a red hat") -> np.ndarray:
    kwargs = dict(prompt=prompt, num_inference_steps=2, height=32, width=32, output_type="np")
    if family is Family.SDXL_REFINER:  # img2img only; strength 1 starts from noise
        kwargs.update(image=torch.full((1, 3, 32, 32), 0.5), strength=1.0)
    return pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images


def state(module) -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in module.state_dict().items()}


def assert_same(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str) -> None:
    assert set(got) == set(expected), f"{what}: keys differ: {sorted(set(got) ^ set(expected))[:8]}"
    bad = [k for k in expected if not torch.equal(got[k].float(), expected[k].float())]
    assert not bad, f"{what}: values differ: {bad[:8]}"


def with_text_model(module) -> dict[str, torch.Tensor]:
    return {
        k if k.startswith(("text_model.", "text_projection")) else f"text_model.{k}": v
        for k, v in state(module).items()
    }


def subset(tensors: dict[str, torch.Tensor], prefix: str, strip: bool = False) -> dict[str, torch.Tensor]:
    return {(k[len(prefix) :] if strip else k): v for k, v in tensors.items() if k.startswith(prefix)}


@contextmanager
def diffusers_warnings() -> Iterator[list[str]]:
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                messages.append(record.getMessage())

    handler = Collect()
    loggers = [logging.getLogger(name) for name in ("diffusers", "peft", "transformers")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield messages
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


def test_same_seed_same_weights_other_seed_other_weights():
    for family in UNET_FAMILIES:
        assert_same(state(build_tiny_unet(family)), state(reference(family)["unet"]), f"{family.value} unet")
    again = build_tiny_pipeline(Family.SDXL)
    for name in ("vae", "text_encoder", "text_encoder_2"):
        assert_same(state(again[name]), state(reference(Family.SDXL)[name]), f"sdxl {name}")
    other = state(build_tiny_unet(Family.SD1, seed=1))
    assert not torch.equal(other["conv_in.weight"], reference(Family.SD1)["unet"].state_dict()["conv_in.weight"])
    # SD1 and SDXL VAEs share a config; they must not share weights.
    assert not torch.equal(
        state(build_tiny_vae(Family.SD1))["encoder.conv_in.weight"],
        state(build_tiny_vae(Family.SDXL))["encoder.conv_in.weight"],
    )


def test_weights_are_exact_in_fp16():
    for module in reference(Family.SDXL).values():
        for tensor in getattr(module, "state_dict", dict)().values():
            if tensor.is_floating_point():
                assert torch.equal(tensor, tensor.half().float())


@families
def test_family_pipeline_gives_finite_varied_images_that_follow_the_prompt(family):
    pipe = tiny_pipeline(family)
    image = generate(pipe, family)
    assert image.shape == (1, 32, 32, 3)
    assert np.isfinite(image).all() and image.std() > 0.05
    other = generate(pipe, family, prompt="a dog on a beach")
    assert np.abs(other - image).max() > 2 / 255  # visible after 8-bit quantisation


def test_tokenizer_handles_any_english_and_pads_like_the_real_ones(tiny_models_dir):
    assert 500 < tiny_vocab_size() <= 1000
    clip_l, open_clip = build_tiny_tokenizer(), build_tiny_tokenizer("!")
    ids = clip_l("a photo of a Cat, zebra-crossing 42!").input_ids
    assert ids[0] == tiny_vocab_size() - 2 and ids[-1] == tiny_vocab_size() - 1  # BOS / EOS are the largest ids
    assert tiny_vocab_size() - 1 not in ids[:-1]  # no unknown token: unknown words fall to bytes
    assert clip_l("A CAT").input_ids == clip_l("a cat").input_ids == [ids[0], *clip_l("a cat").input_ids[1:]]
    assert "".join(clip_l.convert_ids_to_tokens(clip_l("xylophone").input_ids[1:-1])) == "xylophone</w>"
    padded = open_clip("a cat", padding="max_length", max_length=77).input_ids
    assert len(padded) == 77 and padded[-1] == clip_l.convert_tokens_to_ids("!")
    assert clip_l("a cat", padding="max_length", max_length=77).input_ids[-1] == tiny_vocab_size() - 1
    from_files = CLIPTokenizer.from_pretrained(tiny_models_dir / TOKENIZER_DIR)
    prompt = "an unusual xylophone, photographed at dusk"
    assert from_files(prompt).input_ids == clip_l(prompt).input_ids


def test_manifest_lists_existing_files_and_matches_its_json(tiny_models_dir, tiny_manifest):
    saved = json.loads((tiny_models_dir / MANIFEST_NAME).read_text())["files"]
    assert [FixtureFile.from_json(item) for item in saved] == tiny_manifest
    assert len({f.path for f in tiny_manifest}) == len(tiny_manifest)
    for fixture in tiny_manifest:
        assert (tiny_models_dir / fixture.path).exists(), fixture.path
        if fixture.family in UNET_FAMILIES:  # flow-matching transformers declare no prediction type
            assert (fixture.prediction is not None) == (fixture.kind in (Kind.CHECKPOINT, Kind.UNET)), fixture
        assert (fixture.text_encoder is not None) == (fixture.kind is Kind.TEXT_ENCODER), fixture
    for family in UNET_FAMILIES:
        kinds = {f.kind for f in tiny_manifest if f.family is family}
        assert {Kind.CHECKPOINT, Kind.UNET, Kind.VAE, Kind.TEXT_ENCODER} <= kinds, family
        layouts = {f.layout for f in tiny_manifest if f.family is family}
        split = {"unet-diffusers", "unet-ldm", "vae-ldm", "vae-diffusers", "text-encoder-ldm"}
        assert {"ldm-single-file", "diffusers-folder", *split} <= layouts, family
        expected = Prediction.V if family is Family.SD2 else Prediction.EPSILON
        assert {f.prediction for f in tiny_manifest if f.family is family and f.prediction} == {expected}
    layouts = {f.layout for f in tiny_manifest}
    assert {"ldm-single-file", "pickle", "diffusers-folder", "unet-diffusers", "unet-ldm", "kohya", "peft"} <= layouts
    encoders = {f.text_encoder for f in tiny_manifest}
    assert {TextEncoderType.CLIP_L, TextEncoderType.OPEN_CLIP_H, TextEncoderType.OPEN_CLIP_G} <= encoders


@families
def test_single_file_loads_in_diffusers_with_the_reference_weights(family, tiny_models_dir):
    path = tiny_models_dir / f"checkpoints/{stem(family)}.safetensors"
    folder = tiny_models_dir / f"checkpoints/{stem(family)}-diffusers"
    pipe = pipeline_class(family).from_single_file(
        str(path), config=str(folder), local_files_only=True, torch_dtype=torch.float32
    )
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if reference(family).get(name) is not None:
            assert_same(state(getattr(pipe, name)), state(reference(family)[name]), f"{family.value} {name}")


@families
def test_diffusers_folder_holds_the_reference_weights_with_hub_key_names(family, tiny_models_dir):
    folder = tiny_models_dir / f"checkpoints/{stem(family)}-diffusers"
    pipe = pipeline_class(family).from_pretrained(folder, local_files_only=True)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if reference(family).get(name) is not None:
            assert_same(state(getattr(pipe, name)), state(reference(family)[name]), f"{family.value} {name}")
            assert getattr(pipe, name).dtype == torch.float32
    for name in ("text_encoder", "text_encoder_2"):
        if (folder / name).is_dir():
            assert all(
                k.startswith(("text_model.", "text_projection."))
                for k in load_file(folder / name / "model.safetensors")
            )
    assert (folder / "tokenizer_2" if family is Family.SDXL_REFINER else folder / "tokenizer" / "vocab.json").exists()


@families
def test_pickle_and_split_files_hold_the_single_file_tensors(family, tiny_models_dir):
    root, s = tiny_models_dir, stem(family)
    single = load_file(root / f"checkpoints/{s}.safetensors")
    single.pop("v_pred", None)
    if family is not Family.SDXL_REFINER:
        pickled = torch.load(root / f"checkpoints/{s}.ckpt", weights_only=True)
        assert pickled["global_step"] == 1
        assert_same(pickled["state_dict"], single, f"{s}.ckpt")
    ref = reference(family)
    assert_same(load_file(root / f"diffusion_models/{s}-unet.safetensors"), state(ref["unet"]), "unet-diffusers")
    assert_same(load_file(root / f"diffusion_models/{s}-unet-ldm.safetensors"), subset(single, UNET_PREFIX), "unet-ldm")
    assert_same(load_file(root / f"vae/{s}-vae.safetensors"), subset(single, VAE_PREFIX, strip=True), "vae-ldm")
    assert_same(load_file(root / f"vae/{s}-vae-diffusers.safetensors"), state(ref["vae"]), "vae-diffusers")
    texts = [f for f in (root / "text_encoders").glob(f"{s}-*.safetensors") if not f.name.startswith(f"{s}-refiner")]
    assert texts, f"no text encoder files for {s}"
    for path in texts:
        tensors = load_file(path)
        if path.stem.endswith("-ldm"):
            assert_same(tensors, {k: v for k, v in single.items() if k in tensors}, path.name)
            assert not any(k.startswith(UNET_PREFIX) for k in tensors)
        else:
            name = "text_encoder_2" if "clip-g" in path.name else "text_encoder"
            assert_same(tensors, with_text_model(ref[name]), path.name)


def test_vae_files_for_swapping(tiny_models_dir):
    alt = load_file(tiny_models_dir / "vae/tiny-sd1-vae-alt.safetensors")
    main = load_file(tiny_models_dir / "vae/tiny-sd1-vae.safetensors")
    assert alt.keys() == main.keys() and not torch.equal(
        alt["decoder.conv_out.weight"], main["decoder.conv_out.weight"]
    )
    assert alt["decoder.conv_out.weight"].dtype == torch.float32  # VAE files ship fp32, like real ones
    expected = state(build_tiny_vae(Family.SD1, ALT_VAE_SEED))
    assert torch.equal(alt["decoder.conv_out.weight"], expected["decoder.conv_out.weight"])


def test_sd2_declares_v_prediction_like_real_files(tiny_models_dir):
    path = tiny_models_dir / "checkpoints/tiny-sd2.safetensors"
    with safe_open(path, "pt") as f:
        assert f.metadata()["modelspec.prediction_type"] == "v"
        assert "v_pred" in f.keys() and f.get_tensor("v_pred").numel() == 0
    with safe_open(tiny_models_dir / "checkpoints/tiny-sd1.safetensors", "pt") as f:
        assert "v_pred" not in f.keys()
    config = yaml.safe_load((tiny_models_dir / "checkpoints/tiny-sd2.yaml").read_text())
    assert config["model"]["params"]["parameterization"] == "v"
    assert reference(Family.SD2)["scheduler"].config.prediction_type == "v_prediction"


def test_single_files_are_fp16_like_downloads(tiny_models_dir):
    for family in UNET_FAMILIES:
        with safe_open(tiny_models_dir / f"checkpoints/{stem(family)}.safetensors", "pt") as f:
            assert f.get_slice(f"{UNET_PREFIX}out.2.weight").get_dtype() == "F16"


def lora_paths(family: Family) -> list[str]:
    s = stem(family)
    extra = [f"loras/{s}-kohya-unet-only.safetensors"] if family is Family.SDXL else []
    return [f"loras/{s}-kohya.safetensors", f"loras/{s}-peft.safetensors", *extra]


@lora_families
def test_each_lora_loads_fully_into_diffusers_and_changes_the_image(family, tiny_models_dir):
    pipe = assemble_pipeline(family, build_tiny_pipeline(family))  # own copy: LoRAs patch modules in place
    base = generate(pipe, family)
    for relative in lora_paths(family):
        path = tiny_models_dir / relative
        tensors = load_file(path)
        expected_layers = sum(k.endswith(("lora_down.weight", "lora_A.weight")) for k in tensors)
        name = path.stem.replace("-", "_")
        with diffusers_warnings() as warnings:
            pipe.load_lora_weights(str(path), adapter_name=name)
        unet_only = "unet-only" in relative
        problems = [w for w in warnings if not (unet_only and w.startswith("No LoRA keys associated to CLIPText"))]
        assert not problems, f"{relative}: {problems}"
        patched = sum(
            1
            for part in ("unet", "text_encoder", "text_encoder_2")
            if getattr(pipe, part, None) is not None
            for module in getattr(pipe, part).modules()
            if name in getattr(module, "lora_A", {})
        )
        assert patched == expected_layers, f"{relative}: {patched} of {expected_layers} layers patched"
        changed = generate(pipe, family)
        assert np.abs(changed - base).max() > 0.02, relative
        pipe.unload_lora_weights()  # unwraps the patched layers too; delete_adapters leaves them in place
    assert np.abs(generate(pipe, family) - base).max() < 1e-6


def test_kohya_lora_names_and_metadata_follow_sd_scripts(tiny_models_dir):
    sdxl = load_file(tiny_models_dir / "loras/tiny-sdxl-kohya.safetensors")
    assert "lora_unet_input_blocks_5_1_transformer_blocks_1_attn1_to_q.lora_down.weight" in sdxl
    assert "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.alpha" in sdxl
    assert "lora_te2_text_model_encoder_layers_1_mlp_fc2.lora_up.weight" in sdxl
    assert not any(
        k.startswith("lora_te") for k in load_file(tiny_models_dir / "loras/tiny-sdxl-kohya-unet-only.safetensors")
    )
    sd1 = load_file(tiny_models_dir / "loras/tiny-sd1-kohya.safetensors")
    assert "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight" in sd1
    assert sd1["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"].ndim == 4  # 1x1 conv in SD1
    assert "lora_te_text_model_encoder_layers_0_self_attn_k_proj.lora_up.weight" in sd1
    with safe_open(tiny_models_dir / "loras/tiny-sdxl-kohya.safetensors", "pt") as f:
        meta = f.metadata()
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0" and meta["ss_network_dim"] == "4"
    assert json.loads(meta["ss_tag_frequency"])["10_dataset"]["tinytrigger"] == 12
    peft = load_file(tiny_models_dir / "loras/tiny-sd1-peft.safetensors")
    assert "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight" in peft
    assert "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight" in peft


def test_embeddings_have_the_a1111_and_sdxl_shapes(tiny_models_dir):
    shapes = {
        "tiny-sd1": {"emb_params": (2, 768)},
        "tiny-sd2": {"emb_params": (2, 1024)},
        "tiny-sdxl": {"clip_l": (2, 768), "clip_g": (2, 1280)},
    }
    for s, expected in shapes.items():
        tensors = load_file(tiny_models_dir / f"embeddings/{s}-emb.safetensors")
        assert {k: tuple(v.shape) for k, v in tensors.items()} == expected
