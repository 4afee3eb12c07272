"""Files the studio writes for the user: saved with the user's normal file mode, as any file they make."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from PIL import Image

from webui.engine.grid import save_grid
from webui.engine.outputs import save_png


@contextmanager
def umask(mask: int) -> Iterator[None]:
    before = os.umask(mask)
    try:
        yield
    finally:
        os.umask(before)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_images_and_grids_get_the_users_file_mode(tmp_path, mask, mode):
    image = Image.new("RGB", (8, 8), "red")
    with umask(mask):
        saved = save_png(image, tmp_path / "txt2img", 7, "a red square\nSteps: 1")
        grid = save_grid(image, tmp_path / "grids", "grid", {"parameters": "a grid"})
    for path in (saved, grid):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path
    assert [p.name for p in (tmp_path / "txt2img").iterdir()] == [saved.name]  # no temporary file left
