"""Components tab: the current checkpoint's UNet, text encoder(s) and VAE, each from the checkpoint or a file.

The choice is part of every generation; Load now assembles it at once, and a mismatch (an SD2 text encoder
for an SD1 UNet, a VAE with other latent channels) is refused with the engine's reason."""

from __future__ import annotations

import gradio as gr

from webui.ui.context import UiContext
from webui.ui.model_bar import ModelBar

INTRO = (
    "Use another file for any part of the checkpoint chosen above. Files that fit the checkpoint's family "
    "are listed first; the others are marked with what they are and are refused when loaded. The "
    "combination is used by Generate, shown in the model bar once loaded, and written into each image's "
    "infotext (`VAE:`, `UNet:`, `Text encoder:`)."
)


def build_tab(ctx: UiContext, bar: ModelBar) -> gr.Tab:
    with gr.Tab("Components", id="components", elem_id="tab-components") as tab:
        gr.Markdown(INTRO)
        with gr.Row():
            for name in ("unet", "vae"):
                bar.overrides[name].render()
        with gr.Row():
            for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
                bar.overrides[name].render()
        with gr.Row():
            apply = gr.Button("Load now", variant="primary", elem_id="components-apply", scale=0, min_width=160)
            reset = gr.Button("Reset", elem_id="components-reset", scale=0, min_width=120)
    bar.load_events(ctx, apply.click, "load_components")
    reset.click(
        lambda: ["From checkpoint"] * len(bar.overrides),
        outputs=list(bar.overrides.values()),
        api_visibility="private",
        queue=False,
    )
    return tab
