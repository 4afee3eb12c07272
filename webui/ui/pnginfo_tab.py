"""PNG Info tab: drop an image, read how it was made, and send its settings (model and LoRAs too) to txt2img, or
the image with its prompts to img2img."""

from __future__ import annotations

from typing import Any

import gradio as gr

from webui.engine.image_metadata import read_image_metadata
from webui.engine.infotext import parse_infotext
from webui.ui import adapter
from webui.ui.context import UiContext
from webui.ui.img2img_tab import Img2ImgTab, send_values
from webui.ui.txt2img_tab import Txt2ImgTab, updates_from_infotext


def parsed_view(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    prompt, negative, params = parse_infotext(text)
    return {"prompt": prompt, "negative_prompt": negative, "parameters": params}


PARAMETERS_HINT = "The image's generation parameters appear here."


def read_image(path: str | None) -> tuple[str, dict[str, Any], str, Any]:
    """(infotext, its parsed fields, other tools' metadata as text, the Send button's update). An image without
    parameters is said so in a toast; the other tools' box holds only their metadata."""
    if not path:
        return "", {}, "", gr.update(interactive=False)
    with adapter.shown_in_ui("Reading the image"):
        metadata = read_image_metadata(path)
    other = "\n\n".join(f"# {label}\n{text}" for label, text in metadata.other.items())
    if not metadata.parameters:
        where = " (its ComfyUI/InvokeAI metadata is shown below)" if other else ""
        gr.Info(f"No generation parameters in this {metadata.format or 'image'} file{where}.", title="PNG Info")
    return (
        metadata.parameters or "",
        parsed_view(metadata.parameters),
        other,
        gr.update(interactive=bool(metadata.parameters)),
    )


def build_tab(ctx: UiContext, txt2img: Txt2ImgTab, tabs: gr.Tabs, img2img: Img2ImgTab | None = None) -> gr.Tab:
    with gr.Tab("PNG Info", id="pnginfo", elem_id="tab-pnginfo") as tab:
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                image = gr.Image(
                    type="filepath",
                    image_mode=None,
                    sources=["upload", "clipboard"],
                    label="Image",
                    elem_id="pnginfo-image",
                    height=360,
                )
                with gr.Row():
                    send = gr.Button("Send to txt2img", variant="primary", interactive=False, elem_id="pnginfo-send")
                    send_image = gr.Button("Send to img2img", elem_id="pnginfo-send-img2img")
            with gr.Column(scale=1, min_width=300):
                infotext = gr.Textbox(
                    label="Parameters (infotext)",
                    placeholder=PARAMETERS_HINT,
                    lines=6,
                    interactive=False,
                    elem_id="pnginfo-parameters",
                    buttons=["copy"],
                )
                parsed = gr.JSON(label="Parsed", elem_id="pnginfo-parsed", open=True)
                other = gr.Textbox(
                    label="Other metadata (ComfyUI, InvokeAI)", lines=6, interactive=False, elem_id="pnginfo-other"
                )

    image.change(read_image, inputs=image, outputs=[infotext, parsed, other, send], api_name="png_info")

    fields = txt2img.fields
    stack = txt2img.stack

    def send_to_txt2img(text: str) -> dict[Any, Any]:
        """Every field the infotext names, the model and components when the library has them, the LoRAs."""
        if not text:
            message = "No parameters to send: drop an image made by this app or A1111 first."
            raise gr.Error(message, print_exception=False)
        return updates_from_infotext(ctx, txt2img, tabs, text, "parameters")

    outputs = [*fields.values(), *(row.group for row in stack.rows), stack.shown, tabs]
    send.click(send_to_txt2img, inputs=infotext, outputs=outputs, api_visibility="private", queue=False)
    if img2img is not None:
        send_image.click(
            lambda path, text: [*send_values(path, text), gr.Tabs(selected="img2img")],
            inputs=[image, infotext], outputs=[*img2img.targets, tabs], api_visibility="private", queue=False,
        )  # fmt: skip
    return tab
