"""Per-step progress, cheap live previews from latents, and interruption between steps."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image

from webui.models.kinds import Family

# Fixed latent → RGB projections (no weights needed), as the peers' "approx cheap" previews.
_SD_FACTORS = (
    (0.3512, 0.2297, 0.3227),
    (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721),
    (-0.2120, -0.2616, -0.7177),
)
_SDXL_FACTORS = (
    (0.3651, 0.4232, 0.4341),
    (-0.2533, -0.0042, 0.1068),
    (0.1076, 0.1111, -0.0362),
    (-0.3165, -0.2492, -0.2188),
)
_SDXL_BIAS = (0.1084, -0.0175, -0.0011)
LATENT_RGB = {
    Family.SD1: (_SD_FACTORS, (0.0, 0.0, 0.0)),
    Family.SD2: (_SD_FACTORS, (0.0, 0.0, 0.0)),
    Family.SDXL: (_SDXL_FACTORS, _SDXL_BIAS),
    Family.SDXL_REFINER: (_SDXL_FACTORS, _SDXL_BIAS),
}


def preview_image(latents: torch.Tensor, family: Family) -> Image.Image:
    """The first latent of a batch as a small RGB picture, by a fixed linear projection."""
    factors, bias = LATENT_RGB[family]
    weight = torch.tensor(factors, dtype=torch.float32)
    rgb = torch.einsum("chw,cr->hwr", latents[0].float().cpu(), weight) + torch.tensor(bias)
    pixels = ((rgb + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    return Image.fromarray(pixels, mode="RGB")


@dataclass(frozen=True)
class Progress:
    """Where a request stands: step of the current image batch, which batch, time left, a preview."""

    step: int
    steps: int
    batch: int
    batches: int
    eta_seconds: float | None
    preview: Image.Image | None = None

    @property
    def fraction(self) -> float:
        done = self.batch * self.steps + self.step
        return done / max(1, self.steps * self.batches)


ProgressCallback = Callable[[Progress], None]


class CancelToken:
    """Set by whoever wants the job stopped; checked by the engine after every step."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


class StepReporter:
    """Builds the diffusers `callback_on_step_end` for one batch: reports, previews, interrupts."""

    def __init__(
        self,
        family: Family,
        steps: int,
        batches: int,
        callback: ProgressCallback | None,
        cancel: CancelToken | None,
        preview_every: int = 0,
    ) -> None:
        self.family, self.steps, self.batches = family, steps, batches
        self.callback, self.cancel, self.preview_every = callback, cancel, preview_every
        self.batch = 0
        self.started = time.perf_counter()
        self.interrupted = False

    def __call__(self, pipeline, step: int, _timestep, tensors: dict) -> dict:  # noqa: ANN001 (diffusers' signature)
        # Some samplers run more model calls than requested steps (PLMS's warm-up, Heun's two per step).
        self.steps = getattr(pipeline, "num_timesteps", None) or self.steps
        done = self.batch * self.steps + step + 1
        elapsed = time.perf_counter() - self.started
        remaining = self.steps * self.batches - done
        preview = None
        if self.preview_every and (step + 1) % self.preview_every == 0 and "latents" in tensors:
            preview = preview_image(tensors["latents"], self.family)
        if self.callback is not None:
            eta = elapsed / done * remaining if done else None
            self.callback(Progress(step + 1, self.steps, self.batch, self.batches, eta, preview))
        if self.cancel is not None and self.cancel.cancelled:
            self.interrupted = True
            pipeline._interrupt = True  # diffusers skips the remaining steps of this call
        return tensors
