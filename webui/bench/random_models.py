"""Random-weight components of a family built from its bundled (real-size) configs, optionally scaled down.

The layout is real (keys, shapes, block structure), the images are noise. Modules are created on
the meta device and materialised straight into the file dtype, so a real-size UNet costs its
fp16 bytes once, not an fp32 copy plus a cast. Roles and component classes come from the description.
"""

from __future__ import annotations

import torch
from transformers import CLIPTextConfig

from webui.families import Family
from webui.families.base import Part
from webui.models.derive import bundled_config

Overrides = dict[str, dict[str, object]]  # component -> config values replacing the bundled ones
EMBEDDING_STD = 0.02


def _roles(family: Family) -> tuple[str, ...]:
    description = family.description
    if not description.supported or description.bench is None:
        raise ValueError(f"family: the benchmark builds no {family.label} models (its description has no bench runs)")
    return tuple(spec.role.value for spec in description.roles)


def component_config(family: Family, component: str, overrides: Overrides | None = None) -> dict[str, object]:
    config = bundled_config(family, component)
    config.update((overrides or {}).get(component, {}))
    return config


def _on_meta(family: Family, component: str, config: dict[str, object]) -> torch.nn.Module:
    spec = next(spec for spec in family.description.roles if spec.role.value == component)
    cls = spec.component_type()
    with torch.device("meta"):
        if spec.part is Part.TEXT_ENCODER:
            return cls(CLIPTextConfig.from_dict(config))
        return cls.from_config(config)


def parameter_count(family: Family, overrides: Overrides | None = None) -> int:
    """Parameters of the whole model (all components), counted without allocating them."""
    total = 0
    for component in _roles(family):
        module = _on_meta(family, component, component_config(family, component, overrides))
        total += sum(p.numel() for p in module.parameters())
    return total


def _fill(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Scaled random weights (N(0, 1/(3 fan_in)), torch's default scale) that keep activations finite."""
    embeddings = {id(m.weight) for m in module.modules() if isinstance(m, torch.nn.Embedding)}
    with torch.no_grad():
        for name, param in module.named_parameters():
            if id(param) in embeddings:
                param.normal_(0.0, EMBEDDING_STD, generator=generator)
            elif param.ndim >= 2:
                param.normal_(0.0, (3.0 * param[0].numel()) ** -0.5, generator=generator)
            elif name.endswith("weight"):
                param.fill_(1.0)
            else:
                param.zero_()
        for name, buffer in module.named_buffers():
            if not name.endswith("position_ids"):
                raise ValueError(f"random_models: no initialiser for buffer {name!r}")
            buffer.copy_(torch.arange(buffer.shape[-1]).expand_as(buffer))


def random_component(
    family: Family, component: str, seed: int, overrides: Overrides | None = None, dtype: torch.dtype = torch.float16
) -> torch.nn.Module:
    """One component with seeded random weights in `dtype` on the CPU."""
    module = _on_meta(family, component, component_config(family, component, overrides))
    module = module.to(dtype=dtype).to_empty(device="cpu")
    _fill(module, torch.Generator().manual_seed(seed))
    return module.eval()


def random_components(
    family: Family, seed: int, overrides: Overrides | None = None, dtype: torch.dtype = torch.float16
) -> dict[str, torch.nn.Module]:
    """unet, vae and text encoder(s) as `pipeline_to_ldm` takes them; each component seeded apart."""
    return {
        component: random_component(family, component, seed * 10 + index, overrides, dtype)
        for index, component in enumerate(_roles(family))
    }
