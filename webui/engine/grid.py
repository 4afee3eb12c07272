"""Comparison grids drawn with Pillow: tiles under column labels, beside row labels, titled; saved atomically."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from webui.engine.outputs import save_png

BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)
ERROR_BACKGROUND = (255, 226, 226)
ERROR_TEXT = (150, 0, 0)
INTERRUPTED_BACKGROUND = (224, 224, 224)
INTERRUPTED_TEXT = (70, 70, 70)
MIN_TILE = 128  # smaller images are scaled up (nearest neighbour) so their labels stay readable
MIN_FONT, MAX_FONT = 14, 48
MIN_MESSAGE_FONT = 10  # a long error shrinks down to this, then is cut
MAX_LABEL_LINES = 6
ELLIPSIS = "..."  # ASCII: every glyph of Pillow's built-in font
_NUMBERED = re.compile(r"^(\d{5})-")
_BREAK_AFTER = re.compile(r"[^-_/\\.]*[-_/\\.]?")

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


@dataclass(frozen=True)
class Tile:
    """One cell of the grid: a finished image, or why there is none."""

    image: Image.Image | None = None
    error: str | None = None
    interrupted: bool = False

    def __post_init__(self) -> None:
        if (self.image is not None) + (self.error is not None) + self.interrupted != 1:
            raise ValueError("tile: give exactly one of image, error or interrupted")


@dataclass(frozen=True)
class GridLayout:
    """Where everything sits: a header band `top` pixels high, a row-label band `left` pixels wide, then tiles."""

    columns: int
    rows: int
    tile_width: int
    tile_height: int
    left: int
    top: int
    labels_top: int  # where the column labels start inside the header band
    font_size: int

    @property
    def size(self) -> tuple[int, int]:
        return self.left + self.columns * self.tile_width, self.top + self.rows * self.tile_height

    def tile_box(self, column: int, row: int) -> tuple[int, int, int, int]:
        x, y = self.left + column * self.tile_width, self.top + row * self.tile_height
        return x, y, x + self.tile_width, y + self.tile_height

    def column_label_box(self, column: int) -> tuple[int, int, int, int]:
        x = self.left + column * self.tile_width
        return x, self.labels_top, x + self.tile_width, self.top

    def row_label_box(self, row: int) -> tuple[int, int, int, int]:
        y = self.top + row * self.tile_height
        return 0, y, self.left, y + self.tile_height


def font(size: int) -> Font:
    """Pillow's built-in scalable font (Pillow >= 10.1): nothing to download or install."""
    return ImageFont.load_default(size=size)


def _width(text: str, face: Font) -> float:
    return face.getlength(text)


def _break_word(word: str, face: Font, width: float) -> list[str]:
    """A word too long for a line, broken after `-`, `_`, `/` or `.` where possible, else between characters."""
    pieces, current = [], ""
    for chunk in _BREAK_AFTER.findall(word):
        if _width(current + chunk, face) <= width:
            current += chunk
            continue
        if current:
            pieces.append(current)
            current = ""
        for char in chunk:  # a chunk wider than a line on its own
            if current and _width(current + char, face) > width:
                pieces.append(current)
                current = ""
            current += char
    return [*pieces, current] if current else pieces


def wrap(text: str, face: Font, width: float, max_lines: int | None = None) -> list[str]:
    """`text` as lines no wider than `width` (words broken only when longer than a line), at most
    `max_lines` of them, the last ending in "..." when some text was left out."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        current = ""
        for word in paragraph.split():
            candidate = f"{current} {word}" if current else word
            if _width(candidate, face) <= width:
                current = candidate
                continue
            if current:
                lines.append(current)
            pieces = _break_word(word, face, width) if _width(word, face) > width else [word]
            lines.extend(pieces[:-1])
            current = pieces[-1]
        lines.append(current)
    while len(lines) > 1 and not lines[-1]:
        lines.pop()
    if max_lines is not None and len(lines) > max_lines:
        last = lines[max_lines - 1]
        while last and _width(last + ELLIPSIS, face) > width:
            last = last[:-1]
        lines = [*lines[: max_lines - 1], last.rstrip() + ELLIPSIS]
    return lines


def _line_height(face: Font) -> int:
    return math.ceil(face.size * 1.25) if isinstance(face, ImageFont.FreeTypeFont) else 12


def _draw_lines(
    draw: ImageDraw.ImageDraw,
    lines: Sequence[str],
    face: Font,
    box: tuple[int, int, int, int],
    fill: tuple[int, int, int],
    valign: str = "center",
) -> None:
    """Lines centred horizontally in `box`; vertically centred, or against its bottom (`valign="bottom"`)."""
    left, top, right, bottom = box
    line_height = _line_height(face)
    block = line_height * len(lines)
    y = top + (bottom - top - block) // 2 if valign == "center" else bottom - block
    for line in lines:
        x = left + (right - left - _width(line, face)) / 2
        draw.text((x, y), line, font=face, fill=fill)
        y += line_height


def _font_size(tile_width: int, tile_height: int) -> int:
    return max(MIN_FONT, min(MAX_FONT, (tile_width + tile_height) // 24))


def _message_tile(text: str, size: tuple[int, int], base_font: int, background, color) -> Image.Image:  # noqa: ANN001
    """A tile holding `text`, wrapped; the font shrinks (to half size, at least 10 px) until it fits, else the text
    is cut with "..."."""
    tile = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(tile)
    draw.rectangle((0, 0, size[0] - 1, size[1] - 1), outline=BACKGROUND)  # neighbouring message tiles stay apart
    pad = max(4, size[0] // 24)
    box = (pad, pad, size[0] - pad, size[1] - pad)
    for font_size in range(base_font, max(MIN_MESSAGE_FONT, base_font // 2) - 1, -1):
        face = font(font_size)
        lines = wrap(text, face, box[2] - box[0])
        if len(lines) * _line_height(face) <= box[3] - box[1]:
            break
    else:
        lines = wrap(text, face, box[2] - box[0], max_lines=max(1, (box[3] - box[1]) // _line_height(face)))
    _draw_lines(draw, lines, face, box, color)
    return tile


def render_tile(tile: Tile, size: tuple[int, int], font_size: int) -> Image.Image:
    """The tile as drawn in the grid: the image scaled to `size`, or its message on a coloured ground."""
    if tile.image is not None:
        image = tile.image.convert("RGB")
        return image if image.size == size else image.resize(size, Image.Resampling.NEAREST)
    if tile.error is not None:
        return _message_tile(f"error: {tile.error}", size, font_size, ERROR_BACKGROUND, ERROR_TEXT)
    return _message_tile("interrupted", size, font_size, INTERRUPTED_BACKGROUND, INTERRUPTED_TEXT)


def draw_grid(
    tiles: Sequence[Sequence[Tile]],
    x_title: str,
    x_labels: Sequence[str],
    y_title: str | None = None,
    y_labels: Sequence[str] | None = None,
    title: str | None = None,
    tile_size: tuple[int, int] | None = None,
    min_tile: int = MIN_TILE,
) -> tuple[Image.Image, GridLayout]:
    """A grid of `tiles` (rows of columns) with the X title and labels on top, the Y labels on the left and an
    optional title (the Z value) above everything. Tiles smaller than `min_tile` are scaled up by a whole factor."""
    rows, columns = len(tiles), len(x_labels)
    if rows == 0 or any(len(row) != columns for row in tiles):
        raise ValueError(f"grid: every row needs {columns} tiles, one per X label")
    if (y_labels is not None and len(y_labels) != rows) or (y_labels is None and rows != 1):
        raise ValueError(f"grid: {rows} rows need as many Y labels")
    if tile_size is None:
        tile_size = next((t.image.size for row in tiles for t in row if t.image is not None), (min_tile, min_tile))
    scale = max(1, math.ceil(min_tile / min(tile_size)))
    tile_width, tile_height = tile_size[0] * scale, tile_size[1] * scale
    font_size = _font_size(tile_width, tile_height)
    face = font(font_size)
    line = _line_height(face)
    pad = font_size // 2

    left = max(tile_width * 3 // 4, font_size * 7) if y_labels is not None else 0
    width = left + columns * tile_width
    title_lines = wrap(title, face, width - 2 * pad, MAX_LABEL_LINES) if title else []
    x_title_lines = wrap(x_title, face, columns * tile_width - 2 * pad, 2)
    column_lines = [wrap(label, face, tile_width - 2 * pad, MAX_LABEL_LINES) for label in x_labels]
    y_title_lines = wrap(y_title, face, left - 2 * pad, 3) if y_title and left else []
    label_rows = max(len(lines) for lines in column_lines)
    title_bottom = pad + len(title_lines) * line + (pad if title_lines else 0)
    labels_top = title_bottom + len(x_title_lines) * line
    top = max(labels_top + label_rows * line + pad, title_bottom + len(y_title_lines) * line + pad)
    layout = GridLayout(columns, rows, tile_width, tile_height, left, top, labels_top, font_size)

    grid = Image.new("RGB", layout.size, BACKGROUND)
    draw = ImageDraw.Draw(grid)
    if title_lines:
        _draw_lines(draw, title_lines, face, (0, pad, width, pad + len(title_lines) * line), TEXT)
    x_title_box = (left, labels_top - len(x_title_lines) * line, width, labels_top)
    _draw_lines(draw, x_title_lines, face, x_title_box, TEXT)
    if y_title_lines:
        _draw_lines(draw, y_title_lines, face, (0, title_bottom, left, top - pad), TEXT, valign="bottom")
    for column, lines in enumerate(column_lines):
        _draw_lines(draw, lines, face, layout.column_label_box(column), TEXT)
    for row, label in enumerate(y_labels or ()):
        box = layout.row_label_box(row)
        _draw_lines(draw, wrap(label, face, left - 2 * pad, max(1, tile_height // line)), face, box, TEXT)
    for row, cells in enumerate(tiles):
        for column, tile in enumerate(cells):
            grid.paste(render_tile(tile, (tile_width, tile_height), font_size), layout.tile_box(column, row)[:2])
    return grid, layout


def _next_number(folder: Path) -> int:
    numbers = [int(m.group(1)) for p in folder.iterdir() if (m := _NUMBERED.match(p.name))]
    return max(numbers, default=-1) + 1


def save_grid(image: Image.Image, folder: Path, suffix: str, texts: Mapping[str, str]) -> Path:
    """Write `NNNNN-<suffix>.png` atomically, never overwriting, with each of `texts` as a PNG tEXt chunk."""
    extra = {key: value for key, value in texts.items() if key != "parameters"}
    return save_png(image, folder, 0, texts.get("parameters", ""), texts=extra, suffix=suffix)
