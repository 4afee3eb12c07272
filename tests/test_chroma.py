"""Chroma end to end: identification on stripped real-shape headers, every layout gives the pixels of plain
diffusers' ChromaPipeline on the same modules, real CFG with a negative prompt, CLI and infotext."""

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
from webui.families.chroma_fixtures import build_components, pipeline
from webui.families.chroma_keys import derive_config, diffusers_to_original, original_to_diffusers
from webui.models.derive import bundled_config
from webui.models.files import TensorHeader
from webui.models.identify import identify
from webui.models.kinds import FileFormat, Kind, TextEncoderType

PROMPT = "a photo of a cat in a garden"
SEED, STEPS, SIZE = 7, 3, 32
T5, AE = "text_encoders/tiny-flux-t5xxl-fp16.safetensors", "vae/tiny-flux-ae.safetensors"
Shapes = dict[str, tuple[int, ...]]


def ident(shapes: Shapes):
    return identify(TensorHeader(shapes=shapes, dtypes={}, metadata={}, format=FileFormat.SAFETENSORS))


@cache
def real_transformer() -> dict[str, torch.Tensor]:
    """Chroma1-HD's transformer on the meta device (diffusers' names; the bundled config is its)."""
    from diffusers import ChromaTransformer2DModel

    config = {k: v for k, v in bundled_config(Family.CHROMA, "transformer").items() if not k.startswith("_")}
    with torch.device("meta"):
        return ChromaTransformer2DModel(**config).state_dict()


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
@pytest.mark.parametrize("names", ["bfl", "diffusers"])
def test_real_chroma_headers_are_chroma_never_flux_or_sd3(prefix, names):
    state = real_transformer()
    state = diffusers_to_original(state) if names == "bfl" else state
    identity = ident({prefix + k: tuple(v.shape) for k, v in state.items()})
    assert (identity.kind, identity.family, identity.supported) == (Kind.UNET, Family.CHROMA, True), identity.detail


def test_key_conversion_round_trips_and_the_config_is_read_from_real_shapes():
    state = real_transformer()
    original = diffusers_to_original(state)
    assert any(k.startswith("distilled_guidance_layer.layers.4.in_layer") for k in original)
    assert not any("_mod." in k or "modulation" in k for k in original)  # Chroma has no per-block modulation
    back = original_to_diffusers(original)
    assert {k: tuple(v.shape) for k, v in back.items()} == {k: tuple(v.shape) for k, v in state.items()}
    config = derive_config({k: tuple(v.shape) for k, v in back.items()}, {})
    assert (config["num_layers"], config["num_single_layers"], config["num_attention_heads"]) == (19, 38, 24)
    assert (config["approximator_hidden_dim"], config["approximator_layers"]) == (5120, 5)
    assert config["joint_attention_dim"] == 4096


# --- generation -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return Engine(PipelineManager(tiny_models_dir, DevicePolicy(device="cpu")), tmp_path_factory.mktemp("chroma"))


def reference(cfg: float = 1.0, negative: str | None = None) -> np.ndarray:
    kwargs = {"negative_prompt": negative} if negative is not None else {}
    image = pipeline(build_components())(
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


def generated(engine: Engine, choice: ModelChoice, **fields) -> tuple[np.ndarray, str]:
    settings = {"prompt": PROMPT, "steps": STEPS, "cfg_scale": 1.0, "width": SIZE, "height": SIZE, "seed": SEED}
    image = engine.generate(GenerationRequest(choice, **{"sampler": None, **settings, **fields})).images[0]
    return np.asarray(Image.open(image.path).convert("RGB"), dtype=np.int16), image.infotext


@pytest.fixture(scope="module")
def plain() -> np.ndarray:
    return reference()


def assert_same_pixels(ours: np.ndarray, theirs: np.ndarray) -> None:
    assert ours.shape == theirs.shape == (SIZE, SIZE, 3)
    assert theirs.std() > 5, "the reference image is flat: the comparison would prove nothing"
    assert np.abs(ours - theirs).max() <= 1


@pytest.mark.parametrize(
    "layout",
    [
        {"checkpoint": "checkpoints/tiny-chroma-aio.safetensors"},
        {"checkpoint": "checkpoints/tiny-chroma-diffusers"},
        {"unet": "diffusion_models/tiny-chroma.safetensors", "text_encoder": T5, "vae": AE},
        pytest.param(
            {"unet": "diffusion_models/tiny-chroma-diffusers.safetensors", "text_encoder": T5, "vae": AE},
            marks=pytest.mark.slow,
        ),
    ],
    ids=["all-in-one", "diffusers-folder", "split-bfl", "split-diffusers-names"],
)
def test_every_layout_gives_chroma_pipeline_pixels(engine, tiny_models_dir, plain, layout):
    paths = {k: tiny_models_dir / v for k, v in layout.items()}
    choice = ModelChoice(paths.pop("checkpoint", None), **paths)
    ours, infotext = generated(engine, choice)
    assert_same_pixels(ours, plain)
    assert engine.manager.current.pipeline.__class__.__name__ == "ChromaPipeline"
    assert "Distilled CFG Scale" not in infotext and "Sampler: Euler" in infotext


def test_cfg_with_a_negative_prompt_is_real_cfg(engine, tiny_models_dir):
    choice = ModelChoice(tiny_models_dir / "checkpoints/tiny-chroma-aio.safetensors")
    ours, infotext = generated(engine, choice, cfg_scale=4.0, negative_prompt="blurry")
    _prompt, negative, params = parse_infotext(infotext)
    assert negative == "blurry" and params["CFG scale"] == "4"
    theirs = reference(4.0, "blurry")
    assert_same_pixels(ours, theirs)
    assert not np.array_equal(theirs, reference(4.0, "sharp"))


def test_cli_runs_a_split_chroma_model_with_its_defaults(tiny_models_dir, tmp_path, capsys):
    from webui.cli import main
    from webui.engine.reproduce import family_defaults

    choice = ModelChoice(None, unet=tiny_models_dir / "diffusion_models/tiny-chroma.safetensors")
    assert family_defaults(choice) == {"steps": 26, "cfg_scale": 4.0}
    argv = ["generate", "--models-dir", str(tiny_models_dir), "--outputs-dir", str(tmp_path), "--json",
            "--unet", "tiny-chroma", "--text-encoder", "tiny-flux-t5xxl-fp16", "--vae", "tiny-flux-ae",
            "--prompt", "a red fox", "--negative", "blurry", "--steps", "2",
            "--width", "32", "--height", "32"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["family"] == "chroma"
    infotext = result["images"][0]["infotext"]
    assert "CFG scale: 4," in infotext and "Negative prompt: blurry" in infotext
    assert "Text encoder: tiny-flux-t5xxl-fp16.safetensors" in infotext


def test_a_lone_t5_fits_chroma():
    t5 = {"encoder.block.0.layer.0.SelfAttention.q.weight": (4096, 4096), "shared.weight": (32128, 4096)}
    identity = ident(t5)
    assert identity.text_encoders == (TextEncoderType.T5,) and identity.fits(Family.CHROMA)


def test_gguf_transformer_equals_chroma_pipeline_on_its_dequantised_weights(engine, tiny_models_dir, tmp_path):
    """A GGUF Chroma (BFL-style names, Q8_0 matrices, as the community converts it) stays quantised; the reference
    gets the weights dequantised by the gguf package itself."""
    import gguf
    from safetensors.torch import load_file

    from webui.families.flux_fixtures import write_gguf

    path = tmp_path / "tiny-chroma-Q8_0.gguf"
    write_gguf(path, {k: v.float() for k, v in load_file(tiny_models_dir / "diffusion_models/tiny-chroma.safetensors")
                      .items()}, "flux")  # fmt: skip
    dequantised = {
        t.name: torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)).reshape(
            tuple(reversed([int(d) for d in t.shape])))
        for t in gguf.GGUFReader(str(path)).tensors
    }  # fmt: skip
    components = build_components()
    components["transformer"].load_state_dict(original_to_diffusers(dequantised))
    theirs = pipeline(components)(PROMPT, num_inference_steps=STEPS, width=SIZE, height=SIZE, guidance_scale=1.0,
                                  generator=[torch.Generator("cpu").manual_seed(SEED)]).images[0]  # fmt: skip
    choice = ModelChoice(None, unet=path, text_encoder=tiny_models_dir / T5, vae=tiny_models_dir / AE)
    ours, _ = generated(engine, choice)
    transformer = engine.manager.current.pipeline.transformer
    assert any(type(m).__name__ == "GGUFLinear" for m in transformer.modules()), "dequantised on load"
    assert_same_pixels(ours, np.asarray(theirs, dtype=np.int16))
