"""The merges a Compare checkpoint axis names (`A, merge 0.3, merge 0.5, B`), written once and reused.

Design: each `merge α` becomes a real checkpoint file in `<models>/checkpoints/merges/`, named as A1111 names
merged files (`0.7(A) + 0.3(B).safetensors`), with the recipe in its metadata. The library lists it, so every
cell's image names a real model (infotext `Model:` and `Model hash:`) that PNG Info and `generate --infotext`
reproduce, and the merge a user likes is already saved. A file that exists and whose recipe is this one (same
inputs by path, none changed since, same α) is reused instead of merged again; a different file of that name
gets a numbered one beside it. Merges are fp16 (what model sites ship), streamed as every merge is.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from webui.engine.progress import CancelToken
from webui.merge.merger import MergeInterrupted, merge
from webui.merge.naming import default_name
from webui.merge.recipe import RECIPE_KEY, MergeMode, MergeRecipe, ModelInput
from webui.models.files import ModelFileError, read_header
from webui.models.library import ModelLibrary

FOLDER = "merges"  # under checkpoints/


class CompareMerges:
    """Names the merge files of a comparison when it is planned and writes each before its first cell runs."""

    def __init__(self, library: ModelLibrary) -> None:
        self.library = library
        self.folder = library.models_dir / "checkpoints" / FOLDER
        self._pending: dict[Path, MergeRecipe] = {}
        self._lock = threading.Lock()
        self._writing = threading.Lock()

    def target(self, a: Path, b: Path, alpha: float) -> Path:
        """The file `A·(1−α) + B·α` is (or will be) in; nothing is read or written here but headers."""
        recipe = MergeRecipe(MergeMode.WEIGHTED_SUM, ModelInput((a,)), ModelInput((b,)), alpha=alpha)
        base = default_name(recipe)
        for number in range(1, 100):
            path = self.folder / (f"{base}.safetensors" if number == 1 else f"{base} ({number}).safetensors")
            with self._lock:
                if path in self._pending:
                    if self._pending[path] == recipe:
                        return path
                    continue
                if not path.exists():
                    self._pending[path] = recipe
                    return path
            if _made_by(path, recipe):
                return path
        raise ValueError(f"{self.folder}: too many merges named {base!r}; move some away")

    def ensure(self, path: Path, cancel: CancelToken | None = None) -> bool:
        """Write `path` if it is a planned merge not written yet; False if interrupted (nothing is left).

        Cells running at once (an engine with several replicas) write one merge at a time: a second cell
        that needs the same file waits for the first and then finds it written."""
        with self._writing:
            with self._lock:
                recipe = self._pending.get(path)
            if recipe is None or path.exists():
                return True
            try:
                merge(recipe, path, cancel=cancel)
            except MergeInterrupted:
                return False
            with self._lock:
                self._pending.pop(path, None)
        self.library.refresh()
        return True


def _made_by(path: Path, recipe: MergeRecipe) -> bool:
    """Whether the file at `path` is this weighted sum of these inputs, none of them changed since."""
    try:
        written = json.loads(read_header(path).metadata.get(RECIPE_KEY) or "{}")
    except (ModelFileError, json.JSONDecodeError):
        return False
    models = written.get("models") if isinstance(written, dict) else None
    if not isinstance(models, list) or written.get("interp_method") != recipe.mode.value:
        return False
    inputs = [str(p) for _, model in recipe.inputs for p in model.files]
    if [m.get("path") for m in models if isinstance(m, dict)] != inputs or written.get("multiplier") != recipe.alpha:
        return False
    made = path.stat().st_mtime
    return all(Path(p).exists() and Path(p).stat().st_mtime <= made for p in inputs)
