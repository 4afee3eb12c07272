"""Generation metadata inside image files: A1111/our infotext, ComfyUI's graph, InvokeAI's JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from PIL import Image

from webui.engine.outputs import EXIF_IFD, USER_COMMENT

# PNG text keys other tools write, shown as text (they describe graphs and settings we do not replay).
OTHER_KEYS = {
    "prompt": "ComfyUI prompt (API graph)",
    "workflow": "ComfyUI workflow",
    "invokeai_metadata": "InvokeAI metadata",
    "sd-metadata": "InvokeAI metadata (legacy)",
    "Dream": "InvokeAI dream command (legacy)",
}


@dataclass(frozen=True)
class ImageMetadata:
    parameters: str | None  # A1111-style infotext
    other: dict[str, str] = field(default_factory=dict)  # label → text, for the other tools' metadata
    format: str = ""


def _user_comment(raw: bytes | str) -> str | None:
    """EXIF UserComment as A1111 writes it for JPEG/WebP: an 8-byte charset prefix, then the text."""
    if isinstance(raw, str):
        return raw or None
    prefix, body = raw[:8], raw[8:]
    if prefix.startswith(b"UNICODE"):
        for encoding in ("utf-16-be", "utf-16-le"):
            try:
                text = body.decode(encoding)
            except UnicodeDecodeError:
                continue
            if text.isprintable() or "\n" in text:
                return text
    return body.decode("utf-8", errors="replace").strip("\x00") or None


def _pretty(text: str) -> str:
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return text


def read_image_metadata(path: Path | str | IO[bytes]) -> ImageMetadata:
    """What an image file (a path or an open binary stream) says about how it was made; OSError if it is not
    an image PIL can open. The infotext comes from PNG's `parameters` chunk or JPEG/WebP's EXIF UserComment."""
    with Image.open(path) as image:
        info = dict(image.info)
        parameters = info.get("parameters")
        if not parameters:
            comment = image.getexif().get_ifd(EXIF_IFD).get(USER_COMMENT)
            parameters = _user_comment(comment) if comment else None
        other = {label: _pretty(str(info[key])) for key, label in OTHER_KEYS.items() if info.get(key)}
        return ImageMetadata(str(parameters) if parameters else None, other, image.format or "")
