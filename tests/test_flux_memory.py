"""FLUX.1 memory features: fp8 storage of the transformer (setting and auto rule), group offload, real sizes."""

from __future__ import annotations

from math import prod
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from stripped_headers import write_header_only

from webui.engine.device import DevicePolicy
from webui.engine.memory import module_bytes
from webui.engine.memory_plan import FP8_AUTO_SHARE, apply_group_offload, estimated_bytes, wants_fp8
from webui.engine.pipelines import ModelChoice, PipelineManager
from webui.engine.request import GenerationRequest
from webui.engine.txt2img import Engine
from webui.families import Family
from webui.families.flux_fixtures import build_components, pipeline
from webui.models.loading import Role

GB = 2**30


def modular(root: Path) -> ModelChoice:
    return ModelChoice(
        None,
        unet=root / "diffusion_models/tiny-flux-dev.safetensors",
        text_encoder=root / "text_encoders/tiny-flux-clip-l.safetensors",
        text_encoder_2=root / "text_encoders/tiny-flux-t5xxl-fp16.safetensors",
        vae=root / "vae/tiny-flux-ae.safetensors",
    )


def image(engine: Engine, root: Path) -> np.ndarray:
    request = GenerationRequest(
        modular(root), prompt="a cat", steps=2, cfg_scale=1.0, width=32, height=32, seed=5, sampler=None
    )
    return np.asarray(Image.open(engine.generate(request).images[0].path), dtype=np.int16)


def test_fp8_storage_setting_halves_the_transformer_and_keeps_the_pixels(tiny_models_dir, tmp_path):
    plain = Engine(PipelineManager(tiny_models_dir, DevicePolicy(device="cpu", fp8_storage="off")), tmp_path / "a")
    fp8 = Engine(PipelineManager(tiny_models_dir, DevicePolicy(device="cpu", fp8_storage="on")), tmp_path / "b")
    reference, stored = image(plain, tiny_models_dir), image(fp8, tiny_models_dir)
    transformer = fp8.manager.current.pipeline.transformer
    assert {p.dtype for p in transformer.parameters()} >= {torch.float8_e4m3fn}
    full = module_bytes(plain.manager.current.pipeline.transformer)
    assert module_bytes(transformer) < full / 2  # fp32 on the CPU: a quarter for the weights, norms stay
    key = fp8.manager.current.keys[Role.TRANSFORMER]
    assert key.dtype == "float8_e4m3fn" and key not in plain.manager.cache  # cached apart from the bf16 one
    assert np.abs(stored - reference).max() <= 1  # the tiny weights are fp8-exact: same image
    assert fp8.manager.current.pipeline.text_encoder_2.dtype == torch.float32  # only the transformer


def test_auto_fp8_when_the_bf16_transformer_does_not_fit_the_budget(tmp_path):
    """The released FLUX.1 transformer (11.9 B weights, 22.2 GiB in bf16) against 12/16/24/80 GiB budgets."""
    from diffusers import FluxTransformer2DModel

    from webui.models.derive import bundled_config

    config = {k: v for k, v in bundled_config(Family.FLUX, "transformer").items() if not k.startswith("_")}
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in FluxTransformer2DModel(**config).state_dict().items()}
    header = tmp_path / "flux1-dev.safetensors"
    write_header_only(header, shapes)
    size = estimated_bytes(header)
    assert size == 2 * sum(prod(s) for s in shapes.values()) and 22 * GB < size < 23 * GB  # 23.8e9 bytes
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert [wants_fp8("auto", Family.FLUX, cuda, size, budget * GB) for budget in (12, 16, 24, 80)] == [
        True,
        True,
        True,
        False,
    ]
    assert size > FP8_AUTO_SHARE * 24 * GB
    assert not wants_fp8("auto", Family.FLUX, cpu, size, None)
    assert not wants_fp8("on", Family.SD1, cuda, size, 12 * GB)  # UNets are not cast
    with pytest.raises(ValueError, match="fp8_storage: 'maybe'"):
        wants_fp8("maybe", Family.FLUX, cuda, size, 12 * GB)


def test_group_offload_gives_the_same_pixels():
    """The hooks --group-offload installs (onload on the CPU here; on CUDA in use) change no number."""
    generator = lambda: [torch.Generator().manual_seed(1)]  # noqa: E731
    plain = pipeline(build_components("dev"))(
        "a cat", num_inference_steps=2, height=32, width=32, generator=generator(), output_type="np"
    ).images
    components = build_components("dev")
    apply_group_offload(
        [components[n] for n in ("transformer", "text_encoder", "text_encoder_2", "vae")], torch.device("cpu")
    )
    assert any(getattr(m, "_diffusers_hook", None) is not None for m in components["transformer"].modules())
    offloaded = pipeline(components)(
        "a cat", num_inference_steps=2, height=32, width=32, generator=generator(), output_type="np"
    ).images
    assert np.array_equal(plain, offloaded)


def test_group_and_model_offload_exclude_each_other():
    with pytest.raises(ValueError, match="group_offload"):
        DevicePolicy(cpu_offload=True, group_offload=True)
