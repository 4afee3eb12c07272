"""A1111's extra-network tags in prompts (`<lora:name:w>`, `<hypernet:name:w>`, ...): removed from the text, LoRAs read.

A1111 removes every `<word:arguments>` tag from the prompt (`modules/extra_networks.py`, its `re_extra_net`) and
hands each kind to the extension registered for it; a kind nobody registered is skipped with a log line, and a
tag whose arguments its extension cannot read is skipped while the image is still generated. This studio does
the same: only LoRA tags (`lora`, and `lyco`, the alias A1111's built-in Lora extension registers) apply; every
other tag, and every LoRA tag that cannot apply as written, is reported in `skipped` and never fails a request.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

# A1111: re.compile(r"<(\w+):([^>]+)>"); the kind is a word, the arguments run to the first '>'.
_TAG = re.compile(r"<(\w+):([^>]+)>")
LORA_KINDS = ("lora", "lyco")
LORA_WEIGHT_LIMIT = 10.0  # LoraSpec's range; a tag beyond it is clamped, with a note


@dataclass(frozen=True)
class LoraTag:
    """A `<lora:…>` tag: which LoRA, and its strength on the UNet and on the text encoder(s)."""

    name: str
    unet_weight: float = 1.0
    te_weight: float = 1.0


@dataclass(frozen=True)
class SkippedTag:
    """A tag that was removed from the prompt without being applied, and why (shown to the user)."""

    tag: str
    reason: str

    def __str__(self) -> str:
        return f"{self.tag}: {self.reason}"


@dataclass(frozen=True)
class ExtraNetworks:
    """A prompt without its tags, the LoRA tags that apply, and what was skipped or adjusted (with reasons)."""

    prompt: str
    loras: tuple[LoraTag, ...] = ()
    skipped: tuple[SkippedTag, ...] = ()
    notes: tuple[str, ...] = field(default=())  # applied, but not exactly as written (clamped, dyn ignored)

    @property
    def warnings(self) -> list[str]:
        return [str(s) for s in self.skipped] + list(self.notes)


def parse_extra_networks(prompt: str) -> ExtraNetworks:
    """Remove every `<kind:args>` tag from `prompt`; read the LoRA ones as A1111's Lora extension does.

    Arguments split on ':'; an argument `key=value` is named, the rest positional: `<lora:name>`,
    `<lora:name:w>` (w on the UNet and the text encoders), `<lora:name:te_w:unet_w>`, `te=`, `unet=`; a 4th
    positional argument or `dyn=` (dynamic rank) is ignored with a note. A weight that is not a finite number
    skips the tag; one beyond ±10 is clamped. Other kinds (`hypernet`, ...) are skipped.
    """
    loras: list[LoraTag] = []
    skipped: list[SkippedTag] = []
    notes: list[str] = []

    def take(match: re.Match[str]) -> str:
        tag, kind, args = match.group(0), match.group(1), match.group(2)
        if kind.lower() not in LORA_KINDS:
            skipped.append(SkippedTag(tag, f"'{kind}' extra networks are not supported here; removed from the prompt"))
            return ""
        try:
            lora, tag_notes = _lora_tag(tag, args.split(":"))
        except ValueError as error:
            skipped.append(SkippedTag(tag, str(error)))
            return ""
        loras.append(lora)
        notes.extend(f"{tag}: {note}" for note in tag_notes)
        return ""

    text = _TAG.sub(take, prompt)
    return ExtraNetworks(text, tuple(loras), tuple(skipped), tuple(notes))


def extract_lora_tags(prompt: str) -> tuple[str, list[LoraTag]]:
    """`prompt` without any extra-network tag, and the LoRA tags that apply, in order (see parse_extra_networks)."""
    parsed = parse_extra_networks(prompt)
    return parsed.prompt, list(parsed.loras)


def _lora_tag(tag: str, items: list[str]) -> tuple[LoraTag, list[str]]:
    positional: list[str] = []
    named: dict[str, str] = {}
    for item in items:
        parts = item.split("=", 2)  # as A1111's ExtraNetworkParams: 'a=b=c' stays positional
        if len(parts) == 2:
            named[parts[0]] = parts[1]
        else:
            positional.append(item)
    name = positional[0].strip() if positional else ""
    if not name:
        raise ValueError("the LoRA name is missing; write <lora:name:weight>; the tag is skipped")
    notes: list[str] = []
    te_weight = _weight(positional[1], "weight") if len(positional) > 1 else 1.0
    te_weight = _weight(named["te"], "te weight") if "te" in named else te_weight
    unet_weight = _weight(positional[2], "UNet weight") if len(positional) > 2 else te_weight
    unet_weight = _weight(named["unet"], "unet weight") if "unet" in named else unet_weight
    if len(positional) > 3 or "dyn" in named:
        notes.append("dynamic rank (dyn) is not supported; the LoRA applies at its full rank")
    unknown = sorted(set(named) - {"te", "unet", "dyn"})
    if unknown:
        notes.append(f"unknown argument(s) {', '.join(unknown)} ignored")
    clamped = []
    for value in (te_weight, unet_weight):
        clamped.append(max(-LORA_WEIGHT_LIMIT, min(LORA_WEIGHT_LIMIT, value)))
    if clamped != [te_weight, unet_weight]:
        notes.append(f"weight clamped to ±{LORA_WEIGHT_LIMIT:g}")
    return LoraTag(name, unet_weight=clamped[1], te_weight=clamped[0]), notes


def _weight(value: str, what: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise ValueError(f"{what} {value!r} is not a finite number (write e.g. 0.8); the tag is skipped")
    return number
