"""SD3 / SD3.5 end to end: identification on stripped real-shape headers, every file layout gives the pixels of
plain diffusers' StableDiffusion3Pipeline on the same modules, T5 optional, infotext, CLI and API."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from webui.engine.device import DevicePolicy
from webui.engine.infotext import parse_infotext
from webui.engine.pipelines import ModelChoice, PipelineManager
from webui.engine.request import GenerationRequest
from webui.engine.txt2img import Engine
from webui.families import Family
from webui.families.sd3_fixtures import build_components, pipeline
from webui.families.sd3_keys import derive_config, diffusers_to_original, original_to_diffusers
from webui.models.derive import bundled_config
from webui.models.files import TensorHeader
from webui.models.identify import identify
from webui.models.kinds import FileFormat, Kind, Role, TextEncoderType
from webui.models.ldm_writer import vae_to_ldm

PROMPT = "a photo of a cat in a garden"
SEED, STEPS, SIZE = 7, 3, 32
DM, TE = "diffusion_models", "text_encoders"
CLIP_L, CLIP_G, T5 = (f"{TE}/tiny-sd3-clip-l.safetensors", f"{TE}/tiny-sd3-clip-g.safetensors",
                      f"{TE}/tiny-sd3-t5xxl-fp16.safetensors")  # fmt: skip
VAE = "vae/tiny-sd3-vae.safetensors"
Shapes = dict[str, tuple[int, ...]]

# The released transformers' shapes (diffusers configs of the stabilityai repositories).
REAL = {
    "3.5-large": dict(num_layers=38, num_attention_heads=38, caption_projection_dim=2432, qk_norm="rms_norm",
                      pos_embed_max_size=192, dual_attention_layers=()),
    "3.5-medium": dict(num_layers=24, num_attention_heads=24, caption_projection_dim=1536, qk_norm="rms_norm",
                       pos_embed_max_size=384, dual_attention_layers=tuple(range(13))),
    "3-medium": dict(num_layers=24, num_attention_heads=24, caption_projection_dim=1536, qk_norm=None,
                     pos_embed_max_size=192, dual_attention_layers=()),
}  # fmt: skip


def ident(shapes: Shapes, metadata: dict[str, str] | None = None):
    return identify(TensorHeader(shapes=shapes, dtypes={}, metadata=metadata or {}, format=FileFormat.SAFETENSORS))


def _shapes(state: dict[str, torch.Tensor]) -> Shapes:
    return {k: tuple(v.shape) for k, v in state.items()}


@cache
def real_transformer(variant: str) -> dict[str, torch.Tensor]:
    """The released transformer's state dict on the meta device (diffusers' names)."""
    from diffusers import SD3Transformer2DModel

    config = {k: v for k, v in bundled_config(Family.SD3, "transformer").items() if not k.startswith("_")}
    config.update(REAL[variant])
    with torch.device("meta"):
        return SD3Transformer2DModel(**config).state_dict()


@cache
def real_parts() -> dict[str, Shapes]:
    """Stripped real-shape CLIP-L, CLIP-G (Hugging Face names), T5 and VAE (LDM names) headers."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    def config(name: str) -> dict:
        return {k: v for k, v in bundled_config(Family.SD3, name).items() if not k.startswith("_")}

    with torch.device("meta"):
        clip_l = CLIPTextModelWithProjection(CLIPTextConfig(**config("text_encoder"))).state_dict()
        clip_g = CLIPTextModelWithProjection(CLIPTextConfig(**config("text_encoder_2"))).state_dict()
        t5 = T5EncoderModel(T5Config(**{k: v for k, v in config("text_encoder_3").items() if k != "architectures"}))
        vae = AutoencoderKL(**config("vae"))
        vae_state = vae_to_ldm(vae.state_dict(), vae.config)
    t5_state = {k: v for k, v in t5.state_dict().items() if k != "encoder.embed_tokens.weight"}
    return {"clip_l": _shapes(clip_l), "clip_g": _shapes(clip_g), "t5": _shapes(t5_state), "vae": _shapes(vae_state)}


# --- identification and key conversion on real shapes ---------------------------------------------------------


@pytest.mark.parametrize("variant", list(REAL))
@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
def test_real_transformer_headers_are_sd3_with_their_variant(variant, prefix):
    original = diffusers_to_original(real_transformer(variant))
    identity = ident({prefix + k: tuple(v.shape) for k, v in original.items()})
    assert (identity.kind, identity.family, identity.variant) == (Kind.UNET, Family.SD3, variant), identity.detail


def test_real_diffusers_named_transformer_is_sd3_not_flux():
    identity = ident(_shapes(real_transformer("3.5-large")))
    assert (identity.kind, identity.family, identity.variant) == (Kind.UNET, Family.SD3, "3.5-large")


@pytest.mark.parametrize("variant", list(REAL))
def test_key_conversion_round_trips_and_the_config_is_read_from_real_shapes(variant):
    state = real_transformer(variant)
    original = diffusers_to_original(state)
    assert len(original) < len(state)  # q, k, v fused
    back = original_to_diffusers(original)
    assert _shapes(back) == _shapes(state)
    config = derive_config(_shapes(back), bundled_config(Family.SD3, "transformer"))
    for key, value in REAL[variant].items():
        assert config[key] == (list(value) if isinstance(value, tuple) else value), key
    assert config["joint_attention_dim"] == 4096 and config["pooled_projection_dim"] == 2048


@pytest.mark.parametrize("with_t5", [True, False], ids=["incl-clips-t5xxl", "incl-clips"])
def test_real_single_files_with_and_without_t5_are_sd3_checkpoints(with_t5):
    parts = real_parts()
    shapes = {f"model.diffusion_model.{k}": tuple(v.shape) for k, v in diffusers_to_original(
        real_transformer("3.5-large")).items()}  # fmt: skip
    shapes |= {f"first_stage_model.{k}": v for k, v in parts["vae"].items()}
    shapes |= {f"text_encoders.clip_l.transformer.{k}": v for k, v in parts["clip_l"].items()}
    shapes |= {f"text_encoders.clip_g.transformer.{k}": v for k, v in parts["clip_g"].items()}
    if with_t5:
        shapes |= {f"text_encoders.t5xxl.transformer.{k}": v for k, v in parts["t5"].items()}
    identity = ident(shapes)
    assert (identity.kind, identity.family, identity.lacks) == (Kind.CHECKPOINT, Family.SD3, ()), identity.detail
    expected = {TextEncoderType.CLIP_L, TextEncoderType.OPEN_CLIP_G} | ({TextEncoderType.T5} if with_t5 else set())
    assert set(identity.text_encoders) == expected
    assert ("without the optional T5" in identity.detail) is not with_t5
    assert "expected text encoders" not in identity.detail


def test_real_transformer_with_vae_only_lacks_the_clips_not_the_optional_t5():
    shapes = {f"model.diffusion_model.{k}": tuple(v.shape) for k, v in diffusers_to_original(
        real_transformer("3.5-medium")).items()}  # fmt: skip
    shapes |= {f"first_stage_model.{k}": v for k, v in real_parts()["vae"].items()}
    identity = ident(shapes)
    assert (identity.kind, identity.family, identity.variant) == (Kind.CHECKPOINT, Family.SD3, "3.5-medium")
    assert identity.lacks == (Role.TEXT_ENCODER, Role.TEXT_ENCODER_2)


def test_a_lone_clip_g_in_hugging_face_names_fits_sd3():
    identity = ident(real_parts()["clip_g"])
    assert identity.kind is Kind.TEXT_ENCODER and identity.text_encoders == (TextEncoderType.OPEN_CLIP_G,)
    assert identity.fits(Family.SD3)


# --- generation: the same pixels as StableDiffusion3Pipeline --------------------------------------------------


@pytest.fixture(scope="module")
def engine(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return Engine(PipelineManager(tiny_models_dir, DevicePolicy(device="cpu")), tmp_path_factory.mktemp("sd3-out"))


def modular(root: Path, transformer: str = f"{DM}/tiny-sd3.safetensors", **overrides: str | None) -> ModelChoice:
    paths = {"unet": transformer, "text_encoder": CLIP_L, "text_encoder_2": CLIP_G, "text_encoder_3": T5, "vae": VAE}
    paths.update(overrides)
    return ModelChoice(None, **{k: root / v for k, v in paths.items() if v is not None})


def reference(components: dict, cfg: float = 1.0, negative: str | None = None) -> np.ndarray:
    """Plain diffusers: StableDiffusion3Pipeline over the modules, prompt as text, the same seed and settings."""
    kwargs = {"negative_prompt": negative} if negative is not None else {}
    image = pipeline(components)(
        PROMPT,
        num_inference_steps=STEPS,
        width=SIZE,
        height=SIZE,
        guidance_scale=cfg,
        generator=[torch.Generator("cpu").manual_seed(SEED)],
        output_type="pil",
        **kwargs,
    ).images[0]
    return np.asarray(image, dtype=np.int16)


def generated(engine: Engine, choice: ModelChoice, **fields) -> tuple[np.ndarray, dict[str, str]]:
    settings = {"prompt": PROMPT, "steps": STEPS, "cfg_scale": 1.0, "width": SIZE, "height": SIZE, "seed": SEED}
    result = engine.generate(GenerationRequest(choice, **{"sampler": None, **settings, **fields}))
    image = result.images[0]
    _prompt, negative, params = parse_infotext(image.infotext)
    return np.asarray(Image.open(image.path).convert("RGB"), dtype=np.int16), {**params, "Negative prompt": negative}


@pytest.fixture(scope="module")
def with_t5() -> np.ndarray:
    return reference(build_components())


@pytest.fixture(scope="module")
def without_t5() -> np.ndarray:
    return reference(build_components(t5=False))


def assert_same_pixels(ours: np.ndarray, theirs: np.ndarray) -> None:
    assert ours.shape == theirs.shape == (SIZE, SIZE, 3)
    assert theirs.std() > 5, "the reference image is flat: the comparison would prove nothing"
    assert np.abs(ours - theirs).max() <= 1


def test_split_files_give_diffusers_pixels_and_name_every_part_in_the_infotext(engine, tiny_models_dir, with_t5):
    ours, params = generated(engine, modular(tiny_models_dir))
    assert_same_pixels(ours, with_t5)
    assert engine.manager.current.model_variant == "3.5-large"
    assert engine.manager.current.scheduler_config["shift"] == 3.0
    assert params["Sampler"] == "Euler" and params["Model"] == "tiny-sd3" and "Distilled CFG Scale" not in params
    assert params["Text encoder 2"] == "tiny-sd3-clip-g.safetensors"
    assert params["Text encoder 3"] == "tiny-sd3-t5xxl-fp16.safetensors"


@pytest.mark.parametrize(
    "layout",
    [
        {"checkpoint": "checkpoints/tiny-sd3-incl-clips-t5xxl.safetensors"},
        {"checkpoint": "checkpoints/tiny-sd3-diffusers"},
        pytest.param({"unet": f"{DM}/tiny-sd3-diffusers.safetensors"}, marks=pytest.mark.slow),
        # encoders in any order: each one's role comes from identification
        pytest.param({"text_encoder": T5, "text_encoder_2": CLIP_L, "text_encoder_3": CLIP_G}, marks=pytest.mark.slow),
    ],
    ids=["incl-clips-t5xxl", "diffusers-folder", "diffusers-names", "encoders-shuffled"],
)
def test_every_layout_gives_the_same_pixels(engine, tiny_models_dir, with_t5, layout):
    if "checkpoint" in layout:
        choice = ModelChoice(tiny_models_dir / layout["checkpoint"])
    else:
        choice = modular(tiny_models_dir, **layout)
    ours, _ = generated(engine, choice)
    assert_same_pixels(ours, with_t5)


@pytest.mark.parametrize(
    "layout",
    [{"checkpoint": "checkpoints/tiny-sd3-incl-clips.safetensors"}, {"text_encoder_3": None}],
    ids=["single-file-incl-clips", "split-files"],
)
def test_without_t5_it_runs_as_diffusers_does_without_it(engine, tiny_models_dir, with_t5, without_t5, layout):
    choice = ModelChoice(tiny_models_dir / layout["checkpoint"]) if "checkpoint" in layout else modular(
        tiny_models_dir, **layout)  # fmt: skip
    ours, params = generated(engine, choice)
    assert engine.manager.current.pipeline.text_encoder_3 is None
    assert_same_pixels(ours, without_t5)
    assert not np.array_equal(without_t5, with_t5), "T5 should matter in the reference"
    assert "Text encoder 3" not in params


def test_cfg_with_a_negative_prompt_is_real_cfg(engine, tiny_models_dir):
    ours, params = generated(engine, modular(tiny_models_dir), cfg_scale=4.0, negative_prompt="blurry")
    assert params["CFG scale"] == "4" and params["Negative prompt"] == "blurry"
    theirs = reference(build_components(), cfg=4.0, negative="blurry")
    assert_same_pixels(ours, theirs)
    assert not np.array_equal(theirs, reference(build_components(), cfg=4.0, negative="sharp"))


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["3.5-medium", "3-medium"])
def test_other_variants_load_with_their_shapes_and_give_diffusers_pixels(engine, tiny_models_dir, variant):
    ours, _ = generated(engine, modular(tiny_models_dir, f"{DM}/tiny-sd3-{variant}.safetensors"))
    assert engine.manager.current.model_variant == variant
    assert_same_pixels(ours, reference(build_components(variant)))


# --- CLI, API, infotext -----------------------------------------------------------------------------------------


def test_cli_takes_three_text_encoders_in_any_order_and_the_infotext_reproduces(tiny_models_dir, tmp_path, capsys):
    from webui.cli import main

    common = ("--models-dir", str(tiny_models_dir), "--outputs-dir", str(tmp_path), "--json")
    argv = ["generate", *common, "--unet", "tiny-sd3", "--text-encoder", "tiny-sd3-t5xxl-fp16",
            "--text-encoder", "tiny-sd3-clip-g", "--text-encoder", "tiny-sd3-clip-l", "--vae", "tiny-sd3-vae",
            "--prompt", "a red fox", "--negative", "blurry", "--cfg", "3", "--steps", "2",
            "--width", "32", "--height", "32", "--seed", "11"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    (image,) = result["images"]
    infotext = image["infotext"]
    assert "Text encoder: tiny-sd3-clip-l.safetensors" in infotext
    assert "Text encoder 2: tiny-sd3-clip-g.safetensors" in infotext
    assert "Text encoder 3: tiny-sd3-t5xxl-fp16.safetensors" in infotext
    assert result["family"] == "sd3"
    assert main(["generate", *common, "--infotext", image["path"]]) == 0
    (copy,) = json.loads(capsys.readouterr().out)["images"]
    assert copy["infotext"] == infotext
    assert np.array_equal(*(np.asarray(Image.open(i["path"])) for i in (image, copy)))


def test_cli_starts_from_the_variants_defaults(tiny_models_dir):
    from webui.engine.reproduce import family_defaults

    assert family_defaults(ModelChoice(tiny_models_dir / "checkpoints/tiny-sd3-incl-clips.safetensors")) == {
        "steps": 28,
        "cfg_scale": 3.5,
    }
    medium = ModelChoice(None, unet=tiny_models_dir / f"{DM}/tiny-sd3-3.5-medium.safetensors")
    assert family_defaults(medium) == {"steps": 40, "cfg_scale": 4.5}


def test_forge_api_modules_fill_the_three_encoder_slots(tiny_models_dir):
    from webui.api.translate import _modular_choice
    from webui.models.library import ModelLibrary

    library = ModelLibrary(tiny_models_dir)
    library.scan()
    modules = ["tiny-sd3-clip-l.safetensors", "tiny-sd3-clip-g.safetensors", "tiny-sd3-t5xxl-fp16.safetensors",
               "tiny-sd3-vae.safetensors"]  # fmt: skip
    choice = _modular_choice(library, "tiny-sd3", modules, ("body",))
    assert choice.unet == tiny_models_dir / f"{DM}/tiny-sd3.safetensors"
    assert choice.text_encoder_3 == tiny_models_dir / T5 and choice.vae == tiny_models_dir / VAE


def test_a_clip_l_saved_without_its_projection_serves_sd3_with_an_identity_projection(engine, tiny_models_dir):
    """FLUX.1's clip_l.safetensors (CLIPTextModel, no text_projection) shared with SD3, as ComfyUI users do."""
    choice = modular(tiny_models_dir, text_encoder="text_encoders/tiny-flux-clip-l.safetensors")
    generated(engine, choice)
    projection = engine.manager.current.pipeline.text_encoder.text_projection.weight
    assert torch.equal(projection, torch.eye(768))


def test_gguf_transformer_equals_diffusers_on_its_dequantised_weights(engine, tiny_models_dir, tmp_path):
    """city96-style GGUF (Stability's names, Q8_0 matrices) kept quantised; the reference gets the weights
    dequantised by the gguf package itself."""
    import gguf
    from safetensors.torch import load_file

    from webui.families.flux_fixtures import write_gguf

    path = tmp_path / "tiny-sd3-Q8_0.gguf"
    state = load_file(tiny_models_dir / f"{DM}/tiny-sd3.safetensors")
    write_gguf(path, {k: v.float() for k, v in state.items()}, "sd3")
    reader = gguf.GGUFReader(str(path))
    dequantised = {
        t.name: torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)).reshape(
            tuple(reversed([int(d) for d in t.shape])))
        for t in reader.tensors
    }  # fmt: skip
    components = build_components()
    components["transformer"].load_state_dict(original_to_diffusers(dequantised))
    ours, _ = generated(engine, modular(tiny_models_dir, str(path)))  # an absolute path: root / path is path
    loaded = engine.manager.current.pipeline.transformer
    assert any(type(m).__name__ == "GGUFLinear" for m in loaded.modules()), "GGUF weights were dequantised on load"
    assert_same_pixels(ours, reference(components))


def test_large_turbo_has_large_shapes_and_is_told_by_its_name_or_metadata(engine, tiny_models_dir, tmp_path):
    import shutil

    from webui.engine.reproduce import family_defaults
    from webui.models.files import read_header

    turbo = tmp_path / "sd3.5_large_turbo.safetensors"
    shutil.copyfile(tiny_models_dir / f"{DM}/tiny-sd3.safetensors", turbo)
    assert identify(read_header(turbo), turbo.name).variant == "3.5-large-turbo"
    assert identify(read_header(turbo)).variant == "3.5-large"  # the shapes alone say Large
    tagged = TensorHeader(shapes=dict(read_header(turbo).shapes), dtypes={}, format=FileFormat.SAFETENSORS,
                          metadata={"modelspec.architecture": "stable-diffusion-v3.5-large-turbo"})  # fmt: skip
    assert identify(tagged).variant == "3.5-large-turbo"
    assert family_defaults(ModelChoice(None, unet=turbo)) == {"steps": 4, "cfg_scale": 1.0}
    generated(engine, modular(tiny_models_dir, str(turbo)), steps=1)
    assert engine.manager.current.model_variant == "3.5-large-turbo"
