"""A1111 request bodies to engine requests, and engine results back to A1111's response fields."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import io
from dataclasses import dataclass
from typing import Any

from PIL import Image, UnidentifiedImageError

from webui import __version__
from webui.api.listing import SAMPLER_ALIASES, SCHEDULERS, checkpoint_title
from webui.api.models import Img2ImgBody, Txt2ImgBody
from webui.api.options import NO_VAE, OVERRIDE_KEYS, check_option
from webui.api.second_pass import SecondPassError, hires_fields, img2img_part
from webui.engine.image_metadata import read_image_metadata
from webui.engine.infotext import parse_infotext
from webui.engine.lora import lora_warnings
from webui.engine.pipelines import ModelChoice
from webui.engine.reproduce import family_defaults, request_from_infotext
from webui.engine.request import GenerationRequest, GenerationResult
from webui.engine.samplers import split_legacy_name
from webui.engine.second_pass import SECOND_PASS_FIELDS
from webui.engine.styles import StyleLibrary, apply_styles
from webui.models.kinds import Kind
from webui.models.library import ModelNotFoundError

# Set to something truthy, these change the image in A1111; here they are ignored, and said so in info.warnings.
UNSUPPORTED = {
    "restore_faces": "face restoration",
    "tiling": "tiling",
    "script_name": "scripts",
    "alwayson_scripts": "scripts",
}
# A1111's sampler parameters with the values that change nothing (s_tmax 0 means "no upper bound").
SAMPLER_PARAMETER_DEFAULTS = {"s_min_uncond": 0.0, "s_churn": 0.0, "s_tmax": 0.0, "s_tmin": 0.0, "s_noise": 1.0}
# Infotext values (reproduce.py's field names) → the body field A1111 fills from them.
INFOTEXT_FIELDS = {
    "prompt": "prompt", "negative_prompt": "negative_prompt", "steps": "steps", "cfg_scale": "cfg_scale",
    "seed": "seed", "width": "width", "height": "height", "sampler": "sampler_name", "schedule": "scheduler",
    "subseed": "subseed", "subseed_strength": "subseed_strength", "eta": "eta",
    **{name: name for name in SECOND_PASS_FIELDS if name != "refiner_checkpoint"},
}  # fmt: skip
# Infotext keys that have their own field in A1111's info; the rest go to extra_generation_params.
_MAIN_KEYS = frozenset(
    ("Steps", "Sampler", "CFG scale", "Seed", "Size", "Model hash", "Model", "VAE", "VAE hash", "Clip skip", "Version")
)
_SCHEDULE_BY_NAME = {
    key.lower(): label
    for label, fields in SCHEDULERS.items()
    for key in (label, fields["name"], *fields.get("aliases", []))
}
_SAMPLER_BY_ALIAS = {alias.lower(): name for name, aliases in SAMPLER_ALIASES.items() for alias in aliases}


class FieldError(ValueError):
    """A body field this studio cannot accept; `loc` is its path (as FastAPI reports validation errors)."""

    def __init__(self, loc: tuple[str, ...], message: str, value: Any) -> None:
        super().__init__(message)
        self.loc, self.value = loc, value


@dataclass(frozen=True)
class Txt2ImgPlan:
    request: GenerationRequest
    sampler_name: str
    warnings: tuple[str, ...] = ()
    samples_format: str = "png"
    styles: tuple[str, ...] = ()
    keep_settings: dict[str, Any] | None = None  # override_settings to keep (override_settings_restore_afterwards)


def _given(body: Txt2ImgBody, name: str) -> Any:
    """The field's value, or A1111's default when the client sent null or nothing."""
    value = getattr(body, name)
    return type(body).model_fields[name].default if value is None else value


def _renamed(message: str, field: str, api_field: str) -> str:
    return f"{api_field}:{message.split(':', 1)[1]}" if message.startswith(f"{field}:") else message


def _sampler(body: Txt2ImgBody) -> tuple[str, str, tuple[str, ...]]:
    """(sampler, schedule type, where the sampler came from); a legacy name like "DPM++ 2M Karras" carries both."""
    loc = ("body", "sampler_name" if body.sampler_name else "sampler_index")
    name = body.sampler_name or _given(body, "sampler_index")
    try:
        sampler, schedule = split_legacy_name(_SAMPLER_BY_ALIAS.get(name.lower(), name))
    except ValueError as error:
        raise FieldError(loc, _renamed(str(error), "sampler", loc[-1]), name) from None
    if body.scheduler:
        schedule = _SCHEDULE_BY_NAME.get(body.scheduler.lower())
        if schedule is None:
            allowed = ", ".join(f["name"] for f in SCHEDULERS.values())
            raise FieldError(
                ("body", "scheduler"), f"scheduler: unknown {body.scheduler!r}; allowed: {allowed}", body.scheduler
            )
    return sampler, schedule, loc


def _find(library: Any, name: str, kind: Kind, loc: tuple[str, ...]) -> Any:
    try:
        return library.find(name, kind)
    except ModelNotFoundError as error:
        raise ModelNotFoundError(f"{loc[-1]}: {error}") from None


def model_choice(library: Any, options: dict[str, Any], overrides: dict[str, Any]) -> ModelChoice:
    """The checkpoint (and VAE) a request runs on: its override_settings, else the options. Raises
    ModelNotFoundError naming the field for a name the library lacks."""
    loc = ("body", "override_settings", "sd_model_checkpoint")
    name = overrides.get("sd_model_checkpoint") or options["sd_model_checkpoint"]
    if not name:
        raise ModelNotFoundError(
            f"sd_model_checkpoint: no usable checkpoint under {library.models_dir}; put one in checkpoints/"
        )
    key = "forge_additional_modules"
    modules = overrides[key] if key in overrides else options.get(key) or []
    if modules:  # Forge's modular models: a diffusion-model file and its text encoders / VAE
        choice = _modular_choice(library, str(name), modules, loc)
    else:
        choice = ModelChoice(_find(library, str(name), Kind.CHECKPOINT, loc).path)
    vae = overrides["sd_vae"] if "sd_vae" in overrides else options["sd_vae"]
    if vae in NO_VAE:
        return choice
    return dataclasses.replace(choice, vae=_find(library, str(vae), Kind.VAE, ("body", "sd_vae")).path)


def _modular_choice(library: Any, name: str, modules: Any, loc: tuple[str, ...]) -> ModelChoice:
    """`sd_model_checkpoint` naming a diffusion-model file (or a checkpoint) with Forge's
    `forge_additional_modules`: each module's kind (text encoder, VAE) is read from the library."""
    where = ("body", "override_settings", "forge_additional_modules")
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        raise FieldError(where, "forge_additional_modules: expected a list of file names", modules)
    try:
        model = library.find(name, Kind.UNET)
    except ModelNotFoundError:
        model = _find(library, name, Kind.CHECKPOINT, loc)
    parts: dict[str, Any] = {"unet": model.path} if model.kind is Kind.UNET else {"checkpoint": model.path}
    encoders = []
    for module in modules:
        entry = _find(library, module, None, where)
        if entry.kind is Kind.VAE:
            parts["vae"] = entry.path
        elif entry.kind is Kind.TEXT_ENCODER:
            encoders.append(entry.path)
        else:
            raise FieldError(where, f"forge_additional_modules: {module} is a {entry.kind.value}, not a text "
                             "encoder or VAE", module)
    parts.update(zip(("text_encoder", "text_encoder_2", "text_encoder_3"), encoders, strict=False))
    return ModelChoice(parts.pop("checkpoint", None), **parts)


def _clip_skip(body: Txt2ImgBody, options: dict[str, Any], overrides: dict[str, Any]) -> tuple[int, tuple]:
    key = "CLIP_stop_at_last_layers"
    if key in overrides:
        value, loc = overrides[key], ("body", "override_settings", key)
    elif body.clip_skip is not None:
        value, loc = body.clip_skip, ("body", "clip_skip")
    else:
        return options[key], ("body", "clip_skip")
    try:
        return check_option(key, value), loc
    except ValueError as error:
        raise FieldError(loc, _renamed(str(error), key, loc[-1]), value) from None


def with_infotext(body: Txt2ImgBody, library: Any) -> tuple[Txt2ImgBody, list[str]]:
    """A1111 1.8+'s `infotext` field: every field the body does not set comes from the infotext (prompt, steps,
    sampler, size, seeds, ...), and so do the checkpoint, VAE and clip skip unless override_settings names them.
    Returns the filled body and notes on what could not be used."""
    if not body.infotext:
        return body, []
    reproduction = request_from_infotext(body.infotext, library)
    given = body.model_fields_set
    fills = {
        field: reproduction.values[name]
        for name, field in INFOTEXT_FIELDS.items()
        if name in reproduction.values and field not in given
    }
    overrides = dict(body.override_settings or {})
    checkpoint = reproduction.values.get("checkpoint")
    if checkpoint is not None and "sd_model_checkpoint" not in overrides:
        entry = next((e for e in library.entries(Kind.CHECKPOINT) if e.path == checkpoint), None)
        if entry is not None:
            overrides["sd_model_checkpoint"] = checkpoint_title(entry)
    refiner = reproduction.values.get("refiner_checkpoint")
    if refiner is not None and "refiner_checkpoint" not in given:
        fills["refiner_checkpoint"] = str(refiner)
    if reproduction.values.get("vae") is not None and "sd_vae" not in overrides:
        overrides["sd_vae"] = reproduction.values["vae"].name
    if "clip_skip" in reproduction.values and "CLIP_stop_at_last_layers" not in overrides and "clip_skip" not in given:
        overrides["CLIP_stop_at_last_layers"] = reproduction.values["clip_skip"]
    notes = [f"infotext: {note}" for note in reproduction.notes]
    notes += [f"infotext: not in the library: {item}" for item in reproduction.missing]
    return body.model_copy(update={**fills, "override_settings": overrides}), notes


def plan_txt2img(
    body: Txt2ImgBody, library: Any, options: dict[str, Any], styles: StyleLibrary | None = None
) -> Txt2ImgPlan:
    """The engine request for an A1111 body. Raises FieldError (a bad field) or ModelNotFoundError (a name)."""
    body, warnings = with_infotext(body, library)
    overrides = body.override_settings or {}
    sampler, schedule, sampler_loc = _sampler(body)
    clip_skip, clip_loc = _clip_skip(body, options, overrides)
    prompt, negative = _given(body, "prompt"), _given(body, "negative_prompt")
    style_names = tuple(body.styles or ())
    if style_names:
        if styles is None:
            raise FieldError(("body", "styles"), "styles: no styles file is known here", list(style_names))
        try:
            prompt, negative = apply_styles(prompt, negative, styles.resolve(style_names))
        except LookupError as error:
            raise FieldError(("body", "styles"), str(error), list(style_names)) from None
    fields = {
        "prompt": prompt,
        "negative_prompt": negative,
        "steps": _given(body, "steps"),
        "cfg_scale": _given(body, "cfg_scale"),
        "width": _given(body, "width"),
        "height": _given(body, "height"),
        "seed": _given(body, "seed"),
        "subseed": _given(body, "subseed"),
        "subseed_strength": _given(body, "subseed_strength"),
        "eta": body.eta,
        "batch_size": _given(body, "batch_size"),
        "batch_count": _given(body, "n_iter"),
        "sampler": sampler,
        "schedule": schedule,
        "clip_skip": clip_skip,
        "disable_extra_networks": bool(body.disable_extra_networks),
        "distilled_guidance": body.distilled_cfg_scale,
    }
    choice = model_choice(library, options, overrides)
    unsent = {n for n in ("steps", "cfg_scale") if n not in body.model_fields_set or getattr(body, n) is None}
    fields.update({n: v for n, v in family_defaults(choice).items() if n in unsent})  # FLUX.1: CFG 1, its steps
    try:
        second, second_warnings = hires_fields(body, library, fields["width"], fields["height"])
    except SecondPassError as error:
        raise FieldError(("body", error.field), str(error), error.value) from None
    fields.update(second)
    warnings += second_warnings
    try:
        request = GenerationRequest(model=choice, **fields)
    except ValueError as error:
        field = str(error).split(":", 1)[0]
        loc = {"batch_count": ("body", "n_iter"), "sampler": sampler_loc, "schedule": ("body", "scheduler")}.get(
            field, clip_loc if field == "clip_skip" else ("body", field)
        )
        raise FieldError(loc, _renamed(str(error), field, loc[-1]), fields.get(field)) from None
    samples_format = options["samples_format"]
    if "samples_format" in overrides:
        try:
            samples_format = check_option("samples_format", overrides["samples_format"])
        except ValueError as error:
            loc = ("body", "override_settings", "samples_format")
            raise FieldError(loc, str(error), overrides["samples_format"]) from None
    warnings += [
        f"{key}: {what} is not supported here; ignored" for key, what in UNSUPPORTED.items() if _set(body, key)
    ]
    warnings += [
        f"{key}: {value} is not supported here; ignored"
        for key, default in SAMPLER_PARAMETER_DEFAULTS.items()
        if (value := getattr(body, key)) is not None and value != default
    ]
    warnings += [
        f"{key}: resizing the seed's noise is not supported here; ignored"
        for key in ("seed_resize_from_w", "seed_resize_from_h")
        if (getattr(body, key) or 0) > 0
    ]
    warnings += [
        f"override_settings.{key}: not supported here; ignored"
        for key, value in overrides.items()
        if key not in OVERRIDE_KEYS and options.get(key) != value
    ]
    keep = None
    if body.override_settings_restore_afterwards is False:
        keep = {key: value for key, value in overrides.items() if key in OVERRIDE_KEYS}
    return Txt2ImgPlan(request, sampler, tuple(warnings), samples_format, style_names, keep)


def plan_img2img(
    body: Img2ImgBody, library: Any, options: dict[str, Any], styles: StyleLibrary | None = None
) -> Txt2ImgPlan:
    """The engine request for an A1111 img2img body: txt2img's, with the input images. FieldError names a bad field."""
    try:
        source, warnings = img2img_part(body)
    except SecondPassError as error:
        raise FieldError(("body", error.field), str(error), error.value) from None
    plan = plan_txt2img(body.model_copy(update={"enable_hr": False}), library, options, styles)
    batch_size = len(source.images) if len(source.images) > 1 else plan.request.batch_size
    try:
        request = dataclasses.replace(plan.request, img2img=source, batch_size=batch_size)
    except ValueError as error:
        raise FieldError(("body", "init_images"), str(error), len(source.images)) from None
    return dataclasses.replace(plan, request=request, warnings=plan.warnings + tuple(warnings))


def _set(body: Txt2ImgBody, key: str) -> bool:
    value = getattr(body, key)
    return bool(value) and value != -1


def txt2img_info(plan: Txt2ImgPlan, result: GenerationResult, started_at: float) -> dict[str, Any]:
    """A1111's `info` object (sent as a JSON string) for a finished job, plus our loras/warnings/interrupted."""
    request = plan.request
    infotexts = [image.infotext for image in result.images]
    seeds = [image.seed for image in result.images]
    params = parse_infotext(infotexts[0])[2] if infotexts else {}
    count = len(result.images)
    subseeds = list(result.info.get("subseeds") or [-1] * count)[:count]
    return {
        "prompt": request.prompt,
        "all_prompts": [request.prompt] * count,
        "negative_prompt": request.negative_prompt,
        "all_negative_prompts": [request.negative_prompt] * count,
        "seed": seeds[0] if seeds else request.seed,
        "all_seeds": seeds,
        "subseed": subseeds[0] if subseeds else request.subseed,
        "all_subseeds": subseeds,
        "subseed_strength": request.subseed_strength,
        "width": request.width,
        "height": request.height,
        "sampler_name": plan.sampler_name,
        "cfg_scale": request.cfg_scale,
        "steps": request.steps,
        "batch_size": request.batch_size,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": params.get("Model", request.model.name),
        "sd_model_hash": params.get("Model hash"),
        "sd_vae_name": params.get("VAE"),
        "sd_vae_hash": params.get("VAE hash"),
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": _denoising_strength(request),
        "extra_generation_params": {k: v for k, v in params.items() if k not in _MAIN_KEYS},
        "index_of_first_image": 0,  # no grid is ever prepended
        "infotexts": infotexts,
        "styles": list(plan.styles),
        "job_timestamp": dt.datetime.fromtimestamp(started_at).strftime("%Y%m%d%H%M%S"),
        "clip_skip": request.clip_skip,
        "is_using_inpainting_conditioning": False,
        "interrupted": bool(result.info.get("interrupted")),
        "version": params.get("Version", f"webui {__version__}"),
        "loras": [report.to_json() for report in result.loras],
        "warnings": [*plan.warnings, *result.info.get("warnings", []), *lora_warnings(result.loras)],
    }


def _denoising_strength(request: GenerationRequest) -> float | None:
    if request.img2img is not None:
        return request.img2img.denoising_strength
    return request.hires.denoising_strength if request.hires is not None else None


def encode_png(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def image_to_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return encode_png(buffer.getvalue())


def png_info(encoded: str) -> dict[str, Any]:
    """`/png-info`: the image's infotext, its other text chunks, and the infotext parsed (A1111's key names)."""
    loc = ("body", "image")
    text = encoded.strip()
    if text.startswith("data:"):
        text = text.split(",", 1)[-1]
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise FieldError(loc, "image: not base64; send the file's bytes base64-encoded", encoded[:40]) from None
    try:
        with Image.open(io.BytesIO(data)) as image:
            chunks = dict(image.info)
        metadata = read_image_metadata(io.BytesIO(data))  # PNG's `parameters`, or JPEG/WebP's EXIF UserComment
    except Image.DecompressionBombError:
        raise FieldError(loc, "image: too many pixels to be a generated image; send the PNG itself", None) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):  # PIL's ways to say "broken"
        raise FieldError(loc, "image: the decoded bytes are not an image file PIL can read", encoded[:40]) from None
    chunks.pop("parameters", None)
    info = metadata.parameters or ""
    items = {key: value for key, value in chunks.items() if isinstance(value, (str, int, float))}
    if not info:
        return {"info": "", "items": items, "parameters": {}}
    prompt, negative, params = parse_infotext(info)
    parameters: dict[str, Any] = {"Prompt": prompt, "Negative prompt": negative}
    for key, value in params.items():
        width, _, height = value.partition("x")
        if key == "Size" and width.isdigit() and height.isdigit():
            parameters.update({"Size-1": width, "Size-2": height})
        else:
            parameters[key] = value
    return {"info": info, "items": items, "parameters": parameters}
