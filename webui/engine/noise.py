"""Starting noise per image, drawn on the CPU from each image's seed, and A1111's variation seeds.

A variation seed (`subseed`, `subseed_strength`) blends the seed's noise with the variation seed's by
spherical interpolation, as A1111's `create_random_tensors` does: `slerp(strength, noise, subnoise)`, where
A1111's `slerp` normalises along dim 1 of each image's (channels, height, width) noise, i.e. per column of
each channel; at 0 the seed's noise, at 1 the variation seed's. Noise comes from a CPU `torch.Generator`
seeded with the image's seed, the way diffusers' `randn_tensor` draws it, so with no variation the noise
equals what the pipeline would draw from the same generators.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

_NEARLY_PARALLEL = 0.9995  # above this mean cosine A1111 interpolates linearly (and so do we)


def image_noise(seed: int, shape: Sequence[int]) -> torch.Tensor:
    """Standard-normal noise of `shape` (one image's latent) from `seed`, on the CPU, float32."""
    return torch.randn(tuple(shape), generator=torch.Generator("cpu").manual_seed(int(seed)), dtype=torch.float32)


def slerp(strength: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation from `low` (strength 0) to `high` (strength 1) along dim 1, as A1111's."""
    low_unit = low / torch.norm(low, dim=1, keepdim=True)
    high_unit = high / torch.norm(high, dim=1, keepdim=True)
    cosine = (low_unit * high_unit).sum(1)
    if cosine.mean() > _NEARLY_PARALLEL:
        return low * (1 - strength) + high * strength
    omega = torch.acos(cosine)
    sine = torch.sin(omega)
    return (torch.sin((1 - strength) * omega) / sine).unsqueeze(1) * low + (
        torch.sin(strength * omega) / sine
    ).unsqueeze(1) * high


def initial_noise(
    seeds: Sequence[int],
    shape: Sequence[int],
    subseeds: Sequence[int] | None = None,
    subseed_strength: float = 0.0,
) -> torch.Tensor:
    """(batch, *shape) starting noise: each image's seed's, blended with its variation seed's when asked."""
    images = []
    for index, seed in enumerate(seeds):
        noise = image_noise(seed, shape)
        if subseeds is not None and subseed_strength:
            noise = slerp(subseed_strength, noise, image_noise(subseeds[index], shape))
        images.append(noise)
    return torch.stack(images)
