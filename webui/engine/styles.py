"""A1111's prompt styles: `styles.csv` files read in place, and styles applied to a prompt as A1111 applies them.

A styles file is A1111's CSV: a header `name,prompt,negative_prompt`, one style per row. Files are read from
the models folder (`styles.csv`, `styles*.csv`) and from each A1111 install named in `extra_model_paths.toml`
(its `styles.csv` beside `models/`), re-read when one changes; a style name found twice keeps its first file.

Applying follows A1111's `merge_prompts`: a style text holding `{prompt}` has it replaced by the prompt;
any other style text is appended after ", " (empty parts left out). Styles apply in the order given.
"""

from __future__ import annotations

import csv
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from webui.models.roots import EXTRA_ROOTS_FILE, install_folders

log = logging.getLogger(__name__)
PLACEHOLDER = "{prompt}"


@dataclass(frozen=True)
class PromptStyle:
    name: str
    prompt: str
    negative_prompt: str
    path: Path


def merge_prompts(style_prompt: str, prompt: str) -> str:
    """A1111's merge of one style text into a prompt (see the module docstring)."""
    if PLACEHOLDER in style_prompt:
        return style_prompt.replace(PLACEHOLDER, prompt)
    return ", ".join(part for part in (prompt.strip(), style_prompt.strip()) if part)


def apply_styles(prompt: str, negative_prompt: str, styles: Sequence[PromptStyle]) -> tuple[str, str]:
    """(prompt, negative prompt) with `styles` applied in order."""
    for style in styles:
        prompt = merge_prompts(style.prompt, prompt)
        negative_prompt = merge_prompts(style.negative_prompt, negative_prompt)
    return prompt, negative_prompt


def read_styles_file(path: Path) -> tuple[list[PromptStyle], list[str]]:
    """The styles of one CSV file, and a problem line for each row that could not be used."""
    styles: list[PromptStyle] = []
    problems: list[str] = []
    try:
        with path.open(encoding="utf-8-sig", newline="") as stream:
            reader = csv.DictReader(stream, skipinitialspace=True)
            if not reader.fieldnames or "name" not in reader.fieldnames:
                return [], [f"{path}: no 'name' column; A1111's header is name,prompt,negative_prompt"]
            for number, row in enumerate(reader, start=2):
                name = (row.get("name") or "").strip()
                if not name:
                    problems.append(f"{path}:{number}: a style without a name is skipped")
                    continue
                prompt, negative = row.get("prompt") or "", row.get("negative_prompt") or ""
                styles.append(PromptStyle(name, prompt, negative, path))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        problems.append(f"{path}: cannot be read ({error})")
    return styles, problems


class StyleLibrary:
    """The styles of every styles file found; `styles()` re-reads the files when any of them changed."""

    def __init__(self, models_dir: Path, extra_roots_file: Path | None = None) -> None:
        self.models_dir = Path(models_dir)
        self.extra_roots_file = extra_roots_file or self.models_dir / EXTRA_ROOTS_FILE
        self.problems: list[str] = []
        self._lock = threading.Lock()
        self._seen: tuple = ()
        self._styles: dict[str, PromptStyle] = {}

    def files(self) -> list[Path]:
        folders = [self.models_dir, *install_folders(self.extra_roots_file)]
        return [path for folder in folders for path in sorted(folder.glob("styles*.csv")) if path.is_file()]

    def styles(self) -> dict[str, PromptStyle]:
        """Styles by name, in file order."""
        with self._lock:
            files = self.files()
            state = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files)
            if state != self._seen:
                self._styles, self.problems = {}, []
                for path in files:
                    found, problems = read_styles_file(path)
                    self.problems += problems
                    for style in found:
                        self._styles.setdefault(style.name, style)
                for problem in self.problems:
                    log.warning("%s", problem)
                self._seen = state
            return dict(self._styles)

    def resolve(self, names: Sequence[str], field: str = "styles") -> list[PromptStyle]:
        """The styles called `names`, in that order; LookupError names the field and what exists."""
        known = self.styles()
        missing = [name for name in names if name not in known]
        if missing:
            allowed = ", ".join(known) or f"none (put a styles.csv in {self.models_dir})"
            raise LookupError(f"{field}: no style called {', '.join(map(repr, missing))}; known: {allowed}")
        return [known[name] for name in names]
