"""Runs upscaler model files (through spandrel) on images, in overlapping tiles so that large images fit.

The last model used stays loaded (keyed by file identity; upscalers are a few MB to a few hundred) until
another is used or `clear()` frees it. Tiles overlap and are blended with linear ramps, as the peers' tiled
upscalers do (ComfyUI's `tiled_scale`), so seams do not show; an image no larger than one tile runs whole.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

TILE = 512  # input pixels per tile side (A1111's ESRGAN default is 192; ComfyUI's 512)
OVERLAP = 32


def _starts(length: int, tile: int, stride: int) -> list[int]:
    starts = list(range(0, max(length - tile, 0) + 1, stride))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def _ramp(length: int, overlap: int, before: bool, after: bool) -> torch.Tensor:
    """Weights along one side of a tile: rising over `overlap` where a neighbour comes before, falling after."""
    weights = torch.ones(length)
    steps = min(overlap, length // 2)
    if steps:
        rise = torch.linspace(0, 1, steps + 2)[1:-1]  # never 0, so every pixel has weight
        if before:
            weights[:steps] = rise
        if after:
            weights[-steps:] = torch.minimum(weights[-steps:], rise.flip(0))
    return weights


def tiled(
    run: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    scale: int,
    tile: int = TILE,
    overlap: int = OVERLAP,
) -> torch.Tensor:
    """`run` (a (1, C, h, w) → (1, C', h·scale, w·scale) model) over `image` in overlapping tiles, blended."""
    _, _, height, width = image.shape
    if height <= tile and width <= tile:
        return run(image)
    stride = max(1, tile - overlap)
    output: torch.Tensor | None = None
    total = torch.zeros(1, 1, height * scale, width * scale)
    for top in _starts(height, tile, stride):
        for left in _starts(width, tile, stride):
            bottom, right = min(top + tile, height), min(left + tile, width)
            piece = run(image[:, :, top:bottom, left:right]).float().cpu()
            if output is None:
                output = torch.zeros(1, piece.shape[1], height * scale, width * scale)
            rows = _ramp(piece.shape[2], overlap * scale, top > 0, bottom < height)
            cols = _ramp(piece.shape[3], overlap * scale, left > 0, right < width)
            weight = rows[:, None] * cols[None, :]
            area = (slice(None), slice(None), slice(top * scale, bottom * scale), slice(left * scale, right * scale))
            output[area] += piece * weight
            total[area] += weight
    assert output is not None
    return output / total


def to_tensor(image: Image.Image) -> torch.Tensor:
    """(1, 3, h, w) float in [0, 1] from an RGB image."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)[None].contiguous()


def to_image(tensor: torch.Tensor) -> Image.Image:
    array = tensor[0].clamp(0, 1).permute(1, 2, 0).mul(255).round().to(torch.uint8).cpu().numpy()
    return Image.fromarray(array, mode="RGB")


class UpscalerModels:
    """Upscaler files run on `device` (fp16 on CUDA where the architecture allows it, else fp32)."""

    def __init__(
        self, device: torch.device | Callable[[], torch.device], tile: int = TILE, overlap: int = OVERLAP
    ) -> None:
        # A callable follows the engine's current device (Settings can move it without a restart).
        fixed = None if callable(device) else torch.device(device)
        self._device = device if fixed is None else (lambda: fixed)
        self.tile, self.overlap = tile, overlap
        self._key: tuple[str, int, int, str] | None = None
        self._model: Any = None
        self._lock = threading.Lock()

    @property
    def device(self) -> torch.device:
        return torch.device(self._device())

    def model(self, path: Path) -> Any:
        """The spandrel descriptor of `path`, loaded (safely: see webui.models.upscaler_files) or kept."""
        from webui.models.upscaler_files import load_upscaler

        stat = Path(path).stat()
        key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns, str(self.device))
        with self._lock:
            if key != self._key:
                self.clear()
                model = load_upscaler(Path(path))
                half = self.device.type == "cuda" and model.supports_half
                self._model = model.to(self.device, torch.float16 if half else torch.float32)
                self._key = key
            return self._model

    def clear(self) -> None:
        """Forget the loaded model, so its memory is freed."""
        self._model, self._key = None, None

    def run(self, image: Image.Image, path: Path) -> Image.Image:
        """One pass of the model at `path` over `image` (its own factor larger)."""
        model = self.model(path)
        dtype = next(model.model.parameters()).dtype

        def forward(piece: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return model(piece.to(self.device, dtype)).float()

        return to_image(tiled(forward, to_tensor(image), int(model.scale), self.tile, self.overlap))
