"""What a merge is asked to do (`MergeRecipe`), and the recipe a merged file carries in its metadata.

The metadata follows AUTOMATIC1111's checkpoint merger (modules/extras.py `run_modelmerger`), so A1111, Forge
and the model sites that read it show how the model was made: `sd_merge_recipe` is a JSON object with `type`,
`primary_model_hash` / `secondary_model_hash` / `tertiary_model_hash` (full SHA-256), `interp_method`
("No interpolation", "Weighted sum", "Add difference"), `multiplier` (α), `save_as_half`, `custom_name`,
`bake_in_vae`, `discard_weights`; `sd_merge_models` maps each input's SHA-256 to its `name`, `legacy_hash` (here
A1111's short model hash) and its own `sd_merge_recipe`, so a merge of merges keeps the whole history. This app
adds what A1111's merger cannot do under its own keys in the same object: `block_weights`, `parts`, `loras`,
`precision`, `prune`, and the inputs' files (`models`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from webui.engine.lora import LoraSpec
from webui.families.base import Part

RECIPE_KEY = "sd_merge_recipe"
MODELS_KEY = "sd_merge_models"
RECIPE_TYPE = "webui"
SPLIT_FILES = re.compile(r"\s+\+\s+")  # "unet.safetensors + clip.safetensors + vae.safetensors"


class MergeMode(str, Enum):
    """A1111's interpolation methods; the value is its name (and `interp_method` in the metadata)."""

    NO_INTERPOLATION = "No interpolation"  # A alone: convert, prune, bake in a VAE or LoRAs
    WEIGHTED_SUM = "Weighted sum"  # A·(1−α) + B·α
    ADD_DIFFERENCE = "Add difference"  # A + (B − C)·α

    @property
    def inputs(self) -> int:
        return {MergeMode.NO_INTERPOLATION: 1, MergeMode.WEIGHTED_SUM: 2, MergeMode.ADD_DIFFERENCE: 3}[self]


class Precision(str, Enum):
    """The floating-point dtype the merged file stores (integer tensors keep theirs)."""

    FP16 = "fp16"
    BF16 = "bf16"
    FP32 = "fp32"

    @property
    def dtype_name(self) -> str:
        return {Precision.FP16: "F16", Precision.BF16: "BF16", Precision.FP32: "F32"}[self]


@dataclass(frozen=True)
class ModelInput:
    """One model of a merge: a checkpoint (single file or diffusers folder), component files, or both (the
    components replace or supply the checkpoint's parts: a UNet/DiT file, text-encoder files, a VAE file)."""

    files: tuple[Path, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "files", tuple(Path(f) for f in self.files))
        if not self.files:
            raise ValueError("model: give a checkpoint, or its component files")

    @classmethod
    def parse(cls, text: str) -> ModelInput:
        """`path` or `unet-file + text-encoder-file + vae-file` (files joined by ` + `)."""
        return cls(tuple(Path(part.strip()).expanduser() for part in SPLIT_FILES.split(text.strip()) if part.strip()))

    @property
    def label(self) -> str:
        return " + ".join(f.name if f.is_dir() else f.stem for f in self.files)


ALL_PARTS = frozenset(Part)


@dataclass(frozen=True)
class MergeRecipe:
    """How to make one model. `mode` decides which of `b` / `c` are needed; `alpha` is A1111's multiplier (0..1);
    `block_weights` a preset name, a list of numbers or NAME=weight pairs over the denoiser's blocks (None: α for
    every key); `parts` what is merged (the rest is A's); `vae` a VAE file baked in; `loras` baked in at their
    weights; `precision` the stored float dtype; `prune` keeps only the family's components (EMA weights and
    training leftovers dropped, identification markers kept); `discard` a regular expression of keys to drop
    (A1111's "Discard weights with matching name")."""

    mode: MergeMode
    a: ModelInput
    b: ModelInput | None = None
    c: ModelInput | None = None
    alpha: float = 0.5
    block_weights: str | None = None
    parts: frozenset[Part] = ALL_PARTS
    vae: Path | None = None
    loras: tuple[LoraSpec, ...] = ()
    precision: Precision = Precision.FP16
    prune: bool = False
    discard: str = ""
    name: str = field(default="", compare=False)  # the output's name, for the metadata (A1111's custom_name)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", MergeMode(self.mode))
        object.__setattr__(self, "precision", Precision(self.precision))
        object.__setattr__(self, "parts", frozenset(Part(p) for p in self.parts))
        object.__setattr__(self, "loras", tuple(self.loras))
        needed = self.mode.inputs
        given = 1 + (self.b is not None) + (self.c is not None)
        if needed >= 2 and self.b is None:
            raise ValueError(f"b: {self.mode.value} needs model B")
        if needed == 3 and self.c is None:
            raise ValueError("c: Add difference needs model C (the base B was trained from)")
        if given > needed:
            extra = "C" if self.c is not None else "B"
            raise ValueError(f"{extra.lower()}: {self.mode.value} takes {needed} model(s); remove model {extra}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha: {self.alpha} is out of range; allowed 0..1")
        if needed >= 2 and not self.parts:
            raise ValueError("parts: choose at least one of denoiser, text encoder, VAE to merge")
        if self.discard:
            try:
                re.compile(self.discard)
            except re.error as error:
                raise ValueError(f"discard: {self.discard!r} is not a regular expression ({error})") from None
        if self.block_weights is not None and not self.block_weights.strip():
            object.__setattr__(self, "block_weights", None)

    @property
    def inputs(self) -> tuple[tuple[str, ModelInput], ...]:
        """(letter, model) for each model the mode uses."""
        named = (("A", self.a), ("B", self.b), ("C", self.c))
        return tuple((letter, model) for letter, model in named if model is not None)


@dataclass(frozen=True)
class InputRecord:
    """What the metadata says of one input file: its name, path and SHA-256 (None for a folder), and the recipe
    it carried itself."""

    letter: str
    name: str
    path: str
    sha256: str | None
    recipe: str | None = None
    models: str | None = None


def recipe_metadata(
    recipe: MergeRecipe,
    inputs: list[InputRecord],
    block_weights: Mapping[str, float] | None,
    loras: list[dict[str, Any]],
) -> dict[str, str]:
    """The `sd_merge_recipe` / `sd_merge_models` metadata of a merged file (A1111's keys, plus ours)."""
    hashes = {record.letter: record.sha256 for record in inputs}
    vae = next((r for r in inputs if r.letter == "VAE"), None)
    body: dict[str, Any] = {
        "type": RECIPE_TYPE,
        "primary_model_hash": hashes.get("A"),
        "secondary_model_hash": hashes.get("B"),
        "tertiary_model_hash": hashes.get("C"),
        "interp_method": recipe.mode.value,
        "multiplier": recipe.alpha,
        "save_as_half": recipe.precision is Precision.FP16,
        "custom_name": recipe.name,
        "config_source": 0,
        "bake_in_vae": vae.name if vae else "None",
        "discard_weights": recipe.discard,
        "is_inpainting": False,
        "is_instruct_pix2pix": False,
        "block_weights": dict(block_weights) if block_weights else None,
        "parts": sorted(p.value for p in recipe.parts),
        "loras": loras,
        "precision": recipe.precision.value,
        "prune": recipe.prune,
        "models": [{"role": r.letter, "name": r.name, "path": r.path, "sha256": r.sha256} for r in inputs],
    }
    models: dict[str, Any] = {}
    for record in inputs:
        if record.sha256 is None or record.letter.rstrip("0123456789") not in ("A", "B", "C"):
            continue
        models[record.sha256] = {
            "name": record.name,
            "legacy_hash": record.sha256[:10],
            "sd_merge_recipe": record.recipe,
        }
        if record.models:
            models.update(_json_object(record.models))
    return {RECIPE_KEY: json.dumps(body), MODELS_KEY: json.dumps(models), "format": "pt"}


def read_recipe(metadata: Mapping[str, str]) -> dict[str, Any] | None:
    """The merge recipe a file's metadata holds (any A1111-style merger's), with its models; None when it has none.

    Malformed JSON is returned as `{"raw": text}` rather than failing: the file is still a model."""
    raw = metadata.get(RECIPE_KEY)
    if not raw:
        return None
    recipe = _json_object(raw) or {"raw": raw}
    models = metadata.get(MODELS_KEY)
    if models:
        recipe = {**recipe, "sd_merge_models": _json_object(models) or {"raw": models}}
    return recipe


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def recipe_summary(recipe: Mapping[str, Any]) -> str:
    """One line for the Models tab: `Weighted sum, M 0.3: A, B` (+ block weights, baked VAE and LoRAs)."""
    method = str(recipe.get("interp_method") or "merged")
    names = [m.get("name") for m in recipe.get("models") or [] if isinstance(m, dict) and m.get("role") != "VAE"]
    if not names:  # another merger's recipe: its models by hash
        hashes = [recipe.get(k) for k in ("primary_model_hash", "secondary_model_hash", "tertiary_model_hash")]
        names = [str(h)[:10] for h in hashes if h]
    line = f"{method}, M {recipe.get('multiplier')}" if method != MergeMode.NO_INTERPOLATION.value else method
    line += f": {', '.join(str(n) for n in names)}" if names else ""
    if recipe.get("block_weights"):
        line += f"; per-block weights over {len(recipe['block_weights'])} blocks"
    if recipe.get("bake_in_vae") not in (None, "None", ""):
        line += f"; VAE {recipe['bake_in_vae']}"
    loras = recipe.get("loras") or []
    if loras:
        line += "; LoRAs " + ", ".join(f"{lora.get('name')} ({lora.get('unet_weight')})" for lora in loras)
    return line
