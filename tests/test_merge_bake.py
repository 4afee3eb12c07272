"""LoRA bake-in: a baked model generates the pixels generating with the LoRA gives, through the same patching."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file

from webui.engine.lora import LoraSpec
from webui.engine.pipelines import ModelChoice, PipelineManager
from webui.engine.request import GenerationRequest
from webui.engine.txt2img import Engine
from webui.merge.merger import MergeError, merge
from webui.merge.recipe import MergeMode, MergeRecipe, ModelInput


@pytest.fixture(scope="module")
def engine(tiny_models_dir, tmp_path_factory) -> Engine:
    return Engine(PipelineManager(tiny_models_dir), tmp_path_factory.mktemp("bake-outputs"))


def pixels(engine: Engine, checkpoint, stack=()) -> np.ndarray:
    request = GenerationRequest(
        model=ModelChoice(checkpoint), prompt="a red hat", steps=2, width=32, height=32, seed=7, loras=tuple(stack)
    )
    result = engine.generate(request)
    return np.asarray(Image.open(result.images[0].path)).astype(np.int16)


@pytest.mark.parametrize(
    ("stem", "lora", "unet_weight", "te_weight"),
    [("tiny-sd1", "kohya", 0.7, 0.4), ("tiny-sdxl", "peft", 0.7, 0.7), ("tiny-sd2", "kohya", 1.0, 0.5)],
)
def test_baked_lora_gives_the_pixels_of_generating_with_it(
    engine, tiny_models_dir, tmp_path, stem, lora, unet_weight, te_weight
):
    checkpoint = tiny_models_dir / f"checkpoints/{stem}.safetensors"
    spec = LoraSpec(tiny_models_dir / f"loras/{stem}-{lora}.safetensors", unet_weight, te_weight)
    recipe = MergeRecipe(MergeMode.NO_INTERPOLATION, ModelInput((checkpoint,)), loras=(spec,), precision="fp32")
    result = merge(recipe, tmp_path / f"{stem}-baked.safetensors")
    (report,) = result.lora_reports
    assert report.error is None and report.applied > 0 and report.unapplied == 0
    base = pixels(engine, checkpoint)
    with_lora = pixels(engine, checkpoint, [spec])
    baked = pixels(engine, result.path)
    assert np.abs(with_lora - base).max() > 8  # the LoRA visibly changes the image
    assert np.abs(baked - with_lora).max() <= 1  # float rounding of a fused weight at most


def test_baking_patches_only_what_the_lora_targets_and_reports_it(tiny_models_dir, tmp_path):
    checkpoint = tiny_models_dir / "checkpoints/tiny-sdxl.safetensors"
    unet_only = LoraSpec(tiny_models_dir / "loras/tiny-sdxl-kohya-unet-only.safetensors", 1.0, 1.0)
    result = merge(
        MergeRecipe(MergeMode.NO_INTERPOLATION, ModelInput((checkpoint,)), loras=(unet_only,)),
        tmp_path / "unet-only.safetensors",
    )
    before, after = load_file(checkpoint), load_file(result.path)
    changed = {key for key in before if not np.array_equal(before[key].numpy(), after[key].numpy())}
    assert changed and all(key.startswith("model.diffusion_model.") for key in changed)
    assert result.lora_reports[0].applied == len(changed)


def test_a_lora_of_another_family_is_refused_before_any_work(tiny_models_dir, tmp_path):
    checkpoint = tiny_models_dir / "checkpoints/tiny-sd1.safetensors"
    wrong = LoraSpec(tiny_models_dir / "loras/tiny-sdxl-kohya.safetensors")
    with pytest.raises(MergeError, match="tiny-sdxl-kohya.*SDXL"):
        merge(
            MergeRecipe(MergeMode.NO_INTERPOLATION, ModelInput((checkpoint,)), loras=(wrong,)),
            tmp_path / "x.safetensors",
        )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["loha", "lokr", "dora", "locon"])
def test_lycoris_and_dora_files_bake_to_the_pixels_of_generating_with_them(engine, tiny_models_dir, tmp_path, kind):
    """Every layer kind the LoRA stack injects bakes in through PEFT's own merge (DoRA from the real weight)."""
    import wild_inputs as wild

    from webui.families import Family
    from webui.testing.tiny import build_tiny_pipeline

    components = build_tiny_pipeline(Family.SD1)
    layers = wild.kohya_layers(components, Family.SD1, locon=kind == "locon")
    if kind == "lokr":
        layers = [layer for layer in layers if layer.weight.dim() == 2]
    state = {
        "loha": lambda: wild.loha(layers, seed=21),
        "lokr": lambda: wild.lokr(layers, seed=22),
        "dora": lambda: wild.with_dora(wild.kohya_lora(layers, seed=23), layers, seed=24),
        "locon": lambda: wild.kohya_lora(layers, seed=25),
    }[kind]()
    spec = LoraSpec(wild.save(state, tmp_path / f"{kind}.safetensors", Family.SD1), 1.0, 1.0)
    checkpoint = tiny_models_dir / "checkpoints/tiny-sd1.safetensors"
    recipe = MergeRecipe(MergeMode.NO_INTERPOLATION, ModelInput((checkpoint,)), loras=(spec,), precision="fp32")
    result = merge(recipe, tmp_path / f"{kind}-baked.safetensors")
    assert result.lora_reports[0].applied == len(layers) and result.lora_reports[0].unapplied == 0
    with_lora = pixels(engine, checkpoint, [spec])
    assert np.abs(with_lora - pixels(engine, checkpoint)).max() > 8
    assert np.abs(pixels(engine, result.path) - with_lora).max() <= 1
