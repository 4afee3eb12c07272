"""Load a kohya / LyCORIS file into a pipeline as one named PEFT adapter: LoRA (also DoRA), LoHa and LoKr layers.

diffusers' `load_lora_weights` reads only LoRA factors from kohya files: LoHa/LoKr modules match nothing, DoRA's
`dora_scale` is dropped with a warning, and per-module ranks lose their alphas (the `alpha_pattern` it builds
from kohya names, `...processor.to_out_lora.down.weight`, matches no module, so PEFT ignores it with a
RuntimeWarning and those modules run at the wrong strength). Here each module is placed by name
(webui.engine.lora_targets), and one PEFT config per component and algorithm is built with every module's own
rank and alpha in `rank_pattern` / `alpha_pattern` (anchored, escaped full paths), injected with
`peft.inject_adapter_in_model`, and filled with the file's tensors. The layers are ordinary PEFT tuner layers,
so diffusers' `set_adapters`, `disable_lora`, `fuse_lora` and `delete_adapters` switch and weight them like any
LoRA, and a weight change re-reads nothing.

At weight 1 a DoRA module gives LyCORIS' weight, dora_scale · (W + ΔW) / ‖W + ΔW‖ per output channel; at other
weights PEFT scales ΔW inside the norm, where A1111 and ComfyUI blend the weight (W + w·(W_dora − W)): the two
agree at 0 and 1 only.

What PEFT cannot compute is reported per module and never injected: DoRA with a per-input-channel magnitude
(PEFT's DoRA normalises per output channel), DoRA on LoHa/LoKr, Tucker-core LoCon, OFT and the other algorithms
of webui.engine.lora_modules.
"""

from __future__ import annotations

import collections
import re
from dataclasses import dataclass, field
from typing import Any

import torch

from webui.engine.lora_modules import Algorithm, NetworkModule, read_modules
from webui.engine.lora_targets import Target, target_index
from webui.families import Family


@dataclass
class InjectReport:
    """Modules injected per component, and the file's modules that were not, each with the reason."""

    applied: dict[str, int] = field(default_factory=dict)
    unapplied: dict[str, str] = field(default_factory=dict)

    @property
    def applied_total(self) -> int:
        return sum(self.applied.values())


def _factor_shape(module: NetworkModule, which: str) -> tuple[int, ...]:
    """A LoKr factor's full shape (w1 or w2), whether stored whole, as a product, or with a Tucker core."""
    parts = module.parts
    if f"lokr_{which}" in parts:
        return tuple(parts[f"lokr_{which}"].shape)
    a, b = parts[f"lokr_{which}_a"], parts[f"lokr_{which}_b"]
    if which == "w2" and "lokr_t2" in parts:
        return (a.shape[1], b.shape[1], *parts["lokr_t2"].shape[2:])
    return (a.shape[0], b.shape[1])


def _delta_shape(module: NetworkModule) -> tuple[int, int]:
    """(out features, elements) of the module's ΔW, from the factor shapes alone."""
    parts = module.parts
    if module.algorithm is Algorithm.LORA:
        down = parts["lora_down.weight"]
        return int(parts["lora_up.weight"].shape[0]), int(parts["lora_up.weight"].shape[0] * down[0].numel())
    if module.algorithm is Algorithm.LOHA:
        if "hada_t1" in parts:  # Tucker: w1_a (rank, out), w1_b (rank, in), t1 (rank, rank, k, k)
            out, kernel = parts["hada_w1_a"].shape[1], parts["hada_t1"][0, 0].numel()
            return int(out), int(out * parts["hada_w1_b"].shape[1] * kernel)
        out = parts["hada_w1_a"].shape[0]
        return int(out), int(out * parts["hada_w1_b"].shape[1])
    w1, w2 = _factor_shape(module, "w1"), _factor_shape(module, "w2")
    elements = w1[0] * w1[1] * int(torch.Size(w2).numel())
    return int(w1[0] * w2[0]), int(elements)


def _refusal(module: NetworkModule, target: Target | None) -> str | None:
    """Why a module cannot become part of the adapter, or None."""
    if target is None:
        return "matches no layer of this model"
    reason = module.unsupported_reason
    if reason is not None:
        return reason
    out, elements = _delta_shape(module)
    weight = target.layer.weight
    if out != weight.shape[0] or elements != weight.numel():
        return f"its shape does not fit the layer {target.path} {tuple(weight.shape)}"
    if module.dora_scale is not None:
        if module.algorithm is not Algorithm.LORA:
            return f"DoRA on {module.algorithm.value} is not supported (PEFT's DoRA is LoRA-only)"
        if not module.dora_on_output(target.out_features):
            return (
                f"DoRA magnitude of shape {tuple(module.dora_scale.shape)} is per input channel (older LyCORIS); "
                "PEFT's DoRA normalises per output channel"
            )
    return None


def _pattern(path: str) -> str:
    """A `rank_pattern` / `alpha_pattern` key matching exactly this path (PEFT matches `(.*\\.)?(key)$`)."""
    return "^" + re.escape(path)


def _peft_rank_alpha(module: NetworkModule) -> tuple[int, float]:
    """(r, alpha) for PEFT so that its scaling alpha / r is the file's: alpha / rank, or 1 without either."""
    rank = module.rank or 1
    alpha = module.alpha
    return rank, (alpha if alpha is not None and module.rank else float(rank))


def _config(algorithm: Algorithm, modules: list[tuple[NetworkModule, Target]]) -> Any:
    from peft import LoHaConfig, LoKrConfig, LoraConfig

    values = {target.path: _peft_rank_alpha(module) for module, target in modules}
    r = collections.Counter(rank for rank, _ in values.values()).most_common(1)[0][0]
    alpha = collections.Counter(a for _, a in values.values()).most_common(1)[0][0]
    common: dict[str, Any] = {
        "r": r,
        "rank_pattern": {_pattern(p): rank for p, (rank, _) in values.items() if rank != r},
        "alpha_pattern": {_pattern(p): a for p, (_, a) in values.items() if a != alpha},
        "target_modules": "(?:" + "|".join(re.escape(path) for path in values) + ")",
        "inference_mode": True,
    }
    if algorithm is Algorithm.LORA:
        use_dora = any(module.dora_scale is not None for module, _ in modules)
        return LoraConfig(lora_alpha=alpha, use_dora=use_dora, init_lora_weights=False, **common)
    if algorithm is Algorithm.LOHA:
        tucker = any("hada_t1" in module.parts for module, _ in modules)
        return LoHaConfig(alpha=alpha, use_effective_conv2d=tucker, init_weights=False, **common)
    return LoKrConfig(alpha=alpha, init_weights=False, **common)


def _parameter(tensor: torch.Tensor, like: torch.Tensor, shape: torch.Size | None = None) -> torch.nn.Parameter:
    value = tensor.to(device=like.device, dtype=like.dtype)
    return torch.nn.Parameter(value.reshape(shape) if shape is not None else value, requires_grad=False)


def _fill(layer: Any, module: NetworkModule, name: str) -> None:
    """Put the module's tensors into the adapter PEFT created (its own shapes win over PEFT's factorisation)."""
    base = layer.get_base_layer().weight
    parts = module.parts
    if module.algorithm is Algorithm.LORA:
        down, up = layer.lora_A[name], layer.lora_B[name]
        down.weight = _parameter(parts["lora_down.weight"], base, down.weight.shape)
        up.weight = _parameter(parts["lora_up.weight"], base, up.weight.shape)
        if name in getattr(layer, "lora_magnitude_vector", {}):  # DoRA: its magnitude is the file's dora_scale
            magnitude = layer.lora_magnitude_vector[name]
            magnitude.weight = _parameter(parts["dora_scale"], base, magnitude.weight.shape)
        return
    for attribute in layer.adapter_layer_names:  # LoHa / LoKr parts share LyCORIS's names
        created = getattr(layer, attribute)
        if name in created:
            del created[name]
        if attribute in parts:
            getattr(layer, attribute)[name] = _parameter(parts[attribute], base)


def _expose_conv_groups(model: torch.nn.Module, members: list[tuple[NetworkModule, Target]]) -> None:
    """Let PEFT wrap a convolution another adapter type already wraps (a LoRA on top of a LoHa, in one stack).

    PEFT's LoRA `_ConvNd.__init__` reads `groups` from the layer it wraps rather than from its base layer, and
    the LoHa/LoKr wrappers have none; the wrapper gets its base convolution's value."""
    for _, target in members:
        layer = model.get_submodule(target.path)
        if layer is not target.layer and isinstance(target.layer, torch.nn.Conv2d) and not hasattr(layer, "groups"):
            layer.groups = target.layer.groups


def _tuner_layer(model: torch.nn.Module, path: str, name: str) -> Any:
    layer = model.get_submodule(path)
    if name not in getattr(layer, "scaling", {}):
        raise KeyError(f"PEFT did not create adapter {name} on {path}")
    return layer


def inject_network(pipeline: Any, family: Family, state_dict: dict[str, torch.Tensor], name: str) -> InjectReport:
    """Add the file's modules to the pipeline's components as adapter `name`; what cannot apply is reported.

    Raises ValueError when nothing of the file fits (the adapter is then not created at all)."""
    from peft import inject_adapter_in_model

    modules, stray = read_modules(state_dict)
    index = target_index(pipeline, family)
    report = InjectReport()
    for key in stray:
        report.unapplied[key] = "not a LoRA/LyCORIS module part"
    groups: dict[tuple[str, Algorithm, bool], list[tuple[NetworkModule, Target]]] = {}
    for module in modules.values():
        target = index.get(module.name)
        reason = _refusal(module, target)
        if reason is not None:
            report.unapplied[module.name] = reason
            continue
        key = (target.component, module.algorithm, module.dora_scale is not None)
        groups.setdefault(key, []).append((module, target))
    dora_components = {component for component, algorithm, dora in groups if algorithm is Algorithm.LORA and dora}
    for component, algorithm, dora in list(groups):
        if algorithm is Algorithm.LORA and not dora and component in dora_components:
            for module, _ in groups.pop((component, algorithm, dora)):
                report.unapplied[module.name] = "a plain LoRA module in a DoRA file (one adapter is DoRA or not)"
    if not groups:
        examples = "; ".join(f"{module} ({reason})" for module, reason in list(report.unapplied.items())[:3])
        raise ValueError(f"none of its {len(report.unapplied)} modules can be applied to this model, e.g. {examples}")
    try:
        for (component, algorithm, _dora), members in groups.items():
            model = getattr(pipeline, component)
            _expose_conv_groups(model, members)
            inject_adapter_in_model(_config(algorithm, members), model, adapter_name=name, low_cpu_mem_usage=True)
            model._hf_peft_config_loaded = True  # what diffusers' and transformers' adapter methods check
            for module, target in members:
                _fill(_tuner_layer(model, target.path, name), module, name)
            report.applied[component] = report.applied.get(component, 0) + len(members)
    except (RuntimeError, ValueError, TypeError, KeyError) as error:
        _remove(pipeline, {component for component, _, _ in groups}, name)  # no half-built adapter stays behind
        raise ValueError(f"PEFT could not build its adapter ({type(error).__name__}: {error})") from error
    return report


def _remove(pipeline: Any, components: set[str], name: str) -> None:
    from diffusers.utils.peft_utils import delete_adapter_layers

    for component in components:
        model = getattr(pipeline, component)
        delete_adapter_layers(model, name)
        getattr(model, "peft_config", {}).pop(name, None)
