"""A1111's Extras upscaling (`extra-single-image` / `extra-batch-images`): one or two upscalers, blended.

As A1111's scripts/postprocessing_upscale.py: mode 0 scales by `scale`, mode 1 to `width`×`height` (the larger
factor of the two, then centred on a canvas of that size when `crop`); an upscaler enlarges to the scaled size
rounded down to a multiple of 8 (its `Upscaler.upscale`); a second upscaler's result is blended in with
`visibility_2`. The infotext keys are A1111's `Postprocess ...` ones. Face restoration is not done here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from webui.engine.upscalers import ModelRunner, Upscaler, enlarge, resolve_upscaler


@dataclass(frozen=True)
class ExtrasUpscale:
    """What to do to each image; errors name A1111's API fields."""

    upscaler_1: str = "None"
    upscaler_2: str = "None"
    visibility_2: float = 0.0
    mode: int = 0
    scale: float = 2.0
    width: int = 512
    height: int = 512
    crop: bool = True

    def __post_init__(self) -> None:
        if self.mode not in (0, 1):
            raise ValueError(f"resize_mode: {self.mode} is unknown; 0 scales by upscaling_resize, 1 resizes to "
                             "upscaling_resize_w x upscaling_resize_h")  # fmt: skip
        if not 0 < self.scale <= 16:
            raise ValueError(f"upscaling_resize: {self.scale} is out of range; allowed 0..16")
        for name, value in (("upscaling_resize_w", self.width), ("upscaling_resize_h", self.height)):
            if not 1 <= value <= 16384:
                raise ValueError(f"{name}: {value} is out of range; allowed 1..16384")
        if not 0 <= self.visibility_2 <= 1:
            raise ValueError(f"extras_upscaler_2_visibility: {self.visibility_2} is out of range; allowed 0..1")

    def upscalers(self, find_model: Callable[[str], Path]) -> tuple[Upscaler, Upscaler | None]:
        """The pixel upscalers named (the second only when it shows); LookupError / ValueError name the field."""
        chosen = []
        for field, name in (("upscaler_1", self.upscaler_1), ("upscaler_2", self.upscaler_2)):
            upscaler = resolve_upscaler(name or "None", find_model, field)
            if upscaler.latent:
                raise ValueError(f"{field}: {name!r} works on latents; Extras upscales pixels")
            chosen.append(upscaler)
        second = chosen[1] if self.visibility_2 > 0 and chosen[1].name != "None" else None
        return chosen[0], second


def _upscale(image: Image.Image, settings: ExtrasUpscale, upscaler: Upscaler, run_model: ModelRunner,
             info: dict[str, Any]) -> Image.Image:  # fmt: skip
    if settings.mode == 1:
        scale = max(settings.width / image.width, settings.height / image.height)
        info["Postprocess upscale to"] = f"{settings.width}x{settings.height}"
    else:
        scale = settings.scale
        info["Postprocess upscale by"] = settings.scale
    width, height = int(image.width * scale // 8 * 8), int(image.height * scale // 8 * 8)
    result = enlarge(image.convert("RGB"), max(8, width), max(8, height), upscaler, run_model)
    if settings.mode == 1 and settings.crop:
        canvas = Image.new("RGB", (settings.width, settings.height))
        canvas.paste(result, box=(settings.width // 2 - result.width // 2, settings.height // 2 - result.height // 2))
        result = canvas
        info["Postprocess crop to"] = f"{result.width}x{result.height}"
    return result


def upscale_extras(
    image: Image.Image, settings: ExtrasUpscale, upscalers: tuple[Upscaler, Upscaler | None], run_model: ModelRunner
) -> tuple[Image.Image, dict[str, Any]]:
    """The upscaled image and its `Postprocess ...` infotext keys."""
    info: dict[str, Any] = {}
    first, second = upscalers
    result = _upscale(image, settings, first, run_model, info)
    info["Postprocess upscaler"] = first.name
    if second is not None:
        other = _upscale(image, settings, second, run_model, {})
        result = Image.blend(result, other.convert(result.mode), settings.visibility_2)
        info["Postprocess upscaler 2"] = second.name
    return result, info
