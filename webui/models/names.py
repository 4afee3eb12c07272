"""How a name finds a library entry: the name as written, an A1111 title `name [hash]`, a hash, a link's name.

Names are compared case-insensitively and literally first, so a file called `mymix [0123abcd].safetensors` is
found by the name `models` prints for it; only then is `name [hash]` read as an A1111 title (the web UI's and
the API's `sd_model_checkpoint` values) and a bare hex string as a hash. A file reached by several paths (links)
is found by every path's name (ModelEntry.aliases).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from webui.models.files import MODEL_SUFFIXES
from webui.models.kinds import FileFormat

A1111_TITLE = re.compile(r"^(?P<name>.*) \[(?P<hash>[0-9a-fA-F]{8,64})\]$")


def name_stem(name: str) -> str:
    """`foo.safetensors` -> `foo`; other names as they are."""
    return name[: -len(Path(name).suffix)] if Path(name).suffix in MODEL_SUFFIXES else name


def _by_name(candidates: list[Any], name: str) -> list[Any]:
    """The entries a (lower-case) name means: `foo.ckpt` that file, then `sub/foo` or `foo`, then `foo` without
    its subfolder, each also among the names of links to the file; several: the .safetensors one first, then in
    scan order."""
    stem = name_stem(name)
    for same in (
        lambda e: any(f"{n}{e.path.suffix}".lower() == name for n in (e.name, *e.aliases)),  # foo.ckpt: that file
        lambda e: any(n.lower() == stem for n in (e.name, *e.aliases)),
        lambda e: any(n.rsplit("/", 1)[-1].lower() == stem for n in (e.name, *e.aliases)),  # without its subfolder
    ):
        hits = [e for e in candidates if same(e)]
        if hits:
            return sorted(hits, key=lambda e: e.format is not FileFormat.SAFETENSORS)  # stable: scan order kept
    return []


def match_entries(candidates: list[Any], query: str) -> list[Any]:
    """Every ModelEntry of `candidates` that `query` names (see the module docstring), the one to use first;
    more than one when a name is held by several files (`foo.ckpt` and `foo.safetensors`); [] for none."""
    title = A1111_TITLE.match(query)
    for name in (query, title.group("name")) if title else (query,):
        hits = _by_name(candidates, name.lower())
        if hits:
            return hits
    wanted = (title.group("hash") if title else query).lower()
    if re.fullmatch(r"[0-9a-f]{8,64}", wanted):
        for entry in candidates:
            if entry.hash and (entry.hash.startswith(wanted) or wanted.startswith(entry.hash)):
                return [entry]
    return []


def match_entry(candidates: list[Any], query: str) -> Any | None:
    """The ModelEntry of `candidates` that `query` names (see the module docstring), or None."""
    hits = match_entries(candidates, query)
    return hits[0] if hits else None
