"""FLUX.1 LoRAs in every trainer's format: identified, converted, patching the expected modules, none silently lost."""

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
from webui.families.flux_fixtures import build_components
from webui.families.flux_keys import bfl_to_diffusers, diffusers_to_bfl
from webui.families.flux_lora import to_diffusers
from webui.families.flux_lora_fixtures import ALPHA, PATCHED, RANK, lora_states
from webui.models.files import read_header
from webui.models.identify import identify
from webui.models.kinds import Kind

LAYOUTS = list(PATCHED)


@pytest.fixture(scope="module")
def engine(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return Engine(PipelineManager(tiny_models_dir, DevicePolicy(device="cpu")), tmp_path_factory.mktemp("lora-out"))


def choice(root: Path) -> ModelChoice:
    return ModelChoice(
        None,
        unet=root / "diffusion_models/tiny-flux-dev.safetensors",
        text_encoder=root / "text_encoders/tiny-flux-clip-l.safetensors",
        text_encoder_2=root / "text_encoders/tiny-flux-t5xxl-fp16.safetensors",
        vae=root / "vae/tiny-flux-ae.safetensors",
    )


def run(engine: Engine, root: Path, loras: tuple[LoraSpec, ...] = ()):
    request = GenerationRequest(
        choice(root), prompt="a cat", steps=2, cfg_scale=1.0, width=32, height=32, seed=3, sampler=None, loras=loras
    )
    result = engine.generate(request)
    return np.asarray(Image.open(result.images[0].path), dtype=np.int16), result.loras


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_format_is_identified_as_a_flux_lora(tiny_models_dir, layout):
    identity = identify(read_header(tiny_models_dir / f"loras/tiny-flux-{layout}.safetensors"))
    assert (identity.kind, identity.family, identity.supported) == (Kind.LORA, Family.FLUX, True)


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_format_patches_the_expected_modules_and_weight_zero_is_the_base(engine, tiny_models_dir, layout):
    base, _ = run(engine, tiny_models_dir)
    path = tiny_models_dir / f"loras/tiny-flux-{layout}.safetensors"
    patched, reports = run(engine, tiny_models_dir, (LoraSpec(path, 1.0, 1.0),))
    applied, unapplied = PATCHED[layout]
    assert (reports[0].applied, reports[0].unapplied, reports[0].error) == (applied, unapplied, None)
    if unapplied:  # named, never dropped silently
        assert any("T5" in e or "DoRA" in e for e in reports[0].examples)
    assert np.abs(patched - base).max() > 0
    zero, _ = run(engine, tiny_models_dir, (LoraSpec(path, 0.0, 0.0),))
    assert np.array_equal(zero, base)


def test_bfl_lora_a_b_converts_to_modules_diffusers_alone_loads_nothing_from():
    """TRAPS.md: diffusers' loader takes nothing from BFL names with lora_A/lora_B; the conversion does."""
    components = build_components("dev")
    state = lora_states(components["transformer"], components["text_encoder"], 1)["bfl-peft"]
    converted = to_diffusers(state)
    assert converted.skipped == () and all(k.startswith("transformer.") for k in converted.state)
    assert len({k.rsplit(".lora_", 1)[0] for k in converted.state}) == PATCHED["bfl-peft"][0]


@pytest.mark.parametrize("layout", ["kohya", "comfyui", "xlabs"])
def test_converted_deltas_equal_the_fused_bfl_deltas(layout):
    """Merging the converted LoRA into diffusers' modules gives exactly the BFL weights plus scale × up @ down,
    split as the weights are: the qkv thirds, linear1's q/k/v/MLP rows, the final modulation's swapped halves."""
    from webui.families.flux_fixtures import pipeline

    components = build_components("dev")
    base_bfl = diffusers_to_bfl({k: v.clone() for k, v in components["transformer"].state_dict().items()})
    state = lora_states(components["transformer"], components["text_encoder"], 2)[layout]
    expected = dict(base_bfl)
    for key, down in state.items():
        if key.endswith((".lora_down.weight", ".down.weight")) and "lora_te" not in key:
            up = state[key.replace("down.weight", "up.weight")]
            module = key.removeprefix("diffusion_model.").rsplit(".lora_down", 1)[0].rsplit(".down", 1)[0]
            if layout == "kohya":
                module = _kohya_to_bfl(module, base_bfl)
            if layout == "xlabs":  # double_blocks.0.processor.qkv_lora1 -> double_blocks.0.img_attn.qkv
                block, name = module.split(".processor.")
                stream = "img" if name.endswith("1") else "txt"
                module = f"{block}.{stream}_attn.{name.split('_')[0]}"
            scale = ALPHA / RANK if layout in ("kohya", "comfyui") else 1.0
            expected[f"{module}.weight"] = expected[f"{module}.weight"] + scale * up @ down
    pipe = pipeline(components)
    pipe.load_lora_weights(to_diffusers(state).state, adapter_name="x")
    pipe.fuse_lora(components=["transformer"], lora_scale=1.0)
    pipe.unload_lora_weights()
    merged = pipe.transformer.state_dict()
    for key, value in bfl_to_diffusers(expected).items():
        assert torch.allclose(merged[key], value, atol=1e-5), key


def _kohya_to_bfl(module: str, bfl: dict[str, torch.Tensor]) -> str:
    """lora_unet_double_blocks_0_img_attn_qkv -> double_blocks.0.img_attn.qkv (by matching the BFL names)."""
    name = module.removeprefix("lora_unet_")
    found = [k.removesuffix(".weight") for k in bfl if k.removesuffix(".weight").replace(".", "_") == name]
    assert len(found) == 1, name
    return found[0]
