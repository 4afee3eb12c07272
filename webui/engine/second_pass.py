"""The request's second-pass parts: Hires. fix, the refiner hand-off and img2img's input, as A1111 names them.

Each is a frozen dataclass that validates itself (errors name A1111's API field: `hr_scale`, `refiner_switch_at`,
`denoising_strength`, ...) and knows its infotext keys. The target size of a hires pass follows A1111's
`StableDiffusionProcessingTxt2Img.calculate_target_resolution` (modules/processing.py): `hr_scale` multiplies
the first-pass size, or `hr_resize_x`/`hr_resize_y` give it (one of them 0: the other side keeps the aspect;
both: the image is upscaled to cover them and the latent cropped to fit, `truncate_x`/`truncate_y`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from webui.engine.limits import RequestError, check_text
from webui.engine.samplers import SCHEDULE_TYPES, sampler_entry

MAX_HIRES_SIDE = 8192
STEPS_LIMIT = 1000  # as GenerationRequest's
LATENT_FACTOR = 8  # A1111's opt_f: pixels per latent pixel of the SD VAE
DEFAULT_HR_UPSCALER = "Latent"  # A1111's latent_upscale_default_mode, used when hr_upscaler is not given
# A1111's img2img resize modes, by index (its API's `resize_mode`) and name (the UI's radio).
RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")


def _check(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:  # NaN fails too
        raise RequestError(name, f"{value} is out of range; allowed {low}..{high}")


@dataclass(frozen=True)
class HiresTarget:
    """Where a hires pass goes: the upscaled size, the latent pixels cropped off each axis afterwards, and the
    VAE's factor (pixels per latent pixel: A1111's opt_f, 8 for every real model)."""

    width: int
    height: int
    truncate_x: int = 0
    truncate_y: int = 0
    factor: int = LATENT_FACTOR

    @property
    def latent_size(self) -> tuple[int, int]:
        """(width, height) of the second pass's latent, after the crop (A1111 crops half on each side)."""
        return self.width // self.factor - self.truncate_x, self.height // self.factor - self.truncate_y


@dataclass(frozen=True)
class HiresFix:
    """A1111's Hires. fix: generate at the request's size, upscale with `upscaler`, denoise again at the target.

    `upscaler` is an A1111 name: a latent mode ("Latent", "Latent (bicubic antialiased)", ...), "None" /
    "Lanczos" / "Nearest", or an upscaler model's name from models/upscalers/. `steps`: how many steps the pass
    runs (A1111's `hr_second_pass_steps`, all of them, on a schedule stretched by the strength; 0: the first pass's
    count); `sampler`/`schedule`/`cfg_scale` None and empty prompts: the
    first pass's. `denoising_strength` 0..1: how much of the upscaled image is noised and denoised again."""

    upscaler: str = DEFAULT_HR_UPSCALER
    scale: float = 2.0
    resize_x: int = 0
    resize_y: int = 0
    steps: int = 0
    denoising_strength: float = 0.7
    sampler: str | None = None
    schedule: str | None = None
    prompt: str = ""
    negative_prompt: str = ""
    cfg_scale: float | None = None

    def __post_init__(self) -> None:
        if not self.upscaler.strip():
            raise ValueError("hr_upscaler: empty; name a latent mode, None, Lanczos, Nearest or an upscaler model")
        check_text("hr_prompt", self.prompt)
        check_text("hr_negative_prompt", self.negative_prompt)
        _check("hr_scale", self.scale, 1.0, 8.0)
        _check("hr_resize_x", self.resize_x, 0, MAX_HIRES_SIDE)
        _check("hr_resize_y", self.resize_y, 0, MAX_HIRES_SIDE)
        _check("hr_second_pass_steps", self.steps, 0, STEPS_LIMIT)
        _check("denoising_strength", self.denoising_strength, 0.0, 1.0)
        if self.cfg_scale is not None:
            _check("hr_cfg", self.cfg_scale, 0.0, 100.0)
        if self.sampler is not None:
            try:
                sampler_entry(self.sampler)
            except ValueError as error:
                raise ValueError(f"hr_sampler_name:{str(error).split(':', 1)[1]}") from None
        if self.schedule is not None and self.schedule not in SCHEDULE_TYPES:
            raise ValueError(f"hr_scheduler: unknown {self.schedule!r}; allowed: {', '.join(SCHEDULE_TYPES)}")

    def target(self, width: int, height: int, factor: int = LATENT_FACTOR) -> HiresTarget:
        """The target for a first pass of `width`×`height` pixels, as A1111 computes it (`factor`: the VAE's)."""
        if self.resize_x == 0 and self.resize_y == 0:
            return HiresTarget(int(width * self.scale), int(height * self.scale), factor=factor)
        if self.resize_y == 0:
            return HiresTarget(self.resize_x, self.resize_x * height // width, factor=factor)
        if self.resize_x == 0:
            return HiresTarget(self.resize_y * width // height, self.resize_y, factor=factor)
        if width / height < self.resize_x / self.resize_y:
            upscaled = (self.resize_x, self.resize_x * height // width)
        else:
            upscaled = (self.resize_y * width // height, self.resize_y)
        truncate_x = (upscaled[0] - self.resize_x) // factor
        truncate_y = (upscaled[1] - self.resize_y) // factor
        return HiresTarget(*upscaled, truncate_x, truncate_y, factor)

    def infotext(self, first_sampler: str, first_schedule: str, first_cfg: float) -> dict[str, Any]:
        """A1111's keys for this pass (prompts apart: the caller writes `Hires prompt` when it differs)."""
        params: dict[str, Any] = {"Denoising strength": self.denoising_strength}
        if self.resize_x == 0 and self.resize_y == 0:
            params["Hires upscale"] = self.scale
        else:
            params["Hires resize"] = f"{self.resize_x}x{self.resize_y}"
        if self.steps:
            params["Hires steps"] = self.steps
        params["Hires upscaler"] = self.upscaler
        if self.sampler is not None and self.sampler != first_sampler:
            params["Hires sampler"] = self.sampler
        if self.schedule is not None and self.schedule != first_schedule:
            params["Hires schedule type"] = self.schedule
        if self.cfg_scale is not None and self.cfg_scale != first_cfg:
            params["Hires CFG Scale"] = self.cfg_scale  # Forge's key (A1111 has no hires CFG)
        return params


@dataclass(frozen=True)
class Refiner:
    """A1111's refiner: the base model denoises the first `switch_at` of the steps, this checkpoint the rest
    (diffusers' `denoising_end` / `denoising_start` pair). `switch_at` 1.0 never switches, as in A1111."""

    checkpoint: Path
    switch_at: float = 0.8

    def __post_init__(self) -> None:
        _check("refiner_switch_at", self.switch_at, 0.01, 1.0)

    @property
    def switches(self) -> bool:
        return self.switch_at < 1.0


@dataclass(frozen=True)
class Img2Img:
    """img2img's input: the image(s), how they are fitted to the request's size (A1111's `resize_mode`: one of
    RESIZE_MODES or its index) and `denoising_strength` (0 returns the fitted input unchanged). One image is used
    for every image of the batch; several give one each (the batch size must then match)."""

    images: tuple[Image.Image, ...]
    resize_mode: str = RESIZE_MODES[0]
    denoising_strength: float = 0.75
    upscaler: str = "None"  # A1111's `upscaler_for_img2img`: what enlarges the input when it is smaller

    def __post_init__(self) -> None:
        if not self.images:
            raise ValueError("init_images: no image given; drop or send one")
        object.__setattr__(self, "resize_mode", resize_mode_name(self.resize_mode))
        _check("denoising_strength", self.denoising_strength, 0.0, 1.0)

    def image_for(self, index: int) -> Image.Image:
        return self.images[index if len(self.images) > 1 else 0]


def resize_mode_name(mode: str | int) -> str:
    """A1111's resize mode name from its name or its API index; ValueError names `resize_mode`."""
    if isinstance(mode, int) or (isinstance(mode, str) and mode.isdigit()):
        index = int(mode)
        if 0 <= index < len(RESIZE_MODES):
            return RESIZE_MODES[index]
    elif mode in RESIZE_MODES:
        return mode
    allowed = ", ".join(f"{i} ({name})" for i, name in enumerate(RESIZE_MODES))
    raise ValueError(f"resize_mode: unknown {mode!r}; allowed {allowed}")


def first_pass_size(width: int, height: int) -> tuple[int, int]:
    """A1111's old hires fix's first-pass size for a final `width`×`height` (about 512×512 pixels, sides rounded
    up to 64): `old_hires_fix_first_pass_dimensions` in modules/processing.py, used to read `First pass size: 0x0`."""
    scale = math.sqrt(512 * 512 / (width * height))
    return math.ceil(scale * width / 64) * 64, math.ceil(scale * height / 64) * 64


def executed_steps(steps: int, strength: float) -> int:
    """How many steps an img2img pass of `steps` at `strength` runs (diffusers' `get_timesteps`)."""
    return min(int(steps * strength), steps)


def scheduled_steps(run: int, strength: float) -> int:
    """The schedule length whose last `strength` share is `run` steps: A1111's hires pass runs its "Hires steps"
    in full on a stretched schedule (`setup_img2img_steps` with explicit steps), not `strength` of them."""
    if strength <= 0:
        return run
    steps = max(run, math.ceil(run / strength))
    while executed_steps(steps, strength) < run:  # float rounding
        steps += 1
    return steps


# Flat field names (A1111's API names, also the UI's widget names) -> HiresFix attributes.
HIRES_FIELDS = {
    "hr_upscaler": "upscaler",
    "hr_scale": "scale",
    "hr_resize_x": "resize_x",
    "hr_resize_y": "resize_y",
    "hr_second_pass_steps": "steps",
    "denoising_strength": "denoising_strength",
    "hr_sampler_name": "sampler",
    "hr_scheduler": "schedule",
    "hr_prompt": "prompt",
    "hr_negative_prompt": "negative_prompt",
    "hr_cfg": "cfg_scale",
}
SECOND_PASS_FIELDS = ("enable_hr", *HIRES_FIELDS, "refiner_checkpoint", "refiner_switch_at")
_USE_FIRST_PASS = (None, "", "Use same sampler", "Use same scheduler")  # A1111's "same as the first pass" choices


def hires_from_fields(values: Any) -> HiresFix | None:
    """The HiresFix that flat fields describe (None unless `enable_hr`); an empty or "same" value keeps the default.
    ValueError names the flat field."""
    if not values.get("enable_hr"):
        return None
    kwargs = {}
    for name, attribute in HIRES_FIELDS.items():
        value = values.get(name)
        if value in _USE_FIRST_PASS or (name == "hr_cfg" and value == 0):  # 0: the first pass's CFG, as Forge's
            continue
        if attribute in ("scale", "denoising_strength", "cfg_scale"):
            value = _number(name, value, float)
        elif attribute in ("resize_x", "resize_y", "steps"):
            value = _number(name, value, int)
        kwargs[attribute] = value
    return HiresFix(**kwargs)


def refiner_from_fields(values: Any) -> Refiner | None:
    """The Refiner that `refiner_checkpoint` (a path) and `refiner_switch_at` describe (None without a checkpoint)."""
    checkpoint = values.get("refiner_checkpoint")
    if not checkpoint:
        return None
    switch = values.get("refiner_switch_at")
    return Refiner(Path(checkpoint), 0.8 if switch in (None, "") else _number("refiner_switch_at", switch, float))


def _number(name: str, value: Any, kind: type) -> Any:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: {value!r} is not a number") from None
    if kind is int and not number.is_integer():
        raise ValueError(f"{name}: {value} is not a whole number")
    return kind(number)
