"""Saving images: atomically (temp file + link), never overwriting, with the infotext inside the file.

PNG keeps it in the tEXt chunk `parameters`; JPEG and WebP (A1111's `samples_format` jpg / webp) in the EXIF
UserComment, written as A1111 writes it with piexif's `UserComment.dump(text, encoding="unicode")`: the
8-byte charset prefix `UNICODE\0`, then the text in UTF-16 big-endian (EXIF 2.3, tag 0x9286 in the Exif IFD).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

_NUMBERED = re.compile(r"^(\d{5})-")
# A1111's samples_format values → (PIL format, file extension); A1111's default JPEG/WebP quality is 80.
IMAGE_FORMATS = {"png": ("PNG", "png"), "jpg": ("JPEG", "jpg"), "jpeg": ("JPEG", "jpg"), "webp": ("WEBP", "webp")}
QUALITY = 80
EXIF_IFD = 0x8769
USER_COMMENT = 0x9286
UNICODE_PREFIX = b"UNICODE\x00"


class SaveError(OSError):
    """An image could not be saved; nothing partial is left behind."""


def day_folder(outputs_dir: Path, kind: str, when: dt.date | None = None) -> Path:
    return outputs_dir / kind / (when or dt.date.today()).isoformat()


def _next_number(folder: Path) -> int:
    numbers = [int(m.group(1)) for p in folder.iterdir() if (m := _NUMBERED.match(p.name))]
    return max(numbers, default=-1) + 1


def user_comment(text: str) -> bytes:
    """EXIF UserComment bytes for `text`, as A1111 writes them (see the module docstring)."""
    return UNICODE_PREFIX + text.encode("utf-16-be")


def check_format(image_format: str) -> str:
    """The samples_format as a key of IMAGE_FORMATS; ValueError names the field and the choices."""
    key = str(image_format).lower().lstrip(".")
    if key not in IMAGE_FORMATS:
        raise ValueError(f"samples_format: {image_format!r} is not available; use png, jpg or webp")
    return key


def _create_temp(folder: Path, suffix: str) -> tuple[int, str]:
    """A new hidden file in `folder` created with the user's normal file mode (0666 less the umask, as any file
    they make), not mkstemp's 0600: the image keeps it when it is linked to its final name."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _attempt in range(100):
        name = folder / f".saving-{secrets.token_hex(8)}{suffix}"
        try:
            return os.open(name, flags, 0o666), str(name)
        except FileExistsError:
            continue
    raise SaveError(f"could not create a temporary file in {folder}")


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
    return save_image(image, folder, seed, infotext, texts=texts, suffix=suffix)


def save_image(
    image: Image.Image,
    folder: Path,
    seed: int,
    infotext: str,
    texts: Mapping[str, str] | None = None,
    suffix: str | None = None,
    image_format: str = "png",
) -> Path:
    """Write `NNNNN-SEED.<ext>` in `image_format` (png, jpg or webp) with the infotext inside; returns the path.
    `texts` (PNG only) are further tEXt chunks."""
    pil_format, extension = IMAGE_FORMATS[check_format(image_format)]
    folder.mkdir(parents=True, exist_ok=True)
    options: dict = {}
    if pil_format == "PNG":
        info = PngInfo()
        info.add_text("parameters", infotext)
        for key, value in (texts or {}).items():
            info.add_text(key, value)
        options["pnginfo"] = info
    else:
        exif = Image.Exif()
        exif.get_ifd(EXIF_IFD)[USER_COMMENT] = user_comment(infotext)
        options.update(exif=exif.tobytes(), quality=QUALITY)
        image = image.convert("RGB") if pil_format == "JPEG" and image.mode != "RGB" else image
    handle, temp_name = _create_temp(folder, f".{extension}")
    temp = Path(temp_name)
    try:
        with os.fdopen(handle, "wb") as stream:
            image.save(stream, format=pil_format, **options)
            stream.flush()
            os.fsync(stream.fileno())
        for _attempt in range(1000):
            final = folder / f"{_next_number(folder):05d}-{suffix or seed}.{extension}"
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
