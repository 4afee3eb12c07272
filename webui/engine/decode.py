"""Latents to pixels and back: VAE decode / encode with the fp16 NaN/black fallback and tiling for large images."""

from __future__ import annotations

import logging

import torch

from webui.engine.cache import CachedComponent
from webui.engine.memory import module_bytes

log = logging.getLogger(__name__)
FP32_FLAG = "vae-fp32"


def _bad(image: torch.Tensor) -> bool:
    """NaN/inf anywhere, or an all-black image (what fp16 overflow in some VAEs gives)."""
    return not torch.isfinite(image).all().item() or image.max().item() <= -0.999


class NonFiniteOutputError(ValueError):
    """The model's output holds NaN or infinity: nothing is decoded or saved from it."""


def check_finite(tensor: torch.Tensor, model: str, what: str) -> None:
    """Raise NonFiniteOutputError naming `model` when `tensor` holds NaN or inf (an all-black PNG otherwise)."""
    if not torch.isfinite(tensor).all().item():
        overflow = (
            f", or it overflows in {tensor.dtype} and needs fp32 (--precision fp32, or Settings → precision)"
            if tensor.dtype != torch.float32
            else ""
        )
        raise NonFiniteOutputError(
            f"the model {model} produced NaN/inf values in the {what}: its weights, or those of a LoRA applied to "
            f"it, are broken (a damaged or NaN-filled file: try without the LoRAs){overflow}; no image was saved"
        )


def decode_latents(vae_item: CachedComponent, latents: torch.Tensor, tile: bool = False) -> torch.Tensor:
    """Decode to [-1, 1] images. A VAE that fails in half precision is upcast to fp32 once and remembered."""
    vae = vae_item.module
    if FP32_FLAG in vae_item.flags and vae.dtype != torch.float32:
        vae.to(torch.float32)
    if tile:
        vae.enable_tiling()
    try:
        image = _decode(vae, latents)
        if vae.dtype in (torch.float16, torch.bfloat16) and _bad(image):
            log.warning("VAE %s gave NaN/black output in %s; decoding again in fp32", vae_item.key.label, vae.dtype)
            vae.to(torch.float32)
            vae_item.flags.add(FP32_FLAG)
            vae_item.nbytes = module_bytes(vae)
            image = _decode(vae, latents)
    finally:
        if tile:
            vae.disable_tiling()
    return image


def _decode(vae: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
    scaled = latents.to(device=vae.device, dtype=vae.dtype) / vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None)
    if shift:  # the 16-channel VAEs (FLUX.1's ae, SD3's) shift as well as scale
        scaled = scaled + shift
    with torch.inference_mode():
        return vae.decode(scaled, return_dict=False)[0].float()


def encode_pixels(vae_item: CachedComponent, pixels: torch.Tensor, tile: bool = False) -> torch.Tensor:
    """(batch, 3, h, w) images in [-1, 1] to the denoiser's latents: the posterior's mean, shifted and scaled by
    the VAE's config (A1111 samples the posterior with an unseeded generator; the mean makes a second pass
    reproducible). The same fp32 fallback as decoding; tiled for large images."""
    vae = vae_item.module
    if FP32_FLAG in vae_item.flags and vae.dtype != torch.float32:
        vae.to(torch.float32)
    if tile:
        vae.enable_tiling()
    try:
        latents = _encode(vae, pixels)
        if vae.dtype in (torch.float16, torch.bfloat16) and not torch.isfinite(latents).all().item():
            log.warning("VAE %s gave NaN encoding in %s; encoding again in fp32", vae_item.key.label, vae.dtype)
            vae.to(torch.float32)
            vae_item.flags.add(FP32_FLAG)
            vae_item.nbytes = module_bytes(vae)
            latents = _encode(vae, pixels)
    finally:
        if tile:
            vae.disable_tiling()
    return latents


def _encode(vae: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        mean = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist.mode().float()
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (mean - shift) * vae.config.scaling_factor
