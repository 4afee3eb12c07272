"""The checkpoint merger: exact arithmetic, per-block weights, parts, layouts, refusals, recipe metadata, bake-ins."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from webui.engine.progress import CancelToken
from webui.families import Family
from webui.families.base import Part
from webui.merge.merger import MergeError, MergeInterrupted, merge, plan_merge
from webui.merge.recipe import MergeMode, MergeRecipe, ModelInput, Precision, read_recipe
from webui.merge.sources import LazyFile
from webui.models.files import read_header
from webui.models.hashing import HashCache, hash_file
from webui.models.ldm_writer import pipeline_to_ldm, save_single_file
from webui.models.safetensors_stream import DiskFullError
from webui.testing.tiny import build_tiny_pipeline

UNET = "model.diffusion_model."
VAE = "first_stage_model."
TE = "cond_stage_model."


def model(*paths: Path) -> ModelInput:
    return ModelInput(tuple(paths))


@pytest.fixture(scope="module")
def sd1(tiny_models_dir, tmp_path_factory) -> dict[str, Path]:
    """A (the tiny SD1 fixtures, every layout), B and C (other seeds) as fp16 single files."""
    folder = tmp_path_factory.mktemp("merge-inputs")
    files = {"A": tiny_models_dir / "checkpoints/tiny-sd1.safetensors"}
    for letter, seed in (("B", 1), ("C", 2)):
        files[letter] = save_single_file(
            pipeline_to_ldm(build_tiny_pipeline(Family.SD1, seed), Family.SD1),
            folder / f"sd1-{letter.lower()}.safetensors",
            dtype=torch.float16,
        )
    return files


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path)


def same(x: dict[str, torch.Tensor], y: dict[str, torch.Tensor]) -> bool:
    return x.keys() == y.keys() and all(x[k].dtype == y[k].dtype and torch.equal(x[k], y[k]) for k in x)


def test_weighted_sum_at_alpha_0_is_a_and_at_1_is_b_bit_for_bit(sd1, tmp_path):
    a, b = tensors(sd1["A"]), tensors(sd1["B"])
    zero = merge(
        MergeRecipe(MergeMode.WEIGHTED_SUM, model(sd1["A"]), model(sd1["B"]), alpha=0.0), tmp_path / "0.safetensors"
    )
    one = merge(
        MergeRecipe(MergeMode.WEIGHTED_SUM, model(sd1["A"]), model(sd1["B"]), alpha=1.0), tmp_path / "1.safetensors"
    )
    assert same(tensors(zero.path), a)
    assert same(tensors(one.path), b)
    assert zero.kind.value == "checkpoint" and zero.tensors == len(a)


def test_weighted_sum_between_is_the_float32_interpolation(sd1, tmp_path):
    a, b = tensors(sd1["A"]), tensors(sd1["B"])
    result = merge(
        MergeRecipe(MergeMode.WEIGHTED_SUM, model(sd1["A"]), model(sd1["B"]), alpha=0.3, precision="fp32"),
        tmp_path / "m.safetensors",
    )
    merged = tensors(result.path)
    key = f"{UNET}input_blocks.1.1.proj_in.weight"
    assert torch.equal(merged[key], a[key].float() * 0.7 + b[key].float() * 0.3) or torch.allclose(
        merged[key], a[key].float() * 0.7 + b[key].float() * 0.3, atol=1e-7
    )
    assert not torch.equal(merged[key], a[key].float()) and not torch.equal(merged[key], b[key].float())
    assert all(v.dtype == torch.float32 for k, v in merged.items() if a[k].is_floating_point())
    assert result.merged == len([k for k in a if k.startswith((UNET, VAE, TE))])


def test_add_difference_with_b_equal_to_c_is_a_and_otherwise_adds_the_difference(sd1, tmp_path):
    a, b, c = tensors(sd1["A"]), tensors(sd1["B"]), tensors(sd1["C"])
    same_bc = MergeRecipe(MergeMode.ADD_DIFFERENCE, model(sd1["A"]), model(sd1["B"]), model(sd1["B"]), alpha=0.8)
    assert same(tensors(merge(same_bc, tmp_path / "ad0.safetensors").path), a)
    recipe = MergeRecipe(
        MergeMode.ADD_DIFFERENCE, model(sd1["A"]), model(sd1["B"]), model(sd1["C"]), alpha=0.5, precision="fp32"
    )
    merged = tensors(merge(recipe, tmp_path / "ad.safetensors").path)
    key = f"{VAE}decoder.conv_in.weight"
    assert torch.allclose(merged[key], a[key].float() + (b[key].float() - c[key].float()) * 0.5, atol=1e-6)


def test_per_block_weights_touch_only_the_named_blocks(sd1, tmp_path):
    a, b = tensors(sd1["A"]), tensors(sd1["B"])
    recipe = MergeRecipe(
        MergeMode.WEIGHTED_SUM, model(sd1["A"]), model(sd1["B"]), alpha=0.0, block_weights="IN01=1, M00=0.5"
    )
    result = merge(recipe, tmp_path / "mbw.safetensors")
    merged = tensors(result.path)
    changed = {k for k in a if not torch.equal(merged[k], a[k])}
    assert changed == {k for k in a if k.startswith((f"{UNET}input_blocks.1.", f"{UNET}middle_block."))}
    assert all(torch.equal(merged[k], b[k]) for k in changed if k.startswith(f"{UNET}input_blocks.1."))
    recipe_read = read_recipe(result.metadata)
    assert recipe_read["block_weights"]["IN01"] == 1.0 and recipe_read["block_weights"]["M00"] == 0.5


def test_block_weight_list_preset_and_base(sd1, tmp_path):
    a, b = tensors(sd1["A"]), tensors(sd1["B"])
    plan = plan_merge(MergeRecipe(MergeMode.WEIGHTED_SUM, model(sd1["A"]), model(sd1["B"]), block_weights="GRAD_V"))
    blocks = list(plan.block_weights.weights)
    plan.close()
    assert blocks == ["IN00", "IN01", "IN02", "IN03", "M00", "OUT00", "OUT01", "OUT02", "OUT03"]  # the tiny UNet
    assert plan.block_weights.weights["IN00"] == 1.0 and plan.block_weights.weights["M00"] == 0.0
    # one number per block, BASE first: BASE takes every key outside the blocks (text encoder, VAE, time embedding)
    listed = "1, " + ", ".join(["0"] * len(blocks))
    merged = tensors(
        merge(
            MergeRecipe(MergeMode.WEIGHTED_SUM, model(sd1["A"]), model(sd1["B"]), block_weights=listed),
            tmp_path / "l.safetensors",
        ).path
    )
    for key in a:
        in_block = key.startswith((f"{UNET}input_blocks.", f"{UNET}middle_block.", f"{UNET}output_blocks."))
        assert torch.equal(merged[key], a[key] if in_block else b[key]), key
    with pytest.raises(MergeError, match="9 blocks"):
        plan_merge(MergeRecipe(MergeMode.WEIGHTED_SUM, model(sd1["A"]), model(sd1["B"]), block_weights="0.5, 0.5"))
    with pytest.raises(MergeError, match="IN99"):
        plan_merge(MergeRecipe(MergeMode.WEIGHTED_SUM, model(sd1["A"]), model(sd1["B"]), block_weights="IN99=1"))


def test_parts_choose_what_is_merged(sd1, tmp_path):
    a, b = tensors(sd1["A"]), tensors(sd1["B"])
    recipe = MergeRecipe(MergeMode.WEIGHTED_SUM, model(sd1["A"]), model(sd1["B"]), alpha=1.0, parts={Part.TEXT_ENCODER})
    merged = tensors(merge(recipe, tmp_path / "te.safetensors").path)
    for key in a:
        assert torch.equal(merged[key], b[key] if key.startswith(TE) else a[key]), key


def test_every_input_layout_merges_to_the_same_file(sd1, tiny_models_dir, tmp_path):
    """A as one file, a legacy .ckpt, a diffusers folder or split component files (diffusers names, HF CLIP) gives
    the same merge, tensor for tensor."""
    root = tiny_models_dir
    layouts = {
        "single": model(sd1["A"]),
        "pickle": model(root / "checkpoints/tiny-sd1.ckpt"),
        "diffusers": model(root / "checkpoints/tiny-sd1-diffusers"),
        "split": model(
            root / "diffusion_models/tiny-sd1-unet.safetensors",
            root / "text_encoders/tiny-sd1-clip-l.safetensors",
            root / "vae/tiny-sd1-vae-diffusers.safetensors",
        ),
    }
    results = {
        name: tensors(
            merge(
                MergeRecipe(MergeMode.WEIGHTED_SUM, a, model(sd1["B"]), alpha=0.25), tmp_path / f"{name}.safetensors"
            ).path
        )
        for name, a in layouts.items()
    }
    reference = results.pop("single")
    for name, merged in results.items():
        assert same(merged, reference), name
    b_folder = MergeRecipe(
        MergeMode.WEIGHTED_SUM, model(sd1["B"]), model(root / "checkpoints/tiny-sd1-diffusers"), alpha=1.0
    )
    assert same(tensors(merge(b_folder, tmp_path / "b-folder.safetensors").path), tensors(sd1["A"]))


def test_a_merged_file_loads_in_diffusers_and_the_library(sd1, tmp_path):
    from webui.models.library import ModelLibrary

    models = tmp_path / "models"
    out = models / "checkpoints" / "mix.safetensors"
    merge(MergeRecipe(MergeMode.WEIGHTED_SUM, model(sd1["A"]), model(sd1["B"]), alpha=0.5), out)
    library = ModelLibrary(models)
    library.scan()
    entry = library.find("mix")
    assert entry.kind.value == "checkpoint" and entry.family is Family.SD1 and entry.problem is None
    from webui.engine.pipelines import ModelChoice, PipelineManager

    loaded = PipelineManager(models).load(ModelChoice(out))
    assert loaded.family is Family.SD1


def test_models_of_different_families_are_refused_before_any_work_naming_both(
    sd1, tiny_models_dir, tmp_path, monkeypatch
):
    def no_reading(self, key):
        raise AssertionError(f"read {key} before refusing")

    monkeypatch.setattr(LazyFile, "read", no_reading)
    xl = tiny_models_dir / "checkpoints/tiny-sdxl.safetensors"
    with pytest.raises(MergeError) as refused:
        merge(MergeRecipe(MergeMode.WEIGHTED_SUM, model(sd1["A"]), model(xl)), tmp_path / "x.safetensors")
    message = str(refused.value)
    assert str(xl) in message and str(sd1["A"]) in message and "SDXL" in message and "SD1.x" in message
    wrong_te = tiny_models_dir / "text_encoders/tiny-sd2-open-clip-h.safetensors"
    with pytest.raises(MergeError, match="open-clip-h|OpenCLIP-H|SD2"):
        merge(
            MergeRecipe(MergeMode.WEIGHTED_SUM, model(sd1["A"]), model(sd1["B"], wrong_te)), tmp_path / "y.safetensors"
        )
    assert list(tmp_path.iterdir()) == []


def test_a_shape_mismatch_is_refused_naming_the_key(sd1, tmp_path):
    b = tensors(sd1["B"])
    key = f"{UNET}input_blocks.0.0.weight"
    b[key] = torch.zeros(b[key].shape[0], 9, *b[key].shape[2:], dtype=b[key].dtype)  # an inpainting conv_in
    odd = save_single_file(b, tmp_path / "inpaint.safetensors")
    with pytest.raises(MergeError, match=r"input_blocks\.0\.0\.weight.*inpainting"):
        merge(MergeRecipe(MergeMode.WEIGHTED_SUM, model(sd1["A"]), model(odd)), tmp_path / "x.safetensors")


def test_recipe_is_written_as_a1111_reads_it_and_read_back(sd1, tiny_models_dir, tmp_path):
    from webui.engine.lora import LoraSpec

    lora = tiny_models_dir / "loras/tiny-sd1-kohya.safetensors"
    vae = tiny_models_dir / "vae/tiny-sd1-vae-alt.safetensors"
    recipe = MergeRecipe(
        MergeMode.ADD_DIFFERENCE,
        model(sd1["A"]),
        model(sd1["B"]),
        model(sd1["C"]),
        alpha=0.4,
        block_weights="OUT*=0.9",
        vae=vae,
        loras=(LoraSpec(lora, 0.7, 0.5),),
        name="my-mix",
    )
    result = merge(recipe, tmp_path / "recipe.safetensors", hashes=HashCache(tmp_path / "hashes.json"))
    metadata = read_header(result.path).metadata
    raw = json.loads(metadata["sd_merge_recipe"])
    assert raw["type"] == "webui" and raw["interp_method"] == "Add difference" and raw["multiplier"] == 0.4
    assert raw["primary_model_hash"] == hash_file(sd1["A"]).sha256
    assert raw["secondary_model_hash"] == hash_file(sd1["B"]).sha256
    assert raw["tertiary_model_hash"] == hash_file(sd1["C"]).sha256
    assert raw["bake_in_vae"] == vae.stem and raw["custom_name"] == "my-mix" and raw["save_as_half"] is True
    assert raw["block_weights"] == {f"OUT{i:02d}": 0.9 for i in range(4)}
    assert raw["loras"][0]["name"] == lora.stem and raw["loras"][0]["sha256"] == hash_file(lora).sha256
    assert raw["loras"][0]["unet_weight"] == 0.7 and raw["loras"][0]["te_weight"] == 0.5
    models = json.loads(metadata["sd_merge_models"])
    assert set(models) == {hash_file(p).sha256 for p in (sd1["A"], sd1["B"], sd1["C"])}
    assert read_recipe(metadata)["sd_merge_models"] == models
    # a merge of that merge keeps its history
    again = merge(
        MergeRecipe(MergeMode.WEIGHTED_SUM, model(result.path), model(sd1["A"]), alpha=0.5),
        tmp_path / "again.safetensors",
        hashes=HashCache(tmp_path / "hashes.json"),
    )
    nested = json.loads(read_header(again.path).metadata["sd_merge_models"])
    assert json.loads(nested[hash_file(result.path).sha256]["sd_merge_recipe"])["interp_method"] == "Add difference"
    assert hash_file(sd1["C"]).sha256 in nested


def test_vae_bake_in_replaces_the_vae(sd1, tiny_models_dir, tmp_path):
    alt = tensors(tiny_models_dir / "vae/tiny-sd1-vae-alt.safetensors")
    a = tensors(sd1["A"])
    result = merge(
        MergeRecipe(
            MergeMode.NO_INTERPOLATION,
            model(sd1["A"]),
            vae=tiny_models_dir / "vae/tiny-sd1-vae-alt.safetensors",
            precision="fp32",
        ),
        tmp_path / "vae.safetensors",
    )
    merged = tensors(result.path)
    assert merged.keys() == a.keys()
    for key in a:
        expected = alt[key[len(VAE) :]] if key.startswith(VAE) else a[key].float()
        assert torch.equal(merged[key], expected.float()), key
    with pytest.raises(MergeError, match="vae"):
        plan_merge(MergeRecipe(MergeMode.NO_INTERPOLATION, model(sd1["A"]), vae=sd1["B"]))


def test_prune_drops_ema_and_leftovers_keeps_markers_and_discard_drops_by_name(sd1, tmp_path):
    a = tensors(sd1["A"])
    extra = {
        **a,
        "model_ema.decay": torch.tensor(0.9999),
        "model_ema.diffusion_modelout0weight": torch.ones(2),
        "alphas_cumprod": torch.ones(4),
        "v_pred": torch.tensor([]),
    }
    noisy = save_single_file(extra, tmp_path / "noisy.safetensors")
    pruned = merge(MergeRecipe(MergeMode.NO_INTERPOLATION, model(noisy), prune=True), tmp_path / "pruned.safetensors")
    kept = tensors(pruned.path)
    assert set(kept) == set(a) | {"v_pred"}
    assert set(pruned.dropped) == {"model_ema.decay", "model_ema.diffusion_modelout0weight", "alphas_cumprod"}
    discarded = merge(
        MergeRecipe(MergeMode.NO_INTERPOLATION, model(noisy), discard=r"^model_ema\."),
        tmp_path / "discarded.safetensors",
    )
    assert set(tensors(discarded.path)) == set(a) | {"alphas_cumprod", "v_pred"}
    with pytest.raises(ValueError, match="discard"):
        MergeRecipe(MergeMode.NO_INTERPOLATION, model(noisy), discard="(")


def test_precision_casts_floats_and_keeps_integers(sd1, tmp_path):
    ids = f"{TE}transformer.text_model.embeddings.position_ids"  # what older SD1 files carry
    with_ids = save_single_file({**tensors(sd1["A"]), ids: torch.arange(77)[None]}, tmp_path / "ids.safetensors")
    for precision, dtype in ((Precision.BF16, torch.bfloat16), (Precision.FP32, torch.float32)):
        out = merge(
            MergeRecipe(MergeMode.NO_INTERPOLATION, model(with_ids), precision=precision),
            tmp_path / f"{precision.value}.safetensors",
        )
        merged = tensors(out.path)
        assert merged[ids].dtype == torch.int64 and torch.equal(merged[ids], torch.arange(77)[None])
        assert {v.dtype for k, v in merged.items() if k != ids} == {dtype}


def test_output_is_never_overwritten(sd1, tmp_path):
    target = tmp_path / "taken.safetensors"
    target.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="taken.safetensors"):
        merge(MergeRecipe(MergeMode.NO_INTERPOLATION, model(sd1["A"])), target)
    assert target.read_bytes() == b"precious"
    assert [p.name for p in tmp_path.iterdir()] == ["taken.safetensors"]


def test_a_full_disk_is_a_clear_error_and_leaves_nothing(sd1, tmp_path, monkeypatch):
    import shutil

    real_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real_usage(p)._replace(free=1000))
    with pytest.raises(DiskFullError, match="not enough disk space") as refused:
        merge(MergeRecipe(MergeMode.NO_INTERPOLATION, model(sd1["A"])), tmp_path / "full.safetensors")
    assert refused.value.errno == errno.ENOSPC and "full.safetensors" in str(refused.value)
    monkeypatch.setattr(shutil, "disk_usage", real_usage)

    real_fdopen = os.fdopen

    class FillingDisk:
        """The temp file as a disk that fills up after 4 KiB: writes fail with ENOSPC, as a real full disk's do."""

        def __init__(self, handle):
            self.handle, self.left = handle, 4096

        def write(self, data):
            if len(data) > self.left:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.left -= len(data)
            return self.handle.write(data)

        def __getattr__(self, name):
            return getattr(self.handle, name)

    def fdopen(fd, mode="r", *args, **kwargs):  # only the writer's handle fills up; readers open files this way too
        handle = real_fdopen(fd, mode, *args, **kwargs)
        return FillingDisk(handle) if "w" in mode else handle

    monkeypatch.setattr(os, "fdopen", fdopen)
    with pytest.raises(DiskFullError, match="free some space") as full:
        merge(MergeRecipe(MergeMode.WEIGHTED_SUM, model(sd1["A"]), model(sd1["B"])), tmp_path / "full.safetensors")
    monkeypatch.undo()
    assert "full.safetensors" in str(full.value)
    assert list(tmp_path.iterdir()) == []  # no partial file


def test_progress_per_tensor_and_interrupt_leaves_nothing(sd1, tmp_path):
    seen = []
    token = CancelToken()

    def on_progress(progress):
        seen.append(progress)
        if progress.done == 10:
            token.cancel()

    with pytest.raises(MergeInterrupted, match="10 of"):
        merge(
            MergeRecipe(MergeMode.WEIGHTED_SUM, model(sd1["A"]), model(sd1["B"])),
            tmp_path / "stopped.safetensors",
            progress=on_progress,
            cancel=token,
        )
    assert [p.done for p in seen] == list(range(1, 11)) and seen[-1].total > 10
    assert 0 < seen[-1].fraction < 1 and seen[-1].key
    assert list(tmp_path.iterdir()) == []


def test_merge_error_messages_name_the_field():
    a = ModelInput((Path("a.safetensors"),))
    with pytest.raises(ValueError, match="^b: Weighted sum needs model B"):
        MergeRecipe(MergeMode.WEIGHTED_SUM, a)
    with pytest.raises(ValueError, match="^c: Add difference needs model C"):
        MergeRecipe(MergeMode.ADD_DIFFERENCE, a, a)
    with pytest.raises(ValueError, match="^alpha: 1.5 is out of range"):
        MergeRecipe(MergeMode.WEIGHTED_SUM, a, a, alpha=1.5)
    with pytest.raises(ValueError, match="^b: No interpolation takes 1"):
        MergeRecipe(MergeMode.NO_INTERPOLATION, a, a)
    with pytest.raises(MergeError, match="does not exist"):
        plan_merge(MergeRecipe(MergeMode.NO_INTERPOLATION, a))


def test_the_writer_streams_what_safetensors_reads(tmp_path):
    from webui.models.safetensors_stream import StreamingWriter, TensorEntry, aligned_order, dtype_name

    values = {
        "h": torch.randn(3, 5).half(),
        "f": torch.randn(7),
        "i": torch.arange(5),
        "e": torch.tensor([]),
        "b": torch.randn(2, 2).bfloat16(),
    }
    entries = aligned_order([TensorEntry(k, dtype_name(v.dtype), tuple(v.shape)) for k, v in values.items()])
    with StreamingWriter(tmp_path / "s.safetensors", entries, {"k": "v"}) as writer:
        with pytest.raises(ValueError, match="expected"):
            writer.write("nope", torch.zeros(1))
        for entry in entries:
            writer.write(entry.key, values[entry.key])
        path = writer.commit()
    assert same(load_file(path), values)
    with safe_open(path, "pt") as handle:
        assert handle.metadata() == {"k": "v"}


def test_presets_are_the_block_merge_extensions_on_25_blocks_and_keep_their_shape_on_others():
    from webui.merge.blocks import PRESETS, preset_for

    blocks = [f"IN{i:02d}" for i in range(12)] + ["M00"] + [f"OUT{i:02d}" for i in range(12)]
    # Values published with the presets (sdweb-merge-block-weighted-gui; sd-meh presets.py), IN01 and OUT10.
    published = {"GRAD_V": (0.9166666667, 0.9166666667), "SMOOTHSTEP": (0.00506365740740741, 0.994936342592593)}
    published |= {"COSINE": (0.995722430686905, 0.00427756931309475), "RING10_3": (0, 0), "WRAP16": (1, 1)}
    for name, (in01, out10) in published.items():
        weights = preset_for(name, blocks)
        assert weights["IN01"] == pytest.approx(in01, abs=1e-9) and weights["OUT10"] == pytest.approx(out10, abs=1e-9)
    assert all(len(values) == 25 for values in PRESETS.values())
    xl = [f"IN{i:02d}" for i in range(9)] + ["M00"] + [f"OUT{i:02d}" for i in range(9)]
    resampled = preset_for("GRAD_V", xl)
    assert resampled["IN00"] == 1.0 and resampled["M00"] == 0.0 and resampled["OUT08"] == 1.0
    assert all(resampled[f"IN{i:02d}"] > resampled[f"IN{i + 1:02d}"] for i in range(8))
    with pytest.raises(ValueError, match="GRAD_V"):
        preset_for("NOPE", xl)
