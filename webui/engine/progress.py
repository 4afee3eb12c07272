"""Per-step progress, cheap live previews from latents, and interruption at every stage of a generation."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from PIL import Image

from webui.families import Family


def preview_image(latents: torch.Tensor, family: Family) -> Image.Image:
    """The first latent of a batch as a small RGB picture, by the family's fixed latent → RGB projection
    (no weights needed, as the peers' "approx cheap" previews)."""
    latent = family.description.latent
    if latent is None:
        raise ValueError(f"family: {family.label} has no latent format for previews")
    weight = torch.tensor(latent.rgb_factors, dtype=torch.float32)
    rgb = torch.einsum("chw,cr->hwr", latents[0].float().cpu(), weight) + torch.tensor(latent.rgb_bias)
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


class Interrupted(Exception):
    """Raised inside a stage (LoRA loading, prompt encoding, decoding) once its job's token is cancelled; the
    engine catches it and returns what was finished. Not an error: the user asked for it."""


class CancelToken:
    """Set by whoever wants the job stopped (or only its current batch skipped, A1111's Skip); checked by the
    engine between stages, LoRA files, steps and VAE tiles."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._skip = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    def skip(self) -> None:
        """Stop the current batch where it is and go on with the next one."""
        self._skip.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def take_skip(self) -> bool:
        """Whether a skip was asked since the last call (it is consumed)."""
        if self._skip.is_set():
            self._skip.clear()
            return True
        return False

    def check(self) -> None:
        """Raise Interrupted if cancelled."""
        if self._event.is_set():
            raise Interrupted


@contextmanager
def interruptible(modules: Iterable[torch.nn.Module | None], cancel: CancelToken | None) -> Iterator[None]:
    """While inside, every forward call of `modules` (a text encoder per prompt, a VAE decoder per tile or batch)
    first checks `cancel`, so a cancelled job stops before the next one instead of after the whole stage."""
    if cancel is None:
        yield
        return

    def check(_module: torch.nn.Module, _inputs: object) -> None:
        cancel.check()

    handles = [module.register_forward_pre_hook(check) for module in modules if module is not None]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class StepReporter:
    """Builds the diffusers `callback_on_step_end` for one batch: reports, previews, interrupts.

    A batch may run several passes (the refiner's part, the hires pass): with `per_batch` set, steps count on
    across the batch's passes (`start_pass()` before each later pass) out of that total."""

    def __init__(
        self,
        family: Family,
        steps: int,
        batches: int,
        callback: ProgressCallback | None,
        cancel: CancelToken | None,
        preview_every: int = 0,
        unpack: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        """`unpack` turns the pipeline's step latents into (batch, channels, h, w) (FLUX packs 2×2 patches)."""
        self.unpack = unpack
        self.family, self.steps, self.batches = family, steps, batches
        self.callback, self.cancel, self.preview_every = callback, cancel, preview_every
        self.batch = 0
        self.started = time.perf_counter()
        self.interrupted = False
        self.skipped = False
        self.per_batch: int | None = None  # the batch's steps over all its passes (None: this pipeline's)
        self._offset = self._done_in_batch = 0
        self._previewed: tuple[int, int] | None = None  # (batch, step) last previewed: a step may span calls

    def start_batch(self, batch: int) -> None:
        self.batch = batch
        self.interrupted = self.skipped = False
        self._offset = self._done_in_batch = 0

    def start_pass(self) -> None:
        """The next pipeline call of this batch continues the count where the last one stopped."""
        self._offset = self._done_in_batch

    def __call__(self, pipeline, step: int, _timestep, tensors: dict) -> dict:  # noqa: ANN001 (diffusers' signature)
        calls = getattr(pipeline, "num_timesteps", None) or self.steps
        if self.per_batch is None:
            # Some samplers make more model calls than the steps asked for (PLMS's warm-up call, Heun's two per
            # step): the count shown is the user's steps, each reached once its share of the calls is done (A1111's).
            shown = min(self.steps, math.ceil((step + 1) * self.steps / calls))
        else:  # several passes (the hires pass, the refiner's part): counted on across them out of their total
            shown = self._offset + step + 1
            self.steps = max(self.per_batch, shown)
        self._done_in_batch = shown
        done = self.batch * self.steps + shown
        elapsed = time.perf_counter() - self.started
        remaining = self.steps * self.batches - done
        preview = None
        due = self.preview_every and shown % self.preview_every == 0 and (self.batch, shown) != self._previewed
        if due and "latents" in tensors:
            latents = tensors["latents"] if self.unpack is None else self.unpack(tensors["latents"])
            preview = preview_image(latents, self.family)
            self._previewed = (self.batch, shown)
        if self.callback is not None:
            eta = elapsed / done * remaining if done else None
            self.callback(Progress(shown, self.steps, self.batch, self.batches, eta, preview))
        if self.cancel is not None and (self.cancel.cancelled or self.cancel.take_skip()):
            self.interrupted = True
            self.skipped = not self.cancel.cancelled
            pipeline._interrupt = True  # diffusers skips the remaining steps of this call
        return tensors
