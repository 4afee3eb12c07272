"""Where a merge's output goes and what it is called; model inputs named as the library lists them.

Default names follow AUTOMATIC1111's merger (modules/extras.py): `0.7(A) + 0.3(B)` for a weighted sum,
`A + 0.5(B - C)` for add difference; a file made from A alone is `A.fp16` (plus `-pruned`, `-baked` for what was
done). The file goes to the models folder that holds its kind (checkpoints/, diffusion_models/, vae/,
text_encoders/), where the library lists it at its next refresh.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from webui.merge.recipe import SPLIT_FILES, MergeMode, MergeRecipe, ModelInput
from webui.models.kinds import Kind

if TYPE_CHECKING:
    from webui.models.library import ModelLibrary

FOLDERS = {
    Kind.CHECKPOINT: "checkpoints",
    Kind.UNET: "diffusion_models",
    Kind.VAE: "vae",
    Kind.TEXT_ENCODER: "text_encoders",
}
_UNSAFE = re.compile(r'[\\/:*?"<>|\x00-\x1f]')


def default_name(recipe: MergeRecipe) -> str:
    """A1111's name for the recipe's result (see the module docstring)."""
    a = recipe.a.label
    if recipe.mode is MergeMode.WEIGHTED_SUM:
        return f"{_round(1 - recipe.alpha)}({a}) + {_round(recipe.alpha)}({recipe.b.label})"
    if recipe.mode is MergeMode.ADD_DIFFERENCE:
        return f"{a} + {_round(recipe.alpha)}({recipe.b.label} - {recipe.c.label})"
    done = ["-pruned" if recipe.prune else "", "-baked" if recipe.loras or recipe.vae else ""]
    return f"{a}.{recipe.precision.value}{''.join(done)}"


def _round(value: float) -> str:
    return f"{round(value, 2):g}"


def output_path(models_dir: Path, name: str, kind: Kind) -> Path:
    """`<models>/<folder of kind>/<name>.safetensors`; ValueError naming `name` when it is not a plain file name."""
    name = name.strip().removesuffix(".safetensors")
    if not name or name in (".", "..") or _UNSAFE.search(name):
        raise ValueError(f"name: {name!r} is not a usable file name (no slashes, colons or control characters)")
    return Path(models_dir) / FOLDERS.get(kind, FOLDERS[Kind.CHECKPOINT]) / f"{name}.safetensors"


def resolve_model(library: ModelLibrary, text: str) -> ModelInput:
    """A model as the user wrote it: a path or a library name, or several joined by ` + ` (component files).

    The whole text is tried as one model first: A1111's merge names (`0.7(A) + 0.3(B)`) contain ` + ` themselves,
    and a merge of a merge must still find its input. LookupError (from the library) when nothing matches."""
    whole = text.strip()
    if whole and Path(whole).expanduser().exists():
        return ModelInput((Path(whole).expanduser(),))
    if whole:
        try:
            return ModelInput((library.find(whole).path,))
        except LookupError:
            pass  # component files joined by ' + ', or a name that matches nothing (reported per part below)
    parts = [part.strip() for part in SPLIT_FILES.split(whole) if part.strip()]
    if not parts:
        raise ValueError("model: empty; name a checkpoint, or component files joined by ' + '")
    paths = []
    for part in parts:
        path = Path(part).expanduser()
        paths.append(path if path.exists() else library.find(part).path)
    return ModelInput(tuple(paths))
