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
from webui.engine.conditioning import encode_prompts
from webui.engine.decode import decode_latents
from webui.engine.embeddings import EmbeddingSet, EmbeddingUse
from webui.engine.infotext import format_infotext
from webui.engine.lora import LoraReport, LoraSpec, LoraStackApplier
from webui.engine.outputs import day_folder, save_png
from webui.engine.pipelines import LoadedModel, PipelineManager
from webui.engine.progress import CancelToken, ProgressCallback, StepReporter
from webui.engine.prompts import extract_lora_tags
from webui.engine.request import GeneratedImage, GenerationRequest, GenerationResult
from webui.engine.samplers import make_scheduler, sampler_label
from webui.families import DESCRIPTIONS
from webui.models.loading import Role

Hasher = Callable[[Path], str | None]
LoraResolver = Callable[[str], Path]
# Our component overrides, written as extra infotext keys.
OVERRIDE_KEYS = {Role.UNET: "UNet", Role.TEXT_ENCODER: "Text encoder", Role.TEXT_ENCODER_2: "Text encoder 2"}


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
    ) -> None:
        self.manager = manager
        self.outputs_dir = Path(outputs_dir)
        self.hasher = hasher or (lambda _path: None)
        self.lora_resolver = lora_resolver or (lambda name: Path(name))
        self.loras = LoraStackApplier()
        self.fuse_loras = False  # merge active LoRAs into the weights for speed (a setting)
        self.embeddings = embeddings
        self.gpu_lock = threading.Lock()  # the one lock: one generation per device at a time

    def seeds_for(self, request: GenerationRequest) -> list[int]:
        first = request.seed if request.seed >= 0 else random.randrange(2**32)
        return [(first + i) % 2**32 for i in range(request.batch_size * request.batch_count)]

    def generate(
        self,
        request: GenerationRequest,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
        preview_every: int = 0,
        strict_loras: bool = False,
        outputs_dir: Path | None = None,
    ) -> GenerationResult:
        """Run one request under the device lock. `cancel` stops it within one step; finished images are kept.
        With `strict_loras`, a LoRA that cannot apply raises LoraRefusedError before anything is generated
        (a comparison cell must not show an image without its LoRA); otherwise it is only reported.
        `outputs_dir` overrides where images go (the API's unsaved images go to a temporary folder)."""
        with self.gpu_lock:
            return self._generate(request, progress, cancel, preview_every, strict_loras, outputs_dir)

    def _generate(
        self,
        request: GenerationRequest,
        progress: ProgressCallback | None,
        cancel: CancelToken | None,
        preview_every: int,
        strict_loras: bool,
        outputs_dir: Path | None,
    ) -> GenerationResult:
        started = time.perf_counter()
        loaded = self.manager.load(request.model)
        if not loaded.family.description.txt2img:
            takes = ", ".join(d.label for d in DESCRIPTIONS if d.supported and d.txt2img)
            raise ValueError(
                f"model: {loaded.choice.name} is an {loaded.family.label}, which refines an existing image; "
                f"txt2img needs a checkpoint of another family ({takes})"
            )
        timings = {"load": time.perf_counter() - started, "denoise": 0.0, "decode": 0.0, "save": 0.0}
        stack, unresolved = self.lora_stack(request)
        reports = unresolved + self.loras.apply(loaded.pipeline, loaded.family, stack, fuse=self.fuse_loras)
        timings["lora"] = time.perf_counter() - started - timings["load"]
        refused = [report.error for report in reports if report.error]
        if strict_loras and refused:
            raise LoraRefusedError("; ".join(refused))
        seeds = self.seeds_for(request)
        images: list[GeneratedImage] = []
        folder = day_folder(outputs_dir or self.outputs_dir, "txt2img")
        params = self._params(request, loaded)
        applied = [s for s, r in zip(stack, reports[len(unresolved) :], strict=True) if s.active and r.error is None]
        from_stack = [s for s in applied if s in request.loras]  # prompt tags already stand in the prompt
        if from_stack:  # our key: A1111's infotext has no place for LoRAs outside the prompt
            params["LoRA stack"] = ", ".join(f"{s.path.stem}: {s.unet_weight:g}/{s.te_weight:g}" for s in from_stack)
        if applied:
            params["Lora hashes"] = ", ".join(f"{s.path.stem}: {self.hasher(s.path) or ''}" for s in applied)
        reporter = StepReporter(loaded.family, request.steps, request.batch_count, progress, cancel, preview_every)
        use = EmbeddingUse()
        for batch in range(request.batch_count):
            if cancel is not None and cancel.cancelled:
                break
            reporter.batch = batch
            batch_seeds = seeds[batch * request.batch_size : (batch + 1) * request.batch_size]
            t0 = time.perf_counter()
            latents = self.denoise(loaded, request, batch_seeds, reporter, use)
            t1 = time.perf_counter()
            if use.used:
                params["TI hashes"] = ", ".join(f"{name}: {self.hasher(path) or ''}" for name, path in use.used.items())
            if reporter.interrupted:
                break  # a half-denoised batch is noise, not a result
            pixels = decode_latents(
                self.manager.cache.get_or_load(loaded.keys[Role.VAE], _never),
                latents,
                tile=request.width * request.height >= self.manager.policy.vae_tiling_min_pixels,
            )
            pil_images = loaded.pipeline.image_processor.postprocess(pixels, output_type="pil")
            t2 = time.perf_counter()
            for seed, image in zip(batch_seeds, pil_images, strict=True):
                infotext = format_infotext(request.prompt, request.negative_prompt, {**params, "Seed": seed} | _tail())
                images.append(GeneratedImage(save_png(image, folder, seed, infotext), seed, infotext))
            timings["denoise"] += t1 - t0
            timings["decode"] += t2 - t1
            timings["save"] += time.perf_counter() - t2
        timings["total"] = time.perf_counter() - started
        info = {
            "family": loaded.family.value,
            "interrupted": bool(cancel is not None and cancel.cancelled),
            "embeddings": {"used": sorted(use.used), "skipped": use.skipped},
        }
        return GenerationResult(tuple(images), timings, tuple(reports), info)

    def lora_stack(self, request: GenerationRequest) -> tuple[list[LoraSpec], list[LoraReport]]:
        """The request's stack plus the prompt's `<lora:…>` tags; a tag naming no file becomes a report."""
        stack = list(request.loras)
        missing: list[LoraReport] = []
        for tag in extract_lora_tags(request.prompt)[1]:
            try:
                path = self.lora_resolver(tag.name)
            except LookupError as error:
                missing.append(LoraReport(tag.name, error=str(error)))
                continue
            stack.append(LoraSpec(path, unet_weight=tag.unet_weight, te_weight=tag.te_weight))
        return stack, missing

    def denoise(
        self,
        loaded: LoadedModel,
        request: GenerationRequest,
        seeds: list[int],
        reporter: StepReporter | None = None,
        use: EmbeddingUse | None = None,
    ) -> torch.Tensor:
        """Latents for one batch. Noise is drawn on the CPU from each image's own seed (same image on any device)."""
        pipeline = loaded.pipeline
        pipeline.scheduler = make_scheduler(loaded.scheduler_config, request.sampler, request.schedule, seeds=seeds)
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        conditioning = encode_prompts(
            pipeline,
            loaded.family,
            request.prompt,
            request.negative_prompt,
            clip_skip=request.clip_skip,
            batch=len(seeds),
            embeddings=self.embeddings,
            use=use,
        )
        kwargs: dict[str, Any] = {}
        if reporter is not None:
            kwargs.update(callback_on_step_end=reporter, callback_on_step_end_tensor_inputs=["latents"])
        pipeline._interrupt = False
        return pipeline(
            **conditioning.as_pipeline_kwargs(),
            num_inference_steps=request.steps,
            guidance_scale=request.cfg_scale,
            width=request.width,
            height=request.height,
            generator=generators,
            output_type="latent",
            **kwargs,
        ).images

    def _params(self, request: GenerationRequest, loaded: LoadedModel) -> dict[str, Any]:
        choice = loaded.choice
        params: dict[str, Any] = {
            "Steps": request.steps,
            "Sampler": request.sampler or sampler_label(loaded.scheduler_config),
            "Schedule type": None if request.schedule == "Automatic" else request.schedule,
            "CFG scale": request.cfg_scale,
            "Seed": None,
            "Size": f"{request.width}x{request.height}",
            "Model hash": self.hasher(choice.checkpoint or choice.unet),
            "Model": choice.name,
        }
        if choice.vae is not None:
            params["VAE hash"] = self.hasher(choice.vae)
            params["VAE"] = choice.vae.name
        params["Clip skip"] = request.clip_skip if request.clip_skip > 1 else None
        for role, key in OVERRIDE_KEYS.items():
            override = choice.override(role)
            if override is not None:
                params[key] = override.name
        return params


def _tail() -> dict[str, Any]:
    return {"Version": f"webui {__version__}"}


def _never() -> torch.nn.Module:
    raise RuntimeError("the VAE of the loaded model is pinned in the cache and cannot be missing")
