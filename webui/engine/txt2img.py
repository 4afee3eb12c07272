"""The engine's front door: one request in, saved images with infotext out, one generation at a time."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from webui import __version__
from webui.engine import passes
from webui.engine.cache import CachedComponent
from webui.engine.conditioning import PromptEncoder
from webui.engine.conditioning_pipeline import EmbeddingCache, encode_with_pipeline
from webui.engine.decode import check_finite, decode_latents
from webui.engine.embeddings import EmbeddingSet, EmbeddingUse
from webui.engine.extra_networks import LORA_KINDS, parse_extra_networks
from webui.engine.infotext import format_infotext
from webui.engine.limits import RequestError
from webui.engine.lora import LoraReport, LoraSpec, LoraStackApplier
from webui.engine.noise import initial_noise
from webui.engine.outputs import check_format, day_folder, save_image
from webui.engine.passes import second_pass_params
from webui.engine.pipelines import LoadedModel, PipelineManager
from webui.engine.progress import CancelToken, Interrupted, ProgressCallback, StepReporter, interruptible
from webui.engine.prompt_conditioning import ConditioningHook, encode_plan
from webui.engine.prompt_plan import PromptPlan, plan_prompt
from webui.engine.request import GeneratedImage, GenerationRequest, GenerationResult
from webui.engine.samplers import make_scheduler, sampler_entry, sampler_label, schedule_note
from webui.engine.upscaler_models import UpscalerModels
from webui.families import DESCRIPTIONS
from webui.families.base import PipelineEncoding, VariantInput
from webui.models.loading import Role

Hasher = Callable[[Path], str | None]
LoraResolver = Callable[[str], Path]
UpscalerResolver = Callable[[str], Path]  # an upscaler model's name -> its file (LookupError if none)
# Our component overrides, written as extra infotext keys.
OVERRIDE_KEYS = {
    Role.UNET: "UNet",
    Role.TEXT_ENCODER: "Text encoder",
    Role.TEXT_ENCODER_2: "Text encoder 2",
    Role.TEXT_ENCODER_3: "Text encoder 3",
}


class LoraRefusedError(ValueError):
    """A LoRA of the stack cannot apply to the model (strict mode)."""


class Engine:
    def __init__(
        self,
        manager: PipelineManager,
        outputs_dir: Path,
        hasher: Hasher | None = None,
        lora_resolver: LoraResolver | None = None,
        embeddings: EmbeddingSet | None = None,
        upscaler_resolver: UpscalerResolver | None = None,
    ) -> None:
        self.manager = manager
        self.outputs_dir = Path(outputs_dir)
        self.hasher = hasher or (lambda _path: None)
        self.lora_resolver = lora_resolver or (lambda name: Path(name))
        self.loras = LoraStackApplier()
        self.fuse_loras = False  # merge active LoRAs into the weights for speed (a setting)
        self.embeddings = embeddings
        self.samples_format = "png"  # A1111's samples_format: png, jpg/jpeg or webp (a setting)
        self.prompt_cache = EmbeddingCache()  # per-prompt T5/CLIP embeddings of PipelineEncoding families
        self.gpu_lock = threading.Lock()  # the one lock: one generation per device at a time
        self.upscaler_path = upscaler_resolver or _no_upscaler_models
        self.upscaler_models = UpscalerModels(lambda: self.manager.device)

    def seeds_for(self, request: GenerationRequest) -> list[int]:
        """One seed per image: seed, seed + 1, ...; with a variation seed every image keeps the seed (as A1111)."""
        first = request.seed if request.seed >= 0 else random.randrange(2**32)
        step = 0 if request.subseed_strength else 1
        return [(first + i * step) % 2**32 for i in range(request.batch_size * request.batch_count)]

    def subseeds_for(self, request: GenerationRequest) -> list[int]:
        """One variation seed per image: subseed, subseed + 1, ... (-1: a random first one)."""
        first = request.subseed if request.subseed >= 0 else random.randrange(2**32)
        return [(first + i) % 2**32 for i in range(request.batch_size * request.batch_count)]

    def generate(
        self,
        request: GenerationRequest,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
        preview_every: int = 0,
        strict_loras: bool = False,
        outputs_dir: Path | None = None,
        samples_format: str | None = None,
        partial: bool = True,
    ) -> GenerationResult:
        """Run one request under the device lock. `cancel` stops it within one step; finished images are kept,
        and the batch it stopped comes back as it was (A1111's partial image); `cancel.skip()` does that to the
        current batch only and goes on. With `strict_loras`, a LoRA that cannot apply raises LoraRefusedError
        before anything is generated (a comparison cell must not show an image without its LoRA); otherwise it
        is only reported. `outputs_dir` overrides where images go (the API's unsaved images go to a temporary
        folder); `samples_format` (png, jpg, webp) the engine's own. `partial=False` drops the image of an
        interrupted batch (a comparison cell must not show a half-denoised image)."""
        image_format = check_format(samples_format or self.samples_format)
        with self.gpu_lock:
            return self._generate(
                request, progress, cancel, preview_every, strict_loras, outputs_dir, image_format, partial
            )

    def _generate(
        self,
        request: GenerationRequest,
        progress: ProgressCallback | None,
        cancel: CancelToken | None,
        preview_every: int,
        strict_loras: bool,
        outputs_dir: Path | None,
        image_format: str = "png",
        partial: bool = True,
    ) -> GenerationResult:
        started = time.perf_counter()
        loaded = self.manager.load(request.model)
        if not loaded.family.description.txt2img and request.img2img is None:
            takes = ", ".join(d.label for d in DESCRIPTIONS if d.supported and d.txt2img)
            raise RequestError(
                "model",
                f"{loaded.choice.name} is an {loaded.family.label}, which refines an existing image; "
                f"txt2img needs a checkpoint of another family ({takes}); use it in img2img or as the refiner",
            )
        variant = loaded.variant
        if variant is not None and variant.txt2img is None:
            what = f"{variant.name} {loaded.family.label} model"
            raise ValueError(f"model: {loaded.choice.name} is an {what}: {variant.refusal}")
        plan = plan_prompt(request.prompt, request.negative_prompt, request.steps)
        try:
            work = passes.prepare(self, loaded, request, plan)
            return self._run(request, loaded, work, started, progress, cancel, preview_every, strict_loras,
                             outputs_dir, image_format, partial)  # fmt: skip
        finally:
            self.manager.release_companions()

    def _run(
        self,
        request: GenerationRequest,
        loaded: LoadedModel,
        work: passes.BatchWork,
        started: float,
        progress: ProgressCallback | None,
        cancel: CancelToken | None,
        preview_every: int,
        strict_loras: bool,
        outputs_dir: Path | None,
        image_format: str,
        partial: bool,
    ) -> GenerationResult:
        plan = work.plan
        timings = {"load": time.perf_counter() - started, "denoise": 0.0, "decode": 0.0, "save": 0.0}
        seeds = self.seeds_for(request)
        subseeds = self.subseeds_for(request) if request.subseed_strength else None
        warnings = plan.warnings + self.sampling_warnings(request) + self.family_warnings(loaded, request, plan)
        warnings += work.warnings
        images: list[GeneratedImage] = []
        reports: list[LoraReport] = []
        use = EmbeddingUse()
        try:  # a cancelled token raises Interrupted at the next LoRA file, text-encoder call or VAE tile
            if cancel is not None:
                cancel.check()
            stack, unresolved = self.lora_stack(request, plan)
            interrupt = None if cancel is None else cancel.check
            reports = unresolved + self.loras.apply(
                loaded.pipeline, loaded.family, stack, fuse=self.fuse_loras, interrupt=interrupt
            )
            timings["lora"] = time.perf_counter() - started - timings["load"]
            refused = [report.error for report in reports if report.error]
            if strict_loras and refused:
                raise LoraRefusedError("; ".join(refused))
            folder = day_folder(outputs_dir or self.outputs_dir, "img2img" if request.img2img else "txt2img")
            params = (
                self._params(request, loaded)
                | self._lora_params(request, stack, reports[len(unresolved) :])
                | second_pass_params(request, work, self.hasher)
            )
            reporter = StepReporter(
                loaded.family, request.steps, request.batch_count, progress, cancel, preview_every,
                unpack=lambda latents: self.unpacked(loaded, request, latents),
            )  # fmt: skip
            if work.passes > 1:
                reporter.per_batch = work.steps_per_batch
            applied = [
                s for s, r in zip(stack, reports[len(unresolved) :], strict=True) if s.active and r.error is None
            ]
            work.te_state = tuple((s.path, s.te_weight) for s in applied if s.te_weight)
            with interruptible(passes.text_encoders(work), cancel):
                for batch in range(request.batch_count):
                    if cancel is not None and cancel.cancelled:
                        break
                    reporter.start_batch(batch)
                    batch_slice = slice(batch * request.batch_size, (batch + 1) * request.batch_size)
                    batch_seeds = seeds[batch_slice]
                    batch_subseeds = subseeds[batch_slice] if subseeds is not None else None
                    t0 = time.perf_counter()
                    latents, pil_images = passes.first_pass(self, work, batch_seeds, batch_subseeds, reporter, use)
                    decoder = work.finisher  # the model that finished the latents decodes them
                    if latents is not None and request.hires is not None and not reporter.interrupted:
                        latents = passes.hires_pass(self, work, latents, batch_seeds, batch_subseeds, reporter, use)
                        decoder = loaded
                    t1 = time.perf_counter()
                    if use.used:
                        params["TI hashes"] = ", ".join(f"{n}: {self.hasher(p) or ''}" for n, p in use.used.items())
                    if reporter.interrupted and not (partial or reporter.skipped):
                        break
                    # An interrupted batch is decoded where it stopped, as A1111 returns its partial image.
                    if pil_images is None:
                        unpacked = self.unpacked(decoder, request, latents)  # a transformer's packed latents
                        pil_images = passes.decode_images(self, decoder, unpacked, cancel)
                    t2 = time.perf_counter()
                    for index, (seed, image) in enumerate(zip(batch_seeds, pil_images, strict=True)):
                        image_params = {**params, "Seed": seed}
                        if batch_subseeds is not None:
                            image_params["Variation seed"] = batch_subseeds[index]
                            image_params["Variation seed strength"] = request.subseed_strength
                        image_params |= _tail()
                        infotext = format_infotext(plan.prompt, plan.negative_prompt, image_params)
                        path = save_image(image, folder, seed, infotext, image_format=image_format)
                        images.append(GeneratedImage(path, seed, infotext))
                    timings["denoise"] += t1 - t0
                    timings["decode"] += t2 - t1
                    timings["save"] += time.perf_counter() - t2
                    if reporter.interrupted and not reporter.skipped:
                        break
        except Interrupted:
            pass  # asked for: the images finished so far are the result
        timings["total"] = time.perf_counter() - started
        info = {
            "family": loaded.family.value,
            "interrupted": bool(cancel is not None and cancel.cancelled),
            "embeddings": {"used": sorted(use.used), "skipped": use.skipped},
            "warnings": warnings,
            "seeds": seeds,
            "subseeds": subseeds or [],
        }
        return GenerationResult(tuple(images), timings, tuple(reports), info)

    def _decode(
        self, vae: CachedComponent, latents: torch.Tensor, cancel: CancelToken | None, model: str, tile: bool
    ) -> torch.Tensor:
        """(batch, C, h, w) latents to pixels, both checked finite (NaN/inf fails naming `model`: no black PNG).
        A batch interrupted while denoising is decoded where it stopped (A1111's partial image); an interrupt that
        comes while decoding raises Interrupted at the next VAE tile (or decode), and that batch has no image."""
        check_finite(latents, model, "latents")
        decode_cancel = None if cancel is None or cancel.cancelled else cancel
        with interruptible([getattr(vae.module, "decoder", vae.module)], decode_cancel):
            pixels = decode_latents(vae, latents, tile=tile)
        check_finite(pixels, model, "decoded image")
        return pixels

    def _lora_params(
        self, request: GenerationRequest, stack: list[LoraSpec], reports: list[LoraReport]
    ) -> dict[str, Any]:
        """Infotext keys for the LoRAs that applied (`reports` are the stack's, in its order)."""
        params: dict[str, Any] = {}
        applied = [s for s, r in zip(stack, reports, strict=True) if s.active and r.error is None]
        from_stack = [s for s in applied if s in request.loras]  # prompt tags already stand in the prompt
        if from_stack:  # our key: A1111's infotext has no place for LoRAs outside the prompt
            params["LoRA stack"] = ", ".join(f"{s.path.stem}: {s.unet_weight:g}/{s.te_weight:g}" for s in from_stack)
        if applied:
            params["Lora hashes"] = ", ".join(f"{s.path.stem}: {self.hasher(s.path) or ''}" for s in applied)
        return params

    def lora_stack(
        self, request: GenerationRequest, plan: PromptPlan | None = None
    ) -> tuple[list[LoraSpec], list[LoraReport]]:
        """The request's stack plus the prompt's `<lora:…>` tags; a tag naming no file, or one that cannot be read
        (a weight that is no number, no name), becomes a report with the reason. Comments' tags do not count."""
        networks = plan.networks if plan is not None else parse_extra_networks(request.prompt)
        stack = list(request.loras)
        missing: list[LoraReport] = [
            LoraReport(skipped.tag, error=skipped.reason)
            for skipped in networks.skipped
            if skipped.tag[1:].split(":", 1)[0].lower() in LORA_KINDS
        ]
        if request.disable_extra_networks:
            return stack, []
        for tag in networks.loras:
            try:
                path = self.lora_resolver(tag.name)
            except LookupError as error:
                missing.append(LoraReport(tag.name, error=str(error)))
                continue
            stack.append(LoraSpec(path, unet_weight=tag.unet_weight, te_weight=tag.te_weight))
        return stack, missing

    def sampling_warnings(self, request: GenerationRequest) -> list[str]:
        """What of the request's sampling settings has no effect here (said, never silently dropped)."""
        warnings = []
        note = schedule_note(request.sampler, request.schedule)
        if note:
            warnings.append(note)
        if request.eta is not None:
            entry = sampler_entry(request.sampler) if request.sampler else None
            if entry is None or entry.eta is None:
                name = request.sampler or "the model's sampler"
                warnings.append(f"eta: {name} takes no eta here; {request.eta:g} is ignored")
        return warnings

    def denoise(
        self,
        loaded: LoadedModel,
        request: GenerationRequest,
        seeds: list[int],
        reporter: StepReporter | None = None,
        use: EmbeddingUse | None = None,
        plan: PromptPlan | None = None,
        subseeds: list[int] | None = None,
        te_state: tuple[Any, ...] = (),
        denoising_end: float | None = None,
    ) -> torch.Tensor:
        """Latents for one batch (packed as the pipeline returns them: see `unpacked`). Noise is drawn on the CPU
        from each image's own seed (same image on any device).

        A plain prompt goes through the pipeline exactly as plain diffusers would run it; prompt editing and AND
        go through a ConditioningHook on the UNet; samplers without a diffusers scheduler run in own_sampling.
        Families that encode with the pipeline itself (FLUX.1) go through `denoise_encoded`. `denoising_end`
        (0..1 of the noise schedule) stops early for a refiner (diffusers' argument)."""
        pipeline = loaded.pipeline
        plan = plan or plan_prompt(request.prompt, request.negative_prompt, request.steps)
        if isinstance(loaded.family.description.conditioning, PipelineEncoding):
            return self.denoise_encoded(loaded, request, seeds, plan, reporter, te_state)
        encoder = PromptEncoder(pipeline, loaded.family, request.clip_skip, self.embeddings, use)
        conditioning = encode_plan(encoder, plan, len(seeds))
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        width, height = request.latent_size
        entry = sampler_entry(request.sampler) if request.sampler else None
        ays_levels = loaded.family.description.scheduler.align_your_steps
        noise = None
        if entry is not None and entry.own and loaded.variant is not None:
            raise ValueError(
                f"sampler: {request.sampler} runs its own sampling loop, which cannot feed the extra input "
                f"channels of {loaded.choice.name}'s {loaded.variant.name} UNet; choose a diffusers sampler "
                "(Euler, DPM++ 2M, ...)"
            )
        if request.subseed_strength or (entry is not None and entry.own):
            factor = pipeline.vae_scale_factor
            # The latent channels (an inpainting UNet takes more inputs than it denoises).
            shape = (pipeline.vae.config.latent_channels, height // factor, width // factor)
            noise = initial_noise(seeds, shape, subseeds, request.subseed_strength)
        if entry is not None and entry.own:
            from webui.engine import own_sampling

            if denoising_end is not None:
                raise RequestError("sampler", f"{request.sampler} cannot hand off to a refiner; choose another sampler")

            return own_sampling.sample(
                entry.own, pipeline, loaded.family, loaded.scheduler_config, conditioning, noise, generators,
                steps=request.steps, cfg_scale=request.cfg_scale, schedule=request.schedule,
                eta=entry.eta if request.eta is None else request.eta, reporter=reporter,
            )  # fmt: skip
        pipeline.scheduler = make_scheduler(
            loaded.scheduler_config,
            request.sampler,
            request.schedule,
            seeds=seeds,
            ays_levels=ays_levels,
            eta=request.eta,
        )
        kwargs: dict[str, Any] = {}
        if reporter is not None:
            kwargs.update(callback_on_step_end=reporter, callback_on_step_end_tensor_inputs=["latents"])
        if noise is not None:
            kwargs["latents"] = noise.to(pipeline.unet.dtype)
        if request.eta is not None and entry is not None and entry.scheduler == "DDIMScheduler":
            kwargs["eta"] = request.eta
        kwargs.update(_variant_inputs(loaded, request))
        if denoising_end is not None:
            kwargs["denoising_end"] = denoising_end
        pipeline._interrupt = False

        def run() -> torch.Tensor:
            return pipeline(
                **conditioning.first().as_pipeline_kwargs(),
                num_inference_steps=request.steps,
                guidance_scale=request.cfg_scale,
                width=width,
                height=height,
                generator=generators,
                output_type="latent",
                **kwargs,
            ).images

        if conditioning.plain:
            return run()
        with ConditioningHook(conditioning, request.cfg_scale).installed(pipeline.unet):
            return run()

    def denoise_encoded(
        self,
        loaded: LoadedModel,
        request: GenerationRequest,
        seeds: list[int],
        plan: PromptPlan,
        reporter: StepReporter | None = None,
        te_state: tuple[Any, ...] = (),
    ) -> torch.Tensor:
        """Latents of a family conditioned by its pipeline's own `encode_prompt` (FLUX.1: T5 + CLIP pooled): the
        prompt text without tags or comments, embeddings cached per prompt (`te_state` names the LoRAs on the text
        encoders), distilled guidance and true CFG as the description names them, the model's flow scheduler."""
        pipeline = loaded.pipeline
        description = loaded.family.description
        pipeline.scheduler = make_scheduler(loaded.scheduler_config, request.sampler, request.schedule, seeds=seeds)
        encoding = description.conditioning
        max_length = self.sequence_length(loaded)
        negative_text = parse_extra_networks(plan.negative_prompt).prompt
        conditioning = encode_with_pipeline(
            pipeline,
            plan.networks.prompt,
            negative_text,
            encode=encoding.encoder(),
            use_negative=request.cfg_scale > 1 or not encoding.negative_needs_cfg,
            max_length=max_length,
            batch=len(seeds),
            cache=self.prompt_cache,
            identity=(tuple(loaded.keys.get(spec.role) for spec in description.text_encoders), te_state),
        )
        cfg = request.cfg_scale - description.pipeline.cfg_offset  # in what the pipeline's argument counts
        kwargs: dict[str, Any] = {description.pipeline.cfg_argument: cfg}
        guidance = self.distilled_guidance(loaded, request)
        if guidance is not None and description.pipeline.guidance_argument:
            kwargs[description.pipeline.guidance_argument] = guidance
        if reporter is not None:
            kwargs.update(callback_on_step_end=reporter, callback_on_step_end_tensor_inputs=["latents"])
        width, height = request.latent_size
        pipeline._interrupt = False
        return pipeline(
            **conditioning.as_pipeline_kwargs(),
            num_inference_steps=request.steps,
            width=width,
            height=height,
            generator=[torch.Generator("cpu").manual_seed(seed) for seed in seeds],
            max_sequence_length=max_length,
            output_type="latent",
            **kwargs,
        ).images

    @staticmethod
    def family_warnings(loaded: LoadedModel, request: GenerationRequest, plan: PromptPlan) -> list[str]:
        """What the family does not read of the request (said, never silently dropped)."""
        if not isinstance(loaded.family.description.conditioning, PipelineEncoding):
            return []
        label, warnings = loaded.family.label, []
        if not plan.plain:
            warnings.append(f"prompt: {label} encodes the text as written; prompt editing and AND are not applied")
        if request.subseed_strength:
            warnings.append(f"subseed_strength: variation seeds are not applied to {label} models")
        if request.clip_skip > 1:
            warnings.append(f"clip_skip: {label} uses CLIP's pooled output only; clip skip has no effect")
        limit = Engine.sequence_length(loaded)
        for field, text in (("prompt", plan.networks.prompt), ("negative_prompt", plan.negative_prompt)):
            tokens = Engine.sequence_tokens(loaded, text)
            if tokens > limit:
                warnings.append(
                    f"{field}: {tokens:,} tokens; {label} reads the first {limit} (its text encoder's sequence "
                    "length), the rest is not used"
                )
        return warnings

    @staticmethod
    def sequence_length(loaded: LoadedModel) -> int:
        """Tokens the sequence encoder (T5, Qwen3) reads for this model: its variant's max_sequence_length, else its
        family's (PipelineEncoding.max_sequence_length)."""
        description = loaded.family.description
        variant = description.variant(loaded.model_variant)
        if variant and variant.max_sequence_length:
            return variant.max_sequence_length
        return description.conditioning.max_sequence_length

    @staticmethod
    def sequence_tokens(loaded: LoadedModel, text: str) -> int:
        """Tokens `text` makes for the pipeline's sequence encoder: diffusers' pipelines name it last among
        tokenizer, tokenizer_2, tokenizer_3 (FluxPipeline: T5 is tokenizer_2). 0 when there is none."""
        pipeline = loaded.pipeline
        tokenizers = [getattr(pipeline, n, None) for n in ("tokenizer", "tokenizer_2", "tokenizer_3")]
        present = [t for t in tokenizers if t is not None]
        if not text or not present:
            return 0
        return len(present[-1](text, truncation=False, add_special_tokens=True).input_ids)

    @staticmethod
    def distilled_guidance(loaded: LoadedModel, request: GenerationRequest) -> float | None:
        """The distilled guidance the model takes (the request's, else its variant's default); None when the
        model has no guidance input (FLUX.1 schnell, every UNet family)."""
        description = loaded.family.description
        variant = description.variant(loaded.model_variant)
        if variant is None or not variant.distilled_guidance:
            return None
        if request.distilled_guidance is not None:
            return request.distilled_guidance
        return description.defaults_for(loaded.model_variant).distilled_guidance

    @staticmethod
    def unpacked(loaded: LoadedModel, request: GenerationRequest, latents: torch.Tensor) -> torch.Tensor:
        """(batch, channels, h, w) latents: the pipeline's packed 2×2 patches (FLUX) unpacked, others as given."""
        if not loaded.family.description.pipeline.packed_latents or latents.ndim == 4:
            return latents
        pipeline, (width, height) = loaded.pipeline, request.latent_size
        return pipeline._unpack_latents(latents, height, width, pipeline.vae_scale_factor)

    def _params(self, request: GenerationRequest, loaded: LoadedModel) -> dict[str, Any]:
        choice = loaded.choice
        params: dict[str, Any] = {
            "Steps": request.steps,
            "Sampler": request.sampler or sampler_label(loaded.scheduler_config),
            "Schedule type": None if request.schedule == "Automatic" else request.schedule,
            "CFG scale": request.cfg_scale,
            "Distilled CFG Scale": self.distilled_guidance(loaded, request),  # Forge's key
            "Seed": None,
            "Size": f"{request.width}x{request.height}",
            "Model hash": self.hasher(choice.checkpoint or choice.unet),
            "Model": choice.name,
        }
        vae = choice.vae or loaded.defaults.get(Role.VAE)  # a no-VAE checkpoint's default VAE is named too
        if vae is not None:
            params["VAE hash"] = self.hasher(vae)
            params["VAE"] = vae.name
        params["Clip skip"] = request.clip_skip if request.clip_skip > 1 else None
        entry = sampler_entry(request.sampler) if request.sampler else None
        if request.eta is not None and entry is not None and entry.eta is not None and request.eta != entry.eta:
            params["Eta DDIM" if entry.scheduler == "DDIMScheduler" else "Eta"] = request.eta  # A1111's keys
        for role, key in OVERRIDE_KEYS.items():
            override = choice.override(role)
            if override is not None:
                params[key] = override.name
        return params


def _variant_inputs(loaded: LoadedModel, request: GenerationRequest) -> dict[str, Any]:
    """What a UNet variant's extra channels get in txt2img (its description's `txt2img`).

    FULL_MASK, A1111's txt2img on an inpainting model: the whole image is masked, so the masked image is all
    zeros whatever the image (diffusers' inpaint pipeline computes `image * (mask < 0.5)`), and strength 1
    starts from pure noise as txt2img does."""
    variant = loaded.variant
    if variant is None or variant.txt2img is None:
        return {}
    if variant.txt2img is VariantInput.FULL_MASK:
        from PIL import Image

        size = (request.width, request.height)
        return {"image": Image.new("RGB", size), "mask_image": Image.new("L", size, 255), "strength": 1.0}
    raise ValueError(f"model: txt2img does not know how to feed a {variant.name} UNet ({variant.txt2img})")


def _tail() -> dict[str, Any]:
    return {"Version": f"webui {__version__}"}


def _no_upscaler_models(name: str) -> Path:
    raise LookupError(f"no upscaler model library is connected, so {name!r} cannot be found")
