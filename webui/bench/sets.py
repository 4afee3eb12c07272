"""The model files each benchmark size runs on: two checkpoints, a shared VAE file, another VAE, a LoRA.

`tiny` uses the test fixtures of the family whose description asks for it (plus a second tiny
checkpoint written beside the run); `small` and `full` write random-weight models of the families whose
descriptions ask for them once into a cache folder, and reuse them while their manifest says they were
built from the same recipe.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from webui.bench.random_models import Overrides, parameter_count, random_component, random_components
from webui.families import DESCRIPTIONS, Family, family_of
from webui.models.ldm_writer import pipeline_to_ldm, save_single_file, vae_to_ldm
from webui.testing import tiny_lora
from webui.testing.tiny import build_tiny_pipeline, read_manifest, stem, write_tiny_models
from webui.testing.tiny_tokenizer import tiny_merges, tiny_vocab

MANIFEST = "bench_manifest.json"
RECIPE_VERSION = 2
CLIP_VOCAB_SIZE = 49408
@dataclass(frozen=True)
class BenchSet:
    """One family's files for a run. `vae` is the file both checkpoints use in the memory figure."""

    name: str
    family: Family
    models_dir: Path  # holds tokenizers/clip
    checkpoint: Path
    checkpoint_b: Path
    vae: Path
    vae_alt: Path
    lora: Path
    width: int
    height: int

    def files(self) -> dict[str, str]:
        names = ("checkpoint", "checkpoint_b", "vae", "vae_alt", "lora")
        return {name: str(getattr(self, name)) for name in names}


@dataclass(frozen=True)
class Recipe:
    """How a generated set is built: family, config overrides, image size."""

    name: str
    family: Family
    overrides: Overrides
    width: int
    height: int

    def parameters(self) -> int:
        return parameter_count(self.family, self.overrides)

    def manifest(self) -> dict[str, object]:
        return {"version": RECIPE_VERSION, "name": self.name, "family": self.family.value, "overrides": self.overrides}


def _plain(overrides: Mapping[str, Mapping[str, object]]) -> Overrides:
    return {component: dict(values) for component, values in overrides.items()}


def small_recipes() -> tuple[Recipe, ...]:
    """A scaled-down model (at its native size) of each family whose description gives `small` overrides."""
    return tuple(
        Recipe(f"small-{d.id}", family_of(d), _plain(d.bench.small), *d.defaults.sizes[0])
        for d in DESCRIPTIONS
        if d.bench is not None and d.bench.small is not None
    )


def full_recipes() -> tuple[Recipe, ...]:
    """The real-size model (at its native size) of each family whose description asks for `full` runs."""
    return tuple(
        Recipe(f"full-{d.id}", family_of(d), {}, *d.defaults.sizes[0])
        for d in DESCRIPTIONS
        if d.bench is not None and d.bench.full
    )


def tiny_family() -> Family:
    """The family whose fixtures the tiny benchmark runs (its description says `tiny`, its fixtures hold a
    second VAE)."""
    for d in DESCRIPTIONS:
        if d.bench is not None and d.bench.tiny and d.fixtures is not None and d.fixtures.alt_vae:
            return family_of(d)
    raise ValueError("bench: no family description asks for tiny runs with a second fixture VAE")


def tiny_set(models_dir: Path | None, scratch: Path) -> BenchSet:
    """The tiny fixtures in `models_dir` (written into `scratch` when None) and a second checkpoint."""
    family = tiny_family()
    name = stem(family)
    if models_dir is None:
        models_dir = scratch / "tiny-models"
        write_tiny_models(models_dir)
    read_manifest(models_dir)  # a clear error when the folder holds no tiny models
    second = scratch / f"{name}-b.safetensors"
    if not second.is_file():
        components = build_tiny_pipeline(family, seed=1)
        save_single_file(pipeline_to_ldm(components, family), second, dtype=torch.float16)
    return BenchSet(
        name=name,
        family=family,
        models_dir=models_dir,
        checkpoint=models_dir / f"checkpoints/{name}.safetensors",
        checkpoint_b=second,
        vae=models_dir / f"vae/{name}-vae.safetensors",
        vae_alt=models_dir / f"vae/{name}-vae-alt.safetensors",
        lora=models_dir / f"loras/{name}-kohya.safetensors",
        width=32,
        height=32,
    )


def _paths(recipe: Recipe, root: Path) -> BenchSet:
    return BenchSet(
        name=recipe.name,
        family=recipe.family,
        models_dir=root,
        checkpoint=root / f"checkpoints/{recipe.name}-a.safetensors",
        checkpoint_b=root / f"checkpoints/{recipe.name}-b.safetensors",
        vae=root / f"vae/{recipe.name}-vae.safetensors",
        vae_alt=root / f"vae/{recipe.name}-vae-alt.safetensors",
        lora=root / f"loras/{recipe.name}-lora.safetensors",
        width=recipe.width,
        height=recipe.height,
    )


def write_full_vocab_tokenizer(folder: Path) -> None:
    """The tiny BPE merges with the vocabulary padded to CLIP's 49,408 entries (fillers no merge produces).

    Prompts tokenize as with the tiny tokenizer, but whatever scales with the vocabulary (building the
    tokenizer, `get_vocab()`) costs what it costs with the real one.
    """
    vocab = dict(tiny_vocab())
    vocab |= {f"<bench-filler-{i}>": i for i in range(len(vocab), CLIP_VOCAB_SIZE)}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges = ["#version: 0.2", *(f"{a} {b}" for a, b in tiny_merges())]
    (folder / "merges.txt").write_text("\n".join(merges) + "\n", encoding="utf-8")


def file_bytes(recipe: Recipe) -> int:
    """Disk space a generated set takes: two fp16 checkpoints, two fp32 VAEs, a small LoRA."""
    return 2 * 2 * recipe.parameters() + 2 * 4 * 84_000_000


def _is_current(recipe: Recipe, root: Path) -> bool:
    manifest = root / MANIFEST
    return manifest.is_file() and json.loads(manifest.read_text()) == recipe.manifest()


def generated_set(recipe: Recipe, root: Path) -> BenchSet:
    """The recipe's files under `root`, written now unless a finished set from the same recipe is there."""
    paths = _paths(recipe, root)
    if _is_current(recipe, root):
        return paths
    existing = next(folder for folder in (root, *root.parents) if folder.exists())
    free = shutil.disk_usage(existing).free
    if free < file_bytes(recipe) * 1.1:
        raise OSError(
            f"{root}: the {recipe.name} benchmark models need about {file_bytes(recipe) / 2**30:.1f} GiB of disk, "
            f"only {free / 2**30:.1f} GiB is free; pass --models-dir on a larger disk"
        )
    (root / MANIFEST).unlink(missing_ok=True)
    write_full_vocab_tokenizer(root / "tokenizers/clip")
    for index, path in enumerate((paths.checkpoint, paths.checkpoint_b)):
        components = random_components(recipe.family, seed=index, overrides=recipe.overrides)
        save_single_file(pipeline_to_ldm(components, recipe.family), path, dtype=torch.float16)
        if index == 0:  # a kohya LoRA over the first checkpoint's layers
            lora = tiny_lora.kohya_lora(components, recipe.family, seed=7)
            metadata = tiny_lora.kohya_metadata(recipe.family, paths.lora.stem)
            save_single_file(lora, paths.lora, metadata=metadata)
        del components
    for seed, path in ((100, paths.vae), (101, paths.vae_alt)):  # VAE files ship in fp32
        vae = random_component(recipe.family, "vae", seed, recipe.overrides, dtype=torch.float32)
        save_single_file(vae_to_ldm(vae.state_dict(), vae.config), path)
    (root / MANIFEST).write_text(json.dumps(recipe.manifest(), indent=2) + "\n")
    return paths
