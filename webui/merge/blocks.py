"""Per-block merge weights: the denoiser's blocks as the family names them, A1111 "MBW" presets, the typed list.

The blocks come from the family description's `merge_blocks` and the file's own keys (`IN00`..`IN11`, `M00`,
`OUT00`..`OUT11` for an SD1/SD2 UNet; SDXL has `IN00`..`IN08`; FLUX.1 has supermerger's `IN`, `D00`..`D18`
(double blocks), `S00`..`S37` (single blocks), `OUT`). Keys of the denoiser outside every block (time embedding,
final norm and conv: A1111's BASE) and every key of the other parts take the recipe's α, unless the list gives BASE.

The typed list, as the block-weight mergers take it:
- one number per block in block order (25 for SD1: IN00..IN11, M00, OUT00..OUT11), optionally with BASE first
  (26, supermerger's and sd-meh's order);
- `NAME=weight` pairs, where NAME may be a block (`IN04`), a glob (`OUT*`, `IN0?`) or `BASE`;
- a preset name (below).

Presets are the "Merge Block Weighted" extension's (bbc-mc/sdweb-merge-block-weighted-gui, MIT; the same
tables in sd-meh's presets.py), defined over the 25 SD1 blocks. For a UNet with another block count each
group (IN, M, OUT) is resampled by position within the group (linear interpolation), so a preset keeps its shape;
for a transformer (FLUX.1: IN, D00..D18, S00..S37, OUT) the whole curve is resampled over its blocks in order,
input side first, so GRAD_V still weights the ends 1 and the middle 0.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from webui.families import Family

_SD_BLOCKS = 25  # IN00..IN11, M00, OUT00..OUT11: the layout the presets are written for
_GROUPS_25 = (("IN", 12), ("M", 1), ("OUT", 12))


def _positions(shape: Callable[[float], float]) -> tuple[float, ...]:
    """A preset from a curve over the 25 blocks, t = 0 (IN00) .. 1 (OUT11)."""
    return tuple(round(shape(i / (_SD_BLOCKS - 1)), 10) for i in range(_SD_BLOCKS))


def _smoothstep(t: float) -> float:
    return t * t * (3 - 2 * t)


def _table(text: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in text.split(","))
    assert len(values) == _SD_BLOCKS, text
    return values


PRESETS: Mapping[str, tuple[float, ...]] = MappingProxyType(
    {
        "GRAD_V": _positions(lambda t: abs(1 - 2 * t)),
        "GRAD_A": _positions(lambda t: 1 - abs(1 - 2 * t)),
        "FLAT_25": (0.25,) * _SD_BLOCKS,
        "FLAT_75": (0.75,) * _SD_BLOCKS,
        "WRAP08": _table("1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1"),
        "WRAP12": _table("1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1,1"),
        "WRAP14": _table("1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1,1,1"),
        "WRAP16": _table("1,1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1"),
        "MID12_50": _table("0,0,0,0,0,.5,.5,.5,.5,.5,.5,.5,.5,.5,.5,.5,.5,.5,.5,0,0,0,0,0,0"),
        "OUT07": _table("0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1,1,1"),
        "OUT12": _table("0,0,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1,1,1,1"),
        "OUT12_5": _table("0,0,0,0,0,0,0,0,0,0,0,0,.5,1,1,1,1,1,1,1,1,1,1,1,1"),
        "RING08_SOFT": _table("0,0,0,0,0,.5,1,1,1,.5,0,0,0,0,0,.5,1,1,1,.5,0,0,0,0,0"),
        "RING08_5": _table("0,0,0,0,0,0,1,1,1,1,0,0,0,0,0,1,1,1,1,0,0,0,0,0,0"),
        "RING10_5": _table("0,0,0,0,0,1,1,1,1,1,0,0,0,0,0,1,1,1,1,1,0,0,0,0,0"),
        "RING10_3": _table("0,0,0,0,0,0,1,1,1,1,1,0,0,0,1,1,1,1,1,0,0,0,0,0,0"),
        "SMOOTHSTEP": _positions(_smoothstep),
        "REVERSE_SMOOTHSTEP": _positions(lambda t: 1 - _smoothstep(t)),
        "COSINE": _positions(lambda t: (1 + math.cos(math.pi * t)) / 2),
        "REVERSE_COSINE": _positions(lambda t: (1 - math.cos(math.pi * t)) / 2),
        "ALL_A": (0.0,) * _SD_BLOCKS,
        "ALL_B": (1.0,) * _SD_BLOCKS,
    }
)
BASE = "BASE"
_NUMBERED = re.compile(r"^([A-Z]+?)(\d+)$")


@dataclass(frozen=True)
class BlockWeights:
    """α per denoiser block (`IN04` -> 0.3); `base` is BASE's (None: the recipe's α)."""

    weights: Mapping[str, float]
    base: float | None = None

    def weight(self, block: str | None, alpha: float) -> float:
        """The weight of a key in `block` (None: outside every block, or not the denoiser's)."""
        if block is None:
            return alpha if self.base is None else self.base
        return self.weights.get(block, alpha if self.base is None else self.base)

    def describe(self) -> dict[str, float]:
        """BASE (when set) and every block's weight, for the recipe metadata."""
        return ({BASE: self.base} if self.base is not None else {}) | dict(self.weights)


def blocks_of(family: Family, keys: Iterable[str]) -> list[str]:
    """The denoiser blocks present among single-file `keys`, in the family's group order then index."""
    description = family.description
    order = {group.name: index for index, group in enumerate(description.merge_blocks)}
    found = {block for key in keys if (block := description.block_of(key)) is not None}
    return sorted(found, key=lambda block: (order[_group(block)], _index(block)))


def _group(block: str) -> str:
    match = _NUMBERED.match(block)
    return match.group(1) if match else block


def _index(block: str) -> int:
    match = _NUMBERED.match(block)
    return int(match.group(2)) if match else 0


def preset_for(name: str, blocks: Sequence[str]) -> dict[str, float]:
    """Preset `name` over `blocks`: exact on the 25 SD1/SD2 blocks, resampled per group for other layouts."""
    key = name.strip().upper().replace("-", "_")
    if key not in PRESETS:
        raise ValueError(f"block weights: no preset {name!r}; presets: {', '.join(PRESETS)}")
    values = PRESETS[key]
    groups = [_group(b) for b in blocks]
    if len(blocks) == _SD_BLOCKS and groups == [g for g, n in _GROUPS_25 for _ in range(n)]:
        return dict(zip(blocks, values, strict=True))
    if not set(groups) <= {g for g, _ in _GROUPS_25}:  # another architecture (a DiT): the curve over all blocks
        return {block: _resample(values, position, len(blocks)) for position, block in enumerate(blocks)}
    by_group: dict[str, list[float]] = {}
    at = 0
    for group, count in _GROUPS_25:
        by_group[group] = list(values[at : at + count])
        at += count
    weights = {}
    for group in dict.fromkeys(groups):
        members = [b for b in blocks if _group(b) == group]
        for position, block in enumerate(members):
            weights[block] = _resample(by_group[group], position, len(members))
    return weights


def _resample(values: Sequence[float], position: int, count: int) -> float:
    """The value at `position` of `count` evenly spread over `values` (linear interpolation)."""
    if len(values) == 1 or count == 1:
        return values[(len(values) - 1) // 2]
    at = position * (len(values) - 1) / (count - 1)
    low = min(math.floor(at), len(values) - 2)
    return values[low] + (values[low + 1] - values[low]) * (at - low)


def parse_block_weights(text: str, blocks: Sequence[str]) -> BlockWeights:
    """A preset name, a list of numbers (one per block, optionally BASE first) or `NAME=weight` pairs, over the
    model's `blocks`; ValueError naming what is wrong and what is allowed."""
    text = text.strip()
    if not blocks:
        raise ValueError("block weights: this model's denoiser has no blocks to weight; use the α alone")
    if not text:
        raise ValueError("block weights: empty; give a preset name, one number per block, or NAME=weight pairs")
    if "=" in text:
        return _named(text, blocks)
    parts = [p.strip() for p in re.split(r"[,\s]+", text) if p.strip()]
    if len(parts) == 1 and not _is_number(parts[0]):
        return BlockWeights(preset_for(parts[0], blocks))
    numbers = [_number(p, "block weights") for p in parts]
    if len(numbers) == len(blocks):
        return BlockWeights(dict(zip(blocks, numbers, strict=True)))
    if len(numbers) == len(blocks) + 1:
        return BlockWeights(dict(zip(blocks, numbers[1:], strict=True)), base=numbers[0])
    raise ValueError(
        f"block weights: {len(numbers)} numbers, but this model has {len(blocks)} blocks "
        f"({blocks[0]}..{blocks[-1]}): give {len(blocks)}, or {len(blocks) + 1} with BASE first"
    )


def _named(text: str, blocks: Sequence[str]) -> BlockWeights:
    weights: dict[str, float] = {}
    base = None
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        name = name.strip().upper()
        if not sep:
            raise ValueError(f"block weights: {item!r}: write NAME=weight (e.g. IN04=0.3, OUT*=1, BASE=0.5)")
        number = _number(value.strip(), f"block weights: {name}")
        if name == BASE:
            base = number
            continue
        matched = [b for b in blocks if fnmatch.fnmatchcase(b, name)]
        if not matched:
            raise ValueError(f"block weights: {name!r} names no block of this model; its blocks: {', '.join(blocks)}")
        weights.update(dict.fromkeys(matched, number))
    return BlockWeights(weights, base)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{what}: {text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{what}: {value} is out of range; allowed 0..1")
    return value
