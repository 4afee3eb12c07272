"""The merger on FLUX.1: transformer files and all-in-one checkpoints, exact arithmetic, supermerger's blocks
(IN, D00.., S00.., OUT) from the family description, BFL names written, refusals, and the merge generating."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from webui.families import Family
from webui.families.flux_fixtures import all_in_one_state, build_components, build_transformer
from webui.families.flux_keys import bfl_to_diffusers, diffusers_to_bfl
from webui.merge.merger import MergeError, merge, plan_merge
from webui.merge.recipe import MergeMode, MergeRecipe, ModelInput, read_recipe
from webui.merge.sources import LazyFile
from webui.models.ldm_writer import save_single_file

DM = "diffusion_models"
DIT = "model.diffusion_model."
TOP = ("img_in.", "time_in.", "guidance_in.", "vector_in.", "txt_in.")


def model(*paths: Path) -> ModelInput:
    return ModelInput(tuple(paths))


def ws(a: Path, b: Path, alpha: float = 0.5, **kw) -> MergeRecipe:
    return MergeRecipe(MergeMode.WEIGHTED_SUM, model(a), model(b), alpha=alpha, **kw)


@pytest.fixture(scope="module")
def flux(tiny_models_dir, tmp_path_factory) -> dict[str, Path]:
    """A: the tiny FLUX.1 dev transformer (bf16, bare BFL names, as flux1-dev.safetensors); B and C: other seeds;
    AIO-A / AIO-B: ComfyUI all-in-one checkpoints of seeds 0 and 1."""
    folder = tmp_path_factory.mktemp("flux-merge-inputs")
    files = {
        "A": tiny_models_dir / f"{DM}/tiny-flux-dev.safetensors",
        "AIO-A": tiny_models_dir / "checkpoints/tiny-flux-dev-aio.safetensors",
    }
    for letter, seed in (("B", 1), ("C", 2)):
        state = diffusers_to_bfl(build_transformer("dev", seed).state_dict())
        files[letter] = save_single_file(state, folder / f"flux-{letter.lower()}.safetensors", dtype=torch.bfloat16)
    files["AIO-B"] = save_single_file(all_in_one_state(build_components("dev", 1)), folder / "flux-aio-b.safetensors")
    return files


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path)


def same(x: dict[str, torch.Tensor], y: dict[str, torch.Tensor]) -> bool:
    return x.keys() == y.keys() and all(x[k].dtype == y[k].dtype and torch.equal(x[k], y[k]) for k in x)


def test_flux_transformers_at_alpha_0_and_1_are_a_and_b_bit_for_bit_in_bfl_names(flux, tmp_path):
    a, b = tensors(flux["A"]), tensors(flux["B"])
    assert not any(torch.equal(a[k], b[k]) for k in a if k.endswith(".weight"))  # the seeds differ
    zero = merge(ws(flux["A"], flux["B"], 0.0, precision="bf16"), tmp_path / "0.safetensors")
    one = merge(ws(flux["A"], flux["B"], 1.0, precision="bf16"), tmp_path / "1.safetensors")
    assert same(tensors(zero.path), a)  # bare BFL names, as the transformer files are distributed
    assert same(tensors(one.path), b)
    assert zero.family is Family.FLUX and zero.kind.value == "unet" and zero.tensors == len(a)


def test_flux_weighted_sum_and_add_difference_arithmetic(flux, tmp_path):
    a, b, c = tensors(flux["A"]), tensors(flux["B"]), tensors(flux["C"])
    merged = tensors(merge(ws(flux["A"], flux["B"], 0.3, precision="fp32"), tmp_path / "ws.safetensors").path)
    key = "single_blocks.1.linear1.weight"
    assert torch.equal(merged[key], torch.lerp(a[key].float(), b[key].float(), 0.3))
    same_bc = MergeRecipe(
        MergeMode.ADD_DIFFERENCE, model(flux["A"]), model(flux["B"]), model(flux["B"]), alpha=0.7, precision="bf16"
    )
    assert same(tensors(merge(same_bc, tmp_path / "ad0.safetensors").path), a)
    recipe = MergeRecipe(
        MergeMode.ADD_DIFFERENCE,
        model(flux["A"]),
        model(flux["B"]),
        model(flux["C"]),
        alpha=0.5,
        precision="fp32",
    )
    merged = tensors(merge(recipe, tmp_path / "ad.safetensors").path)
    key = "double_blocks.0.img_attn.qkv.weight"
    assert torch.allclose(merged[key], a[key].float() + (b[key].float() - c[key].float()) * 0.5, atol=1e-6)


def test_all_in_one_checkpoints_merge_every_part_in_their_own_layout(flux, tmp_path):
    a, b = tensors(flux["AIO-A"]), tensors(flux["AIO-B"])
    zero = merge(ws(flux["AIO-A"], flux["AIO-B"], 0.0, precision="fp32"), tmp_path / "0.safetensors")
    one = merge(ws(flux["AIO-A"], flux["AIO-B"], 1.0, precision="fp32"), tmp_path / "1.safetensors")
    merged_0, merged_1 = tensors(zero.path), tensors(one.path)
    assert zero.kind.value == "checkpoint" and merged_0.keys() == a.keys()  # ComfyUI's prefixes kept
    assert all(torch.equal(merged_0[k], a[k].float()) for k in a)  # fp32 holds every input dtype exactly
    assert all(torch.equal(merged_1[k], b[k].float()) for k in b)
    half = merge(ws(flux["AIO-A"], flux["AIO-B"], 0.5, precision="fp32"), tmp_path / "h.safetensors")
    merged = tensors(half.path)
    assert half.merged == len(a)
    for key in (
        f"{DIT}single_blocks.0.linear2.weight",
        "text_encoders.t5xxl.transformer.shared.weight",
        "vae.decoder.conv_in.weight",
    ):
        assert torch.equal(merged[key], torch.lerp(a[key].float(), b[key].float(), 0.5)), key


def test_split_files_and_the_diffusers_folder_convert_to_comfyuis_all_in_one_layout(flux, tiny_models_dir, tmp_path):
    """Transformer + CLIP-L + T5 + ae files, or a diffusers folder, written as one file: the all-in-one file the
    same weights make (ComfyUI's prefixes, BFL names, the encoders under `transformer.`), tensor for tensor."""
    root = tiny_models_dir
    aio = tensors(flux["AIO-A"])
    split = model(
        flux["A"],
        root / "text_encoders/tiny-flux-clip-l.safetensors",
        root / "text_encoders/tiny-flux-t5xxl-fp16.safetensors",
        root / "vae/tiny-flux-ae.safetensors",
    )
    for name, source in (("split", split), ("folder", model(root / "checkpoints/tiny-flux-dev-diffusers"))):
        result = merge(
            MergeRecipe(MergeMode.NO_INTERPOLATION, source, precision="fp32"), tmp_path / f"{name}.safetensors"
        )
        written = tensors(result.path)
        assert result.kind.value == "checkpoint" and written.keys() == aio.keys(), name
        assert all(torch.equal(written[k], aio[k].float()) for k in aio), name


def test_flux_blocks_are_supermergers_and_touch_only_the_named_blocks(flux, tmp_path):
    a, b = tensors(flux["A"]), tensors(flux["B"])
    plan = plan_merge(ws(flux["A"], flux["B"], block_weights="GRAD_V"))
    plan.close()
    assert list(plan.block_weights.weights) == ["IN", "D00", "S00", "S01", "OUT"]  # the tiny transformer's
    assert plan.block_weights.weights["IN"] == 1.0 and plan.block_weights.weights["OUT"] == 1.0  # the curve's ends
    assert plan.block_weights.weights["S00"] == 0.0  # its middle
    result = merge(
        ws(flux["A"], flux["B"], 0.0, precision="bf16", block_weights="D00=1, S01=0.5"), tmp_path / "m.safetensors"
    )
    merged = tensors(result.path)
    changed = {k for k in a if not torch.equal(merged[k], a[k])}
    assert changed == {k for k in a if k.startswith(("double_blocks.0.", "single_blocks.1."))}
    assert all(torch.equal(merged[k], b[k]) for k in a if k.startswith("double_blocks.0."))
    assert read_recipe(result.metadata)["block_weights"] == {"D00": 1.0, "S01": 0.5}
    ends = tensors(
        merge(
            ws(flux["A"], flux["B"], 0.0, precision="bf16", block_weights="IN=1, OUT=1"), tmp_path / "e.safetensors"
        ).path
    )
    for key in a:
        outer = key.startswith((*TOP, "final_layer."))
        assert torch.equal(ends[key], b[key] if outer else a[key]), key
    # one number per block with BASE first, on an all-in-one file: BASE is the text encoders and the VAE
    listed = merge(
        ws(flux["AIO-A"], flux["AIO-B"], precision="fp32", block_weights="1, 0, 0, 0, 0, 0"), tmp_path / "l.safetensors"
    )
    aio_a, aio_b, out = tensors(flux["AIO-A"]), tensors(flux["AIO-B"]), tensors(listed.path)
    for key in aio_a:
        assert torch.equal(out[key], (aio_a if key.startswith(DIT) else aio_b)[key].float()), key
    with pytest.raises(MergeError, match="5 blocks"):
        plan_merge(ws(flux["A"], flux["B"], block_weights="0.5, 0.5"))
    with pytest.raises(MergeError, match="D05.*IN, D00, S00, S01, OUT"):
        plan_merge(ws(flux["A"], flux["B"], block_weights="D05=1"))


def test_every_transformer_layout_merges_to_the_same_bfl_file(flux, tiny_models_dir, tmp_path):
    """BFL names with ComfyUI's prefix (fp16), diffusers' names, fp8, the diffusers folder's transformer: each is
    read through the description's BFL plan (fused q/k/v stacked, the final modulation's halves swapped)."""
    root = tiny_models_dir
    reference = tensors(merge(ws(flux["A"], flux["B"], 0.25, precision="bf16"), tmp_path / "ref.safetensors").path)
    layouts = {
        "prefixed": root / f"{DM}/tiny-flux-dev-prefixed.safetensors",
        "diffusers-names": root / f"{DM}/tiny-flux-dev-diffusers.safetensors",
        "fp8": root / f"{DM}/tiny-flux-dev-fp8-e4m3fn.safetensors",
        "folder": root / "checkpoints/tiny-flux-dev-diffusers/transformer/diffusion_pytorch_model.safetensors",
    }
    for name, path in layouts.items():
        out = merge(ws(path, flux["B"], 0.25, precision="bf16"), tmp_path / f"{name}.safetensors")
        assert same(tensors(out.path), reference), name
    swapped = "final_layer.adaLN_modulation.1.weight"  # diffusers' norm_out.linear holds (scale, shift)
    assert not torch.equal(tensors(layouts["diffusers-names"])["norm_out.linear.weight"], tensors(flux["A"])[swapped])


def test_flux_with_sdxl_is_refused_before_any_work_naming_both(flux, tiny_models_dir, tmp_path, monkeypatch):
    def no_reading(self, key):
        raise AssertionError(f"read {key} before refusing")

    monkeypatch.setattr(LazyFile, "read", no_reading)
    xl = tiny_models_dir / "checkpoints/tiny-sdxl.safetensors"
    for a, b in ((flux["AIO-A"], xl), (xl, flux["A"])):
        with pytest.raises(MergeError) as refused:
            merge(ws(a, b), tmp_path / "x.safetensors")
        message = str(refused.value)
        assert str(a) in message and str(b) in message and "SDXL" in message and "FLUX.1" in message
    scaled = tiny_models_dir / f"{DM}/tiny-flux-dev-fp8-scaled.safetensors"
    t5_scaled = tiny_models_dir / "text_encoders/tiny-flux-t5xxl-fp8-e4m3fn-scaled.safetensors"
    for path in (scaled, t5_scaled):
        with pytest.raises(MergeError, match=f"B: {path} is a ComfyUI scaled-fp8 file.*per-layer scales"):
            merge(ws(flux["A"], path), tmp_path / "s.safetensors")
    gguf = tiny_models_dir / f"{DM}/tiny-flux-dev-Q8_0.gguf"
    with pytest.raises(MergeError, match=f"B: {gguf} is a GGUF file"):
        merge(ws(flux["A"], gguf), tmp_path / "g.safetensors")
    assert list(tmp_path.iterdir()) == []


PROMPT, SEED, STEPS, SIZE = "a photo of a cat in a garden", 7, 3, 32
ENCODERS = {
    "text_encoder": "text_encoders/tiny-flux-clip-l.safetensors",
    "text_encoder_2": "text_encoders/tiny-flux-t5xxl-fp16.safetensors",
    "vae": "vae/tiny-flux-ae.safetensors",
}


@pytest.fixture(scope="module")
def models(flux, tiny_models_dir, tmp_path_factory) -> Path:
    """A models folder holding the FLUX.1 encoders, VAE and tokenizers, and the merges written into it."""
    root = tmp_path_factory.mktemp("flux-merge-models")
    for relative in ENCODERS.values():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tiny_models_dir / relative, root / relative)
    shutil.copytree(tiny_models_dir / "tokenizers", root / "tokenizers")
    merge(ws(flux["A"], flux["B"], 0.5, precision="bf16"), root / f"{DM}/flux-mix.safetensors")
    merge(ws(flux["AIO-A"], flux["AIO-B"], 0.4, precision="bf16"), root / "checkpoints/flux-aio-mix.safetensors")
    return root


def _generate(models: Path, choice, loras=()) -> tuple[np.ndarray, str]:
    from PIL import Image

    from webui.engine.device import DevicePolicy
    from webui.engine.pipelines import PipelineManager
    from webui.engine.request import GenerationRequest
    from webui.engine.txt2img import Engine

    engine = Engine(PipelineManager(models, DevicePolicy(device="cpu")), models.parent / f"{models.name}-out")
    request = GenerationRequest(
        choice,
        prompt=PROMPT,
        steps=STEPS,
        cfg_scale=1.0,
        width=SIZE,
        height=SIZE,
        seed=SEED,
        sampler=None,
        loras=tuple(loras),
    )
    image = engine.generate(request).images[0]
    return np.asarray(Image.open(image.path).convert("RGB"), dtype=np.int16), image.infotext


def test_a_merged_flux_transformer_is_listed_and_generates_as_its_weights_do(models):
    from diffusers import FluxTransformer2DModel

    from webui.engine.pipelines import ModelChoice
    from webui.families.flux_fixtures import pipeline
    from webui.models.library import ModelLibrary

    library = ModelLibrary(models)
    library.scan()
    entry = library.find("flux-mix")
    assert entry.kind.value == "unet" and entry.family is Family.FLUX and entry.problem is None
    choice = ModelChoice(None, unet=entry.path, **{role: models / path for role, path in ENCODERS.items()})
    ours, infotext = _generate(models, choice)
    assert "Model: flux-mix" in infotext

    merged = {k: v.float() for k, v in tensors(entry.path).items()}
    components = build_components("dev")
    transformer = FluxTransformer2DModel.from_config(components["transformer"].config)
    transformer.load_state_dict(bfl_to_diffusers(merged), strict=True)
    components["transformer"] = transformer
    theirs = pipeline(components)(
        PROMPT,
        num_inference_steps=STEPS,
        width=SIZE,
        height=SIZE,
        generator=[torch.Generator("cpu").manual_seed(SEED)],
        max_sequence_length=512,
        guidance_scale=3.5,
        output_type="pil",
    ).images[0]
    theirs = np.asarray(theirs, dtype=np.int16)
    assert theirs.std() > 5, "a flat reference proves nothing"
    assert np.abs(ours - theirs).max() <= 1


def test_a_merged_all_in_one_checkpoint_is_flux_and_generates(models):
    from webui.engine.pipelines import ModelChoice
    from webui.models.library import ModelLibrary

    library = ModelLibrary(models)
    library.scan()
    entry = library.find("flux-aio-mix")
    assert entry.kind.value == "checkpoint" and entry.family is Family.FLUX and entry.problem is None
    from webui.ui.model_info import details

    assert details(entry)["merge_recipe"]["multiplier"] == 0.4  # what the Models tab shows
    image, infotext = _generate(models, ModelChoice(entry.path))
    assert image.std() > 5 and "Model: flux-aio-mix" in infotext and "Distilled CFG Scale: 3.5" in infotext


def test_the_merge_tab_names_flux_blocks(flux, models):
    from webui.models.library import ModelLibrary
    from webui.ui import choices
    from webui.ui.merge_tab import blocks_note, mergeable

    library = ModelLibrary(models)
    library.scan()
    ctx = SimpleNamespace(library=library)
    listed = mergeable(ctx)  # model A's dropdown: checkpoints and lone transformer files
    transformer, aio = (choices.title(library.find(name)) for name in ("flux-mix", "flux-aio-mix"))
    assert transformer in listed and aio in listed
    note = blocks_note(ctx, transformer)  # what the tab shows under the models when A is picked
    assert note == "FLUX.1 blocks (5): IN, D00, S00, S01, OUT; BASE is everything else"
    assert blocks_note(ctx, aio) == note


def _stronger(path: Path, models: Path) -> Path:
    """The fixture LoRA with its up factors ×4 (kept in the same format and metadata): the tiny models' LoRAs move
    pixels by a few levels only, too little to tell a baked LoRA from none."""
    from safetensors import safe_open

    with safe_open(path, "pt") as handle:
        metadata = handle.metadata()
        state = {k: handle.get_tensor(k) * (4 if ("lora_up" in k or "lora_B" in k) else 1) for k in handle.keys()}  # noqa: SIM118
    target = models / "loras" / path.name
    if not target.exists():
        save_single_file(state, target, metadata=metadata)
    return target


@pytest.mark.parametrize(
    ("layout", "lora"),
    [("transformer", "comfyui"), ("transformer", "bfl-peft"), ("all-in-one", "kohya")],
)
def test_a_baked_flux_lora_gives_the_pixels_of_generating_with_it(flux, models, tiny_models_dir, layout, lora):
    """The LoRA is loaded as generation loads it (the family's converter, PEFT adapters on a hollow FluxPipeline)
    and PEFT's merge runs on each BFL tensor split into its diffusers parts (fused q/k/v, swapped modulation); the
    all-in-one case patches CLIP-L too (T5 LoRA modules are not applied, as in generation)."""
    from webui.engine.lora import LoraSpec
    from webui.engine.pipelines import ModelChoice

    spec = LoraSpec(_stronger(tiny_models_dir / f"loras/tiny-flux-{lora}.safetensors", models), 0.8, 0.6)
    source = flux["A"] if layout == "transformer" else flux["AIO-A"]
    folder = DM if layout == "transformer" else "checkpoints"
    out = models / folder / f"baked-{lora}.safetensors"
    result = merge(MergeRecipe(MergeMode.NO_INTERPOLATION, model(source), loras=(spec,), precision="fp32"), out)
    (report,) = result.lora_reports
    assert report.error is None and report.applied > 0

    def choose(path: Path) -> ModelChoice:
        if layout == "transformer":
            return ModelChoice(None, unet=path, **{role: models / p for role, p in ENCODERS.items()})
        return ModelChoice(path)

    base, _ = _generate(models, choose(source))
    with_lora, _ = _generate(models, choose(source), (spec,))
    baked, _ = _generate(models, choose(result.path))
    assert np.abs(with_lora - base).max() > 8  # the LoRA visibly changes the image
    assert np.abs(baked - with_lora).max() <= 1


def test_dev_with_schnell_keeps_devs_guidance_embedder_and_says_so(flux, tiny_models_dir, tmp_path):
    """The community's dev/schnell merges: schnell lacks `guidance_in`, so A's is kept (and counted)."""
    dev, schnell = flux["A"], tiny_models_dir / f"{DM}/tiny-flux-schnell.safetensors"
    result = merge(ws(dev, schnell, 0.5, precision="bf16"), tmp_path / "dev-schnell.safetensors")
    merged, a = tensors(result.path), tensors(dev)
    guidance = {k for k in a if k.startswith("guidance_in.")}
    assert guidance and {k.removeprefix(DIT) for k in result.kept_from_a} == guidance
    assert all(torch.equal(merged[k], a[k]) for k in guidance) and merged.keys() == a.keys()
    other_way = merge(ws(schnell, dev, 0.5, precision="bf16"), tmp_path / "schnell-dev.safetensors")
    assert not any(k.startswith("guidance_in.") for k in tensors(other_way.path))  # schnell's keys, A's layout


def test_real_size_flux_has_supermergers_59_blocks_and_a_plan_for_every_key():
    """FLUX.1 dev at its released size (19 double, 38 single blocks, width 3072), on the meta device: the BFL plan
    from diffusers' names gives exactly the keys and shapes of the BFL file, and the blocks are supermerger's."""
    from diffusers import FluxTransformer2DModel

    from webui.families.flux_keys import single_file_plan
    from webui.merge.blocks import blocks_of, preset_for

    with torch.device("meta"):
        real = FluxTransformer2DModel(guidance_embeds=True)
    state = real.state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    plan = single_file_plan(shapes)
    bfl = diffusers_to_bfl(state)
    assert {k: entry.result_shape(shapes) for k, entry in plan.items()} == {k: tuple(v.shape) for k, v in bfl.items()}
    assert single_file_plan({k: tuple(v.shape) for k, v in bfl.items()}).keys() == bfl.keys()  # BFL in: copied
    blocks = blocks_of(Family.FLUX, [DIT + key for key in plan])
    expected = ["IN", *(f"D{i:02d}" for i in range(19)), *(f"S{i:02d}" for i in range(38)), "OUT"]
    assert blocks == expected
    weights = preset_for("GRAD_V", blocks)
    assert weights["IN"] == weights["OUT"] == 1.0 and min(weights.values()) == weights["S09"] < 0.02


def test_the_cli_merges_flux_by_library_name_into_diffusion_models(flux, models, capsys):
    from webui.cli import main

    args = ["merge", "--models-dir", str(models), "flux-mix", str(flux["B"]), "--blocks", "D*=1, S*=0"]
    assert main([*args, "--alpha", "0", "--precision", "bf16", "--name", "cli-mix"]) == 0
    target = models / DM / "cli-mix.safetensors"
    out = capsys.readouterr().out
    assert out.splitlines()[0] == str(target) and "FLUX.1 unet" in out
    merged, mix, b = tensors(target), tensors(models / DM / "flux-mix.safetensors"), tensors(flux["B"])
    for key in merged:
        assert torch.equal(merged[key], (b if key.startswith("double_blocks.") else mix)[key]), key
