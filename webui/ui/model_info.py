"""What the UI tells about one model file: its header metadata, and a LoRA's family and trigger words."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from webui.merge.recipe import read_recipe, recipe_summary
from webui.models.files import ModelFileError, read_header
from webui.models.kinds import FileFormat, Kind
from webui.models.library import ModelEntry

MAX_TRIGGER_WORDS = 12
# Where trainers put the words a LoRA was trained on, besides kohya's tag counts.
_TRIGGER_KEYS = ("modelspec.trigger_phrase", "ss_trigger_words", "trigger_words")


def header_metadata(entry: ModelEntry) -> dict[str, str]:
    """The file's string metadata (safetensors `__metadata__`); empty for formats without it."""
    if entry.format is FileFormat.DIFFUSERS or entry.identity is None:
        return {}
    try:
        return dict(read_header(entry.path).metadata)
    except ModelFileError:
        return {}


def trigger_words(metadata: dict[str, str], limit: int = MAX_TRIGGER_WORDS) -> list[str]:
    """Declared trigger phrases first, then kohya's trained tags (`ss_tag_frequency`), most frequent first."""
    words: list[str] = []
    for key in _TRIGGER_KEYS:
        words += [w.strip() for w in metadata.get(key, "").split(",") if w.strip()]
    counts: Counter[str] = Counter()
    try:
        frequency = json.loads(metadata.get("ss_tag_frequency") or "{}")
    except ValueError:
        frequency = {}
    if isinstance(frequency, dict):
        for tags in frequency.values():
            if isinstance(tags, dict):
                counts.update({str(tag).strip(): int(n) for tag, n in tags.items() if isinstance(n, int | float)})
    words += [tag for tag, _ in counts.most_common() if tag]
    return list(dict.fromkeys(words))[:limit]


def details(entry: ModelEntry) -> dict[str, Any]:
    """Everything the Models tab shows about one file: the library's view, then its metadata."""
    data = entry.to_json()
    metadata = header_metadata(entry)
    if entry.kind is Kind.LORA:
        data["target_family"] = entry.family.label
        data["trigger_words"] = trigger_words(metadata)
    recipe = read_recipe(metadata)
    if recipe is not None:
        data["merge_recipe"] = recipe
        data["merge_summary"] = recipe_summary(recipe)
    data["metadata"] = {k: _readable(v) for k, v in sorted(metadata.items())}
    return data


def _readable(value: str) -> Any:
    """JSON-in-a-string metadata (kohya's tag counts, dataset dirs) shown as the structure it is."""
    text = value.strip()
    if text[:1] in "{[":
        try:
            return json.loads(text)
        except ValueError:
            return value
    return value
