"""SD3 and Chroma LoRAs in their trainers' formats: identified, converted, the expected modules patched (counts),
what cannot apply (T5, in SD3's kohya files) named, weight 0 the base image, and SD3's fused deltas exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from webui.engine.device import DevicePolicy
from webui.engine.lora import LoraSpec
from webui.engine.pipelines import ModelChoice, PipelineManager
from webui.engine.request import GenerationRequest
from webui.engine.txt2img import Engine
from webui.families import Family
from webui.families.sd3_keys import diffusers_to_original, original_to_diffusers
from webui.models.files import read_header
from webui.models.identify import identify
from webui.models.kinds import Kind
from webui.models.ldm_writer import save_single_file

RANK, ALPHA = 4, 2.0
TE = "text_encoders"
# Stability module -> diffusers modules it becomes (qkv: 3), in the tiny SD3.5 Large-shaped transformer
SD3_MODULES = {
    "joint_blocks.0.x_block.attn.qkv": 3,
    "joint_blocks.0.context_block.mlp.fc1": 1,
    "joint_blocks.1.context_block.adaLN_modulation.1": 1,  # the last, pre-only block: (shift, scale) swapped
    "final_layer.linear": 1,
}
CHROMA_MODULES = {"double_blocks.0.img_attn.qkv": 3, "single_blocks.1.linear1": 4, "double_blocks.0.txt_mlp.0": 1}
CLIP_MODULE = "text_model.encoder.layers.0.self_attn.q_proj"


def _pair(generator: torch.Generator, rows: int, columns: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(RANK, columns, generator=generator) * columns**-0.5, torch.randn(rows, RANK, generator=generator)


def _factors(state: dict[str, torch.Tensor], modules: dict[str, int], seed: int) -> dict[str, tuple]:
    generator = torch.Generator().manual_seed(seed)
    return {m: _pair(generator, *state[f"{m}.weight"].shape) for m in modules}


def kohya(pairs: dict[str, tuple], prefix: str = "lora_unet_") -> dict[str, torch.Tensor]:
    out = {}
    for module, (down, up) in pairs.items():
        name = prefix + module.replace(".", "_")
        out |= {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up, f"{name}.alpha": torch.tensor(ALPHA)}
    return out


def comfy(pairs: dict[str, tuple]) -> dict[str, torch.Tensor]:
    out = {}
    for module, (down, up) in pairs.items():
        out |= {f"diffusion_model.{module}.lora_down.weight": down, f"diffusion_model.{module}.lora_up.weight": up,
                f"diffusion_model.{module}.alpha": torch.tensor(ALPHA)}  # fmt: skip
    return out


def write(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    return save_single_file({k: v.clone().contiguous() for k, v in state.items()}, path, metadata=metadata)


@pytest.fixture(scope="module")
def engine(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return Engine(PipelineManager(tiny_models_dir, DevicePolicy(device="cpu")), tmp_path_factory.mktemp("loras"))


def sd3_choice(root: Path) -> ModelChoice:
    return ModelChoice(root / "checkpoints/tiny-sd3-incl-clips-t5xxl.safetensors")


def chroma_choice(root: Path) -> ModelChoice:
    return ModelChoice(root / "checkpoints/tiny-chroma-aio.safetensors")


def run(engine: Engine, choice: ModelChoice, loras: tuple[LoraSpec, ...] = ()):
    request = GenerationRequest(choice, prompt="a cat", steps=2, cfg_scale=1.0, width=32, height=32, seed=3,
                                sampler=None, loras=loras)  # fmt: skip
    result = engine.generate(request)
    return np.asarray(Image.open(result.images[0].path).convert("RGB"), dtype=np.int16), result.loras


@pytest.fixture(scope="module")
def sd3_loras(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from webui.families.sd3_fixtures import build_components

    parts = build_components()
    original = diffusers_to_original(parts["transformer"].state_dict())
    pairs = _factors(original, SD3_MODULES, 1)
    generator = torch.Generator().manual_seed(2)
    clip_l = {f"{CLIP_MODULE}.weight": parts["text_encoder"].state_dict()[f"{CLIP_MODULE}.weight"]}
    clip_g = {f"{CLIP_MODULE}.weight": parts["text_encoder_2"].state_dict()[f"{CLIP_MODULE}.weight"]}
    te = kohya({CLIP_MODULE: _pair(generator, *clip_l[f"{CLIP_MODULE}.weight"].shape)}, "lora_te1_")
    te |= kohya({CLIP_MODULE: _pair(generator, *clip_g[f"{CLIP_MODULE}.weight"].shape)}, "lora_te2_")
    te |= kohya({"encoder.block.0.layer.0.SelfAttention.q": _pair(generator, 128, 4096)}, "lora_te3_")
    diffusers_names = {}
    for module in ("transformer_blocks.0.attn.to_q", "transformer_blocks.1.attn.add_k_proj"):
        down, up = _pair(generator, *parts["transformer"].state_dict()[f"{module}.weight"].shape)
        diffusers_names |= {f"transformer.{module}.lora_A.weight": down, f"transformer.{module}.lora_B.weight": up}
    folder = tmp_path_factory.mktemp("sd3-loras")
    metadata = {"ss_base_model_version": "sd3", "ss_network_module": "networks.lora_sd3"}
    return {
        "kohya": write(folder / "kohya.safetensors", kohya(pairs) | te, metadata),
        "comfyui": write(folder / "comfyui.safetensors", comfy(pairs)),
        "peft": write(folder / "peft.safetensors", diffusers_names),
    }


# layout -> (modules patched, modules reported as not applied)
SD3_PATCHED = {"kohya": (sum(SD3_MODULES.values()) + 2, 1), "comfyui": (sum(SD3_MODULES.values()), 0), "peft": (2, 0)}


@pytest.mark.parametrize("layout", list(SD3_PATCHED))
def test_sd3_lora_formats_are_identified_and_patch_the_expected_modules(engine, tiny_models_dir, sd3_loras, layout):
    identity = identify(read_header(sd3_loras[layout]))
    expected = Family.UNKNOWN if layout == "peft" else Family.SD3  # diffusers names: by width, which tiny lacks
    assert (identity.kind, identity.family) == (Kind.LORA, expected), identity.detail
    base, _ = run(engine, sd3_choice(tiny_models_dir))
    patched, reports = run(engine, sd3_choice(tiny_models_dir), (LoraSpec(sd3_loras[layout], 1.0, 1.0),))
    applied, unapplied = SD3_PATCHED[layout]
    assert (reports[0].applied, reports[0].unapplied, reports[0].error) == (applied, unapplied, None)
    if unapplied:
        assert any("T5" in example for example in reports[0].examples)
    assert np.abs(patched - base).max() > 0
    zero, _ = run(engine, sd3_choice(tiny_models_dir), (LoraSpec(sd3_loras[layout], 0.0, 0.0),))
    assert np.array_equal(zero, base)


@pytest.mark.parametrize("width", [1536, 2432], ids=["medium", "large"])
def test_real_width_diffusers_named_sd3_loras_are_sd3(width):
    from webui.models.files import TensorHeader
    from webui.models.kinds import FileFormat

    shapes = {}
    for module in ("attn.to_q", "attn.to_k", "attn.add_k_proj"):
        name = f"transformer.transformer_blocks.0.{module}"
        shapes |= {f"{name}.lora_A.weight": (RANK, width), f"{name}.lora_B.weight": (width, RANK)}
    header = TensorHeader(shapes=shapes, dtypes={}, metadata={}, format=FileFormat.SAFETENSORS)
    assert identify(header).family is Family.SD3


def test_sd3_lora_deltas_equal_the_fused_deltas_merged_into_the_weights(engine, tiny_models_dir, sd3_loras):
    """The ComfyUI file's deltas (up @ down × alpha / rank on Stability's fused weights) merged by hand and run by
    plain diffusers give the engine's LoRA image: the qkv split and the pre-only modulation swap are exact."""
    from webui.families.sd3_fixtures import build_components, pipeline
    from webui.models.files import load_state_dict

    parts = build_components()
    original = diffusers_to_original(parts["transformer"].state_dict())
    lora = load_state_dict(sd3_loras["comfyui"])
    for module in SD3_MODULES:
        down, up = (lora[f"diffusion_model.{module}.lora_{f}.weight"].float() for f in ("down", "up"))
        original[f"{module}.weight"] = original[f"{module}.weight"] + up @ down * (ALPHA / RANK)
    parts["transformer"].load_state_dict(original_to_diffusers(original))
    theirs = pipeline(parts)("a cat", num_inference_steps=2, width=32, height=32, guidance_scale=1.0,
                             generator=[torch.Generator("cpu").manual_seed(3)]).images[0]  # fmt: skip
    ours, _ = run(engine, sd3_choice(tiny_models_dir), (LoraSpec(sd3_loras["comfyui"], 1.0, 1.0),))
    assert np.abs(ours - np.asarray(theirs, dtype=np.int16)).max() <= 1


def test_chroma_loras_load_whether_or_not_their_metadata_tells_them_from_flux(engine, tiny_models_dir, tmp_path):
    from webui.families.chroma_fixtures import build_transformer
    from webui.families.chroma_keys import diffusers_to_original as chroma_original

    pairs = _factors(chroma_original(build_transformer().state_dict()), CHROMA_MODULES, 4)
    tagged = write(tmp_path / "chroma-kohya.safetensors", kohya(pairs), {"ss_base_model_version": "chroma"})
    untagged = write(tmp_path / "chroma-comfy.safetensors", comfy(pairs))
    assert identify(read_header(tagged)).family is Family.CHROMA
    plain = identify(read_header(untagged))
    assert plain.family is Family.FLUX and plain.fits(Family.CHROMA)  # FLUX.1's blocks: it fits both
    base, _ = run(engine, chroma_choice(tiny_models_dir))
    for path in (tagged, untagged):
        patched, reports = run(engine, chroma_choice(tiny_models_dir), (LoraSpec(path, 1.0, 1.0),))
        assert (reports[0].applied, reports[0].unapplied, reports[0].error) == (sum(CHROMA_MODULES.values()), 0, None)
        assert np.abs(patched - base).max() > 0


ZIMAGE_MODULES = {
    "layers.0.attention.qkv": 3,
    "layers.0.feed_forward.w2": 1,
    "noise_refiner.0.attention.out": 1,
    "noise_refiner.0.adaLN_modulation.0": 1,
}


def test_z_image_loras_patch_the_expected_modules_with_exact_fused_deltas(engine, tiny_models_dir, tmp_path):
    from webui.families.zimage_fixtures import build_components, pipeline
    from webui.families.zimage_keys import diffusers_to_original as z_original
    from webui.families.zimage_keys import original_to_diffusers as z_diffusers

    parts = build_components()
    original = z_original(parts["transformer"].state_dict())
    pairs = _factors(original, ZIMAGE_MODULES, 5)
    te = kohya({"model.layers.0.self_attn.q_proj": _pair(torch.Generator().manual_seed(6), 256, 2560)}, "lora_te_")
    files = {
        "kohya": write(tmp_path / "z-kohya.safetensors", kohya(pairs) | te, {"ss_base_model_version": "zimage"}),
        "comfyui": write(tmp_path / "z-comfy.safetensors", comfy(pairs)),
    }
    choice = ModelChoice(tiny_models_dir / "checkpoints/tiny-zimage-aio.safetensors")
    assert identify(read_header(files["kohya"])).family is Family.ZIMAGE
    base, _ = run(engine, choice)
    for layout, path in files.items():
        patched, reports = run(engine, choice, (LoraSpec(path, 1.0, 1.0),))
        unapplied = 1 if layout == "kohya" else 0  # the Qwen3 module, named
        assert (reports[0].applied, reports[0].unapplied, reports[0].error) == (sum(ZIMAGE_MODULES.values()),
                                                                                unapplied, None)  # fmt: skip
        assert np.abs(patched - base).max() > 0
    for module, (down, up) in pairs.items():  # the deltas merged by hand, run by plain diffusers
        original[f"{module}.weight"] = original[f"{module}.weight"] + up @ down * (ALPHA / RANK)
    parts["transformer"].load_state_dict(z_diffusers(original))
    theirs = pipeline(parts)("a cat", num_inference_steps=2, width=32, height=32, guidance_scale=0.0,
                             generator=[torch.Generator("cpu").manual_seed(3)]).images[0]  # fmt: skip
    ours, _ = run(engine, choice, (LoraSpec(files["comfyui"], 1.0, 1.0),))
    assert np.abs(ours - np.asarray(theirs, dtype=np.int16)).max() <= 1
