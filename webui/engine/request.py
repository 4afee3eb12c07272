"""The request and result dataclasses that cross from the front ends into the engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from webui.engine.extra_networks import parse_extra_networks
from webui.engine.limits import (
    CFG_LIMIT,
    LATENT_FACTOR,
    MAX_CFG,
    MAX_LORAS,
    MAX_SIDE,
    MAX_STEPS,
    MIN_SIDE,
    RANGES,
    STEPS_LIMIT,
    RequestError,
    check_fields,
    check_text,
)
from webui.engine.lora import LoraReport, LoraSpec
from webui.engine.pipelines import ModelChoice
from webui.engine.second_pass import HiresFix, Img2Img, Refiner

__all__ = [
    "CFG_LIMIT",
    "LATENT_FACTOR",
    "MAX_CFG",
    "MAX_SIDE",
    "MAX_STEPS",
    "MIN_SIDE",
    "STEPS_LIMIT",
    "GeneratedImage",
    "GenerationRequest",
    "GenerationResult",
]


@dataclass(frozen=True)
class GenerationRequest:
    """Everything set before pressing Generate. Validates itself; errors name the field and the allowed range."""

    model: ModelChoice
    prompt: str = ""
    negative_prompt: str = ""
    steps: int = 20
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    seed: int = -1
    batch_size: int = 1
    batch_count: int = 1
    sampler: str | None = None  # None: the model's own scheduler
    schedule: str = "Automatic"
    clip_skip: int = 1
    loras: tuple[LoraSpec, ...] = ()  # the stack; `<lora:…>` tags in the prompt are added to it
    subseed: int = -1  # A1111's variation seed (-1: random); used when subseed_strength > 0
    subseed_strength: float = 0.0  # 0: the seed's noise; 1: the variation seed's; between: slerp of the two
    eta: float | None = None  # A1111's eta for the samplers that take one (None: the sampler's default)
    disable_extra_networks: bool = False  # A1111's: the prompt's <lora:…> tags are removed but not applied
    distilled_guidance: float | None = None  # guidance-distilled models (FLUX.1 dev); None: the family's default
    hires: HiresFix | None = None  # A1111's Hires. fix: a second pass at a larger size (txt2img)
    refiner: Refiner | None = None  # A1111's refiner: another model finishes the denoising
    img2img: Img2Img | None = None  # img2img's input image(s); width and height are the output's size

    def __post_init__(self) -> None:
        check_text("prompt", self.prompt)
        check_text("negative_prompt", self.negative_prompt)
        loras = len(parse_extra_networks(self.prompt).loras) + len(self.loras)
        if loras > MAX_LORAS:  # a tag that cannot apply is only reported (A1111's way), but each that can is a file
            raise RequestError("prompt", f"{loras} LoRAs (<lora:…> tags and the stack); the limit is {MAX_LORAS}")
        check_fields({name: getattr(self, name) for name in (*RANGES, "sampler", "schedule")})
        if self.hires is not None and self.img2img is not None:
            raise ValueError("enable_hr: Hires. fix is a txt2img option; img2img sets the output size itself")
        if self.img2img is not None and len(self.img2img.images) > 1 and len(self.img2img.images) != self.batch_size:
            raise ValueError(
                f"init_images: {len(self.img2img.images)} images for a batch of {self.batch_size}; give one image, "
                "or one per image of the batch"
            )

    @property
    def latent_size(self) -> tuple[int, int]:
        """(width, height) of what is generated: each side rounded down to a multiple of 8, as A1111 does."""
        return self.width // LATENT_FACTOR * LATENT_FACTOR, self.height // LATENT_FACTOR * LATENT_FACTOR


@dataclass(frozen=True)
class GeneratedImage:
    path: Path
    seed: int
    infotext: str


@dataclass(frozen=True)
class GenerationResult:
    images: tuple[GeneratedImage, ...]
    timings: dict[str, float] = field(default_factory=dict)
    loras: tuple[LoraReport, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "images": [{"path": str(i.path), "seed": i.seed, "infotext": i.infotext} for i in self.images],
            "timings": self.timings,
            "loras": [report.to_json() for report in self.loras],
            **self.info,
        }
