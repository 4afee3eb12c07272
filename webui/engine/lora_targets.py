"""Where a kohya / LyCORIS module name lands in a pipeline: the (component, layer path) behind `lora_unet_*` names.

sd-scripts and LyCORIS name a module by its path in the model it trained, dots made underscores, after a
prefix: `lora_unet_` for the denoiser (in diffusers names, or in LDM names where the family's description says
sd-scripts trains on those, as for SDXL), and the family's `kohya_text_encoders` prefixes for the text encoders
(with the `text_model.` level transformers 4 had). The index is built from the live modules, as ComfyUI's
`model_lora_keys_unet` / `model_lora_keys_clip` do, so every patchable layer is reachable whatever the file's
algorithm.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from webui.families import Family
from webui.models.ldm_writer import unet_ldm_key_map

UNET_PREFIX = "lora_unet_"
_PATCHABLE = (torch.nn.Linear, torch.nn.Conv2d)


@dataclass(frozen=True)
class Target:
    """A layer a LoRA module patches: the pipeline component (`unet`, `text_encoder_2`) and the layer's path."""

    component: str
    path: str
    layer: torch.nn.Module  # the plain Linear / Conv2d (the base layer when adapters already wrap it)

    @property
    def out_features(self) -> int:
        return int(self.layer.weight.shape[0])


def _layers(model: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Module]]:
    """(path, plain layer) of every Linear / Conv2d; a layer PEFT already wraps counts once, by its own path."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    wrapped: str | None = None
    for name, module in model.named_modules():
        if wrapped is not None and name.startswith(wrapped):
            continue  # the adapter's own layers (lora_A, base_layer, ...): named_modules lists them right after
        if isinstance(module, BaseTunerLayer):
            wrapped = name + "."
            yield name, module.get_base_layer()
        elif isinstance(module, _PATCHABLE):
            yield name, module


def _kohya(prefix: str, path: str) -> str:
    return prefix + path.replace(".", "_")


def _ldm_names(unet: torch.nn.Module, paths: list[str]) -> dict[str, str]:
    """diffusers layer path -> LDM layer path for a UNet (empty for a denoiser the LDM map does not cover)."""
    layers = getattr(getattr(unet, "config", None), "layers_per_block", None)
    if not isinstance(layers, int):
        return {}
    try:
        mapping = unet_ldm_key_map(unet.config, [f"{path}.weight" for path in paths])
    except (KeyError, ValueError):
        return {}  # a layer outside the LDM layout: diffusers names still reach every layer
    return {key.removesuffix(".weight"): value.removesuffix(".weight") for key, value in mapping.items()}


def target_index(pipeline: Any, family: Family) -> dict[str, Target]:
    """Kohya module name -> target layer, for every patchable layer of the pipeline's denoiser and text encoders."""
    description = family.description
    index: dict[str, Target] = {}
    denoiser = description.denoiser.role.value
    model = getattr(pipeline, denoiser, None)
    if model is not None:
        layers = list(_layers(model))
        for path, layer in layers:
            index[_kohya(UNET_PREFIX, path)] = Target(denoiser, path, layer)
        if description.lora.kohya_unet_names == "ldm":
            ldm = _ldm_names(model, [path for path, _ in layers])
            for path, layer in layers:
                if path in ldm:
                    index[_kohya(UNET_PREFIX, ldm[path])] = Target(denoiser, path, layer)
    for role, prefix in description.lora.kohya_text_encoders:
        model = getattr(pipeline, role.value, None)
        if model is None:
            continue
        for path, layer in _layers(model):
            # Files were trained on transformers 4, whose CLIP paths start with `text_model.` (5 dropped it).
            named = path if path.startswith("text_model.") else f"text_model.{path}"
            index[_kohya(prefix, named)] = Target(role.value, path, layer)
    return index
