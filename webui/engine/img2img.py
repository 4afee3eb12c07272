"""One image-to-image denoising pass (img2img, the hires pass, the refiner's part) on a loaded model.

The pass runs the family's diffusers img2img pipeline (its description's `second_pass.img2img`) over the loaded
model's own components, given the starting latents as its `image` (unpacked: batch, C, h, w). So with the same
seeds it is exactly what plain diffusers' img2img pipeline does on those latents: the pipeline draws the noise
from each image's CPU generator at the pass's latent size (as A1111's hires pass draws it from each image's seed),
noises to the strength's timestep and denoises the rest. A variation seed replaces that noise by A1111's blend.
Prompt editing and AND work through the same `ConditioningHook` as txt2img. Families that encode with the pipeline
itself (FLUX.1) run `run_encoded_pass`: the engine's embedding cache, true CFG and distilled guidance as in
txt2img, and their packed latents unpacked at the pass's own size.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch

from webui.engine.conditioning import PromptEncoder
from webui.engine.conditioning_pipeline import EmbeddingCache, encode_with_pipeline
from webui.engine.embeddings import EmbeddingSet, EmbeddingUse
from webui.engine.extra_networks import parse_extra_networks
from webui.engine.noise import initial_noise
from webui.engine.pipelines import LoadedModel
from webui.engine.prompt_conditioning import ConditioningHook, encode_plan
from webui.engine.prompt_plan import PromptPlan
from webui.engine.samplers import make_scheduler, sampler_entry
from webui.engine.second_pass import executed_steps


@dataclass(frozen=True)
class ImagePass:
    """What one img2img pass does: from `latents` (batch, C, h, w), `steps` scheduled of which the last
    `strength` share run (or, for the refiner, the steps after `denoising_start`)."""

    latents: torch.Tensor
    plan: PromptPlan
    steps: int
    strength: float
    cfg_scale: float
    sampler: str | None
    schedule: str
    clip_skip: int = 1
    eta: float | None = None
    denoising_start: float | None = None


def img2img_pipeline(loaded: LoadedModel) -> Any:
    """The family's image-to-image pipeline over `loaded`'s components (a new wrapper; nothing is copied)."""
    description = loaded.family.description
    spec = description.second_pass.img2img
    if spec is None:
        raise ValueError(f"img2img: {description.label} models have no image-to-image pipeline here yet")
    cls = spec.pipeline_class()
    if isinstance(loaded.pipeline, cls):
        return loaded.pipeline
    accepted = inspect.signature(cls.__init__).parameters
    pipeline = spec.create({k: v for k, v in loaded.pipeline.components.items() if k in accepted})
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _with_noise(pipeline: Any, noise: torch.Tensor) -> None:
    """Make this pipeline object noise its starting latents with `noise` instead of drawing from the generators
    (the variation-seed blend); only its own `prepare_latents` changes."""
    signature = inspect.signature(pipeline.prepare_latents)

    def prepare(*args: Any, **kwargs: Any) -> torch.Tensor:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        values = bound.arguments
        image = values["image"].to(device=values["device"], dtype=values["dtype"])
        if not values.get("add_noise", True):
            return image
        return pipeline.scheduler.add_noise(image, noise.to(image), values["timestep"])

    pipeline.prepare_latents = prepare


def run_pass(
    loaded: LoadedModel,
    work: ImagePass,
    seeds: list[int],
    *,
    reporter: Any = None,
    embeddings: EmbeddingSet | None = None,
    use: EmbeddingUse | None = None,
    subseeds: list[int] | None = None,
    subseed_strength: float = 0.0,
) -> torch.Tensor:
    """The pass's latents for one batch (one seed per image of `work.latents`)."""
    if work.sampler is not None and sampler_entry(work.sampler).own is not None:
        raise ValueError(
            f"sampler: {work.sampler} runs its own loop from pure noise here and cannot start from an image; "
            "choose another sampler for img2img and the hires pass"
        )
    if work.denoising_start is None and executed_steps(work.steps, work.strength) == 0:
        return work.latents  # too few steps for this strength to run any (diffusers would return an empty batch)
    pipeline = img2img_pipeline(loaded)
    encoder = PromptEncoder(pipeline, loaded.family, work.clip_skip, embeddings, use)
    conditioning = encode_plan(encoder, work.plan, len(seeds))
    pipeline.scheduler = make_scheduler(
        loaded.scheduler_config,
        work.sampler,
        work.schedule,
        seeds=seeds,
        ays_levels=loaded.family.description.scheduler.align_your_steps,
        eta=work.eta,
    )
    if subseeds is not None and subseed_strength:
        _with_noise(pipeline, initial_noise(seeds, work.latents.shape[1:], subseeds, subseed_strength))
    kwargs: dict[str, Any] = {}
    if reporter is not None:
        kwargs.update(callback_on_step_end=reporter, callback_on_step_end_tensor_inputs=["latents"])
    entry = sampler_entry(work.sampler) if work.sampler else None
    if work.eta is not None and entry is not None and entry.scheduler == "DDIMScheduler":
        kwargs["eta"] = work.eta
    if work.denoising_start is not None:
        kwargs["denoising_start"] = work.denoising_start
    pipeline._interrupt = False
    unet = getattr(pipeline, "unet", None)

    def run() -> torch.Tensor:
        return pipeline(
            **conditioning.first().as_pipeline_kwargs(),
            image=work.latents.to(loaded.dtype),
            strength=work.strength,
            num_inference_steps=work.steps,
            guidance_scale=work.cfg_scale,
            generator=[torch.Generator("cpu").manual_seed(seed) for seed in seeds],
            output_type="latent",
            **kwargs,
        ).images

    if conditioning.plain or unet is None:
        return run()
    with ConditioningHook(conditioning, work.cfg_scale).installed(unet):
        return run()


def run_encoded_pass(
    loaded: LoadedModel,
    work: ImagePass,
    seeds: list[int],
    *,
    reporter: Any = None,
    cache: EmbeddingCache | None = None,
    te_state: tuple[Any, ...] = (),
    guidance: float | None = None,
) -> torch.Tensor:
    """The pass for a family conditioned by its pipeline's own `encode_prompt` (FLUX.1), as `Engine.denoise_encoded`
    runs its txt2img: the prompt text without tags, embeddings from `cache` (`te_state`: the LoRAs on the text
    encoders), true CFG at `work.cfg_scale`, distilled `guidance` where the model takes it. Returns (batch, C, h, w)
    latents: packed ones are unpacked at the pass's size (h and w rounded down to even, as the pipeline packs)."""
    description = loaded.family.description
    spec = description.second_pass.img2img
    if spec is None:
        raise ValueError(f"img2img: {description.label} models have no image-to-image pipeline here yet")
    if work.sampler is not None and sampler_entry(work.sampler).own is not None:
        raise ValueError(f"sampler: {work.sampler} cannot start from an image here; choose another sampler")
    latents = work.latents
    if spec.packed_latents:  # 2x2 patches: an odd latent row or column is dropped, as the pipeline's txt2img does
        latents = latents[..., : latents.shape[-2] // 2 * 2, : latents.shape[-1] // 2 * 2]
    if executed_steps(work.steps, work.strength) == 0:
        return latents
    pipeline = img2img_pipeline(loaded)
    pipeline.scheduler = make_scheduler(loaded.scheduler_config, work.sampler, work.schedule, seeds=seeds)
    channels = pipeline.vae.config.latent_channels
    if pipeline.image_processor.config.vae_latent_channels != channels:
        # Some img2img pipelines (Chroma's, Z-Image's) build their image processor with the SD default of 4
        # latent channels, so it would resize our latents as if they were pixels; FLUX's passes its own.
        pipeline.image_processor.register_to_config(vae_latent_channels=channels)
    variant = description.variant(loaded.model_variant)
    encoding = description.conditioning
    max_length = variant.max_sequence_length if variant and variant.max_sequence_length else None
    max_length = max_length or encoding.max_sequence_length
    conditioning = encode_with_pipeline(
        pipeline,
        work.plan.networks.prompt,
        parse_extra_networks(work.plan.negative_prompt).prompt,
        encode=encoding.encoder(),
        use_negative=work.cfg_scale > 1 or not encoding.negative_needs_cfg,
        max_length=max_length,
        batch=len(seeds),
        cache=cache,
        identity=(tuple(loaded.keys.get(encoder.role) for encoder in description.text_encoders), te_state),
    )
    kwargs: dict[str, Any] = {spec.cfg_argument: work.cfg_scale - spec.cfg_offset}  # in what the pipeline counts
    if guidance is not None and spec.guidance_argument:
        kwargs[spec.guidance_argument] = guidance
    if reporter is not None:
        kwargs.update(callback_on_step_end=reporter, callback_on_step_end_tensor_inputs=["latents"])
    factor = pipeline.vae_scale_factor
    height, width = latents.shape[-2] * factor, latents.shape[-1] * factor
    pipeline._interrupt = False
    result = pipeline(
        **conditioning.as_pipeline_kwargs(),
        image=latents.to(loaded.dtype),
        strength=work.strength,
        num_inference_steps=work.steps,
        height=height,
        width=width,
        generator=[torch.Generator("cpu").manual_seed(seed) for seed in seeds],
        max_sequence_length=max_length,
        output_type="latent",
        **kwargs,
    ).images
    return pipeline._unpack_latents(result, height, width, factor) if spec.packed_latents else result


def unpacker(loaded: LoadedModel, latents: torch.Tensor) -> Any:
    """For the step previews of a pass from (batch, C, h, w) `latents`: the pipeline's packed step latents at that
    size unpacked (None where the family's latents are not packed)."""
    spec = loaded.family.description.second_pass.img2img
    if spec is None or not spec.packed_latents:
        return None
    factor = loaded.pipeline.vae_scale_factor
    height, width = latents.shape[-2] // 2 * 2 * factor, latents.shape[-1] // 2 * 2 * factor
    return lambda packed: packed if packed.ndim == 4 else loaded.pipeline._unpack_latents(packed, height, width, factor)
