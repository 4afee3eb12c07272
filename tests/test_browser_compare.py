"""The Compare tab in a real browser (headless Chromium via Playwright) over the tiny models: settings sent from
txt2img, two checkpoints by two CFG values, the grid, the cells, the slider, a cell sent back to txt2img."""

from __future__ import annotations

import re

import pytest
import test_browser  # skips (fails under CI=true) without Playwright
from test_browser import PHONE, expect, pick, set_number, shot
from ui_server import TINY_SD1, running_app

pytestmark = [pytest.mark.browser, pytest.mark.slow]

TINY_SD2 = "tiny-sd2.safetensors"
browser, page = test_browser.browser, test_browser.page  # its fixtures: Chromium, and a page of the `app` below


@pytest.fixture(scope="module")
def app(tiny_models_dir, tmp_path_factory):
    with running_app(tiny_models_dir, tmp_path_factory.mktemp("ui-browser-compare")) as running:
        yield running


def pick_many(page, elem_id: str, options: list[str]) -> None:
    """Choose entries of a multi-select dropdown: open it, click each option; each becomes a token."""
    for option in options:
        page.locator(f"#{elem_id} input").click()
        page.get_by_role("option", name=option, exact=True).click()
    for option in options:
        expect(page.locator(f"#{elem_id} .token", has_text=option)).to_be_visible()


def test_checkpoints_by_cfg_grid_cells_slider_and_send_back(page):
    page.locator("#txt2img-prompt textarea").fill("a lighthouse at dusk")
    for elem_id, value in (("txt2img-width", 32), ("txt2img-height", 32), ("txt2img-steps", 2)):
        set_number(page, elem_id, value)
    page.locator("#txt2img-seed input").fill("5")
    page.locator("#txt2img-send-compare").click()
    expect(page.get_by_role("tab", name="Compare")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#compare-prompt textarea")).to_have_value("a lighthouse at dusk")
    expect(page.locator("#compare-width input[type=number]")).to_have_value("32")
    expect(page.locator("#compare-steps input[type=number]")).to_have_value("2")
    expect(page.locator("#compare-seed input")).to_have_value("5")

    pick_many(page, "compare-x-pick", [TINY_SD1, TINY_SD2])
    pick(page, "compare-y-axis", "CFG scale")
    page.locator("#compare-y-values input, #compare-y-values textarea").first.fill("1, 7")
    page.locator("#compare-run").click()
    expect(page.locator("#compare-progress")).to_contain_text("4 of 4 cells in")
    expect(page.locator("#compare-grid img")).to_be_visible()
    expect(page.locator("#compare-cells .thumbnail-item")).to_have_count(4)

    pick(page, "compare-right", f"x={TINY_SD2}, y=7")
    expect(page.locator("#compare-slider img")).to_have_count(2)
    page.locator("#compare-cells .thumbnail-item").nth(3).click()
    expect(page.locator("#compare-cell-infotext textarea")).to_have_value(re.compile(r"CFG scale: 7,.*Model: tiny-sd2"))
    expect(page.locator("#queue-status")).to_have_text("Studio idle")
    shot(page, "compare", readme=True)
    page.locator("#compare-send-txt2img").click()
    expect(page.get_by_role("tab", name="txt2img")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#txt2img-cfg input[type=number]")).to_have_value("7")
    expect(page.locator("#model-checkpoint input")).to_have_value(TINY_SD2)

    page.set_viewport_size(PHONE)
    page.get_by_role("tab", name="Compare").click()
    expect(page.locator("#compare-x-axis")).to_be_visible()
    shot(page, "phone-compare")
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]  # nothing wider than the phone
