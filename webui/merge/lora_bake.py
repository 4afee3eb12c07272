"""Bake a LoRA stack into single-file tensors with the generation's own patching, one tensor at a time.

The LoRAs are loaded exactly as generation loads them (webui.engine.lora.LoraStackApplier: the same key
conversion, the same PEFT adapters, the same per-component weights set by `set_adapters`), into a "hollow"
pipeline: the denoiser and text encoders built from the output's shapes on the meta device, every parameter then
replaced by a zero-stride CPU tensor that holds no memory, so only the LoRA factors are real. To patch one
single-file tensor, its component tensors (a q/k/v slice of OpenCLIP's stacked `in_proj`, a transposed
projection, the q/k/v/MLP rows of a FLUX.1 BFL projection, a swapped modulation) are put into the hollow layers
as their base weights and PEFT's own `merge` runs on them, the call `fuse_lora` makes when generation fuses a
stack, so a baked model equals generating with the LoRA (DoRA, LoHa and LoKr layers included: each computes its
own merged weight from the real base weight).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from webui.engine.lora import LoraReport, LoraSpec, LoraStackApplier
from webui.families import Family
from webui.families.base import CheckpointLayout, Part, RoleSpec
from webui.models.derive import bundled_config, derive_clip_config, derive_unet_config
from webui.models.kinds import TextEncoderType
from webui.models.ldm_plan import HF_TRANSFORMER_ROOT, KeySource, Plan, component_plan
from webui.models.loading_t5 import derive_t5_config

Shapes = Mapping[str, tuple[int, ...]]


class LoraBakeError(ValueError):
    """A LoRA of the stack cannot be baked in; the message names it and why."""


@dataclass(frozen=True)
class _Target:
    """A single-file tensor some adapter patches: how it splits into component tensors, and the patched layer of
    each part (None: that part is not patched)."""

    source: KeySource
    shapes: tuple[tuple[int, ...], ...]
    layers: tuple[Any, ...]


def _hollow(module: torch.nn.Module) -> torch.nn.Module:
    """Every parameter and buffer of a meta-device module replaced by a zero-stride CPU tensor of its shape and
    dtype: the module reports real shapes and devices and holds no memory."""
    for child in module.modules():
        for name, param in list(child.named_parameters(recurse=False)):
            empty = torch.zeros((), dtype=param.dtype).expand(param.shape)
            setattr(child, name, torch.nn.Parameter(empty, requires_grad=False))
        for name, buffer in list(child.named_buffers(recurse=False)):
            child._buffers[name] = torch.zeros((), dtype=buffer.dtype).expand(buffer.shape)
    return module


def _role_shapes(shapes: Shapes, spec: RoleSpec) -> dict[str, tuple[int, ...]]:
    prefix = spec.checkpoint_prefix
    return {key[len(prefix) :]: shape for key, shape in shapes.items() if key.startswith(prefix)}


def _skeleton(family: Family, spec: RoleSpec, shapes: Shapes) -> torch.nn.Module:
    """The role's module on the meta device, configured from the single-file shapes as loading configures it."""
    if spec.part is Part.DENOISER:
        if spec.checkpoint_layout is CheckpointLayout.ORIGINAL_DIT:
            return _transformer_skeleton(family, spec, _role_shapes(shapes, spec))
        if spec.checkpoint_layout is not CheckpointLayout.LDM_UNET:
            raise LoraBakeError(f"baking LoRAs into a {family.label} {spec.role.value} is not supported yet")
        config = derive_unet_config(family, {k: v for k, v in shapes.items() if k.startswith(spec.checkpoint_prefix)})
        with torch.device("meta"):
            return spec.component_type()(**config)
    base = bundled_config(family, spec.role.value)
    own = _role_shapes(shapes, spec)
    if spec.checkpoint_layout is CheckpointLayout.HF_TRANSFORMER:  # transformers' names under `transformer.`
        own = {key.removeprefix(HF_TRANSFORMER_ROOT): shape for key, shape in own.items()}
    component = spec.component_type()
    if spec.encoder is TextEncoderType.T5:
        meta = {key: torch.empty(shape, device="meta") for key, shape in own.items()}
        config = {k: v for k, v in derive_t5_config(base, meta).items() if k != "architectures"}
    else:
        max_layers = base["num_hidden_layers"] if spec.truncate_to_config_layers else None
        config = derive_clip_config(base, own, max_layers=max_layers)
    with torch.device("meta"):
        return component(component.config_class(**config))


def _transformer_skeleton(family: Family, spec: RoleSpec, own: Shapes) -> torch.nn.Module:
    """A transformer stored in its original names (FLUX.1's BFL ones), configured as loading_dit configures it:
    the names converted by the family's converter (on meta tensors: shapes only), the config derived from them."""
    loader = family.description.denoiser_loader
    if loader is None or loader.planner() is None:
        raise LoraBakeError(f"baking LoRAs into a {family.label} {spec.role.value} is not supported yet")
    meta = {key: torch.empty(shape, device="meta") for key, shape in own.items()}
    try:
        converted = loader.converter()(meta)
        config = loader.deriver()(
            {k: tuple(v.shape) for k, v in converted.items()}, bundled_config(family, spec.role.value)
        )
    except ValueError as error:
        raise LoraBakeError(f"loras: the {spec.role.value} cannot be configured ({error})") from None
    with torch.device("meta"):
        return spec.component_type().from_config(config)


def _plan(family: Family, spec: RoleSpec, module: torch.nn.Module, own: Shapes) -> Plan:
    """Each single-file key of the role from the module's own parameter names (see webui.models.ldm_plan)."""
    if spec.checkpoint_layout is CheckpointLayout.ORIGINAL_DIT:
        return family.description.denoiser_loader.planner()(own)
    return component_plan(spec.checkpoint_layout, module.config if spec.part is Part.DENOISER else None, own)


class LoraBaker:
    """Patches single-file tensors of `family` with a LoRA stack. Built from the output's single-file shapes;
    raises LoraBakeError when a LoRA of the stack cannot apply at all (wrong family, unreadable, nothing fits)."""

    def __init__(self, family: Family, shapes: Shapes, stack: Sequence[LoraSpec]) -> None:
        from peft.tuners.tuners_utils import BaseTunerLayer

        description = family.description
        roles = [
            spec
            for spec in description.roles
            if spec.part in (Part.DENOISER, Part.TEXT_ENCODER) and _role_shapes(shapes, spec)
        ]
        if not any(spec.part is Part.DENOISER for spec in roles):
            raise LoraBakeError(f"loras: the output has no {description.denoiser.role.value} to bake a LoRA into")
        modules = {spec.role.value: _hollow(_skeleton(family, spec, shapes)) for spec in roles}
        # Component shapes and plans before the adapters wrap the layers (and rename their weights).
        own = {role: {k: tuple(v.shape) for k, v in m.state_dict().items()} for role, m in modules.items()}
        plans = {spec.role.value: _plan(family, spec, modules[spec.role.value], own[spec.role.value]) for spec in roles}
        components: dict[str, Any] = dict.fromkeys(description.pipeline.absent) | {"vae": None, "scheduler": None}
        for spec in description.text_encoders:
            components[spec.tokenizer] = None
            components.setdefault(spec.role.value, None)
        components.update(modules)
        pipeline = description.pipeline.create(components)
        self.reports: list[LoraReport] = LoraStackApplier(keep_inactive=len(stack)).apply(pipeline, family, stack)
        failed = [r for r in self.reports if r.error]
        if failed:
            raise LoraBakeError("loras: " + "; ".join(str(r.error) for r in failed))
        self._targets: dict[str, _Target] = {}
        for spec in roles:
            module = modules[spec.role.value]
            layers = {
                f"{name}.weight": layer
                for name, layer in module.named_modules()
                if isinstance(layer, BaseTunerLayer) and layer.active_adapters
            }
            for key, source in plans[spec.role.value].items():
                found = tuple(layers.get(part) for part in source.keys)
                if any(found):
                    part_shapes = tuple(own[spec.role.value][part] for part in source.keys)
                    self._targets[spec.checkpoint_prefix + key] = _Target(source, part_shapes, found)

    @property
    def keys(self) -> frozenset[str]:
        """The single-file keys the stack patches."""
        return frozenset(self._targets)

    def patch(self, key: str, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` (the single-file tensor `key`, float32) with the stack merged in; unchanged if not patched."""
        target = self._targets.get(key)
        if target is None:
            return tensor
        parts = [p.contiguous() for p in target.source.split(tensor, target.shapes)]
        for index, layer in enumerate(target.layers):
            if layer is not None:
                parts[index] = _merged(layer, parts[index], key)
        return target.source.build(parts)


def _merged(layer: Any, weight: torch.Tensor, key: str) -> torch.Tensor:
    """PEFT's merge of the layer's active adapters into `weight`, as `fuse_lora` runs it on a loaded model."""
    base = layer.get_base_layer()
    hollow = base.weight
    base.weight = torch.nn.Parameter(weight.clone(), requires_grad=False)
    try:
        layer.merge(adapter_names=list(layer.active_adapters))
        return base.weight.data
    except (RuntimeError, ValueError) as error:
        raise LoraBakeError(f"loras: cannot merge into {key}: {error}") from error
    finally:
        layer.merged_adapters.clear()
        base.weight = hollow
