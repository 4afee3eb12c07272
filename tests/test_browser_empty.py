"""The empty state in a real browser: with nothing in models/, the page says where files go; Refresh finds them."""

from __future__ import annotations

import shutil

import pytest
from ui_server import TINY_SD1, running_app

from webui.testing.tiny import TOKENIZER_DIR

pytestmark = [pytest.mark.browser, pytest.mark.slow]
pytest.importorskip("playwright.sync_api")
import test_browser  # noqa: E402  (after the skip: it needs Playwright)
from test_browser import DESKTOP, SLOW, expect, shot  # noqa: E402

browser = test_browser.browser  # its fixture: Chromium


@pytest.fixture
def empty_app(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    with running_app(models, tmp_path / "scratch") as running:
        yield running


@pytest.fixture
def page(browser, empty_app):
    context = browser.new_context(viewport=DESKTOP)
    context.set_default_timeout(SLOW)
    page = context.new_page()
    page.goto(empty_app.url, timeout=SLOW)
    page.wait_for_selector("#txt2img-generate")
    yield page
    context.close()


def test_empty_models_folder_shows_where_files_go_and_refresh_finds_them(page, empty_app, tiny_models_dir):
    models = empty_app.settings.models_dir.resolve()
    panel = page.locator("#model-empty")
    expect(panel).to_be_visible()
    expect(page.locator("#model-bar")).to_be_hidden()  # no empty dropdown
    for folder in ("checkpoints", "diffusion_models", "text_encoders", "vae", "loras", "embeddings", "tokenizers"):
        expect(panel).to_contain_text(f"{models / folder}/")
    expect(panel).to_contain_text(f"{models / 'extra_model_paths.toml'}")
    expect(panel).to_contain_text('preset = "a1111"')
    shot(page, "empty-state", full_page=False)

    page.locator("#txt2img-generate").click()
    toast = page.locator(".toast-body")
    expect(toast).to_have_count(1)
    expect(toast).to_contain_text(f"No model yet: put a checkpoint (.safetensors) in {models / 'checkpoints'}/")
    page.wait_for_timeout(1500)  # a second toast for the same click would have shown by now
    expect(toast).to_have_count(1)

    (models / "checkpoints").mkdir()
    shutil.copy(tiny_models_dir / "checkpoints" / TINY_SD1, models / "checkpoints" / TINY_SD1)
    shutil.copytree(tiny_models_dir / TOKENIZER_DIR, models / TOKENIZER_DIR)  # the tiny model's own vocabulary
    page.locator("#model-empty-refresh").click()
    expect(panel).to_be_hidden()
    expect(page.locator("#model-bar")).to_be_visible()
    expect(page.locator("#model-checkpoint input")).to_have_value(TINY_SD1)
    expect(page.locator("#model-badge")).to_have_text("SD1.x")
