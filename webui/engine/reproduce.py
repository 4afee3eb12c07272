"""Infotext back to a request: what PNG Info's "Send to txt2img" and `generate --infotext` use."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from webui.engine.extra_networks import extract_lora_tags
from webui.engine.infotext import parse_infotext
from webui.engine.infotext_passes import second_pass_values
from webui.engine.lora import LoraSpec
from webui.engine.pipelines import ModelChoice
from webui.engine.request import GenerationRequest
from webui.engine.samplers import SCHEDULE_TYPES, split_legacy_name
from webui.engine.second_pass import hires_from_fields, refiner_from_fields
from webui.models.kinds import Kind

# infotext key → (GenerationRequest field, converter)
_FIELDS: dict[str, tuple[str, Any]] = {
    "Steps": ("steps", int),
    "CFG scale": ("cfg_scale", float),
    "Seed": ("seed", int),
    "Clip skip": ("clip_skip", int),
    "Schedule type": ("schedule", str),
    "Variation seed": ("subseed", int),
    "Variation seed strength": ("subseed_strength", float),
    "Eta": ("eta", float),
    "Eta DDIM": ("eta", float),
    "Distilled CFG Scale": ("distilled_guidance", float),  # Forge's key for FLUX.1 dev's guidance
}
_SCHEDULES_BY_NAME = {name.lower(): name for name in SCHEDULE_TYPES} | {"sgm_uniform": "SGM Uniform"}
# infotext key → ModelChoice field, for component overrides
_COMPONENTS = {"VAE": "vae", "UNet": "unet", "Text encoder": "text_encoder", "Text encoder 2": "text_encoder_2",
               "Text encoder 3": "text_encoder_3"}


@dataclass(frozen=True)
class Reproduction:
    """A request rebuilt from infotext. `values` are UI field values by request field name (always filled);
    `request` is None when the model it names is not in the library (see `missing`)."""

    request: GenerationRequest | None
    values: dict[str, Any]
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _find(library: Any, kind: Kind | None, *names: str | None) -> Path | None:
    for name in names:
        if not name:
            continue
        try:
            return library.find(name, kind).path
        except LookupError:
            continue
    return None


def request_from_infotext(text: str, library: Any) -> Reproduction:
    """Every request field the infotext names (a value that cannot be used is left at its default, with a note
    saying so), the model, components and LoRAs the library has, and what it lacks. Never raises on content."""
    prompt, negative, params = parse_infotext(text)
    notes: list[str] = []
    missing: list[str] = []
    if params.get("Hypernet"):  # A1111 adds the hypernetwork back as a prompt tag; it is reported when run
        strength = params.get("Hypernet strength", "1.0")
        prompt += f"<hypernet:{params['Hypernet']}:{strength}>"
        notes.append(f"Hypernet: {params['Hypernet']} — hypernetworks are not supported here; the tag is skipped")
    values: dict[str, Any] = {"prompt": prompt, "negative_prompt": negative}
    for key, (name, convert) in _FIELDS.items():
        if key in params:
            try:
                values[name] = convert(params[key])
            except ValueError:
                notes.append(f"{key}: {params[key]!r} is not a valid value; left at its default")
    if "schedule" in values:
        known = _SCHEDULES_BY_NAME.get(str(values["schedule"]).lower())
        if known is None:
            notes.append(f"Schedule type: {values.pop('schedule')!r} is unknown here; Automatic is used")
        else:
            values["schedule"] = known
    if "Size" in params:
        try:
            width, height = (int(v) for v in params["Size"].lower().split("x"))
            values.update(width=width, height=height)
        except ValueError:
            notes.append(f"Size: {params['Size']!r} is not WIDTHxHEIGHT; left at its default")
    if "Sampler" in params:
        try:
            sampler, schedule = split_legacy_name(params["Sampler"])
            values["sampler"] = sampler
            if schedule != "Automatic" and "schedule" not in values:
                values["schedule"] = schedule
        except ValueError:
            notes.append(f"Sampler: {params['Sampler']!r} is unknown here; the model's own sampler is used")
    names = (params.get("Model hash"), params.get("Model"))
    checkpoint = _find(library, Kind.CHECKPOINT, *names)
    modular = "UNet" in params  # a modular model: "Model" names its UNet / transformer file, not a checkpoint
    if checkpoint is None and not modular:
        checkpoint = _find(library, None, *names)
    if checkpoint is None and not modular and any(names):
        missing.append(f"model {params.get('Model') or ''} [{params.get('Model hash') or 'no hash'}]".strip())
    components: dict[str, Path | None] = {}
    for key, name in _COMPONENTS.items():
        if key in params:
            components[name] = _find(library, None, params.get(f"{key} hash"), params[key])
            if components[name] is None:
                missing.append(f"{key.lower()} {params[key]}")
    for tag in extract_lora_tags(prompt)[1]:
        if _find(library, Kind.LORA, tag.name) is None:
            missing.append(f"LoRA {tag.name}")
    loras = []
    for item in filter(None, (part.strip() for part in params.get("LoRA stack", "").split(","))):
        name, _, weights = item.rpartition(":")
        path = _find(library, Kind.LORA, name.strip())
        try:
            unet_weight, te_weight = (float(w) for w in weights.split("/"))
        except ValueError:
            notes.append(f"LoRA stack: {item!r} is not NAME: UNET/TE; left out")
            continue
        if path is None:
            missing.append(f"LoRA {name.strip()}")
            continue
        try:
            loras.append(LoraSpec(path, unet_weight, te_weight))
        except ValueError as error:
            notes.append(f"LoRA stack: {error}; left out")
    values["loras"] = tuple(loras)
    values["checkpoint"] = checkpoint
    values.update(components)
    missing += second_pass_values(params, values, notes, lambda name: _find(library, Kind.CHECKPOINT, name))
    _drop_invalid(values, notes)
    request = None
    model_found = checkpoint is not None or components.get("unet") is not None
    if model_found and not any(m.startswith(("model", "unet", "text", "vae", "refiner")) for m in missing):
        choice = ModelChoice(checkpoint, **{k: v for k, v in components.items() if v is not None})
        request = build_request(choice, values)
    return Reproduction(request, values, missing, notes)


def build_request(choice: ModelChoice, values: dict[str, Any]) -> GenerationRequest:
    """The request that flat field values describe: GenerationRequest's own fields, Hires. fix and the refiner."""
    fields = {f.name for f in dataclasses.fields(GenerationRequest)} - {"hires", "refiner", "img2img"}
    return GenerationRequest(
        model=choice,
        hires=hires_from_fields(values),
        refiner=refiner_from_fields(values),
        **{k: v for k, v in values.items() if k in fields},
    )


def _drop_invalid(values: dict[str, Any], notes: list[str]) -> None:
    """Leave out, one at a time, each field value a request refuses (its message names the field)."""
    placeholder = ModelChoice(Path("infotext"))
    for _attempt in range(len(values) + 1):
        try:
            build_request(placeholder, values)
            return
        except ValueError as error:
            field_name = str(error).split(":", 1)[0]
            if field_name not in values:
                raise
            del values[field_name]
            notes.append(f"{error}; left at its default")


def family_defaults(choice: Any) -> dict[str, Any]:
    """Request fields from the defaults of the chosen model's family and variant (steps, CFG, sampler) where
    the family sets them; {} for a model that cannot be identified here (the request's defaults apply)."""
    from webui.models.files import ModelFileError, read_header
    from webui.models.identify import identify

    path = choice.unet or choice.checkpoint
    if path is None or path.is_dir():
        return {}
    try:
        identity = identify(read_header(path), path.name)
    except ModelFileError:
        return {}
    description = identity.family.description
    defaults = description.defaults_for(identity.variant)
    values: dict[str, Any] = {}
    if defaults.steps is not None:
        values["steps"] = defaults.steps
    if defaults.cfg_scale is not None:
        values["cfg_scale"] = defaults.cfg_scale
    return values
