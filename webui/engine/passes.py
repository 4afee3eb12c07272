"""The passes of one batch beyond plain txt2img: img2img's start from an image, the refiner hand-off, the hires pass.

Order, as A1111 runs them: img2img fits each input image to the request's size (its resize mode, enlarging with
its upscaler), encodes it and denoises the strength's share of the steps; txt2img denoises from noise, handing
the last `1 - switch_at` of the noise schedule to the refiner (diffusers' `denoising_end` / `denoising_start`,
A1111's "Refiner switch at"); the hires pass then upscales (latents, or decoded pixels through a resampler or an
upscaler model), and denoises again at the target size on the base model (A1111's "Hires refiner: first pass").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from webui.engine.decode import check_finite, encode_pixels
from webui.engine.img2img import ImagePass, run_encoded_pass, run_pass, unpacker
from webui.engine.limits import RequestError
from webui.engine.pipelines import LoadedModel, ModelChoice
from webui.engine.progress import CancelToken, interruptible
from webui.engine.prompt_plan import PromptPlan, plan_prompt
from webui.engine.request import GenerationRequest
from webui.engine.second_pass import RESIZE_MODES, executed_steps, scheduled_steps
from webui.engine.upscalers import Upscaler, crop_latents, enlarge, resize_image, resolve_upscaler, upscale_latents
from webui.families.base import PipelineEncoding

if TYPE_CHECKING:
    from webui.engine.txt2img import Engine


@dataclass
class BatchWork:
    """What the passes of every batch of a request share: the models, upscalers and prompt plans."""

    loaded: LoadedModel
    request: GenerationRequest
    plan: PromptPlan
    refiner: LoadedModel | None = None
    hires_upscaler: Upscaler | None = None
    hires_plan: PromptPlan | None = None
    img2img_upscaler: Upscaler | None = None
    warnings: list[str] = field(default_factory=list)
    te_state: tuple[Any, ...] = ()  # the LoRAs applied to the text encoders (keys the prompt-embedding cache)

    @property
    def finisher(self) -> LoadedModel:
        """The model whose VAE decodes the first pass: the refiner when it finished the denoising."""
        return self.refiner or self.loaded

    @property
    def passes(self) -> int:
        """Pipeline calls per batch."""
        return 1 + (self.refiner is not None) + (self.request.hires is not None)

    @property
    def steps_per_batch(self) -> int:
        """Steps each batch reports, all passes together."""
        request = self.request
        if request.img2img is not None:
            return max(1, executed_steps(request.steps, request.img2img.denoising_strength))
        steps = request.steps
        if request.hires is not None and request.hires.denoising_strength > 0:
            steps += request.hires.steps or request.steps  # A1111 runs all of them (see scheduled_steps)
        return steps


def prepare(engine: Engine, loaded: LoadedModel, request: GenerationRequest, plan: PromptPlan) -> BatchWork:
    """Check and load what the request's passes need (the refiner pinned beside the model) before anything runs."""
    description = loaded.family.description
    work = BatchWork(loaded, request, plan)
    variant = getattr(loaded, "variant", None)
    if variant is not None and (request.img2img or request.hires or request.refiner):
        raise RequestError(
            "model",
            f"{loaded.choice.name} is an {variant.name} {description.label} model; img2img, Hires. fix and "
            "the refiner run on ordinary UNets here: pick a regular checkpoint for them",
        )
    if request.img2img is not None:
        if description.second_pass.img2img is None:
            raise RequestError("init_images", f"{description.label} models have no image-to-image pipeline here yet")
        work.img2img_upscaler = resolve_upscaler(request.img2img.upscaler, engine.upscaler_path, "upscaler")
        if request.img2img.resize_mode == RESIZE_MODES[3] and not description.second_pass.latent_upscale:
            raise RequestError("resize_mode", f"{description.second_pass.why_no_latent_upscale(description.label)}")
    elif not description.txt2img:
        raise RequestError(
            "model",
            f"{loaded.choice.name} is an {description.label}, which refines an existing image; "
            "use it in img2img or as the refiner",
        )
    if request.hires is not None:
        work.hires_upscaler = resolve_upscaler(request.hires.upscaler, engine.upscaler_path)
        if work.hires_upscaler.latent and not description.second_pass.latent_upscale:
            raise RequestError("hr_upscaler", f"{description.second_pass.why_no_latent_upscale(description.label)}")
        if description.second_pass.img2img is None:
            raise RequestError("enable_hr", f"{description.label} models have no image-to-image pipeline here yet")
        hires = request.hires
        hires_steps = hires.steps or request.steps
        work.hires_plan = plan_prompt(
            hires.prompt or request.prompt, hires.negative_prompt or request.negative_prompt, hires_steps
        )
        if {t.name for t in work.hires_plan.networks.loras} != {t.name for t in plan.networks.loras}:
            work.warnings.append("hr_prompt: LoRA tags apply from the main prompt only; the hires prompt's are ignored")
    if request.refiner is not None and request.refiner.switches:
        work.refiner = _load_refiner(engine, loaded, request)
    return work


def _load_refiner(engine: Engine, loaded: LoadedModel, request: GenerationRequest) -> LoadedModel:
    base = loaded.family.description
    if request.img2img is not None:
        raise RequestError("refiner_checkpoint", "img2img does not hand off to a refiner here; use it in txt2img")
    if not base.second_pass.handoff:
        raise RequestError(
            "refiner_checkpoint",
            f"{base.label} pipelines cannot stop part-way for a refiner (no denoising_end); "
            f"the hand-off needs a family whose pipelines take it: {', '.join(_handoff_families())}",
        )
    refiner = engine.manager.load_companion(ModelChoice(request.refiner.checkpoint))
    finish = refiner.family.description
    if not finish.second_pass.handoff or finish.second_pass.img2img is None or finish.latent != base.latent:
        raise RequestError(
            "refiner_checkpoint",
            f"a {finish.label} model cannot finish {base.label} latents; choose a refiner of "
            f"the same latent space ({base.label} or its refiner)",
        )
    return refiner


def first_pass(
    engine: Engine,
    work: BatchWork,
    seeds: list[int],
    subseeds: list[int] | None,
    reporter: Any,
    use: Any,
) -> tuple[torch.Tensor | None, list[Image.Image] | None]:
    """The batch's latents after txt2img (with the refiner's part) or img2img; or, for img2img at strength 0,
    the fitted input images themselves."""
    request = work.request
    if request.img2img is not None:
        return _img2img(engine, work, seeds, subseeds, reporter, use)
    switch = request.refiner.switch_at if work.refiner is not None else None
    latents = engine.denoise(
        work.loaded, request, seeds, reporter, use, plan=work.plan, subseeds=subseeds, te_state=work.te_state,
        denoising_end=switch,
    )  # fmt: skip
    if work.refiner is None or reporter.interrupted:
        return latents, None
    reporter.start_pass()
    refine = ImagePass(
        latents, work.plan, request.steps, 1.0, request.cfg_scale, request.sampler, request.schedule,
        request.clip_skip, request.eta, denoising_start=switch,
    )  # fmt: skip
    return run_pass(work.refiner, refine, seeds, reporter=reporter, embeddings=engine.embeddings, use=use), None


def _img2img(
    engine: Engine, work: BatchWork, seeds: list[int], subseeds: list[int] | None, reporter: Any, use: Any
) -> tuple[torch.Tensor | None, list[Image.Image] | None]:
    request, source = work.request, work.request.img2img
    assert source is not None and work.img2img_upscaler is not None
    width, height = request.latent_size
    first = reporter.batch * request.batch_size
    latent_mode = source.resize_mode == RESIZE_MODES[3]
    fitted = [
        source.image_for(first + i).convert("RGB")
        if latent_mode
        else resize_image(source.resize_mode, source.image_for(first + i), width, height, work.img2img_upscaler,
                          engine.upscaler_models.run)
        for i in range(len(seeds))
    ]  # fmt: skip
    if source.denoising_strength == 0 and not latent_mode:
        return None, fitted  # nothing is denoised: the input, fitted to the size, unchanged
    factor = work.loaded.pipeline.vae_scale_factor
    size = (height // factor, width // factor)
    encoded = [encode_images(engine, work.loaded, [image], reporter.cancel) for image in fitted]
    if latent_mode:  # A1111's "Just resize (latent upscale)": each input's own latents, resampled bilinearly
        encoded = [torch.nn.functional.interpolate(each, size=size, mode="bilinear") for each in encoded]
    latents = torch.cat(encoded)
    if source.denoising_strength == 0:
        return latents, None
    pass_ = ImagePass(
        latents, work.plan, request.steps, source.denoising_strength, request.cfg_scale, request.sampler,
        request.schedule, request.clip_skip, request.eta,
    )  # fmt: skip
    return _run(engine, work, pass_, seeds, subseeds, reporter, use), None


def hires_pass(
    engine: Engine,
    work: BatchWork,
    latents: torch.Tensor,
    seeds: list[int],
    subseeds: list[int] | None,
    reporter: Any,
    use: Any,
) -> torch.Tensor:
    """The hires pass on a batch's first-pass latents: upscale to the target, denoise again there."""
    request, hires = work.request, work.request.hires
    assert hires is not None and work.hires_upscaler is not None and work.hires_plan is not None
    width, height = request.latent_size
    target = hires.target(width, height, work.loaded.pipeline.vae_scale_factor)
    latents = engine.unpacked(work.finisher, request, latents)  # a transformer's packed first-pass latents
    if work.hires_upscaler.latent:
        start = upscale_latents(latents.float(), work.hires_upscaler, target)
    else:
        images = decode_images(engine, work.finisher, latents, reporter.cancel)
        upscaled = [enlarge(image, target.width, target.height, work.hires_upscaler, engine.upscaler_models.run)
                    for image in images]  # fmt: skip
        start = crop_latents(encode_images(engine, work.loaded, upscaled, reporter.cancel), target)
    if hires.denoising_strength == 0:
        return start
    reporter.start_pass()
    pass_ = ImagePass(
        start, work.hires_plan, scheduled_steps(hires.steps or request.steps, hires.denoising_strength),
        hires.denoising_strength,
        request.cfg_scale if hires.cfg_scale is None else hires.cfg_scale,
        request.sampler if hires.sampler is None else hires.sampler,
        request.schedule if hires.schedule is None else hires.schedule,
        request.clip_skip, request.eta,
    )  # fmt: skip
    return _run(engine, work, pass_, seeds, subseeds, reporter, use)


def _run(
    engine: Engine,
    work: BatchWork,
    pass_: ImagePass,
    seeds: list[int],
    subseeds: list[int] | None,
    reporter: Any,
    use: Any,
) -> torch.Tensor:
    """An img2img pass on the request's model (img2img itself, the hires pass): (batch, C, h, w) latents."""
    loaded, request = work.loaded, work.request
    if not isinstance(loaded.family.description.conditioning, PipelineEncoding):
        return run_pass(
            loaded, pass_, seeds, reporter=reporter, embeddings=engine.embeddings, use=use,
            subseeds=subseeds, subseed_strength=request.subseed_strength,
        )  # fmt: skip
    unpack = unpacker(loaded, pass_.latents)
    if unpack is not None:  # previews of this pass unpack at its own size
        reporter.unpack = unpack
    return run_encoded_pass(
        loaded, pass_, seeds, reporter=reporter, cache=engine.prompt_cache, te_state=work.te_state,
        guidance=engine.distilled_guidance(loaded, request),
    )  # fmt: skip


def _tiled(engine: Engine, width: int, height: int) -> bool:
    return width * height >= engine.manager.policy.vae_tiling_min_pixels


def text_encoders(work: BatchWork) -> list[torch.nn.Module | None]:
    """The text encoders the request's passes call (the model's and the refiner's), for `interruptible`."""
    models = [work.loaded] + ([work.refiner] if work.refiner is not None else [])
    return [getattr(m.pipeline, name, None) for m in models for name in ("text_encoder", "text_encoder_2")]


def decode_images(
    engine: Engine, loaded: LoadedModel, latents: torch.Tensor, cancel: CancelToken | None = None
) -> list[Image.Image]:
    """8-bit RGB images of (batch, C, h, w) `latents`, as A1111 hands them to an upscaler; checked finite and
    interruptible as every decode (Engine._decode)."""
    factor = loaded.pipeline.vae_scale_factor
    tile = _tiled(engine, latents.shape[-1] * factor, latents.shape[-2] * factor)
    pixels = engine._decode(vae_item(engine, loaded), latents, cancel, loaded.choice.name, tile)
    return loaded.pipeline.image_processor.postprocess(pixels, output_type="pil")


def encode_images(
    engine: Engine, loaded: LoadedModel, images: list[Image.Image], cancel: CancelToken | None = None
) -> torch.Tensor:
    """The latents (batch, C, h/8, w/8; CPU, float32) of same-sized RGB images, checked finite; a cancelled
    `cancel` raises Interrupted at the next VAE tile (or encode)."""
    # diffusers' VaeImageProcessor arithmetic (x / 255, then 2x - 1), so the latents equal a stock pipeline's bit
    # for bit: x / 127.5 - 1 rounds differently, and a VAE and a few sampler steps make that a visible difference.
    arrays = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0 for image in images])
    pixels = 2.0 * torch.from_numpy(arrays).permute(0, 3, 1, 2) - 1.0
    tile = _tiled(engine, images[0].width, images[0].height)
    vae = vae_item(engine, loaded)
    with interruptible([getattr(vae.module, "encoder", vae.module)], cancel):
        latents = encode_pixels(vae, pixels, tile=tile).float().cpu()
    check_finite(latents, loaded.choice.name, "encoded image")
    return latents


def vae_item(engine: Engine, loaded: LoadedModel) -> Any:
    from webui.models.loading import Role

    return engine.manager.cache.get_or_load(loaded.keys[Role.VAE], _never)


def _never() -> torch.nn.Module:
    raise RuntimeError("the VAE of the loaded model is pinned in the cache and cannot be missing")


def second_pass_params(request: GenerationRequest, work: BatchWork, hasher: Callable[[Path], str | None]) -> dict:
    """The infotext keys of the request's second passes, as A1111 writes them."""
    params: dict[str, Any] = {}
    if request.img2img is not None:
        params["Denoising strength"] = request.img2img.denoising_strength
    hires = request.hires
    if hires is not None:
        first_sampler = request.sampler or ""
        params |= hires.infotext(first_sampler, request.schedule, request.cfg_scale)
        if hires.prompt and hires.prompt != request.prompt:
            params["Hires prompt"] = hires.prompt
        if hires.negative_prompt and hires.negative_prompt != request.negative_prompt:
            params["Hires negative prompt"] = hires.negative_prompt
    refiner = request.refiner
    if refiner is not None and refiner.switches:
        path = refiner.checkpoint
        name = path.name if path.is_dir() else path.stem
        digest = hasher(path)
        params["Refiner"] = f"{name} [{digest}]" if digest else name  # A1111's checkpoint short title
        params["Refiner switch at"] = refiner.switch_at
        if hires is not None:
            params["Hires refiner"] = "first pass"  # the hand-off is in the first pass; the hires pass is the base's
    return params


def _handoff_families() -> list[str]:
    from webui.families import DESCRIPTIONS

    return [d.label for d in DESCRIPTIONS if d.supported and d.txt2img and d.second_pass.handoff]
