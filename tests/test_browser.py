"""The UI in a real browser (headless Chromium via Playwright) over the tiny models: generate, LoRA stack, VAE
swap, PNG Info round trip, interrupt, and a screenshot of every tab (test-artifacts/, desktop and phone; the
README's in tests/screenshots/).

They need Playwright and Chromium at /usr/bin/chromium; without them they are skipped, except under CI=true,
where they fail: a CI run that drew no browser test must not pass."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image
from ui_server import TINY_SD1, running_app

from webui.ui.context import apply_engine_preferences
from webui.ui.preferences import Preferences

pytestmark = [pytest.mark.browser, pytest.mark.slow]
IN_CI = os.environ.get("CI", "").lower() == "true"


def missing(reason: str) -> None:
    """Skip for want of the browser stack; fail under CI=true."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: the browser tests must run; install it, see the README)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


try:
    import playwright.sync_api as playwright_api
except ImportError:
    missing("no Playwright: pip install -e '.[test]'")
expect = playwright_api.expect

CHROMIUM = Path("/usr/bin/chromium")
README_SHOTS = Path(__file__).resolve().parent / "screenshots"  # the README's pictures, retaken by these tests
VAE_ALT = "tiny-sd1-vae-alt.safetensors (SD-family VAE: SD1/SD2/SDXL)"  # as the VAE dropdown labels the file
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
SLOW = 60_000  # ms: a busy 2-core box


@pytest.fixture(scope="module")
def app(tiny_models_dir, tmp_path_factory):
    with running_app(tiny_models_dir, tmp_path_factory.mktemp("ui-browser")) as running:
        yield running


@pytest.fixture(scope="module")
def browser():
    expect.set_options(timeout=SLOW)
    if not CHROMIUM.is_file():
        missing(f"no Chromium at {CHROMIUM} (Debian/Ubuntu: apt-get install chromium)")
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, app):
    context = browser.new_context(viewport=DESKTOP)
    context.set_default_timeout(SLOW)
    page = context.new_page()
    page.goto(app.url, timeout=SLOW)
    page.wait_for_selector("#txt2img-generate")
    expect(page.locator("#model-checkpoint input")).not_to_have_value("")  # page-load events have run
    yield page
    context.close()


def shot(page, name: str, full_page: bool = True, readme: bool = False) -> None:
    """A screenshot in test-artifacts/; with `readme`, also the README's copy in tests/screenshots/."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full_page)
    if readme:
        shutil.copyfile(ARTIFACTS / f"{name}.png", README_SHOTS / f"{name}.png")


def pick(page, elem_id: str, option: str) -> None:
    """Choose an entry of a Gradio dropdown as a user does: open it, click the option."""
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()
    expect(page.locator(f"#{elem_id} input")).to_have_value(option)


def set_number(page, elem_id: str, value: float) -> None:
    """Type into the number box of a slider or number field."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")
    expect(box).to_have_value(str(value))


def small_sd1(page) -> None:
    """Tiny SD1, 32x32, 2 steps: the checkpoint pick loads it (the model bar says so)."""
    pick(page, "model-checkpoint", TINY_SD1)
    expect(page.locator("#model-status")).to_contain_text("tiny-sd1 loaded")
    expect(page.locator("#model-badge")).to_have_text("SD1.x")
    for elem_id, value in (("txt2img-width", 32), ("txt2img-height", 32), ("txt2img-steps", 2)):
        set_number(page, elem_id, value)


def generate(page) -> str:
    """Press Generate and wait for the infotext of the new image; returns it."""
    before = page.locator("#txt2img-infotext textarea").input_value()
    page.locator("#txt2img-generate").click()
    expect(page.locator("#txt2img-progress")).to_contain_text(re.compile(r"\d+ images? in"))
    expect(page.locator("#txt2img-infotext textarea")).not_to_have_value(before)
    return page.locator("#txt2img-infotext textarea").input_value()


def saved_file(page) -> Path:
    return Path(page.locator("#txt2img-file textarea, #txt2img-file input").first.input_value())


def test_typed_prompt_generates_an_image_shown_and_saved_with_infotext(page, app):
    small_sd1(page)
    page.locator("#txt2img-prompt textarea").fill("a red fox in the snow")
    expect(page.locator("#txt2img-prompt-tokens")).to_have_text(re.compile(r"^\s*[1-9]\d*/75\s*$"))
    infotext = generate(page)
    assert infotext.startswith("a red fox in the snow\nSteps: 2,") and "Size: 32x32" in infotext
    expect(page.locator("#txt2img-gallery img")).to_have_count(1)
    path = saved_file(page)
    assert path.is_relative_to(app.outputs_dir.resolve())
    with Image.open(path) as image:
        assert image.size == (32, 32) and image.text["parameters"] == infotext
    expect(page.locator("#model-status")).to_contain_text("cache: 3 components")
    expect(page.locator("#queue-status")).to_have_text("Studio idle")  # the queue line follows within a second
    shot(page, "txt2img", readme=True)


def test_lora_row_weight_and_trigger_words_apply_and_stay_set(page):
    small_sd1(page)
    page.locator("#txt2img-prompt textarea").fill("a portrait")
    page.locator("#lora-add").click()
    pick(page, "lora-1", "tiny-sd1-kohya.safetensors")
    page.locator("#lora-1-triggers label", has_text="tinytrigger").click()
    expect(page.locator("#txt2img-prompt textarea")).to_have_value("a portrait, tinytrigger")
    set_number(page, "lora-1-unet", 0.5)
    infotext = generate(page)
    assert 'Lora hashes: "tiny-sd1-kohya: ' in infotext
    expect(page.locator("#lora-1-report")).to_contain_text("modules patched")
    shot(page, "txt2img-lora")
    generate(page)  # the stack stays as set across generations
    expect(page.locator("#lora-1 input")).to_have_value("tiny-sd1-kohya.safetensors")
    expect(page.locator("#lora-1-unet input[type=number]")).to_have_value("0.5")
    page.locator("#lora-1-remove").click()
    expect(page.locator("#lora-1")).to_be_hidden()
    assert "Lora hashes" not in generate(page)


def test_vae_swap_shows_in_infotext_and_model_bar_and_a_mismatch_is_refused(page):
    small_sd1(page)
    page.get_by_role("tab", name="Components").click()
    pick(page, "component-vae", VAE_ALT)
    shot(page, "components")
    page.get_by_role("tab", name="txt2img").click()
    page.locator("#txt2img-prompt textarea").fill("vae swap")
    assert "VAE: tiny-sd1-vae-alt.safetensors" in generate(page)
    expect(page.locator("#model-status")).to_contain_text("VAE: tiny-sd1-vae-alt.safetensors")
    page.get_by_role("tab", name="Components").click()
    page.locator("#component-text-encoder input").click()
    page.get_by_role("option", name=re.compile(r"^tiny-sd2-open-clip-h\.safetensors")).click()
    page.locator("#components-apply").click()
    expect(page.locator("[data-testid='toast-body']").first).to_contain_text("text encoder")
    page.locator("#components-reset").click()
    expect(page.locator("#component-vae input")).to_have_value("From checkpoint")
    page.get_by_role("tab", name="txt2img").click()
    assert "VAE:" not in generate(page)  # the UI stays usable after the refusal


def test_png_info_round_trip_fills_every_field(page, app):
    small_sd1(page)
    page.locator("#txt2img-prompt textarea").fill("a lighthouse at dusk")
    page.locator("#txt2img-negative textarea").fill("lowres")
    set_number(page, "txt2img-steps", 3)
    set_number(page, "txt2img-cfg", 5.5)
    page.locator("#txt2img-seed input").fill("1234")
    pick(page, "txt2img-sampler", "Euler")
    page.locator("#lora-add").click()
    pick(page, "lora-1", "tiny-sd1-kohya.safetensors")
    page.get_by_role("tab", name="Components").click()
    pick(page, "component-vae", VAE_ALT)
    page.get_by_role("tab", name="txt2img").click()
    infotext = generate(page)
    png = saved_file(page)

    page.goto(app.url)  # a fresh page: every field back at its default
    page.wait_for_selector("#txt2img-generate")
    expect(page.locator("#txt2img-seed input")).to_have_value("-1")
    page.get_by_role("tab", name="PNG Info").click()
    page.set_input_files("#pnginfo-image input[type=file]", str(png))
    expect(page.locator("#pnginfo-parameters textarea")).to_have_value(infotext)
    expect(page.locator("#pnginfo-parsed")).to_contain_text("a lighthouse at dusk")
    shot(page, "pnginfo")
    page.locator("#pnginfo-send").click()
    expect(page.get_by_role("tab", name="txt2img")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#txt2img-prompt textarea")).to_have_value("a lighthouse at dusk")
    expect(page.locator("#txt2img-negative textarea")).to_have_value("lowres")
    expect(page.locator("#txt2img-seed input")).to_have_value("1234")
    for elem_id, value in (("txt2img-steps", "3"), ("txt2img-cfg", "5.5"), ("txt2img-width", "32")):
        expect(page.locator(f"#{elem_id} input[type=number]")).to_have_value(value)
    expect(page.locator("#txt2img-sampler input")).to_have_value("Euler")
    expect(page.locator("#model-checkpoint input")).to_have_value(TINY_SD1)
    expect(page.locator("#lora-1 input")).to_have_value("tiny-sd1-kohya.safetensors")
    page.get_by_role("tab", name="Components").click()
    expect(page.locator("#component-vae input")).to_have_value(VAE_ALT)
    page.get_by_role("tab", name="txt2img").click()
    again = generate(page)
    assert again.split("Version:")[0] == infotext.split("Version:")[0]  # the same request, reproduced


def test_sizes_follow_the_family_and_the_distilled_preset_toggles(page):
    small_sd1(page)
    pick(page, "txt2img-size-preset", "768×512")
    expect(page.locator("#txt2img-width input[type=number]")).to_have_value("768")
    page.locator("#txt2img-swap").click()
    expect(page.locator("#txt2img-width input[type=number]")).to_have_value("512")
    expect(page.locator("#txt2img-height input[type=number]")).to_have_value("768")
    pick(page, "model-checkpoint", "tiny-sdxl.safetensors")
    expect(page.locator("#model-badge")).to_have_text("SDXL")
    expect(page.locator("#txt2img-width input[type=number]")).to_have_value("1024")  # SDXL's native size
    expect(page.locator("#model-status")).to_contain_text("tiny-sdxl loaded")
    page.locator("#txt2img-distilled input").check()
    expect(page.locator("#txt2img-sampler input")).to_have_value("Euler a")
    expect(page.locator("#txt2img-schedule input")).to_have_value("SGM Uniform")
    expect(page.locator("#txt2img-steps input[type=number]")).to_have_value("4")
    expect(page.locator("#txt2img-cfg input[type=number]")).to_have_value("1")
    page.locator("#txt2img-distilled input").uncheck()
    expect(page.locator("#txt2img-sampler input")).to_have_value("DPM++ 2M")  # A1111's default, the family's
    expect(page.locator("#txt2img-schedule input")).to_have_value("Karras")
    expect(page.locator("#txt2img-steps input[type=number]")).to_have_value("20")


def test_interrupt_stops_a_running_generation(page):
    small_sd1(page)
    set_number(page, "txt2img-steps", 150)
    set_number(page, "txt2img-batch-count", 20)
    page.locator("#txt2img-generate").click()
    expect(page.locator("#txt2img-progress")).to_contain_text(re.compile(r"step \d+/\d+"))
    expect(page.locator("#txt2img-preview img")).to_be_visible()  # the live preview
    page.locator("#txt2img-interrupt").click()
    expect(page.locator("#txt2img-progress")).to_contain_text("interrupted")
    set_number(page, "txt2img-steps", 2)
    set_number(page, "txt2img-batch-count", 1)
    generate(page)  # and the next one runs


def test_hires_fix_gives_the_larger_image_with_its_infotext_and_img2img_takes_it(page):
    small_sd1(page)
    page.locator("#txt2img-hires").get_by_text("Hires. fix", exact=True).first.click()  # open the accordion
    page.locator("#txt2img-hr input[type=checkbox]").check()
    pick(page, "txt2img-hr-upscaler", "tiny-2x-esrgan")
    set_number(page, "txt2img-hr-scale", 1.5)
    set_number(page, "txt2img-hr-steps", 1)
    infotext = generate(page)
    for key in ("Size: 32x32", "Hires upscale: 1.5", "Hires steps: 1", "Hires upscaler: tiny-2x-esrgan",
                "Denoising strength: 0.7"):  # fmt: skip
        assert key in infotext, key
    with Image.open(saved_file(page)) as image:
        assert image.size == (48, 48) and image.text["parameters"] == infotext
    shot(page, "hires")
    page.locator("#txt2img-send-img2img").click()
    expect(page.get_by_role("tab", name="img2img", exact=True)).to_have_attribute("aria-selected", "true")
    expect(page.locator("#img2img-width input[type=number]")).to_have_value("48")
    set_number(page, "img2img-denoising", 0)
    page.locator("#img2img-generate").click()
    expect(page.locator("#img2img-progress")).to_contain_text(re.compile(r"1 image in"))
    text = page.locator("#img2img-infotext textarea").input_value()
    assert "Denoising strength: 0," in text and "Size: 48x48" in text
    shot(page, "img2img")


def test_settings_are_saved_applied_and_become_the_defaults_on_reload(page, app):
    page.get_by_role("tab", name="Settings").click()
    set_number(page, "settings-steps", 7)
    page.locator("#settings-ram-budget input").fill("1.5")
    page.locator("#settings-save").click()
    expect(page.locator("#settings-result")).to_contain_text("Saved to")
    saved = json.loads(app.settings.settings_path.read_text())
    assert saved["steps"] == 7 and saved["ram_budget_gb"] == 1.5
    assert app.context.engine.manager.cache._budgets["cpu"] == int(1.5 * 2**30)  # applied without a restart
    try:
        page.reload()
        expect(page.locator("#txt2img-steps input[type=number]")).to_have_value("7")
    finally:
        app.context.preferences.save(Preferences())
        apply_engine_preferences(app.context.engine, Preferences())


@pytest.mark.parametrize("viewport", ["desktop", "phone"])
def test_screenshot_of_every_tab(page, viewport):
    page.set_viewport_size(DESKTOP if viewport == "desktop" else PHONE)
    for tab in ("txt2img", "Components", "Models", "PNG Info", "Settings"):
        page.get_by_role("tab", name=tab).click()
        expect(page.get_by_role("tab", name=tab)).to_have_attribute("aria-selected", "true")
        if tab == "Models":
            expect(page.locator("#models-table")).to_contain_text(TINY_SD1)
            pick(page, "models-file", "lora: tiny-sd1-kohya.safetensors")
            expect(page.locator("#models-summary")).to_contain_text("Trigger words: tinytrigger, red hat")
        shot(page, f"{viewport}-{tab.lower().replace(' ', '')}")
    if viewport == "phone":  # nothing wider than the phone's screen
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
