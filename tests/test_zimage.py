"""Z-Image end to end: identification on stripped real-shape headers (transformer, Qwen3-4B), every layout gives
the pixels of plain diffusers' ZImagePipeline on the same modules, CFG with a negative prompt, the bundled Qwen3
tokenizer with its chat template."""

from __future__ import annotations

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
from webui.families.zimage_fixtures import build_components, pipeline
from webui.families.zimage_keys import derive_config, diffusers_to_original, original_to_diffusers
from webui.models.derive import bundled_config
from webui.models.files import TensorHeader, read_header
from webui.models.identify import identify
from webui.models.kinds import FileFormat, Kind, TextEncoderType

PROMPT = "a photo of a cat in a garden"
SEED, STEPS, SIZE = 7, 3, 32
QWEN3, AE = "text_encoders/tiny-zimage-qwen3.safetensors", "vae/tiny-flux-ae.safetensors"
Shapes = dict[str, tuple[int, ...]]


def ident(shapes: Shapes):
    return identify(TensorHeader(shapes=shapes, dtypes={}, metadata={}, format=FileFormat.SAFETENSORS))


@cache
def real_transformer() -> dict[str, torch.Tensor]:
    from diffusers import ZImageTransformer2DModel

    config = {k: v for k, v in bundled_config(Family.ZIMAGE, "transformer").items() if not k.startswith("_")}
    with torch.device("meta"):
        return ZImageTransformer2DModel(**config).state_dict()


@cache
def real_qwen3() -> Shapes:
    """Qwen3-4B as Qwen3ForCausalLM names its weights (`model.layers.N.*`), shapes only."""
    from transformers import Qwen3Config, Qwen3Model

    config = {k: v for k, v in bundled_config(Family.ZIMAGE, "text_encoder").items() if k != "architectures"}
    with torch.device("meta"):
        state = Qwen3Model(Qwen3Config(**config)).state_dict()
    return {f"model.{k}": tuple(v.shape) for k, v in state.items()}


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
@pytest.mark.parametrize("names", ["original", "diffusers"])
def test_real_transformer_headers_are_z_image(prefix, names):
    state = real_transformer()
    state = diffusers_to_original(state) if names == "original" else state
    identity = ident({prefix + k: tuple(v.shape) for k, v in state.items()})
    assert (identity.kind, identity.family, identity.supported) == (Kind.UNET, Family.ZIMAGE, True), identity.detail


def test_key_conversion_round_trips_and_the_config_is_read_from_real_shapes():
    state = real_transformer()
    original = diffusers_to_original(state)
    assert "layers.29.attention.qkv.weight" in original and "final_layer.linear.weight" in original
    back = original_to_diffusers(original)
    assert {k: tuple(v.shape) for k, v in back.items()} == {k: tuple(v.shape) for k, v in state.items()}
    config = derive_config({k: tuple(v.shape) for k, v in back.items()}, {})
    assert (config["dim"], config["n_layers"], config["n_refiner_layers"]) == (3840, 30, 2)
    heads = (config["n_heads"], config["n_kv_heads"])
    assert heads == (30, 30) and (config["cap_feat_dim"], config["in_channels"]) == (2560, 16)


def test_a_real_qwen3_4b_file_is_the_z_image_text_encoder():
    identity = ident(real_qwen3())
    assert identity.kind is Kind.TEXT_ENCODER and identity.text_encoders == (TextEncoderType.QWEN3,)
    assert identity.family is Family.ZIMAGE


def test_the_bundled_qwen3_tokenizer_has_the_chat_template_the_pipeline_uses(tmp_path):
    from webui.models.tokenizers import load_qwen3_tokenizer

    tokenizer = load_qwen3_tokenizer(tmp_path)  # no user folder: the bundled copy
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "a cat"}], tokenize=False, add_generation_prompt=True, enable_thinking=True
    )
    assert text == "<|im_start|>user\na cat<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer(text).input_ids
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>") == 151644 and len(tokenizer) == 151669


# --- generation -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return Engine(PipelineManager(tiny_models_dir, DevicePolicy(device="cpu")), tmp_path_factory.mktemp("zimage"))


def reference(cfg: float = 1.0, negative: str | None = None) -> np.ndarray:
    """ZImagePipeline with its own guidance number: pos + g·(pos − neg), so A1111's CFG s is g = s − 1."""
    kwargs = {"negative_prompt": negative} if negative is not None else {}
    image = pipeline(build_components())(
        PROMPT,
        num_inference_steps=STEPS,
        width=SIZE,
        height=SIZE,
        guidance_scale=cfg - 1,
        generator=[torch.Generator("cpu").manual_seed(SEED)],
        output_type="pil",
        **kwargs,
    ).images[0]
    return np.asarray(image, dtype=np.int16)


def generated(engine: Engine, choice: ModelChoice, **fields) -> tuple[np.ndarray, str]:
    settings = {"prompt": PROMPT, "steps": STEPS, "cfg_scale": 1.0, "width": SIZE, "height": SIZE, "seed": SEED}
    image = engine.generate(GenerationRequest(choice, **{"sampler": None, **settings, **fields})).images[0]
    return np.asarray(Image.open(image.path).convert("RGB"), dtype=np.int16), image.infotext


def assert_same_pixels(ours: np.ndarray, theirs: np.ndarray) -> None:
    assert ours.shape == theirs.shape == (SIZE, SIZE, 3)
    assert theirs.std() > 5, "the reference image is flat: the comparison would prove nothing"
    assert np.abs(ours - theirs).max() <= 1


@pytest.mark.parametrize(
    "layout",
    [
        {"checkpoint": "checkpoints/tiny-zimage-aio.safetensors"},
        {"checkpoint": "checkpoints/tiny-zimage-diffusers"},
        {"unet": "diffusion_models/tiny-zimage.safetensors", "text_encoder": QWEN3, "vae": AE},
    ],
    ids=["all-in-one", "diffusers-folder", "split-files"],
)
def test_every_layout_gives_z_image_pipeline_pixels(engine, tiny_models_dir, layout):
    paths = {k: tiny_models_dir / v for k, v in layout.items()}
    ours, infotext = generated(engine, ModelChoice(paths.pop("checkpoint", None), **paths))
    assert_same_pixels(ours, reference())
    assert type(engine.manager.current.pipeline.text_encoder).__name__ == "Qwen3Model"
    assert "CFG scale: 1," in infotext


def test_cfg_with_a_negative_prompt_counts_as_a1111_cfg(engine, tiny_models_dir):
    choice = ModelChoice(tiny_models_dir / "checkpoints/tiny-zimage-aio.safetensors")
    ours, infotext = generated(engine, choice, cfg_scale=4.0, negative_prompt="blurry")
    _prompt, negative, params = parse_infotext(infotext)
    assert negative == "blurry" and params["CFG scale"] == "4"
    theirs = reference(4.0, "blurry")
    assert_same_pixels(ours, theirs)
    assert not np.array_equal(theirs, reference())


def test_turbo_defaults_start_without_cfg(tiny_models_dir):
    from webui.engine.reproduce import family_defaults

    choice = ModelChoice(None, unet=tiny_models_dir / "diffusion_models/tiny-zimage.safetensors")
    assert family_defaults(choice) == {"steps": 9, "cfg_scale": 1.0}


@pytest.mark.parametrize("dtype", ["float8_e4m3fn", "scaled_fp8"])
def test_qwen3_in_fp8_gives_the_same_pixels(engine, tiny_models_dir, tmp_path, dtype):
    from safetensors.torch import load_file

    from webui.families.flux_fixtures import FP8, scaled_fp8
    from webui.models.ldm_writer import save_single_file

    state = load_file(tiny_models_dir / QWEN3)
    stored = scaled_fp8(state) if dtype == "scaled_fp8" else {k: v.to(FP8) for k, v in state.items()}
    path = save_single_file(stored, tmp_path / f"qwen3-{dtype}.safetensors")
    paths = {"unet": tiny_models_dir / "diffusion_models/tiny-zimage.safetensors", "vae": tiny_models_dir / AE}
    ours, _ = generated(engine, ModelChoice(None, text_encoder=path, **paths))
    assert_same_pixels(ours, reference())


def test_qwen3_as_gguf_is_identified_and_equals_diffusers_on_its_dequantised_weights(engine, tiny_models_dir, tmp_path):
    """llama.cpp's names and Q8_0 matrices (as GGUF conversions of Qwen3-4B come); the reference gets the weights
    dequantised by the gguf package itself."""
    import gguf
    from safetensors.torch import load_file

    from webui.families.flux_fixtures import write_gguf
    from webui.models.loading_qwen3 import GGUF_NAMES

    names = {hf: cpp for cpp, hf in GGUF_NAMES}
    state = {}
    for key, value in load_file(tiny_models_dir / QWEN3).items():
        key = key.removeprefix("model.")
        if key == "embed_tokens.weight":
            state["token_embd.weight"] = value
        elif key == "norm.weight":
            state["output_norm.weight"] = value
        else:
            _, index, rest = key.split(".", 2)
            state[f"blk.{index}.{names[rest.removesuffix('.weight')]}.weight"] = value
    path = tmp_path / "qwen3-4b-Q8_0.gguf"
    write_gguf(path, state, "qwen3")
    identity = identify(read_header(path))
    assert identity.kind is Kind.TEXT_ENCODER and identity.text_encoders == (TextEncoderType.QWEN3,)
    reader = gguf.GGUFReader(str(path))
    dequantised = {
        t.name: torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)).reshape(
            tuple(reversed([int(d) for d in t.shape])))
        for t in reader.tensors
    }  # fmt: skip
    components = build_components()
    hf = {}
    for key, value in dequantised.items():
        if key == "token_embd.weight":
            hf["embed_tokens.weight"] = value
        elif key == "output_norm.weight":
            hf["norm.weight"] = value
        else:
            _, index, name, _ = key.split(".")
            hf[f"layers.{index}.{dict(GGUF_NAMES)[name]}.weight"] = value
    components["text_encoder"].load_state_dict(hf)
    theirs = pipeline(components)(PROMPT, num_inference_steps=STEPS, width=SIZE, height=SIZE, guidance_scale=0.0,
                                  generator=[torch.Generator("cpu").manual_seed(SEED)]).images[0]  # fmt: skip
    paths = {"unet": tiny_models_dir / "diffusion_models/tiny-zimage.safetensors", "vae": tiny_models_dir / AE}
    ours, _ = generated(engine, ModelChoice(None, text_encoder=path, **paths))
    assert_same_pixels(ours, np.asarray(theirs, dtype=np.int16))


def test_gguf_transformer_equals_z_image_pipeline_on_its_dequantised_weights(engine, tiny_models_dir, tmp_path):
    """A GGUF Z-Image transformer (original names, Q8_0 matrices) stays quantised; the reference gets the
    weights dequantised by the gguf package itself."""
    import gguf
    from safetensors.torch import load_file

    from webui.families.flux_fixtures import write_gguf

    path = tmp_path / "tiny-zimage-Q8_0.gguf"
    source = load_file(tiny_models_dir / "diffusion_models/tiny-zimage.safetensors")
    write_gguf(path, {k: v.float() for k, v in source.items()}, "lumina2")
    dequantised = {
        t.name: torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)).reshape(
            tuple(reversed([int(d) for d in t.shape])))
        for t in gguf.GGUFReader(str(path)).tensors
    }  # fmt: skip
    components = build_components()
    components["transformer"].load_state_dict(original_to_diffusers(dequantised))
    theirs = pipeline(components)(PROMPT, num_inference_steps=STEPS, width=SIZE, height=SIZE, guidance_scale=0.0,
                                  generator=[torch.Generator("cpu").manual_seed(SEED)]).images[0]  # fmt: skip
    choice = ModelChoice(None, unet=path, text_encoder=tiny_models_dir / QWEN3, vae=tiny_models_dir / AE)
    ours, _ = generated(engine, choice)
    transformer = engine.manager.current.pipeline.transformer
    assert any(type(m).__name__ == "GGUFLinear" for m in transformer.modules()), "dequantised on load"
    assert_same_pixels(ours, np.asarray(theirs, dtype=np.int16))


def test_cli_runs_a_split_z_image_model_and_its_infotext_reproduces_it(tiny_models_dir, tmp_path, capsys):
    import json

    from webui.cli import main

    common = ("--models-dir", str(tiny_models_dir), "--outputs-dir", str(tmp_path), "--json")
    argv = ["generate", *common, "--unet", "tiny-zimage", "--text-encoder", "tiny-zimage-qwen3",
            "--vae", "tiny-flux-ae", "--prompt", "a red fox", "--steps", "2",
            "--width", "32", "--height", "32", "--seed", "5"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    (image,) = result["images"]
    assert result["family"] == "zimage" and "CFG scale: 1," in image["infotext"]
    assert "Text encoder: tiny-zimage-qwen3.safetensors" in image["infotext"]
    assert main(["generate", *common, "--infotext", image["path"]]) == 0
    (copy,) = json.loads(capsys.readouterr().out)["images"]
    assert copy["infotext"] == image["infotext"]
    assert np.array_equal(*(np.asarray(Image.open(i["path"])) for i in (image, copy)))
