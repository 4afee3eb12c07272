"""A1111 request fields for second passes (Hires. fix, the refiner, img2img, Extras) to engine request parts."""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

from PIL import Image, UnidentifiedImageError

from webui.api.models import ExtrasBody, Img2ImgBody, Txt2ImgBody
from webui.engine.extras import ExtrasUpscale
from webui.engine.samplers import SCHEDULE_TYPES, split_legacy_name
from webui.engine.second_pass import DEFAULT_HR_UPSCALER, RESIZE_MODES, HiresFix, Img2Img, Refiner
from webui.engine.upscalers import resolve_upscaler
from webui.models.kinds import Kind
from webui.models.library import ModelNotFoundError

_SAME = (None, "", "Use same sampler", "Use same scheduler", "Use same checkpoint", "None")
_SCHEDULES = {name.lower(): name for name in SCHEDULE_TYPES} | {"sgm_uniform": "SGM Uniform"}


class SecondPassError(ValueError):
    """A second-pass field that cannot be used; `field` is its A1111 name."""

    def __init__(self, field: str, message: str, value: Any) -> None:
        super().__init__(message)
        self.field, self.value = field, value


def _upscaler_finder(library: Any) -> Any:
    return lambda name: library.find(name, Kind.UPSCALER).path


def _hr_sampler(body: Txt2ImgBody) -> tuple[str | None, str | None]:
    sampler, schedule = None, None
    if body.hr_sampler_name not in _SAME:
        try:
            sampler, legacy = split_legacy_name(body.hr_sampler_name)
        except ValueError as error:
            raise SecondPassError("hr_sampler_name", f"hr_sampler_name:{str(error).split(':', 1)[1]}",
                                  body.hr_sampler_name) from None  # fmt: skip
        schedule = None if legacy == "Automatic" else legacy
    if body.hr_scheduler not in _SAME:
        schedule = _SCHEDULES.get(body.hr_scheduler.lower().replace(" ", "_")) or _SCHEDULES.get(
            body.hr_scheduler.lower()
        )
        if schedule is None:
            allowed = ", ".join(SCHEDULE_TYPES)
            raise SecondPassError("hr_scheduler", f"hr_scheduler: unknown {body.hr_scheduler!r}; allowed: {allowed}",
                                  body.hr_scheduler)  # fmt: skip
    return sampler, schedule


def hires_fields(body: Txt2ImgBody, library: Any, width: int, height: int) -> tuple[dict[str, Any], list[str]]:
    """`hires`, `refiner` (and the first pass's width/height for the old `firstphase_*` fields) for a txt2img body,
    and warnings for what is not honoured. SecondPassError names the field."""
    fields: dict[str, Any] = {}
    warnings: list[str] = []
    if body.enable_hr:
        if body.hr_checkpoint_name not in _SAME:
            warnings.append("hr_checkpoint_name: a separate hires checkpoint is not supported here; ignored")
        sampler, schedule = _hr_sampler(body)
        resize_x, resize_y = body.hr_resize_x or 0, body.hr_resize_y or 0
        if body.firstphase_width or body.firstphase_height:  # A1111's old hires fix: width/height are the target
            resize_x, resize_y = width, height
            fields["width"] = body.firstphase_width or width
            fields["height"] = body.firstphase_height or height
        upscaler = body.hr_upscaler or DEFAULT_HR_UPSCALER
        try:
            resolve_upscaler(upscaler, _upscaler_finder(library))
            fields["hires"] = HiresFix(
                upscaler=upscaler,
                scale=2.0 if body.hr_scale is None else body.hr_scale,
                resize_x=resize_x,
                resize_y=resize_y,
                steps=body.hr_second_pass_steps or 0,
                denoising_strength=0.75 if body.denoising_strength is None else body.denoising_strength,
                sampler=sampler,
                schedule=schedule,
                prompt=body.hr_prompt or "",
                negative_prompt=body.hr_negative_prompt or "",
                cfg_scale=body.hr_cfg or None,  # 0 or null: the first pass's
            )
        except (ValueError, LookupError) as error:
            field = str(error).split(":", 1)[0]
            raise SecondPassError(field, str(error), getattr(body, field, None)) from None
    if body.refiner_checkpoint not in _SAME:
        try:
            entry = library.find(body.refiner_checkpoint, Kind.CHECKPOINT)
        except ModelNotFoundError as error:
            raise ModelNotFoundError(f"refiner_checkpoint: {error}") from None
        switch = 0.8 if body.refiner_switch_at is None else body.refiner_switch_at
        try:
            fields["refiner"] = Refiner(entry.path, switch)
        except ValueError as error:
            raise SecondPassError("refiner_switch_at", str(error), switch) from None
    return fields, warnings


def decode_image(encoded: str, field: str) -> Image.Image:
    """An RGB image from base64 (a `data:image/...;base64,` prefix allowed); SecondPassError names `field`."""
    text = encoded.strip()
    if text.startswith("data:"):
        text = text.split(",", 1)[-1]
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SecondPassError(field, f"{field}: not base64; send the image file's bytes base64-encoded",
                              encoded[:40]) from None  # fmt: skip
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return image.convert("RGB")
    except Image.DecompressionBombError:
        raise SecondPassError(field, f"{field}: too many pixels for an input image (PIL's decompression-bomb "
                              "limit); resize it first", encoded[:40]) from None  # fmt: skip
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):  # PIL's ways to say "broken"
        raise SecondPassError(field, f"{field}: the decoded bytes are not an image file PIL can read",
                              encoded[:40]) from None  # fmt: skip


def img2img_part(body: Img2ImgBody) -> tuple[Img2Img, list[str]]:
    """The input images with A1111's resize mode and strength; inpainting is refused (SecondPassError)."""
    if body.mask:
        raise SecondPassError("mask", "mask: inpainting is not supported here yet; send no mask for img2img", "…")
    if not body.init_images:
        raise SecondPassError("init_images", "init_images: no image given; send one or more base64 images", [])
    images = tuple(decode_image(item, "init_images") for item in body.init_images)
    warnings = []
    if body.enable_hr:
        warnings.append("enable_hr: Hires. fix is a txt2img option; ignored in img2img")
    if body.initial_noise_multiplier not in (None, 1.0):
        warnings.append(f"initial_noise_multiplier: {body.initial_noise_multiplier} is not supported here; ignored")
    mode = body.resize_mode or 0
    if not 0 <= mode < len(RESIZE_MODES):
        allowed = ", ".join(f"{i} ({name})" for i, name in enumerate(RESIZE_MODES))
        raise SecondPassError("resize_mode", f"resize_mode: unknown {mode}; allowed {allowed}", mode)
    strength = 0.75 if body.denoising_strength is None else body.denoising_strength
    try:
        return Img2Img(images, RESIZE_MODES[mode], strength), warnings
    except ValueError as error:
        raise SecondPassError(str(error).split(":", 1)[0], str(error), strength) from None


def extras_settings(body: ExtrasBody, library: Any) -> tuple[ExtrasUpscale, Any]:
    """The Extras upscale and its resolved upscalers; SecondPassError names the field (face restoration too)."""
    for field in ("gfpgan_visibility", "codeformer_visibility"):
        if getattr(body, field):
            raise SecondPassError(field, f"{field}: face restoration is not supported here; send 0", 0)
    try:
        settings = ExtrasUpscale(
            upscaler_1=body.upscaler_1 or "None",
            upscaler_2=body.upscaler_2 or "None",
            visibility_2=body.extras_upscaler_2_visibility or 0.0,
            mode=body.resize_mode or 0,
            scale=2.0 if body.upscaling_resize is None else body.upscaling_resize,
            width=body.upscaling_resize_w or 512,
            height=body.upscaling_resize_h or 512,
            crop=body.upscaling_crop is not False,
        )
        return settings, settings.upscalers(_upscaler_finder(library))
    except (ValueError, LookupError) as error:
        field = str(error).split(":", 1)[0]
        raise SecondPassError(field, str(error), getattr(body, field, None)) from None


def upscaler_items(library: Any) -> list[dict[str, Any]]:
    """A1111's /upscalers list: None, Lanczos, Nearest, then every upscaler model file."""
    from webui.engine.upscalers import RESAMPLERS

    items = [{"name": n, "model_name": None, "model_path": None, "model_url": None, "scale": 4} for n in RESAMPLERS]
    for entry in library.entries(Kind.UPSCALER):
        if entry.usable:
            name = entry.path.stem
            items.append({"name": name, "model_name": entry.detail.split(" ")[0], "model_path": str(entry.path),
                          "model_url": None, "scale": _scale_of(name)})  # fmt: skip
    return items


def _scale_of(name: str) -> float | None:
    """The factor a file's name states (`4x-UltraSharp`, `RealESRGAN_x2plus`), as A1111 shows it; None if none."""
    import re

    found = re.search(r"(?:^|[^a-z0-9])(\d)x|x(\d)(?:[^0-9]|$)", name.lower())
    return float(found.group(1) or found.group(2)) if found else None
