"""The vocabulary of the model library: families, component kinds, file formats."""

from __future__ import annotations

from enum import Enum


class Family(str, Enum):
    """Model architecture family. Only the first four can be loaded today."""

    SD1 = "sd1"
    SD2 = "sd2"
    SDXL = "sdxl"
    SDXL_REFINER = "sdxl_refiner"
    SD3 = "sd3"
    FLUX = "flux"
    UNKNOWN = "unknown"

    @property
    def supported(self) -> bool:
        return self in (Family.SD1, Family.SD2, Family.SDXL, Family.SDXL_REFINER)

    @property
    def label(self) -> str:
        return _FAMILY_LABELS[self]


_FAMILY_LABELS = {
    Family.SD1: "SD1.x",
    Family.SD2: "SD2.x",
    Family.SDXL: "SDXL",
    Family.SDXL_REFINER: "SDXL refiner",
    Family.SD3: "SD3",
    Family.FLUX: "FLUX.1",
    Family.UNKNOWN: "unknown",
}


class Kind(str, Enum):
    """What a file holds."""

    CHECKPOINT = "checkpoint"  # UNet + text encoder(s) + VAE
    UNET = "unet"  # diffusion model only
    TEXT_ENCODER = "text_encoder"
    VAE = "vae"
    LORA = "lora"
    EMBEDDING = "embedding"  # textual inversion
    UNKNOWN = "unknown"


class Role(str, Enum):
    """A component's place in a pipeline; the value is its diffusers component (and subfolder) name."""

    UNET = "unet"
    TRANSFORMER = "transformer"  # the denoiser of DiT / MMDiT families
    VAE = "vae"
    TEXT_ENCODER = "text_encoder"
    TEXT_ENCODER_2 = "text_encoder_2"
    TEXT_ENCODER_3 = "text_encoder_3"


class TextEncoderType(str, Enum):
    """Text encoder architectures, by the hidden width that names them."""

    CLIP_L = "clip_l"  # 768: SD1, SDXL's first encoder
    OPEN_CLIP_H = "open_clip_h"  # 1024: SD2
    OPEN_CLIP_G = "open_clip_g"  # 1280: SDXL's second encoder, SDXL refiner
    T5 = "t5"  # SD3 / FLUX.1


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
