"""SD3.5 in a real browser: a transformer, its three text encoders and its VAE picked in the Components tab (the
third slot), Generate with real CFG and a negative prompt, the infotext naming every part, the model bar saying
which VAE scaling decodes."""

from __future__ import annotations

import pytest
from test_browser import expect, generate, pick, set_number
from test_browser_flux import app, page, pick_component  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_modular_sd3_with_three_text_encoders_from_the_components_tab(page):  # noqa: F811
    pick(page, "model-checkpoint", "None: components only")
    page.locator("#tab-components-button, button:has-text('Components')").first.click()
    pick_component(page, "component-unet", "tiny-sd3.safetensors (SD3)")
    pick_component(page, "component-text-encoder", "tiny-sd3-clip-l.safetensors (CLIP-L)")
    pick_component(page, "component-text-encoder-2", "tiny-sd3-clip-g.safetensors (OpenCLIP-bigG)")
    pick_component(page, "component-text-encoder-3", "tiny-sd3-t5xxl-fp16.safetensors (T5)")
    pick_component(page, "component-vae", "tiny-sd3-vae.safetensors (16-channel VAE: SD3/FLUX.1)")
    page.locator("#components-apply").click()
    expect(page.locator("#model-status")).to_contain_text("VAE: tiny-sd3-vae.safetensors loaded in")
    expect(page.locator("#model-status")).to_contain_text("VAE scaling 1.5305, shift 0.0609 (SD3)")
    page.locator("button:has-text('txt2img')").first.click()
    expect(page.locator("#txt2img-distilled-cfg")).to_be_hidden()  # real CFG, no distilled guidance
    for elem_id, value in (("txt2img-width", 32), ("txt2img-height", 32), ("txt2img-steps", 2), ("txt2img-cfg", 4)):
        set_number(page, elem_id, value)
    page.locator("#txt2img-prompt textarea").fill("a lighthouse")
    page.locator("#txt2img-negative textarea").fill("blurry")
    infotext = generate(page)
    assert infotext.startswith("a lighthouse\nNegative prompt: blurry\nSteps: 2, Sampler: Euler, CFG scale: 4,")
    assert "Text encoder 2: tiny-sd3-clip-g.safetensors" in infotext
    assert "Text encoder 3: tiny-sd3-t5xxl-fp16.safetensors" in infotext and "VAE: tiny-sd3-vae.safetensors" in infotext
    expect(page.locator("#model-badge")).to_have_text("SD3")
