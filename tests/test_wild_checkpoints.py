"""Checkpoints from the wild (issue 13): inpainting and instruct-pix2pix UNets, no-VAE uploads, `vae.`-prefixed VAE
files, and the layouts that were already right (mixed dtypes, fp8, full-EMA Lightning .ckpt, a VAE .ckpt with
training leftovers), each checked against the image the file's own weights must give.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
import wild_inputs as wild
from PIL import Image
from safetensors.torch import load_file, save_file

from webui.engine.pipelines import ModelChoice, ModelLoadError
from webui.engine.request import GenerationRequest
from webui.engine.samplers import make_scheduler
from webui.families import Family
from webui.models.kinds import Kind
from webui.models.library import open_library
from webui.testing.tiny import build_tiny_pipeline
from webui.wiring import build_engine

STEMS = {Family.SD1: "tiny-sd1", Family.SDXL: "tiny-sdxl"}


@pytest.fixture(scope="module")
def models(tiny_models_dir, tmp_path_factory) -> Path:
    files = tuple(f"checkpoints/{stem}.safetensors" for stem in STEMS.values())
    return wild.linked_models(tmp_path_factory.mktemp("wild-checkpoints"), tiny_models_dir, files)


@pytest.fixture(scope="module")
def components() -> dict:
    return {family: build_tiny_pipeline(family) for family in STEMS}


def _engine(models: Path, outputs: Path):
    library = open_library(models)
    library.scan()
    return library, build_engine(library, outputs)


def _request(checkpoint: Path, vae: Path | None = None, prompt: str = "a red hat") -> GenerationRequest:
    return GenerationRequest(
        model=ModelChoice(checkpoint, vae=vae), prompt=prompt, steps=2, width=32, height=32, seed=3, cfg_scale=5.0
    )


def _png(result) -> np.ndarray:
    with Image.open(result.images[0].path) as image:
        return np.asarray(image.convert("RGB"))


@pytest.mark.parametrize("family", list(STEMS), ids=lambda f: f.value)
def test_inpainting_checkpoint_runs_txt2img_with_the_whole_image_masked(models, components, tmp_path, family):
    path = models / f"checkpoints/{STEMS[family]}-inpainting.safetensors"
    parts = {**components[family], "unet": wild.variant_unet(components[family], 9, seed=21)}
    wild.write_checkpoint(path, parts, family)
    library, engine = _engine(models, tmp_path)
    entry = library.find(path)
    assert entry.usable and entry.kind is Kind.CHECKPOINT and "inpainting UNet (9 input channels)" in entry.detail

    request = _request(path)
    loaded = engine.manager.load(request.model)
    seen: list[torch.Tensor] = []
    hook = loaded.pipeline.unet.register_forward_pre_hook(lambda _module, args: seen.append(args[0].clone()))
    try:
        latents = engine.denoise(loaded, request, [request.seed])
    finally:
        hook.remove()
    assert all(sample.shape[1] == 9 and torch.all(sample[:, 4] == 1) for sample in seen)  # the mask: everything

    # Plain diffusers' inpaint pipeline on the same modules, a white mask at strength 1: A1111's txt2img on it.
    plain = getattr(diffusers, loaded.variant.pipeline.class_name)(**loaded.pipeline.components)
    plain.scheduler = make_scheduler(loaded.scheduler_config, request.sampler, request.schedule, seeds=[request.seed])
    plain.set_progress_bar_config(disable=True)
    image, mask = Image.new("RGB", (32, 32), (90, 40, 200)), Image.new("L", (32, 32), 255)
    expected = plain(
        prompt=request.prompt, image=image, mask_image=mask, strength=1.0, num_inference_steps=2,
        guidance_scale=5.0, width=32, height=32,
        generator=[torch.Generator().manual_seed(request.seed)], output_type="latent",
    ).images  # fmt: skip
    torch.testing.assert_close(latents, expected, atol=1e-5, rtol=0)
    result = engine.generate(request)
    assert result.images and np.isfinite(_png(result)).all()
    varied = engine.generate(dataclasses.replace(request, subseed=9, subseed_strength=0.5))  # noise of 4 channels
    assert not np.array_equal(_png(varied), _png(result))
    with pytest.raises(ValueError, match=r"^sampler: DPM fast .*inpainting UNet"):
        engine.generate(dataclasses.replace(request, sampler="DPM fast"))


def test_instruct_pix2pix_checkpoint_is_recognised_and_refused_with_its_reason(models, components, tmp_path):
    path = models / "checkpoints/tiny-sd1-ip2p.safetensors"
    parts = {**components[Family.SD1], "unet": wild.variant_unet(components[Family.SD1], 8, seed=22)}
    wild.write_checkpoint(path, parts, Family.SD1)
    library, engine = _engine(models, tmp_path)
    assert "instruct-pix2pix UNet (8 input channels)" in library.find(path).detail
    with pytest.raises(ValueError, match=r"instruct-pix2pix SD1\.x model: .*edits an input image") as refused:
        engine.generate(_request(path))
    assert "latent channels" not in str(refused.value)  # the checkpoint's own VAE is not blamed
    assert not list(tmp_path.rglob("*.png"))


def test_no_vae_checkpoint_uses_a_vae_of_its_family_from_the_vae_folder(models, components, tiny_models_dir, tmp_path):
    full = models / "checkpoints/tiny-sd1.safetensors"
    novae = models / "checkpoints/pruned-novae.safetensors"
    wild.write_checkpoint(novae, components[Family.SD1], Family.SD1, drop=("first_stage_model.",))
    vae = models / "vae"
    (vae / "vae-ft-mse-840000-ema-pruned.safetensors").symlink_to(tiny_models_dir / "vae/tiny-sd1-vae.safetensors")
    (vae / "another-vae.safetensors").symlink_to(tiny_models_dir / "vae/tiny-sd1-vae-alt.safetensors")
    (vae / "sdxl_vae.safetensors").symlink_to(tiny_models_dir / "vae/tiny-sdxl-vae.safetensors")
    try:
        library, engine = _engine(models, tmp_path)
        assert library.find(novae).usable and "no VAE inside" in library.find(novae).detail
        result = engine.generate(_request(novae))
        assert "VAE: vae-ft-mse-840000-ema-pruned.safetensors" in result.images[0].infotext
        assert engine.manager.status()["defaults"] == {"vae": "vae-ft-mse-840000-ema-pruned.safetensors"}
        assert np.array_equal(_png(result), _png(engine.generate(_request(full))))  # the same VAE weights

        # A1111's own rule first: `<checkpoint>.vae.safetensors` beside it.
        beside = novae.with_name("pruned-novae.vae.safetensors")
        beside.symlink_to(tiny_models_dir / "vae/tiny-sd1-vae-alt.safetensors")
        library.refresh()
        chosen = engine.generate(_request(novae))
        assert "VAE: pruned-novae.vae.safetensors" in chosen.images[0].infotext
        alt = _png(engine.generate(_request(full, vae=tiny_models_dir / "vae/tiny-sd1-vae-alt.safetensors")))
        assert np.array_equal(_png(chosen), alt)
    finally:
        for link in (*vae.iterdir(), novae.with_name("pruned-novae.vae.safetensors")):
            link.unlink(missing_ok=True)


def test_no_vae_checkpoint_without_any_vae_is_refused_saying_where_to_put_one(models, components, tmp_path):
    novae = models / "checkpoints/lonely-novae.safetensors"
    wild.write_checkpoint(novae, components[Family.SDXL], Family.SDXL, drop=("first_stage_model.",))
    _, engine = _engine(models, tmp_path)
    with pytest.raises(ModelLoadError, match=r"has no vae inside.*sdxl_vae\.safetensors.*/vae/") as refused:
        engine.generate(_request(novae))
    assert str(models / "vae") in str(refused.value)


def test_vae_file_with_a_vae_prefix_loads_as_it_is_listed(models, tiny_models_dir, tmp_path):
    plain = tiny_models_dir / "vae/tiny-sd1-vae-alt.safetensors"
    prefixed = models / "vae/prefixed-vae.safetensors"
    save_file({f"vae.{key}": value for key, value in load_file(plain).items()}, prefixed)
    try:
        library, engine = _engine(models, tmp_path)
        assert library.find(prefixed).usable and library.find(prefixed).kind is Kind.VAE
        checkpoint = models / "checkpoints/tiny-sd1.safetensors"
        image = _png(engine.generate(_request(checkpoint, vae=prefixed)))
        assert np.array_equal(image, _png(engine.generate(_request(checkpoint, vae=plain))))
    finally:
        prefixed.unlink()


def _fp32_twin(state: dict[str, torch.Tensor], path: Path) -> Path:
    """The same numbers as a plain fp32 file: what a file of odd dtypes must load as."""
    save_file({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, path)
    return path


@pytest.mark.parametrize("layout", ["mixed-dtype", "fp8"])
def test_odd_dtype_checkpoints_give_the_image_of_their_own_numbers(models, components, tmp_path, layout):
    state = wild.write_checkpoint(tmp_path / "unused.safetensors", components[Family.SD1], Family.SD1, dtype=None)
    if layout == "mixed-dtype":  # UNet bf16, text encoder fp32, VAE fp16, as merges saved by several tools are
        dtypes = {"model.diffusion_model.": torch.bfloat16, "first_stage_model.": torch.float16}
    else:  # fp8 UNet (e4m3fn), the rest fp16, as "fp8" checkpoints on model sites are
        dtypes = {"model.diffusion_model.": torch.float8_e4m3fn, "": torch.float16}
    odd = {k: v.to(next((d for p, d in dtypes.items() if k.startswith(p)), v.dtype)) for k, v in state.items()}
    path = models / f"checkpoints/{layout}.safetensors"
    save_file(odd, path)
    twin = _fp32_twin(odd, models / f"checkpoints/{layout}-fp32.safetensors")
    _, engine = _engine(models, tmp_path)
    assert np.array_equal(_png(engine.generate(_request(path))), _png(engine.generate(_request(twin))))


def test_full_ema_lightning_ckpt_uses_the_model_weights(models, components, tmp_path):
    state = wild.write_checkpoint(tmp_path / "unused.safetensors", components[Family.SD1], Family.SD1)
    unet = {k: v for k, v in state.items() if k.startswith("model.diffusion_model.")}
    ema = {"model_ema." + k.removeprefix("model.").replace(".", ""): -v for k, v in unet.items()}  # LDM's EMA names
    path = models / "checkpoints/lightning-full-ema.ckpt"
    torch.save(
        {
            "epoch": 7, "global_step": 12000, "pytorch-lightning_version": "1.9.4",
            "state_dict": {**state, **ema, "model_ema.decay": torch.tensor(0.9999),
                           "model_ema.num_updates": torch.tensor(12000)},
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-6, "params": [0, 1]}]}],
            "lr_schedulers": [{"last_epoch": 7, "_step_count": 8}], "callbacks": {}, "loops": {},
        },
        path,
    )  # fmt: skip
    _, engine = _engine(models, tmp_path)
    expected = _png(engine.generate(_request(models / "checkpoints/tiny-sd1.safetensors")))
    assert np.array_equal(_png(engine.generate(_request(path))), expected)


def test_vae_ckpt_with_training_leftovers_loads_its_autoencoder(models, tiny_models_dir, tmp_path):
    vae = load_file(tiny_models_dir / "vae/tiny-sd1-vae-alt.safetensors")
    leftovers = {"loss.logvar": torch.zeros(()), "loss.discriminator.main.0.weight": torch.randn(8, 3, 4, 4),
                 "loss.perceptual_loss.lin0.model.1.weight": torch.randn(1, 8, 1, 1)}  # fmt: skip
    path = models / "vae/kl-f8-finetune.ckpt"
    torch.save({"state_dict": {**vae, **leftovers}, "global_step": 840000}, path)
    try:
        _, engine = _engine(models, tmp_path)
        checkpoint = models / "checkpoints/tiny-sd1.safetensors"
        expected = _png(engine.generate(_request(checkpoint, vae=tiny_models_dir / "vae/tiny-sd1-vae-alt.safetensors")))
        assert np.array_equal(_png(engine.generate(_request(checkpoint, vae=path))), expected)
    finally:
        path.unlink()
