"""FLUX.1 end to end: every file layout gives the pixels of plain diffusers' FluxPipeline on the same modules."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from webui.engine.device import DevicePolicy
from webui.engine.infotext import parse_infotext
from webui.engine.pipelines import ModelChoice, ModelLoadError, PipelineManager
from webui.engine.request import GenerationRequest
from webui.engine.txt2img import Engine
from webui.families import Family
from webui.families.flux_fixtures import build_components, build_transformer, pipeline
from webui.families.flux_keys import diffusers_to_bfl

PROMPT = "a photo of a cat in a garden"
SEED, STEPS, SIZE = 7, 3, 32
DM, TE = "diffusion_models", "text_encoders"
CLIP, T5, AE = (
    f"{TE}/tiny-flux-clip-l.safetensors",
    f"{TE}/tiny-flux-t5xxl-fp16.safetensors",
    "vae/tiny-flux-ae.safetensors",
)


@pytest.fixture(scope="module")
def engine(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Engine:
    manager = PipelineManager(tiny_models_dir, DevicePolicy(device="cpu"))
    return Engine(manager, tmp_path_factory.mktemp("flux-out"))


def modular(root: Path, transformer: str, t5: str = T5, **overrides: str) -> ModelChoice:
    paths = {"unet": transformer, "text_encoder": CLIP, "text_encoder_2": t5, "vae": AE, **overrides}
    return ModelChoice(None, **{k: root / v for k, v in paths.items()})


def reference(
    components: dict, guidance: float | None = 3.5, cfg: float = 1.0, negative: str | None = None, max_length: int = 512
) -> np.ndarray:
    """Plain diffusers: FluxPipeline over the modules, prompt as text, the same seed and settings."""
    kwargs = {"guidance_scale": guidance} if guidance is not None else {}
    if negative is not None:
        kwargs.update(negative_prompt=negative, true_cfg_scale=cfg)
    image = pipeline(components)(
        PROMPT,
        num_inference_steps=STEPS,
        width=SIZE,
        height=SIZE,
        generator=[torch.Generator("cpu").manual_seed(SEED)],
        max_sequence_length=max_length,
        output_type="pil",
        **kwargs,
    ).images[0]
    return np.asarray(image, dtype=np.int16)


def generated(engine: Engine, choice: ModelChoice, **fields) -> tuple[np.ndarray, dict[str, str]]:
    settings = {
        "prompt": PROMPT,
        "steps": STEPS,
        "cfg_scale": 1.0,
        "width": SIZE,
        "height": SIZE,
        "seed": SEED,
        "sampler": None,
        **fields,
    }
    request = GenerationRequest(choice, **settings)
    result = engine.generate(request)
    image = result.images[0]
    return np.asarray(Image.open(image.path).convert("RGB"), dtype=np.int16), parse_infotext(image.infotext)[2]


@pytest.fixture(scope="module")
def dev_reference() -> np.ndarray:
    return reference(build_components("dev"))


def assert_same_pixels(ours: np.ndarray, theirs: np.ndarray) -> None:
    assert ours.shape == theirs.shape == (SIZE, SIZE, 3)
    assert theirs.std() > 5, "the reference image is flat: the comparison would prove nothing"
    assert np.abs(ours - theirs).max() <= 1


def test_modular_bfl_transformer_gives_diffusers_pixels_and_forge_infotext(engine, tiny_models_dir, dev_reference):
    ours, params = generated(engine, modular(tiny_models_dir, f"{DM}/tiny-flux-dev.safetensors"))
    assert_same_pixels(ours, dev_reference)
    assert params["Distilled CFG Scale"] == "3.5" and params["CFG scale"] == "1"
    assert params["Sampler"] == "Euler" and params["Model"] == "tiny-flux-dev"
    assert params["Text encoder 2"] == "tiny-flux-t5xxl-fp16.safetensors"


@pytest.mark.slow
@pytest.mark.parametrize(
    "layout",
    [
        {"unet": f"{DM}/tiny-flux-dev-prefixed.safetensors"},  # model.diffusion_model. + BFL, fp16
        {"unet": f"{DM}/tiny-flux-dev-diffusers.safetensors"},  # diffusers names
        {"unet": f"{DM}/tiny-flux-dev-fp8-e4m3fn.safetensors"},  # plain fp8
        {"unet": f"{DM}/tiny-flux-dev-fp8-scaled.safetensors"},  # ComfyUI scaled fp8
        {
            "unet": f"{DM}/tiny-flux-dev.safetensors",
            "text_encoder_2": f"{TE}/tiny-flux-t5xxl-fp8-e4m3fn-scaled.safetensors",
        },
        {"checkpoint": "checkpoints/tiny-flux-dev-aio.safetensors"},  # all-in-one
        {"checkpoint": "checkpoints/tiny-flux-dev-diffusers"},  # diffusers folder
        # encoders in either order: each one's role comes from identification
        {"unet": f"{DM}/tiny-flux-dev.safetensors", "text_encoder": T5, "text_encoder_2": CLIP},
    ],
    ids=[
        "prefixed-fp16",
        "diffusers-names",
        "fp8",
        "scaled-fp8",
        "t5-scaled-fp8",
        "all-in-one",
        "diffusers-folder",
        "encoders-swapped",
    ],
)
def test_every_layout_gives_the_same_pixels(engine, tiny_models_dir, dev_reference, layout):
    if "checkpoint" in layout:
        choice = ModelChoice(tiny_models_dir / layout["checkpoint"])
    else:
        choice = modular(tiny_models_dir, layout.pop("unet"), **layout)
    ours, _ = generated(engine, choice)
    assert_same_pixels(ours, dev_reference)


def _dequantised(path: Path) -> dict[str, torch.Tensor]:
    """A GGUF file's tensors dequantised by the gguf package itself (independent of the loader under test)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    out = {}
    for tensor in reader.tensors:
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        out[tensor.name] = torch.from_numpy(np.array(values, dtype=np.float32)).reshape(
            tuple(reversed([int(d) for d in tensor.shape]))
        )
    return out


@pytest.mark.slow
def test_gguf_transformer_and_t5_equal_diffusers_on_their_dequantised_weights(engine, tiny_models_dir):
    from webui.families.flux_fixtures import T5_GGUF_NAMES
    from webui.families.flux_keys import bfl_to_diffusers

    components = build_components("dev")
    transformer = _dequantised(tiny_models_dir / f"{DM}/tiny-flux-dev-Q8_0.gguf")
    components["transformer"].load_state_dict(bfl_to_diffusers(transformer))
    names = {v: k for k, v in T5_GGUF_NAMES.items()}
    t5 = {}
    for key, value in _dequantised(tiny_models_dir / f"{TE}/tiny-flux-t5xxl-Q8_0.gguf").items():
        if key == "token_embd.weight":
            t5["shared.weight"] = t5["encoder.embed_tokens.weight"] = value
        elif key == "enc.output_norm.weight":
            t5["encoder.final_layer_norm.weight"] = value
        else:
            _, _, index, name, _ = key.split(".")
            t5[f"encoder.block.{index}.{names[name]}.weight"] = value
    components["text_encoder_2"].load_state_dict(t5)
    theirs = reference(components)
    choice = modular(tiny_models_dir, f"{DM}/tiny-flux-dev-Q8_0.gguf", t5=f"{TE}/tiny-flux-t5xxl-Q8_0.gguf")
    ours, _ = generated(engine, choice)
    loaded = engine.manager.current.pipeline.transformer
    assert any(type(m).__name__ == "GGUFLinear" for m in loaded.modules()), "GGUF weights were dequantised on load"
    assert_same_pixels(ours, theirs)
    assert not np.array_equal(theirs, reference(build_components("dev"))), "Q8_0 rounding should show"


def test_schnell_uses_its_own_schedule_and_no_guidance(engine, tiny_models_dir):
    ours, params = generated(engine, modular(tiny_models_dir, f"{DM}/tiny-flux-schnell.safetensors"))
    assert engine.manager.current.model_variant == "schnell"
    assert engine.manager.current.scheduler_config["shift"] == 1.0
    assert "Distilled CFG Scale" not in params
    components = build_components("schnell")
    assert_same_pixels(ours, reference(components, guidance=None, max_length=256))
    dev_schedule = build_components("dev")["scheduler"]
    components["scheduler"] = dev_schedule
    assert not np.array_equal(ours, reference(components, guidance=None, max_length=256))


@pytest.mark.slow
def test_distilled_guidance_and_true_cfg_with_a_negative_prompt(engine, tiny_models_dir):
    choice = modular(tiny_models_dir, f"{DM}/tiny-flux-dev.safetensors")
    ours, params = generated(engine, choice, distilled_guidance=2.0, cfg_scale=2.5, negative_prompt="blurry")
    assert params["Distilled CFG Scale"] == "2" and params["CFG scale"] == "2.5"
    assert_same_pixels(ours, reference(build_components("dev"), guidance=2.0, cfg=2.5, negative="blurry"))


def test_repeated_prompt_reuses_the_cached_embeddings(engine, tiny_models_dir):
    choice = modular(tiny_models_dir, f"{DM}/tiny-flux-dev.safetensors")
    generated(engine, choice)
    calls = []
    t5 = engine.manager.load(choice).pipeline.text_encoder_2
    handle = t5.register_forward_hook(lambda *args: calls.append(1))
    try:
        hits = engine.prompt_cache.hits
        first, _ = generated(engine, choice)
        assert calls == [] and engine.prompt_cache.hits == hits + 1
        request = GenerationRequest(
            choice,
            prompt=PROMPT + " at night",
            steps=1,
            cfg_scale=1.0,
            width=SIZE,
            height=SIZE,
            seed=SEED,
            sampler=None,
        )
        engine.generate(request)
        assert calls == [1]
    finally:
        handle.remove()


def test_bfl_conversion_agrees_with_diffusers_own_converter_at_the_real_width():
    """At the released width (3072, where diffusers' converter works) both converters give the same tensors:
    rows are tagged by value, so any swap, split or order mistake shows; the tensors are stride-0 views."""
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    model = build_transformer_meta(width=3072)
    bfl = {}
    for key, shape in {k: tuple(v.shape) for k, v in diffusers_to_bfl(model.state_dict()).items()}.items():
        rows = torch.arange(shape[0], dtype=torch.float32) + 0.5 * (zlib.crc32(key.encode()) % 1000)
        bfl[key] = rows.reshape(-1, *[1] * (len(shape) - 1)).expand(shape)
    theirs = convert_flux_transformer_checkpoint_to_diffusers(dict(bfl))
    from webui.families.flux_keys import bfl_to_diffusers

    ours = bfl_to_diffusers(bfl)
    assert set(ours) == set(theirs) == set(model.state_dict())
    for key in theirs:
        assert torch.equal(
            ours[key][..., :1] if ours[key].ndim > 1 else ours[key],
            theirs[key][..., :1] if theirs[key].ndim > 1 else theirs[key],
        ), key


def build_transformer_meta(width: int):
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        return FluxTransformer2DModel(
            num_layers=1, num_single_layers=1, num_attention_heads=width // 128, guidance_embeds=True
        )


def test_a_t5_file_in_the_transformer_slot_is_refused(engine, tiny_models_dir):
    with pytest.raises(ModelLoadError, match="tiny-flux-t5xxl-fp16"):
        engine.manager.load(modular(tiny_models_dir, T5))


def test_scaled_fp8_file_loads_as_its_folded_weights(tiny_models_dir):
    from safetensors.torch import load_file

    from webui.models.loading_dit import fold_scaled_fp8

    raw = load_file(tiny_models_dir / f"{DM}/tiny-flux-dev-fp8-scaled.safetensors")
    key = "double_blocks.0.img_attn.qkv.weight"
    assert raw[key].dtype == torch.float8_e4m3fn and "scaled_fp8" in raw
    folded = fold_scaled_fp8(raw, torch.float32)
    assert torch.equal(folded[key], raw[key].float() * raw["double_blocks.0.img_attn.qkv.scale_weight"])
    assert "scaled_fp8" not in folded and not any(k.endswith("scale_weight") for k in folded)
    expected = diffusers_to_bfl(build_components("dev")["transformer"].state_dict())[key]
    assert torch.equal(folded[key], expected)
    assert not torch.equal(raw[key].float(), expected), "unfolded fp8 numbers must differ (the silent-wrong case)"


def test_schnell_and_dev_transformers_are_told_apart():
    assert (
        Family.FLUX.description.variant_of(diffusers_to_bfl(build_transformer("schnell").state_dict())).name
        == "schnell"
    )
