"""The vocabulary of the model library: component kinds, pipeline roles, file formats.

Model families are not listed here: they are the descriptions registered in `webui.families`.
"""

from __future__ import annotations

from enum import Enum


class Kind(str, Enum):
    """What a file holds."""

    CHECKPOINT = "checkpoint"  # UNet + text encoder(s) + VAE
    UNET = "unet"  # diffusion model only
    TEXT_ENCODER = "text_encoder"
    VAE = "vae"
    LORA = "lora"
    EMBEDDING = "embedding"  # textual inversion
    UPSCALER = "upscaler"  # an image upscaler model (ESRGAN, SwinIR, DAT, HAT, ...), run through spandrel
    UNKNOWN = "unknown"

    @property
    def label(self) -> str:
        """What messages call it (the value is the JSON/API id)."""
        return _KIND_LABELS[self]


class Role(str, Enum):
    """A component's place in a pipeline; the value is its diffusers component (and subfolder) name."""

    UNET = "unet"
    TRANSFORMER = "transformer"  # the denoiser of DiT / MMDiT families
    VAE = "vae"
    TEXT_ENCODER = "text_encoder"
    TEXT_ENCODER_2 = "text_encoder_2"
    TEXT_ENCODER_3 = "text_encoder_3"

    @property
    def label(self) -> str:
        """What messages call it, as the UI's component dropdowns do (the value is diffusers' name)."""
        return _ROLE_LABELS[self]


class TextEncoderType(str, Enum):
    """Text encoder architectures, by the hidden width that names them."""

    CLIP_L = "clip_l"  # 768: SD1, SDXL's first encoder
    OPEN_CLIP_H = "open_clip_h"  # 1024: SD2
    OPEN_CLIP_G = "open_clip_g"  # 1280: SDXL's second encoder, SDXL refiner
    T5 = "t5"  # SD3 / FLUX.1
    QWEN3 = "qwen3"  # Z-Image: the Qwen3-4B language model


class FileFormat(str, Enum):
    """How a file stores tensors, decided from its bytes, never its extension."""

    SAFETENSORS = "safetensors"
    PICKLE = "pickle"  # legacy torch zip/pickle: .ckpt, .pt, .pth, .bin
    DIFFUSERS = "diffusers"  # a folder with model_index.json
    GGUF = "gguf"
    UNKNOWN = "unknown"


class Prediction(str, Enum):
    EPSILON = "epsilon"
    V = "v_prediction"


_KIND_LABELS = {
    Kind.CHECKPOINT: "checkpoint",
    Kind.UNET: "UNet",
    Kind.TEXT_ENCODER: "text encoder",
    Kind.VAE: "VAE",
    Kind.LORA: "LoRA",
    Kind.EMBEDDING: "embedding",
    Kind.UNKNOWN: "unknown file",
}
_ROLE_LABELS = {
    Role.UNET: "UNet",
    Role.TRANSFORMER: "transformer",
    Role.VAE: "VAE",
    Role.TEXT_ENCODER: "text encoder",
    Role.TEXT_ENCODER_2: "text encoder 2",
    Role.TEXT_ENCODER_3: "text encoder 3",
}
