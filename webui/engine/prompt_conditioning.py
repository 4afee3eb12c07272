"""Conditioning that changes during denoising: prompt editing schedules and composable diffusion (`AND`).

diffusers pipelines take one `prompt_embeds` for the whole call; A1111 picks, at every model call, the
scheduled text in force for each `AND` part and for the negative prompt (`reconstruct_multicond_batch`), runs
the UNet on the uncond and every part in one batch, and combines the parts as composable diffusion does
(Liu et al. 2022, "Compositional Visual Generation with Composable Diffusion Models"):

    noise = uncond + cfg_scale · Σ_k weight_k · (cond_k − uncond)

Here a pair of forward hooks on the pipeline's UNet does the same inside an unmodified pipeline call: the
pre-hook replaces the text conditioning of the batch the pipeline built ([uncond, cond] with classifier-free
guidance) by [uncond, part_1, …, part_K] for the current call, and the post-hook folds the K part outputs into
`uncond + Σ_k weight_k · (cond_k − uncond)`, which the pipeline's own guidance step then scales by cfg_scale.
A plain prompt (one part of weight 1, nothing scheduled) installs no hook, so it gives exactly the pixels of
the pipeline's own call. Model calls are counted as A1111 counts them: one per UNet evaluation.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from webui.engine.conditioning import Conditioning, Encoded, PromptEncoder, conditioning_of
from webui.engine.prompt_editing import entry_at
from webui.engine.prompt_plan import PromptPlan

CHUNK_TOKENS = 77


@dataclass(frozen=True)
class _Scheduled:
    ends: tuple[int, ...]
    encodings: tuple[Encoded, ...]

    def at(self, call: int) -> Encoded:
        return self.encodings[entry_at(self.ends, call)]


@dataclass
class ScheduledConditioning:
    """The encoded plan: each AND part's weight and scheduled encodings, the negative's, and an empty chunk for
    padding. `first()` is a conditioning for the pipeline's own argument checks; `at_call(i)` what the UNet
    gets at model call i. `plain` when the hook is not needed."""

    parts: tuple[tuple[float, _Scheduled], ...]
    negative: _Scheduled
    encoder: PromptEncoder  # for the empty chunk that pads, encoded only when some step needs it
    batch: int
    plain: bool
    _cache: dict[tuple[int, ...], tuple[Encoded, list[tuple[float, Encoded]]]] = field(default_factory=dict)
    _empty: Encoded | None = None

    @property
    def empty(self) -> Encoded:
        if self._empty is None:
            self._empty = self.encoder.encode("")
        return self._empty

    def first(self) -> Conditioning:
        uncond, conds = self.at_call(0)
        return conditioning_of(conds[0][1], uncond, self.batch)

    def at_call(self, call: int) -> tuple[Encoded, list[tuple[float, Encoded]]]:
        """(uncond, [(weight, cond), ...]) for model call `call`, every tensor of one length: the parts padded with
        their last vector (A1111's multicond padding), then conds vs uncond with empty chunks (pad_cond_uncond)."""
        key = (entry_at(self.negative.ends, call), *(entry_at(s.ends, call) for _, s in self.parts))
        if key not in self._cache:
            self._cache[key] = self._padded(self.negative.at(call), [(w, s.at(call)) for w, s in self.parts])
        return self._cache[key]

    def _padded(self, uncond: Encoded, conds: list[tuple[float, Encoded]]) -> tuple[Encoded, list]:
        longest = max(c.embeds.shape[1] for _, c in conds)
        conds = [(w, _pad_with_last(c, longest)) for w, c in conds]
        extra = (longest - uncond.embeds.shape[1]) // CHUNK_TOKENS
        if extra > 0:
            uncond = _pad_with_empty(uncond, self.empty, extra)
        elif extra < 0:
            conds = [(w, _pad_with_empty(c, self.empty, -extra)) for w, c in conds]
        return uncond, conds


def _pad_with_last(encoded: Encoded, length: int) -> Encoded:
    missing = length - encoded.embeds.shape[1]
    if missing <= 0:
        return encoded
    last = encoded.embeds[:, -1:].repeat(1, missing, 1)
    return Encoded(torch.cat([encoded.embeds, last], dim=1), encoded.pooled)


def _pad_with_empty(encoded: Encoded, empty: Encoded, chunks: int) -> Encoded:
    return Encoded(torch.cat([encoded.embeds, empty.embeds.repeat(1, chunks, 1)], dim=1), encoded.pooled)


def encode_plan(encoder: PromptEncoder, plan: PromptPlan, batch: int) -> ScheduledConditioning:
    """Encode every text of `plan` once, and arrange them by part and schedule entry."""
    if batch < 1:
        raise ValueError(f"batch: {batch} is out of range; allowed 1 and more")
    encoded: dict[str, Encoded] = {}

    def encode(text: str) -> Encoded:
        if text not in encoded:
            encoded[text] = encoder.encode(text)
        return encoded[text]

    parts = tuple(
        (part.weight, _Scheduled(tuple(e for e, _ in part.schedule), tuple(encode(t) for _, t in part.schedule)))
        for part in plan.parts
    )
    like = parts[0][1].encodings[0]
    negative = _Scheduled(
        tuple(e for e, _ in plan.negative), tuple(encoder.negative(t, like) for _, t in plan.negative)
    )
    if plan.plain:  # the pipeline's own single conditioning, padded as before
        positive, uncond = encoder.same_length(like, negative.encodings[0])
        parts = ((1.0, _Scheduled(parts[0][1].ends, (positive,))),)
        negative = _Scheduled(negative.ends, (uncond,))
    return ScheduledConditioning(parts, negative, encoder, batch, plan.plain)


class ConditioningHook:
    """Forward hooks on a UNet that give each model call its scheduled, composable conditioning (see module doc).

    `cfg_scale` is used only when the pipeline runs without classifier-free guidance (cfg ≤ 1): the hook then
    returns `uncond + cfg_scale · Σ weight·(cond − uncond)` itself, as A1111 does at any scale. `last_uncond`
    holds the uncond output of the latest call (for samplers that need it, like DDIM CFG++)."""

    def __init__(self, conditioning: ScheduledConditioning, cfg_scale: float) -> None:
        self.conditioning = conditioning
        self.cfg_scale = cfg_scale
        self.calls = 0
        self.last_uncond: torch.Tensor | None = None
        self._layout: tuple[int, bool, list[float]] | None = None

    @contextmanager
    def installed(self, unet: torch.nn.Module) -> Iterator[ConditioningHook]:
        pre = unet.register_forward_pre_hook(self._before, with_kwargs=True)
        post = unet.register_forward_hook(self._after, with_kwargs=True)
        try:
            yield self
        finally:
            pre.remove()
            post.remove()

    def _before(self, _module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        batch = self.conditioning.batch
        sample = args[0] if args else kwargs["sample"]
        rows = sample.shape[0]
        if rows not in (batch, 2 * batch):
            raise RuntimeError(f"the UNet got a batch of {rows}; the conditioning is for {batch} images")
        guided = rows == 2 * batch
        uncond, conds = self.conditioning.at_call(self.calls)
        cond_rows = torch.arange(batch, 2 * batch) if guided else torch.arange(batch)
        index = torch.cat([torch.arange(batch), *[cond_rows] * len(conds)]).to(sample.device)

        def expand(value: Any) -> Any:
            if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == rows:
                return value.index_select(0, index.to(value.device))
            return value

        added = kwargs.get("added_cond_kwargs")
        args = tuple(expand(a) for a in args)
        kwargs = {k: expand(v) for k, v in kwargs.items() if k not in ("encoder_hidden_states", "added_cond_kwargs")}
        hidden = torch.cat([uncond.embeds.repeat(batch, 1, 1)] + [c.embeds.repeat(batch, 1, 1) for _, c in conds])
        kwargs["encoder_hidden_states"] = hidden.to(sample.device)
        if len(args) > 2:  # encoder_hidden_states given by position
            args = (*args[:2], kwargs.pop("encoder_hidden_states"), *args[3:])
        added = _added_kwargs(added, expand, uncond, conds, batch)
        if added is not None:
            kwargs["added_cond_kwargs"] = added
        self._layout = (batch, guided, [w for w, _ in conds])
        return args, kwargs

    def _after(self, _module: torch.nn.Module, _args: tuple, _kwargs: dict, output: Any) -> Any:
        assert self._layout is not None
        batch, guided, weights = self._layout
        self.calls += 1
        sample = output[0] if isinstance(output, tuple) else output.sample
        uncond = sample[:batch]
        parts = sample[batch:].reshape(len(weights), batch, *sample.shape[1:])
        combined = uncond.clone()
        for weight, part in zip(weights, parts, strict=True):
            combined += weight * (part - uncond)
        self.last_uncond = uncond
        if guided:
            result = torch.cat([uncond, combined])
        else:
            result = uncond + self.cfg_scale * (combined - uncond)
        if isinstance(output, tuple):
            return (result, *output[1:])
        output.sample = result
        return output


def _added_kwargs(
    added: dict | None, expand: Any, uncond: Encoded, conds: list[tuple[float, Encoded]], batch: int
) -> dict | None:
    """SDXL's added conditioning: the time ids expanded with the batch, the pooled text embeds per part."""
    if added is None:
        return None
    out = {k: expand(v) for k, v in added.items()}
    if "text_embeds" in added and uncond.pooled is not None:
        pooled = [uncond.pooled] + [c.pooled for _, c in conds]
        out["text_embeds"] = torch.cat([p.repeat(batch, 1) for p in pooled]).to(added["text_embeds"])
    return out
