"""Convert diffusers / Hugging Face state dicts to the original LDM single-file key layout (plans: ldm_plan.py)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from webui.families import DESCRIPTIONS, Family, FamilyDescription
from webui.families.base import CheckpointLayout
from webui.models.ldm_plan import (
    PLANNED,
    apply_plan,
    component_plan,
    hf_clip_plan,
    open_clip_plan,
    shapes_of,
    unet_ldm_key_map,
    unet_plan,
    vae_plan,
)
from webui.models.safetensors_stream import give_new_file_mode

__all__ = [
    "UNET_PREFIX",
    "VAE_PREFIX",
    "clip_l_to_ldm",
    "component_to_ldm",
    "hf_clip_keys",
    "open_clip_keys",
    "open_clip_to_ldm",
    "pipeline_to_ldm",
    "save_single_file",
    "unet_ldm_key_map",
    "unet_to_ldm",
    "vae_to_ldm",
]

StateDict = dict[str, torch.Tensor]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."


def unet_to_ldm(diffusers_unet_state_dict: Mapping[str, torch.Tensor], unet_config: Mapping[str, Any]) -> StateDict:
    """UNet2DConditionModel weights -> LDM `input_blocks/middle_block/output_blocks` names; shapes unchanged."""
    plan = unet_plan(unet_config, shapes_of(diffusers_unet_state_dict))
    return apply_plan(plan, diffusers_unet_state_dict.__getitem__)


def vae_to_ldm(diffusers_vae_state_dict: Mapping[str, torch.Tensor], vae_config: Mapping[str, Any]) -> StateDict:
    """AutoencoderKL weights -> LDM `encoder.down.N.block.M` / `decoder.up.N` names, attention as 1x1 convs."""
    plan = vae_plan(vae_config, shapes_of(diffusers_vae_state_dict))
    return apply_plan(plan, diffusers_vae_state_dict.__getitem__)


def hf_clip_keys(hf_state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """CLIPTextModel weights (with or without `text_model.`) -> `text_model.*`, as LDM files store CLIP-L."""
    return apply_plan(hf_clip_plan(hf_state_dict), hf_state_dict.__getitem__)


def clip_l_to_ldm(hf_state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """CLIPTextModel weights (with or without `text_model.`) -> `transformer.text_model.*`."""
    return _prefixed("transformer.", hf_clip_keys(hf_state_dict))


def open_clip_keys(hf_state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Hugging Face CLIP text weights -> OpenCLIP names (q/k/v stacked, projection transposed), no prefix."""
    return apply_plan(open_clip_plan(hf_state_dict), hf_state_dict.__getitem__)


def open_clip_to_ldm(hf_state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Hugging Face CLIP text weights -> OpenCLIP `model.*` layout (q/k/v stacked, projection transposed)."""
    return _prefixed("model.", open_clip_keys(hf_state_dict))


def component_to_ldm(module: Any, layout: CheckpointLayout) -> StateDict:
    """One component's weights in the single-file layout named (keys relative to its checkpoint prefix)."""
    state = module.state_dict()
    config = module.config if layout in (CheckpointLayout.LDM_UNET, CheckpointLayout.LDM_VAE) else None
    return apply_plan(component_plan(layout, config, shapes_of(state)), state.__getitem__)


def _prefixed(prefix: str, state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    return {prefix + k: v for k, v in state_dict.items()}


def pipeline_to_ldm(components: Mapping[str, Any], family: Family) -> StateDict:
    """A pipeline's modules (`unet`, `vae`, text encoders) -> one single-file state dict in the family's
    original layout: each role at its description's checkpoint prefix, in its checkpoint layout."""
    roles = family.description.roles
    if not _writable(family.description):
        supported = ", ".join(d.id for d in DESCRIPTIONS if _writable(d))
        raise ValueError(f"pipeline_to_ldm: family {family.value!r} has no LDM layout here (supported: {supported})")
    for spec in roles:
        if components.get(spec.role.value) is None:
            raise ValueError(f"pipeline_to_ldm: a {family.label} checkpoint needs component {spec.role.value!r}")
    out: StateDict = {}
    for spec in roles:
        state = component_to_ldm(components[spec.role.value], spec.checkpoint_layout)
        out.update(_prefixed(spec.checkpoint_prefix, state))
    return out


def _writable(description: FamilyDescription) -> bool:
    """Whether every role of the family has a single-file layout this writer knows."""
    return bool(description.roles) and all(r.checkpoint_layout in PLANNED for r in description.roles)


def save_single_file(
    state_dict: Mapping[str, torch.Tensor],
    path: Path,
    metadata: Mapping[str, str] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write `state_dict` as safetensors at `path` (temp file + rename), optionally cast to `dtype`."""
    for key, value in (metadata or {}).items():
        if not isinstance(value, str):
            raise TypeError(f"save_single_file: metadata {key!r} must be a str, got {type(value).__name__}")
    tensors = {}
    for key, value in state_dict.items():
        value = value.detach()
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        tensors[key] = value.contiguous()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    give_new_file_mode(handle)
    os.close(handle)
    try:
        save_file(tensors, tmp, metadata=dict(metadata) if metadata else None)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
