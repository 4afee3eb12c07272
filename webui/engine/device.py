"""Device and precision policy: which device, which dtype, when to slice attention or offload."""

from __future__ import annotations

from dataclasses import dataclass

import torch

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
SLICING_MODES = ("auto", "on", "off")
FP8_MODES = ("auto", "on", "off")  # fp8 storage of transformer denoisers (webui.engine.memory_plan)
# Attention slicing costs speed under SDPA; turn it on only when free VRAM is below this.
SLICING_FREE_VRAM_BYTES = 3 * 2**30


@dataclass(frozen=True)
class DevicePolicy:
    """What the user asked for: `device` auto|cpu|cuda|mps, `precision` auto|fp16|bf16|fp32, …"""

    device: str = "auto"
    precision: str = "auto"
    attention_slicing: str = "auto"
    cpu_offload: bool = False
    vae_tiling_min_pixels: int = 1536 * 1536  # decode tiled at or above this many pixels
    fp8_storage: str = "auto"  # transformer weights in fp8 (layerwise casting): auto|on|off, see memory_plan
    group_offload: bool = False  # every component in RAM, layers moved to the GPU as they run

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda", "mps") and not self.device.startswith("cuda:"):
            raise ValueError(f"device: {self.device!r} is unknown; use auto, cpu, cuda, cuda:N or mps")
        if self.precision not in ("auto", *DTYPES):
            raise ValueError(f"precision: {self.precision!r} is unknown; use auto, fp16, bf16 or fp32")
        if self.attention_slicing not in SLICING_MODES:
            raise ValueError(f"attention_slicing: {self.attention_slicing!r} is unknown; use auto, on or off")
        if self.fp8_storage not in FP8_MODES:
            raise ValueError(f"fp8_storage: {self.fp8_storage!r} is unknown; use auto, on or off")
        if self.group_offload and self.cpu_offload:
            raise ValueError("group_offload: choose it or cpu_offload (model offload), not both")

    def resolve_device(self) -> torch.device:
        if self.device == "auto":
            if torch.cuda.is_available():
                return torch.device("cuda")
            if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
                return torch.device("mps")
            return torch.device("cpu")
        device = torch.device(self.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device: cuda was asked for, but torch sees no CUDA GPU (is this the CPU build of torch?)")
        return device

    def resolve_dtype(self, device: torch.device) -> torch.dtype:
        """fp16 on CUDA and MPS by default; fp32 on the CPU, where half precision is slow or unsupported."""
        if self.precision != "auto":
            if device.type == "cpu" and self.precision == "fp16":
                raise ValueError("precision: fp16 is not supported on the CPU; use fp32 or bf16")
            return DTYPES[self.precision]
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32

    def wants_slicing(self, device: torch.device) -> bool:
        if self.attention_slicing != "auto":
            return self.attention_slicing == "on"
        if device.type != "cuda":
            return False
        free, _total = torch.cuda.mem_get_info(device)
        return free < SLICING_FREE_VRAM_BYTES
