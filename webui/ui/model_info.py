"""What the UI tells about one model file: its header metadata, a LoRA's family and trigger words, and the
readable table the Models tab shows them in."""

from __future__ import annotations

import datetime as dt
import html
import json
from collections import Counter
from typing import Any

from webui.families import Family
from webui.families.encoders import encoder_label
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


def _size(nbytes: int) -> str:
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:,.1f} {unit} ({nbytes:,} bytes)"
    return f"{nbytes:,} bytes"


def summary_rows(entry: ModelEntry) -> list[tuple[str, str]]:
    """(label, text) rows describing a file as a person reads it: sizes in MB, times as local dates, families
    and encoders by their labels, "not computed yet" for a hash still pending."""
    identity = entry.identity
    rows = [
        ("File", str(entry.path)),
        ("Kind", entry.kind.label),
        ("Family", entry.family.label),
        ("Format", entry.format.value),
        ("Size", _size(entry.size)),
        ("Modified", dt.datetime.fromtimestamp(entry.mtime).strftime("%Y-%m-%d %H:%M:%S")),
        ("Hash (SHA-256, first digits)", entry.hash or "not computed yet"),
    ]
    if identity is not None and identity.prediction is not None:
        rows.append(("Prediction", identity.prediction.value))
    if identity is not None and identity.text_encoders:
        rows.append(("Text encoders", encoder_label(identity.text_encoders)))
    fits = [Family(f).label for f in (identity.compatible if identity else ()) if Family(f) is not entry.family]
    if fits:
        rows.append(("Also fits", ", ".join(fits)))
    rows.append(("Usable", "yes" if entry.usable else f"no: {entry.problem or 'not supported yet'}"))
    if entry.detail:
        rows.append(("Detail", entry.detail))
    return rows


def _cell(value: Any) -> str:
    if isinstance(value, (dict, list)):
        text = json.dumps(value, indent=2, ensure_ascii=False)
        return f"<pre>{html.escape(text)}</pre>"
    return html.escape(str(value))


def details_html(entry: ModelEntry) -> str:
    """The Models tab's view of one file: what it is, then its metadata, as two tables."""
    data = details(entry)
    summary = summary_rows(entry)
    if "merge_summary" in data:  # a merge's recipe (A1111's sd_merge_recipe) in a line; in full under Metadata
        summary.append(("Merged", data["merge_summary"]))
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in summary)
    metadata = data["metadata"]
    meta_rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{_cell(v)}</td></tr>" for k, v in metadata.items())
    meta = (
        f'<h4>Metadata ({len(metadata)} keys)</h4><table class="model-details">{meta_rows}</table>'
        if metadata
        else "<p>No metadata in this file.</p>"
    )
    return f'<table class="model-details">{rows}</table>{meta}'
