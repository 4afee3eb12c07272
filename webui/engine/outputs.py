"""Saving images: atomically (temp file + link), never overwriting, with infotext in the PNG."""

from __future__ import annotations

import datetime as dt
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

_NUMBERED = re.compile(r"^(\d{5})-")


class SaveError(OSError):
    """An image could not be saved; nothing partial is left behind."""


def day_folder(outputs_dir: Path, kind: str, when: dt.date | None = None) -> Path:
    return outputs_dir / kind / (when or dt.date.today()).isoformat()


def _next_number(folder: Path) -> int:
    numbers = [int(m.group(1)) for p in folder.iterdir() if (m := _NUMBERED.match(p.name))]
    return max(numbers, default=-1) + 1


def save_png(
    image: Image.Image,
    folder: Path,
    seed: int,
    infotext: str,
    texts: Mapping[str, str] | None = None,
    suffix: str | None = None,
) -> Path:
    """Write `NNNNN-SEED.png` (or `NNNNN-SUFFIX.png`) with the infotext in the tEXt chunk `parameters`
    and any further `texts` as their own chunks; returns the final path."""
    folder.mkdir(parents=True, exist_ok=True)
    info = PngInfo()
    info.add_text("parameters", infotext)
    for key, value in (texts or {}).items():
        info.add_text(key, value)
    handle, temp_name = tempfile.mkstemp(prefix=".saving-", suffix=".png", dir=folder)
    temp = Path(temp_name)
    try:
        with os.fdopen(handle, "wb") as stream:
            image.save(stream, format="PNG", pnginfo=info)
            stream.flush()
            os.fsync(stream.fileno())
        for _attempt in range(1000):
            final = folder / f"{_next_number(folder):05d}-{suffix or seed}.png"
            try:
                os.link(temp, final)  # fails if the name exists: never overwrites
            except FileExistsError:
                continue
            return final
        raise SaveError(f"could not find a free file name in {folder}")
    except OSError as error:
        if isinstance(error, SaveError):
            raise
        raise SaveError(f"could not save the image in {folder}: {error.strerror or error}") from error
    finally:
        temp.unlink(missing_ok=True)
