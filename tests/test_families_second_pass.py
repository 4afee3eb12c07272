"""SD3, Chroma and Z-Image img2img (the second pass of Hires. fix too) against their plain diffusers img2img
pipelines on the encoded input image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_flux_second_pass import encoded, noise_image, pixels

from webui.engine.device import DevicePolicy
from webui.engine.pipelines import ModelChoice, PipelineManager
from webui.engine.request import GenerationRequest
from webui.engine.second_pass import Img2Img
from webui.engine.txt2img import Engine

PROMPT, SEED, SIZE = "a photo of a cat in a garden", 7, 32
CASES = {  # checkpoint, plain pipeline, its guidance number for A1111's CFG 4 (Z-Image counts from 0)
    "sd3": ("checkpoints/tiny-sd3-incl-clips-t5xxl.safetensors", "StableDiffusion3Img2ImgPipeline", 4.0),
    "chroma": ("checkpoints/tiny-chroma-aio.safetensors", "ChromaImg2ImgPipeline", 4.0),
    "zimage": ("checkpoints/tiny-zimage-aio.safetensors", "ZImageImg2ImgPipeline", 3.0),
}


def plain(loaded, class_name: str):
    """The stock img2img pipeline over the loaded modules; its image processor told the latent channels, as the
    engine tells it (Chroma's and Z-Image's default to 4 and would resize latents as pixels)."""
    import inspect

    import diffusers

    cls = getattr(diffusers, class_name)
    accepted = inspect.signature(cls.__init__).parameters
    components = {k: v for k, v in loaded.pipeline.components.items() if k in accepted}
    components["scheduler"] = getattr(diffusers, loaded.scheduler_config["_class_name"]).from_config(
        loaded.scheduler_config)  # fmt: skip
    optional = {k: None for k in ("image_encoder", "feature_extractor") if k in accepted}
    pipeline = cls(**{**optional, **components})
    pipeline.image_processor.register_to_config(vae_latent_channels=pipeline.vae.config.latent_channels)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="module")
def engine(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return Engine(PipelineManager(tiny_models_dir, DevicePolicy(device="cpu")), tmp_path_factory.mktemp("second"))


@pytest.mark.parametrize("family", list(CASES))
def test_img2img_with_cfg_equals_the_plain_img2img_pipeline(engine, tiny_models_dir, family):
    checkpoint, class_name, guidance = CASES[family]
    source = noise_image(SIZE)
    request = GenerationRequest(ModelChoice(tiny_models_dir / checkpoint), prompt=PROMPT, negative_prompt="blurry",
                                steps=4, cfg_scale=4.0, width=SIZE, height=SIZE, seed=SEED, sampler=None,
                                img2img=Img2Img((source,), denoising_strength=0.6))  # fmt: skip
    (image,) = engine.generate(request).images
    loaded = engine.manager.current
    expected = plain(loaded, class_name)(
        PROMPT, negative_prompt="blurry", image=encoded(loaded, source), strength=0.6, num_inference_steps=4,
        guidance_scale=guidance, width=SIZE, height=SIZE, generator=[torch.Generator("cpu").manual_seed(SEED)],
        output_type="pil",
    ).images[0]  # fmt: skip
    assert pixels(expected).std() > 5, "the reference image is flat: the comparison would prove nothing"
    assert np.abs(pixels(image.path) - pixels(expected)).max() <= 1
    assert "Denoising strength: 0.6" in image.infotext
