"""FLUX.1 in a real browser: a transformer, its two text encoders and the ae picked in the Components tab,
Generate, the image and its infotext (Distilled CFG Scale, the components)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image
from test_browser import CHROMIUM, CHROMIUM_ARGS, DESKTOP, SLOW, expect, generate, pick, saved_file, set_number, shot
from ui_server import running_app

pytestmark = [pytest.mark.browser, pytest.mark.slow]
playwright_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def app(tiny_models_dir, tmp_path_factory):
    with running_app(tiny_models_dir, tmp_path_factory.mktemp("ui-flux")) as running:
        yield running


@pytest.fixture
def page(app):
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}")
    expect.set_options(timeout=SLOW)
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport=DESKTOP)
        context.set_default_timeout(SLOW)
        page = context.new_page()
        page.goto(app.url, timeout=SLOW)
        page.wait_for_selector("#txt2img-generate")
        expect(page.locator("#model-checkpoint input")).not_to_have_value("")
        yield page
        browser.close()


def pick_component(page, elem_id: str, option: str) -> None:
    """`pick`, with the option looked up in this dropdown's own list (the encoders' lists hold the same files)."""
    page.locator(f"#{elem_id} input").click()
    page.locator(f"#{elem_id}").get_by_role("option", name=option, exact=True).click()
    expect(page.locator(f"#{elem_id} input")).to_have_value(option)


def test_modular_flux_from_the_components_tab_generates_with_forge_infotext(page, app):
    pick(page, "model-checkpoint", "None: components only")
    page.locator("#tab-components-button, button:has-text('Components')").first.click()
    # each option is labelled with what the file is (the UNet's family, the encoder, the VAE's latent space)
    pick_component(page, "component-unet", "tiny-flux-dev.safetensors (FLUX.1)")
    pick_component(page, "component-text-encoder", "tiny-flux-clip-l.safetensors (CLIP-L)")
    pick_component(page, "component-text-encoder-2", "tiny-flux-t5xxl-fp16.safetensors (T5)")
    pick_component(page, "component-vae", "tiny-flux-ae.safetensors (16-channel VAE: SD3/FLUX.1)")
    page.locator("#components-apply").click()
    expect(page.locator("#model-status")).to_contain_text(
        re.compile(r"^\s*tiny-flux-dev · Text encoder: tiny-flux-clip-l\.safetensors · .* loaded in")
    )
    expect(page.locator("[data-testid='toast-body']")).to_have_count(0)  # "None" alone loaded nothing, no error
    page.locator("button:has-text('txt2img')").first.click()
    expect(page.locator("#txt2img-distilled-cfg")).to_be_visible()  # guidance-distilled: Forge's slider
    expect(page.locator("#txt2img-cfg input[type=number]")).to_have_value("1")  # FLUX.1 starts at CFG 1
    for elem_id, value in (("txt2img-width", 32), ("txt2img-height", 32), ("txt2img-steps", 2)):
        set_number(page, elem_id, value)
    set_number(page, "txt2img-distilled-cfg", 2.5)
    page.locator("#txt2img-prompt textarea").fill("a red fox in the snow")
    infotext = generate(page)
    head = "a red fox in the snow\nSteps: 2, Sampler: Euler, CFG scale: 1, Distilled CFG Scale: 2.5"
    assert infotext.startswith(head)
    assert "Model: tiny-flux-dev" in infotext and "Text encoder 2: tiny-flux-t5xxl-fp16.safetensors" in infotext
    expect(page.locator("#txt2img-gallery img")).to_have_count(1)
    expect(page.locator("#model-badge")).to_have_text("FLUX.1")
    path: Path = saved_file(page)
    with Image.open(path) as image:
        assert image.size == (32, 32) and image.text["parameters"] == infotext
    shot(page, "txt2img-flux")
