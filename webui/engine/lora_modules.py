"""A kohya / LyCORIS LoRA file read as modules: each module's algorithm (LoRA, LoHa, LoKr), factors, alpha, DoRA scale.

The key names and the scale rule are LyCORIS's (github.com/KohakuBlueleaf/LyCORIS, `lycoris/modules/*.py`) as
AUTOMATIC1111 (`extensions-builtin/Lora/network_*.py`) and ComfyUI (`comfy/weight_adapter/`) read them:

- LoRA / LoCon: `lora_down.weight` (rank, in[, k, k]), `lora_up.weight` (out, rank[, 1, 1]); ΔW = up·down.
- LoHa: `hada_w1_a` (out, rank), `hada_w1_b` (rank, in·k·k), `hada_w2_a`, `hada_w2_b`, optional Tucker cores
  `hada_t1` / `hada_t2`; ΔW = (w1_a·w1_b) ⊙ (w2_a·w2_b).
- LoKr: `lokr_w1` or `lokr_w1_a`·`lokr_w1_b`, `lokr_w2` or `lokr_w2_a`·`lokr_w2_b` (optional core `lokr_t2`);
  ΔW = w1 ⊗ w2.
- `alpha` (a scalar): ΔW is multiplied by alpha / rank. No alpha, or a LoKr whose factors are both whole
  matrices (no rank), means a scale of 1.
- `dora_scale`: DoRA's magnitude, (out, 1[, 1, 1]) when the norm is taken per output channel (LyCORIS'
  `wd_on_out`, the default since LyCORIS 2.2), (1, in[, 1, 1]) for the older per-input-channel variant.

Anything else a module holds (`lora_mid` Tucker cores, OFT/BOFT blocks, IA3, GLoRA, `diff` full weights, norms)
is kept as an unsupported module with the reason, so it is reported rather than silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import torch

# The factor names of each algorithm, as LyCORIS writes them after the module name.
_LORA_PARTS = ("lora_down.weight", "lora_up.weight")
_LOHA_PARTS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
_LOKR_PARTS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
_SHARED = ("alpha", "dora_scale")
# Parts that name an algorithm this app does not apply, and what to call it in a report.
_UNSUPPORTED_PARTS = {
    "lora_mid.weight": "LoCon with a Tucker core (lora_mid)",
    "oft_blocks": "LyCORIS OFT",
    "oft_diag": "LyCORIS OFT",
    "oft_R": "LyCORIS BOFT",
    "a1.weight": "LyCORIS GLoRA",
    "on_input": "LyCORIS (IA)³",
    "diff": "a full weight difference (diff)",
    "diff_b": "a full bias difference (diff_b)",
    "w_norm": "a norm-layer weight (w_norm)",
    "b_norm": "a norm-layer bias (b_norm)",
}
_ALL_PARTS = (*_LORA_PARTS, *_LOHA_PARTS, *_LOKR_PARTS, *_SHARED, *_UNSUPPORTED_PARTS)


class Algorithm(str, Enum):
    LORA = "LoRA"
    LOHA = "LoHa"
    LOKR = "LoKr"
    UNSUPPORTED = "unsupported"


@dataclass
class NetworkModule:
    """One patched layer of a LoRA file: its name in the file (`lora_unet_..._to_q`) and its tensors by part."""

    name: str
    parts: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def algorithm(self) -> Algorithm:
        names = set(self.parts)
        if names & set(_UNSUPPORTED_PARTS):
            return Algorithm.UNSUPPORTED
        if {"lora_down.weight", "lora_up.weight"} <= names:
            return Algorithm.LORA
        if {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"} <= names:
            return Algorithm.LOHA
        has_w1 = "lokr_w1" in names or {"lokr_w1_a", "lokr_w1_b"} <= names
        has_w2 = "lokr_w2" in names or {"lokr_w2_a", "lokr_w2_b"} <= names
        if has_w1 and has_w2:
            return Algorithm.LOKR
        return Algorithm.UNSUPPORTED

    @property
    def unsupported_reason(self) -> str | None:
        """Why this module cannot be applied (None: it can, DoRA axis aside; see `dora_reason`)."""
        for part, what in _UNSUPPORTED_PARTS.items():
            if part in self.parts:
                return f"{what} is not supported"
        if self.algorithm is Algorithm.UNSUPPORTED:
            return f"incomplete module (only {', '.join(sorted(self.parts))})"
        return None

    @property
    def rank(self) -> int | None:
        """The rank alpha is divided by (None: a LoKr of whole matrices, which has none)."""
        algorithm = self.algorithm
        if algorithm is Algorithm.LORA:
            return int(self.parts["lora_down.weight"].shape[0])
        if algorithm is Algorithm.LOHA:
            return int(self.parts["hada_w1_b"].shape[0])
        if algorithm is Algorithm.LOKR:
            for part in ("lokr_w1_b", "lokr_w2_b"):
                if part in self.parts:
                    return int(self.parts[part].shape[0])
        return None

    @property
    def alpha(self) -> float | None:
        value = self.parts.get("alpha")
        return None if value is None else float(value.float().reshape(-1)[0])

    @property
    def scale(self) -> float:
        """alpha / rank, or 1 without an alpha or a rank (A1111's `NetworkModule.calc_scale`)."""
        rank, alpha = self.rank, self.alpha
        return alpha / rank if rank and alpha is not None else 1.0

    @property
    def dora_scale(self) -> torch.Tensor | None:
        return self.parts.get("dora_scale")

    def dora_on_output(self, out_features: int) -> bool:
        """Whether the DoRA magnitude is per output channel (the only kind PEFT's DoRA computes)."""
        scale = self.dora_scale
        return scale is not None and scale.shape[0] == out_features and scale.numel() == out_features


def split_key(key: str) -> tuple[str, str] | None:
    """(module name, part) of a kohya/LyCORIS key, or None for keys that are not module parts."""
    for part in _ALL_PARTS:
        if key.endswith("." + part):
            return key[: -len(part) - 1], part
    return None


def read_modules(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, NetworkModule], list[str]]:
    """The file's modules by name, and the keys that belong to none (in file order)."""
    modules: dict[str, NetworkModule] = {}
    stray: list[str] = []
    for key, value in state_dict.items():
        split = split_key(key)
        if split is None:
            stray.append(key)
            continue
        name, part = split
        modules.setdefault(name, NetworkModule(name)).parts[part] = value
    return modules, stray


def is_kohya_named(state_dict: dict[str, torch.Tensor]) -> bool:
    """A file whose modules are named as kohya sd-scripts and LyCORIS name them (`lora_unet_*`, `lora_te*_*`)."""
    modules, _ = read_modules(state_dict)
    return bool(modules) and all(name.startswith(("lora_unet_", "lora_te")) for name in modules)
