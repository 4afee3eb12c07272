"""What the library and the engine offer, in A1111's list shapes (sd-models, sd-vae, loras, samplers, schedulers)."""

from __future__ import annotations

import json
import logging
from typing import Any

from webui.engine.samplers import SAMPLER_NAMES
from webui.models.files import ModelFileError, read_header
from webui.models.kinds import FileFormat, Kind
from webui.models.library import ModelEntry

log = logging.getLogger(__name__)

# A1111 scheduler names (the API's `scheduler` field takes name or label) for our schedule types, as its list.
SCHEDULERS: dict[str, dict[str, Any]] = {
    "Automatic": {"name": "automatic"},
    "Uniform": {"name": "uniform", "need_inner_model": True},
    "Karras": {"name": "karras", "default_rho": 7.0},
    "Exponential": {"name": "exponential"},
    "Polyexponential": {"name": "polyexponential", "default_rho": 1.0},
    "SGM Uniform": {"name": "sgm_uniform", "need_inner_model": True, "aliases": ["SGMUniform"]},
    "KL Optimal": {"name": "kl_optimal"},
    "Align Your Steps": {"name": "align_your_steps"},
    "Simple": {"name": "simple", "need_inner_model": True},
    "Normal": {"name": "normal", "need_inner_model": True},
    "DDIM": {"name": "ddim", "need_inner_model": True},
    "Beta": {"name": "beta", "need_inner_model": True},
}
# k-diffusion style aliases A1111 lists (and older clients send) for its sampler names.
SAMPLER_ALIASES: dict[str, list[str]] = {
    "DPM++ 2M": ["k_dpmpp_2m"],
    "DPM++ SDE": ["k_dpmpp_sde"],
    "DPM++ 2M SDE": ["k_dpmpp_2m_sde"],
    "DPM++ 2M SDE Heun": ["k_dpmpp_2m_sde_heun"],
    "DPM++ 2S a": ["k_dpmpp_2s_a"],
    "DPM++ 3M SDE": ["k_dpmpp_3m_sde"],
    "Euler a": ["k_euler_a", "k_euler_ancestral"],
    "Euler": ["k_euler"],
    "LMS": ["k_lms"],
    "Heun": ["k_heun"],
    "DPM2": ["k_dpm_2"],
    "DPM2 a": ["k_dpm_2_a"],
    "DPM fast": ["k_dpm_fast"],
    "DPM adaptive": ["k_dpm_ad"],
    "Restart": ["restart"],
    "DDIM": ["ddim"],
    "DDIM CFG++": ["ddim_cfgpp"],
    "PLMS": ["plms"],
    "UniPC": ["unipc"],
    "LCM": ["k_lcm"],
}


def file_name(entry: ModelEntry) -> str:
    """The name A1111 shows: relative to its folder, with the file's extension (a diffusers folder has none)."""
    return entry.name if entry.format is FileFormat.DIFFUSERS else f"{entry.name}{entry.path.suffix}"


def checkpoint_title(entry: ModelEntry) -> str:
    """A1111's title, `name.safetensors [hash10]`, or the bare name while the hash is not known yet."""
    return f"{file_name(entry)} [{entry.hash}]" if entry.hash else file_name(entry)


def sd_models(library: Any) -> list[dict[str, Any]]:
    items = []
    for entry in library.entries(Kind.CHECKPOINT):
        if not entry.usable:
            continue
        cached = None
        if entry.hash and entry.format is not FileFormat.DIFFUSERS:
            cached = library.hash_cache.get(entry.path, entry.size, entry.mtime_ns)
        items.append(
            {
                "title": checkpoint_title(entry),
                "model_name": entry.name.replace("/", "_"),
                "hash": entry.hash,
                "sha256": cached.sha256 if cached else None,
                "filename": str(entry.path),
                "config": None,
            }
        )
    return items


def sd_vaes(library: Any) -> list[dict[str, Any]]:
    return [{"model_name": e.path.name, "filename": str(e.path)} for e in library.entries(Kind.VAE) if e.usable]


def _metadata(entry: ModelEntry) -> dict[str, Any]:
    """A safetensors LoRA's training metadata, JSON values decoded (as A1111 shows them); {} for other files."""
    if entry.format is not FileFormat.SAFETENSORS:
        return {}
    try:
        raw = read_header(entry.path).metadata
    except ModelFileError as error:
        log.warning("cannot read the metadata of %s: %s", entry.path, error.problem)
        return {}
    metadata: dict[str, Any] = {}
    for key, value in raw.items():
        metadata[key] = value
        if value[:1] in ("{", "["):
            try:
                metadata[key] = json.loads(value)
            except json.JSONDecodeError:
                pass  # a text value that only starts like JSON stays text
    return metadata


def loras(library: Any) -> list[dict[str, Any]]:
    items = []
    for entry in library.entries(Kind.LORA):
        if entry.usable:
            name = entry.path.stem
            items.append({"name": name, "alias": name, "path": str(entry.path), "metadata": _metadata(entry)})
    return items


def samplers() -> list[dict[str, Any]]:
    return [{"name": name, "aliases": SAMPLER_ALIASES.get(name, []), "options": {}} for name in SAMPLER_NAMES]


def schedulers() -> list[dict[str, Any]]:
    return [
        {"label": label, "aliases": None, "default_rho": -1, "need_inner_model": False, **fields}
        for label, fields in SCHEDULERS.items()
    ]
