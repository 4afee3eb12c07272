"""What a new user meets in the browser (headless Chromium over the tiny models): jobs that end with their page, the
same user's jobs seen and stopped from another tab, a queue line that never names another user, a model bar that
agrees with its tab, one toast per error and no stale "Error" mark, and the smaller first-sight details."""

from __future__ import annotations

import re
import threading
import time

import pytest
import test_browser  # skips (fails under CI=true) without Playwright
from PIL import Image
from test_browser import DESKTOP, SLOW, expect, generate, pick, set_number, small_sd1
from ui_server import TINY_SD1, running_app

pytestmark = [pytest.mark.browser, pytest.mark.slow]
browser, page = test_browser.browser, test_browser.page  # its fixtures: Chromium, and a page of the `app` below
TOAST = "[data-testid='toast-body']"
MESSAGE = "[data-testid='toast-text']"  # one per message: Gradio groups messages of a kind into one toast


@pytest.fixture(scope="module")
def app(tiny_models_dir, tmp_path_factory):
    with running_app(tiny_models_dir, tmp_path_factory.mktemp("ui-browser-ux")) as running:
        yield running


def new_tab(browser, app):
    """Another tab of the same (local) user: a browser context of its own, so a page session of its own."""
    context = browser.new_context(viewport=DESKTOP)
    context.set_default_timeout(SLOW)
    tab = context.new_page()
    tab.goto(app.url, timeout=SLOW)
    tab.wait_for_selector("#txt2img-generate")
    expect(tab.locator("#model-checkpoint input")).not_to_have_value("")
    return tab


def start_long_job(page) -> None:
    """tiny SD1, 150 steps x 20 batches: minutes on a CPU, so only a cancel ends it within a test."""
    small_sd1(page)
    set_number(page, "txt2img-steps", 150)
    set_number(page, "txt2img-batch-count", 20)
    page.locator("#txt2img-generate").click()
    expect(page.locator("#txt2img-progress")).to_contain_text(re.compile(r"step \d+/150"))


def no_error_mark(page, elem_id: str) -> None:
    expect(page.locator(f"#{elem_id}").get_by_text("Error", exact=True)).to_have_count(0)


def test_closing_a_tab_cancels_its_job_and_frees_the_queue(page, browser, app):
    start_long_job(page)
    other = new_tab(browser, app)
    expect(other.locator("#queue-status")).to_contain_text(re.compile(r"running your txt2img \(step \d+/150"))
    (job,) = app.context.queue.jobs()
    page.context.close()  # the tab goes away mid-job
    expect(other.locator("#queue-status")).to_have_text("Studio idle")
    assert job.state.value == "cancelled" and job.wait(0)
    small_sd1(other)
    generate(other)  # the queue is free
    other.context.close()


def test_a_new_tab_sees_and_interrupts_the_same_users_job(page, browser, app):
    start_long_job(page)
    other = new_tab(browser, app)
    expect(other.locator("#queue-status")).to_contain_text("running your txt2img")
    other.locator("#queue-interrupt").click()
    expect(page.locator("#txt2img-progress")).to_contain_text("interrupted")
    expect(other.locator("#queue-status")).to_have_text("Studio idle")
    expect(other.locator("#queue-interrupt")).to_be_hidden()
    other.context.close()


def test_the_queue_line_says_another_users_job_and_where_yours_waits_without_naming_them(page, app):
    release = threading.Event()

    def someone_elses(_engine, progress, cancel):
        while not (release.is_set() or cancel.cancelled):
            time.sleep(0.05)

    theirs = app.context.queue.submit_call(someone_elses, "bob", "txt2img")
    try:
        expect(page.locator("#queue-status")).to_have_text("Studio: busy with another user's job")
        pick(page, "model-checkpoint", TINY_SD1)  # the load waits behind bob's job
        expect(page.locator("#queue-status")).to_contain_text("your model load is #2 in line")
        assert "bob" not in page.locator("#queue-status").inner_text()
    finally:
        release.set()
    theirs.wait(30)
    expect(page.locator("#model-status")).to_contain_text("tiny-sd1 loaded")
    expect(page.locator("#queue-status")).to_have_text("Studio idle")


def test_the_model_bar_shows_the_tabs_own_model_after_compare_and_in_a_second_tab(page, browser, app):
    small_sd1(page)
    page.get_by_role("tab", name="Compare").click()
    for option in (TINY_SD1, "tiny-sd2.safetensors"):  # a multi-select: each pick becomes a token
        page.locator("#compare-x-pick input").click()
        page.get_by_role("option", name=option, exact=True).click()
        expect(page.locator("#compare-x-pick .token", has_text=option)).to_be_visible()
    for elem_id, value in (("compare-width", 32), ("compare-height", 32), ("compare-steps", 1)):
        set_number(page, elem_id, value)
    page.locator("#compare-run").click()
    expect(page.locator("#compare-progress")).to_contain_text("2 of 2 cells in")
    status = page.locator("#model-status .model-status-text")
    expect(page.locator("#model-checkpoint input")).to_have_value(TINY_SD1)
    expect(status).to_contain_text("tiny-sd1")  # the tab's choice, not the last cell's model
    expect(status).not_to_contain_text("tiny-sd2")
    expect(page.locator("#model-status .model-engine")).to_contain_text("the engine holds tiny-sd2")

    other = new_tab(browser, app)
    mine = other.locator("#model-checkpoint input").input_value()
    assert mine != "tiny-sd2.safetensors"
    expect(other.locator("#model-status .model-status-text")).to_contain_text(mine.removesuffix(".safetensors"))
    expect(other.locator("#model-status .model-status-text")).not_to_contain_text("tiny-sd2")
    other.context.close()


def test_a_refused_component_is_one_toast_leaves_no_error_mark_and_is_reset(page):
    small_sd1(page)
    page.get_by_role("tab", name="Components").click()
    page.locator("#component-text-encoder input").click()
    page.get_by_role("option", name="tiny-sd2-open-clip-h.safetensors (OpenCLIP-H)").click()
    page.locator("#components-apply").click()
    expect(page.locator(MESSAGE)).to_have_count(1)
    text = page.locator(MESSAGE).inner_text()
    assert "this text encoder is OpenCLIP-H, but SD1.x models take CLIP-L as their text encoder" in text
    reason = text.split(".safetensors: ", 1)[1]  # after the file's path
    assert "open_clip" not in reason and "clip_l" not in reason and "text_encoder" not in reason  # the UI's words
    expect(page.locator("#component-text-encoder input")).to_have_value("From checkpoint")
    for tab in ("Components", "txt2img", "Models"):
        page.get_by_role("tab", name=tab).click()
        no_error_mark(page, "model-status")
    expect(page.locator("#model-status")).to_contain_text("tiny-sd1 loaded")


def test_generate_with_no_model_is_one_message_and_one_log_line(browser, tmp_path, capfd, caplog):
    (tmp_path / "models").mkdir()
    with running_app(tmp_path / "models", tmp_path) as empty:
        context = browser.new_context(viewport=DESKTOP)
        try:
            tab = context.new_page()
            tab.goto(empty.url, timeout=SLOW)
            tab.wait_for_selector("#txt2img-generate")
            time.sleep(1)  # page-load events
            capfd.readouterr()
            caplog.clear()
            tab.locator("#txt2img-generate").click()
            expect(tab.locator(MESSAGE)).to_have_count(1)
            expect(tab.locator(MESSAGE)).to_contain_text("checkpoint")
            time.sleep(1)  # a second message would have come with the first
            expect(tab.locator(MESSAGE)).to_have_count(1)
            text = tab.locator(MESSAGE).inner_text()
            first = text.split(";")[0]
            assert text.count(first) == 1  # the message once
        finally:
            context.close()
    assert "Traceback" not in capfd.readouterr().err
    lines = [r for r in caplog.records if first in r.getMessage()]
    assert len(lines) == 1 and lines[0].exc_info is None  # one log line, no traceback


def test_a_lora_that_does_not_apply_is_a_warning_and_the_image_is_made(page):
    small_sd1(page)
    page.locator("#txt2img-prompt textarea").fill("a hat <lora:nope:0.7>")
    infotext = generate(page)
    assert infotext.startswith("a hat <lora:nope:0.7>")
    expect(page.locator(TOAST)).to_contain_text("LoRA nope was not applied")


def test_first_sight_details(page, app, tmp_path):
    """Size preset, sampler default, one Settings link, a named settings error, readable details, plain PNGs."""
    small_sd1(page)
    set_number(page, "txt2img-width", 512)
    set_number(page, "txt2img-height", 512)
    expect(page.locator("#txt2img-size-preset input")).to_have_value("512×512")
    set_number(page, "txt2img-width", 544)
    expect(page.locator("#txt2img-size-preset input")).to_have_value("")
    expect(page.locator("#txt2img-sampler input")).to_have_value("DPM++ 2M")
    expect(page.locator("#txt2img-schedule input")).to_have_value("Karras")
    expect(page.locator("footer").get_by_text("Settings")).to_have_count(0)  # the tab is the one Settings

    page.get_by_role("tab", name="Settings").click()
    page.locator("#settings-ram-budget input").fill("-5")
    page.locator("#settings-save").click()
    expect(page.locator(MESSAGE)).to_contain_text(re.compile(r"RAM for cached models.*-5"))
    page.locator("[data-testid='toast-close']").first.click()

    page.get_by_role("tab", name="Models").click()
    pick(page, "models-file", "lora: tiny-sd1-kohya.safetensors")
    details = page.locator("#models-details")
    expect(details).to_contain_text(re.compile(r"Modified\s*\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"))
    expect(details).to_contain_text(re.compile(r"Size\s*[\d.]+ KB"))
    expect(details).to_contain_text("ss_network_dim")
    assert not re.search(r"\b1\d{9}\.\d+", details.inner_text())  # no epoch seconds

    plain = tmp_path / "plain.png"
    Image.new("RGB", (16, 16), "blue").save(plain)
    page.get_by_role("tab", name="PNG Info").click()
    page.set_input_files("#pnginfo-image input[type=file]", str(plain))
    expect(page.locator(TOAST)).to_contain_text("No generation parameters in this PNG file")
    expect(page.locator("#pnginfo-other textarea")).to_have_value("")
    expect(page.locator("#pnginfo-parameters textarea")).to_have_value("")
