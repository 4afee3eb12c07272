"""The one adapter between widgets and the engine: widget values travel by field name, never by position.

Each tab keeps its request widgets in a dict `{field name: component}`; `by_name` turns a function of
`values: dict[str, Any]` into a Gradio handler whose parameters carry those names (so the API takes
them as keywords too), and `build_request` maps the names onto GenerationRequest / ModelChoice /
LoraSpec. A name that is not a field fails at build time, not at the first click.
"""

from __future__ import annotations

import dataclasses
import html
import inspect
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import gradio as gr

from webui.engine.extra_networks import extract_lora_tags
from webui.engine.infotext import parse_infotext
from webui.engine.jobs import QueueFullError
from webui.engine.lora import LoraReport, LoraSpec
from webui.engine.pipelines import ModelChoice
from webui.engine.reproduce import Reproduction
from webui.engine.request import LATENT_FACTOR, MAX_CFG, MAX_STEPS, MIN_SIDE, GenerationRequest
from webui.engine.samplers import AUTOMATIC, default_sampling
from webui.engine.second_pass import (
    RESIZE_MODES,
    SECOND_PASS_FIELDS,
    Img2Img,
    Refiner,
    hires_from_fields,
    refiner_from_fields,
)
from webui.engine.styles import StyleLibrary, apply_styles
from webui.models.files import ModelFileError
from webui.models.kinds import Kind
from webui.models.library import ModelLibrary, ModelNotFoundError
from webui.ui import choices, empty_state
from webui.ui.runner import JobFailed

log = logging.getLogger(__name__)

# Request fields set by one widget each (the second-pass parts are built from several: SECOND_PASS_FIELDS).
REQUEST_FIELDS = tuple(
    f.name
    for f in dataclasses.fields(GenerationRequest)
    if f.name not in ("model", "loras", "hires", "refiner", "img2img")
)
MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(ModelChoice))
MODEL_KINDS = {"checkpoint": Kind.CHECKPOINT, "unet": None, "vae": None, "text_encoder": None, "text_encoder_2": None,
               "text_encoder_3": None}
INTEGER_FIELDS = frozenset({"steps", "width", "height", "seed", "batch_size", "batch_count", "clip_skip", "subseed"})
FLOAT_FIELDS = frozenset({"cfg_scale", "subseed_strength", "distilled_guidance"})
OPTIONAL_FLOAT_FIELDS = frozenset({"eta"})  # empty: the sampler's default
MAX_SIDE_UI = 2048
# The widgets' ranges, A1111's: what Send to txt2img fits a value into (the API takes more).
WIDGET_RANGES = {"steps": (1, MAX_STEPS), "cfg_scale": (0.0, MAX_CFG), "width": (MIN_SIDE, MAX_SIDE_UI),
                 "height": (MIN_SIDE, MAX_SIDE_UI)}  # fmt: skip
MAX_LORAS = 5
# Errors a user can act on: shown as their message alone.
USER_ERRORS = (ValueError, LookupError, OSError, ModelFileError, QueueFullError, JobFailed)


def lora_names(row: int) -> dict[str, str]:
    """Widget names of LoRA stack row `row` (1-based): the LoRA, its two weights, its toggle."""
    base = f"lora_{row}"
    return {
        "name": base,
        "unet_weight": f"{base}_unet_weight",
        "te_weight": f"{base}_te_weight",
        "enabled": f"{base}_enabled",
    }


LORA_FIELDS = tuple(name for row in range(1, MAX_LORAS + 1) for name in lora_names(row).values())
STYLES_FIELD = "styles"  # A1111's Styles: names of styles.csv rows applied to the prompts before generating
# img2img's own widgets: the input image, A1111's resize mode (denoising_strength is shared with Hires. fix).
IMG2IMG_FIELDS = ("init_image", "resize_mode")
KNOWN_NAMES = frozenset(REQUEST_FIELDS + MODEL_FIELDS + LORA_FIELDS + (STYLES_FIELD,) + SECOND_PASS_FIELDS
                        + IMG2IMG_FIELDS)  # fmt: skip


def check_names(names: Sequence[str]) -> None:
    unknown = [n for n in names if n not in KNOWN_NAMES]
    if unknown:
        raise KeyError(f"not request fields: {', '.join(unknown)} (known: {', '.join(sorted(KNOWN_NAMES))})")


def _number(name: str, value: Any, integer: bool) -> int | float:
    if value is None or value == "":
        raise ValueError(f"{name}: no value; give a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: {value!r} is not a number") from None
    if not integer:
        return number
    if not number.is_integer():
        raise ValueError(f"{name}: {value} is not a whole number")
    return int(number)


def request_fields(values: Mapping[str, Any]) -> dict[str, Any]:
    """GenerationRequest keyword arguments from the request-field widgets present in `values`."""
    out: dict[str, Any] = {}
    for name in REQUEST_FIELDS:
        if name not in values:
            continue
        value = values[name]
        if name in OPTIONAL_FLOAT_FIELDS:
            value = None if value is None or value == "" else _number(name, value, False)
        elif name in INTEGER_FIELDS or name in FLOAT_FIELDS:
            value = _number(name, value, name in INTEGER_FIELDS)
        elif name == "sampler":
            value = None if value in (None, "") else str(value)  # None: the model's own scheduler
        elif name == "schedule":
            value = value or AUTOMATIC
        else:
            value = "" if value is None else str(value)
        out[name] = value
    return out


def model_choice(values: Mapping[str, Any], library: ModelLibrary) -> ModelChoice:
    unet = values.get("unet")
    modular = bool(unet) and unet != choices.FROM_CHECKPOINT
    if not modular and values.get("checkpoint") in (None, "", choices.NO_CHECKPOINT):
        if empty_state.library_is_empty(library):
            raise ValueError(empty_state.no_model_message(library))
        raise ValueError(
            "checkpoint: none chosen; pick one in the model bar (press Refresh after adding files), or a UNet / "
            "transformer with its text encoder(s) and VAE in the Components tab"
        )
    paths = {name: choices.resolve(library, values.get(name), MODEL_KINDS[name]) for name in MODEL_FIELDS}
    return ModelChoice(**paths)


def lora_stack(
    values: Mapping[str, Any], library: ModelLibrary, missing: list[LoraReport] | None = None
) -> tuple[LoraSpec, ...]:
    """The stack rows that name a LoRA, top to bottom; a row switched off stays in (its adapter is kept). A row
    naming a LoRA the library no longer has raises ModelNotFoundError, or, given a `missing` list, is left out
    and reported there (the image is made without it, as with a `<lora:…>` tag naming no file)."""
    stack = []
    for row in range(1, MAX_LORAS + 1):
        names = lora_names(row)
        if not values.get(names["name"]):
            continue
        try:
            path = choices.resolve(library, values[names["name"]], Kind.LORA)
        except LookupError as error:
            if missing is None:
                raise
            missing.append(LoraReport(Path(str(values[names["name"]])).stem, error=str(error)))
            continue
        stack.append(
            LoraSpec(
                path,
                unet_weight=_number(names["unet_weight"], values.get(names["unet_weight"], 1.0), False),
                te_weight=_number(names["te_weight"], values.get(names["te_weight"], 1.0), False),
                enabled=bool(values.get(names["enabled"], True)),
            )
        )
    return tuple(stack)


def build_request(
    values: Mapping[str, Any],
    library: ModelLibrary,
    styles: StyleLibrary | None = None,
    missing: list[LoraReport] | None = None,
) -> GenerationRequest:
    """The request the widgets describe, chosen styles applied to the prompts; ValueError / LookupError
    (ModelNotFoundError included) name the field that is wrong. LoRA rows naming no file go to `missing` when it
    is given (see `lora_stack`)."""
    check_names(list(values))
    fields = request_fields(values)
    chosen = list(values.get(STYLES_FIELD) or [])
    if chosen:
        if styles is None:
            raise LookupError("styles: no styles file is known here; put a styles.csv in the models folder")
        prompt, negative = apply_styles(fields.get("prompt", ""), fields.get("negative_prompt", ""),
                                        styles.resolve(chosen))  # fmt: skip
        fields.update(prompt=prompt, negative_prompt=negative)
    return GenerationRequest(
        model=model_choice(values, library),
        loras=lora_stack(values, library, missing),
        hires=hires_from_fields(values),
        refiner=_refiner(values, library),
        img2img=_img2img(values),
        **fields,
    )


def _refiner(values: Mapping[str, Any], library: ModelLibrary) -> Refiner | None:
    title = values.get("refiner_checkpoint")
    if not title or title == "None":
        return None
    path = choices.resolve(library, title, Kind.CHECKPOINT)
    return refiner_from_fields({**values, "refiner_checkpoint": path})


def _img2img(values: Mapping[str, Any]) -> Img2Img | None:
    """img2img's input when the values carry one (the img2img tab's); None on txt2img."""
    if "init_image" not in values:
        return None
    image = values["init_image"]
    if image is None:
        raise ValueError("init_image: no image; drop one, or send one from txt2img, PNG Info or Compare")
    strength = values.get("denoising_strength")
    return Img2Img(
        (image.convert("RGB"),),
        resize_mode=values.get("resize_mode") or RESIZE_MODES[0],
        denoising_strength=0.75 if strength in (None, "") else _number("denoising_strength", strength, False),
    )


def values_from_reproduction(reproduction: Reproduction, text: str, library: ModelLibrary) -> dict[str, Any]:
    """Widget values (by name) that reproduce an image: its fields, its model and components, its LoRAs.

    LoRAs named in the prompt stay there as `<lora:…>` tags; the stack fills the LoRA rows with its weights
    (from our `LoRA stack` key; A1111 images list stack LoRAs only in `Lora hashes`, so those get weight 1)."""
    found = reproduction.values
    out: dict[str, Any] = {k: v for k, v in found.items() if k in REQUEST_FIELDS or k in SECOND_PASS_FIELDS}
    if found.get("enable_hr"):  # what the infotext leaves out is the first pass's (A1111's "Use same ...")
        out.setdefault("hr_sampler_name", "Use same sampler")
        out.setdefault("hr_scheduler", "Use same scheduler")
    refiner = found.get("refiner_checkpoint")
    out["refiner_checkpoint"] = choices.title_for_path(library, refiner) if refiner is not None else "None"
    if found.get("sampler"):
        out["sampler"], out["schedule"] = found["sampler"], found.get("schedule") or AUTOMATIC
    else:  # an infotext without a sampler: the family's default, as a fresh page would start
        checkpoint = found.get("checkpoint") or found.get("unet")
        family = library.find(checkpoint).family if checkpoint is not None and _known(library, checkpoint) else None
        out["sampler"], out["schedule"] = default_sampling(family)
    if found.get("checkpoint") is not None:
        out["checkpoint"] = choices.title_for_path(library, found["checkpoint"])
    elif found.get("unet") is not None:  # a modular model (a FLUX.1 transformer and its encoders): no checkpoint
        out["checkpoint"] = choices.NO_CHECKPOINT
    for name in MODEL_FIELDS[1:]:
        path = found.get(name)
        out[name] = choices.title_for_path(library, path) if path is not None else choices.FROM_CHECKPOINT
    # The stack with its weights (our `LoRA stack` key); else LoRAs listed only in `Lora hashes`, at weight 1.
    stack = [(choices.title_for_path(library, s.path), s.unet_weight, s.te_weight) for s in found.get("loras", ())]
    if not stack:
        in_prompt = {tag.name.lower() for tag in extract_lora_tags(found.get("prompt", ""))[1]}
        for item in parse_infotext(text)[2].get("Lora hashes", "").split(","):
            name = item.split(":", 1)[0].strip()
            if name and name.lower() not in in_prompt:
                try:
                    stack.append((choices.title(library.find(name, Kind.LORA)), 1.0, 1.0))
                except LookupError:
                    continue  # reproduce lists what is missing
    for row in range(1, MAX_LORAS + 1):
        names = lora_names(row)
        lora, unet_weight, te_weight = stack[row - 1] if row <= len(stack) else (None, 1.0, 1.0)
        out.update(
            {names["name"]: lora, names["unet_weight"]: unet_weight, names["te_weight"]: te_weight,
             names["enabled"]: True}
        )  # fmt: skip
    return out


def fit_to_widgets(values: dict[str, Any]) -> list[str]:
    """Fit request values into the txt2img widgets' ranges (in place); one note per value changed, saying to what.
    A1111's sliders move in steps of 8, as the sizes it generates do."""
    notes = []
    for name, (low, high) in WIDGET_RANGES.items():
        if values.get(name) is None:
            continue
        value = values[name]
        fitted = min(max(value, low), high)
        if name in ("width", "height"):
            fitted = fitted // LATENT_FACTOR * LATENT_FACTOR
        if fitted != value:
            values[name] = type(value)(fitted)
            notes.append(f"{name}: {value} is outside what the slider takes; set to {values[name]}")
    return notes


def _known(library: ModelLibrary, path: Any) -> bool:
    try:
        library.find(path)
    except LookupError:
        return False
    return True


@contextmanager
def shown_in_ui(action: str) -> Iterator[None]:
    """Errors become one gr.Error toast with the engine's message; the page and the queue stay usable.

    A user's mistake (a value out of range, no model chosen, a refused component: USER_ERRORS) is one log line;
    only an unexpected error, a bug, logs its traceback."""
    try:
        yield
    except gr.Error:
        raise
    except USER_ERRORS as error:
        message = str(error)
        if isinstance(error, ModelNotFoundError):
            message += " (press ↻ beside the checkpoint list after adding files)"
        log.warning("%s failed: %s", action, message)  # one line: the user's mistake, not a bug
        # Toasts render HTML: a `<lora:…>` in a message must show, not vanish as a tag.
        raise gr.Error(html.escape(message, quote=False), title=f"{action} failed", print_exception=False) from None
    except Exception as error:  # the UI boundary: log the traceback, show the message, keep serving
        log.exception("%s failed", action)
        text = html.escape(f"{type(error).__name__}: {error}", quote=False)
        raise gr.Error(text, title=f"{action} failed", print_exception=False) from error


def by_name(names: Sequence[str], fn: Callable[..., Any]) -> Callable[..., Any]:
    """A Gradio handler taking `names` as parameters (in the order of the inputs list built from the same
    dict) and calling `fn(values: dict[str, Any], request)`. Generators stay generators (streamed updates)."""
    names = tuple(names)

    def split(args: tuple[Any, ...]) -> tuple[dict[str, Any], Any]:
        return dict(zip(names, args[: len(names)], strict=True)), args[len(names)] if len(args) > len(names) else None

    if inspect.isgeneratorfunction(fn):

        def handler(*args: Any) -> Iterator[Any]:
            values, request = split(args)
            yield from fn(values, request)

    else:

        def handler(*args: Any) -> Any:
            values, request = split(args)
            return fn(values, request)

    # Defaults of None make every field optional for API clients (a widget's initial value is used instead).
    keyword = inspect.Parameter.POSITIONAL_OR_KEYWORD
    parameters = [inspect.Parameter(name, keyword, default=None) for name in names]
    parameters.append(inspect.Parameter("request", keyword, default=None, annotation=gr.Request))
    handler.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    handler.__annotations__ = {"request": gr.Request}
    handler.__name__ = getattr(fn, "__name__", "handler")
    handler.__doc__ = fn.__doc__
    return handler
