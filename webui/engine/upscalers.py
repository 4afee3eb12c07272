"""Upscalers by A1111's names: latent modes, pixel resampling and upscaler model files, and A1111's image resizing.

Names and behaviour follow A1111 (modules/shared_items.py `latent_upscale_modes`, modules/images.py
`resize_image`, modules/upscaler.py `Upscaler.upscale`): the latent modes resample the latents with
`torch.nn.functional.interpolate`; "None" and "Lanczos" resize with Lanczos, "Nearest" with nearest neighbour;
a model enlarges by its own factor (applied up to three times until the image covers the target, tiled so
that large images fit in memory), then Lanczos brings it to the exact size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from webui.engine.second_pass import RESIZE_MODES, HiresTarget

# A1111's latent upscale modes: name -> (torch interpolate mode, antialias).
LATENT_MODES: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
# A1111's built-in pixel upscalers (its "None" resizes with Lanczos too).
RESAMPLERS: dict[str, Image.Resampling] = {
    "None": Image.Resampling.LANCZOS,
    "Lanczos": Image.Resampling.LANCZOS,
    "Nearest": Image.Resampling.NEAREST,
}
MODEL_PASSES = 3  # A1111 applies a model up to three times until the image covers the target
ModelRunner = Callable[[Image.Image, Path], Image.Image]  # one pass of an upscaler model over an image


@dataclass(frozen=True)
class Upscaler:
    """One upscaler: a latent mode, a resampler, or a model file."""

    name: str
    latent_mode: tuple[str, bool] | None = None
    resample: Image.Resampling | None = None
    path: Path | None = None

    @property
    def latent(self) -> bool:
        return self.latent_mode is not None


def resolve_upscaler(name: str, find_model: Callable[[str], Path], field: str = "hr_upscaler") -> Upscaler:
    """The upscaler called `name`: a latent mode, None/Lanczos/Nearest, or a model file `find_model(name)` finds.
    LookupError names `field` and lists the choices."""
    if name in LATENT_MODES:
        return Upscaler(name, latent_mode=LATENT_MODES[name])
    if name in RESAMPLERS:
        return Upscaler(name, resample=RESAMPLERS[name])
    try:
        return Upscaler(name, path=find_model(name))
    except LookupError as error:
        builtin = ", ".join([*LATENT_MODES, *RESAMPLERS])
        raise LookupError(
            f"{field}: no upscaler named {name!r}; built in: {builtin}; models go in models/upscalers/ ({error})"
        ) from None


def upscale_latents(latents: torch.Tensor, upscaler: Upscaler, target: HiresTarget) -> torch.Tensor:
    """(batch, channels, h, w) latents resampled to the target's latent size and cropped as A1111 crops them."""
    if upscaler.latent_mode is None:
        raise ValueError(f"hr_upscaler: {upscaler.name!r} works on pixels, not latents")
    mode, antialias = upscaler.latent_mode
    size = (target.height // target.factor, target.width // target.factor)
    resized = torch.nn.functional.interpolate(latents.float(), size=size, mode=mode, antialias=antialias)
    return crop_latents(resized, target).to(latents.dtype)


def crop_latents(latents: torch.Tensor, target: HiresTarget) -> torch.Tensor:
    """Drop `truncate_x`/`truncate_y` latent pixels, half from each side (the odd one from the end), as A1111."""
    tx, ty = target.truncate_x, target.truncate_y
    return latents[:, :, ty // 2 : latents.shape[2] - (ty + 1) // 2, tx // 2 : latents.shape[3] - (tx + 1) // 2]


def enlarge(image: Image.Image, width: int, height: int, upscaler: Upscaler, run_model: ModelRunner) -> Image.Image:
    """`image` at `width`×`height` through `upscaler`, as A1111's `resize_image`'s inner `resize`: resamplers resize
    at once; a model runs (up to three times) while the image is smaller than the target, then Lanczos."""
    if upscaler.resample is not None or upscaler.path is None:
        return image.resize((width, height), resample=upscaler.resample or Image.Resampling.LANCZOS)
    scale = max(width / image.width, height / image.height)
    if scale > 1.0:
        dest_w, dest_h = int(image.width * scale // 8 * 8), int(image.height * scale // 8 * 8)
        for _ in range(MODEL_PASSES):
            if image.width >= dest_w and image.height >= dest_h:
                break
            before = image.size
            image = run_model(image, upscaler.path)
            if image.size == before:
                break
    if image.size != (width, height):
        image = image.resize((width, height), resample=Image.Resampling.LANCZOS)
    return image


def resize_image(
    mode: str, image: Image.Image, width: int, height: int, upscaler: Upscaler, run_model: ModelRunner
) -> Image.Image:
    """A1111's img2img resize modes: "Just resize" stretches; "Crop and resize" fills the frame and crops the
    overflow; "Resize and fill" fits inside and fills the bars with the image's stretched edges. "Just resize
    (latent upscale)" resizes like "Just resize" here (the latent resampling is the caller's)."""
    image = image.convert("RGB")
    if mode in (RESIZE_MODES[0], RESIZE_MODES[3]):
        return enlarge(image, width, height, upscaler, run_model)
    ratio, src_ratio = width / height, image.width / image.height
    if mode == RESIZE_MODES[1]:
        src_w = width if ratio > src_ratio else image.width * height // image.height
        src_h = height if ratio <= src_ratio else image.height * width // image.width
        resized = enlarge(image, src_w, src_h, upscaler, run_model)
        result = Image.new("RGB", (width, height))
        result.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
        return result
    if mode != RESIZE_MODES[2]:
        raise ValueError(f"resize_mode: unknown {mode!r}; allowed {', '.join(RESIZE_MODES)}")
    src_w = width if ratio < src_ratio else image.width * height // image.height
    src_h = height if ratio >= src_ratio else image.height * width // image.width
    resized = enlarge(image, src_w, src_h, upscaler, run_model)
    result = Image.new("RGB", (width, height))
    result.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    if ratio < src_ratio:
        fill = height // 2 - src_h // 2
        if fill > 0:
            result.paste(resized.resize((width, fill), box=(0, 0, width, 0)), box=(0, 0))
            bottom = resized.resize((width, fill), box=(0, resized.height, width, resized.height))
            result.paste(bottom, box=(0, fill + src_h))
    elif ratio > src_ratio:
        fill = width // 2 - src_w // 2
        if fill > 0:
            result.paste(resized.resize((fill, height), box=(0, 0, 0, height)), box=(0, 0))
            right = resized.resize((fill, height), box=(resized.width, 0, resized.width, height))
            result.paste(right, box=(fill + src_w, 0))
    return result


def upscaler_names(latent_upscale: bool, models: list[str]) -> list[str]:
    """Hires upscaler choices, A1111's order: the latent modes (only where the family's latents allow them), the
    resamplers, then the upscaler models by name."""
    return [*(LATENT_MODES if latent_upscale else ()), *RESAMPLERS, *models]
