"""img2img tab: an input image (dropped, or sent from txt2img, PNG Info or Compare), its prompt, output size, A1111's
resize mode and denoising strength; the sampling settings, seed, batch, LoRA stack and components are txt2img's
(one set of settings for both modes, as the model bar is one for every tab)."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from webui.engine.infotext import parse_infotext
from webui.engine.progress import Progress
from webui.engine.request import MIN_SIDE, GenerationResult
from webui.engine.second_pass import RESIZE_MODES
from webui.ui import adapter, runner
from webui.ui.context import GPU, UiContext, owner_of, session_of
from webui.ui.model_bar import ModelBar, status_html
from webui.ui.txt2img_tab import Txt2ImgTab

# This tab's widgets, and the request field each stands for (the rest of the request is txt2img's).
OWN_FIELDS = {
    "img2img_prompt": "prompt",
    "img2img_negative_prompt": "negative_prompt",
    "img2img_width": "width",
    "img2img_height": "height",
    "init_image": "init_image",
    "resize_mode": "resize_mode",
    "img2img_denoising_strength": "denoising_strength",
}


@dataclass
class Img2ImgTab:
    """What the other tabs' "Send to img2img" buttons fill: the image, prompts and size (`targets`, in the order
    `send_values` returns them), and the tab to switch to."""

    tab: gr.Tab
    fields: dict[str, Any]

    @property
    def targets(self) -> list[Any]:
        names = ("init_image", "img2img_prompt", "img2img_negative_prompt", "img2img_width", "img2img_height")
        return [self.fields[name] for name in names]


def send_values(path: str | None, infotext: str) -> list[Any]:
    """Values for `Img2ImgTab.targets` from an image file and its infotext: the image, its prompts and its size."""
    if not path:
        raise gr.Error("Nothing to send: generate or drop an image first.")
    with Image.open(path) as image:
        image.load()
        picture = image.convert("RGB")
    prompt, negative, _params = parse_infotext(infotext) if infotext else ("", "", {})
    width, height = (max(MIN_SIDE, side // 8 * 8) for side in picture.size)
    return [picture, prompt, negative, width, height]


def request_values(values: dict[str, Any]) -> dict[str, Any]:
    """txt2img's field values with this tab's own in their place (no Hires. fix or refiner in img2img)."""
    merged = {name: value for name, value in values.items() if name not in OWN_FIELDS}
    merged.update({field: values[name] for name, field in OWN_FIELDS.items()})
    merged.update(enable_hr=False, refiner_checkpoint="None")
    return merged


def build_tab(ctx: UiContext, bar: ModelBar, txt2img: Txt2ImgTab, tabs: gr.Tabs) -> Img2ImgTab:
    own: dict[str, Any] = {}
    with gr.Tab("img2img", id="img2img", elem_id="tab-img2img") as tab:
        with gr.Row():
            with gr.Column(scale=5, min_width=300):
                own["img2img_prompt"] = gr.Textbox(label="Prompt", lines=3, elem_id="img2img-prompt")
                own["img2img_negative_prompt"] = gr.Textbox(
                    label="Negative prompt", lines=2, elem_id="img2img-negative"
                )
            with gr.Column(scale=1, min_width=160):
                generate = gr.Button("Generate", variant="primary", elem_id="img2img-generate", size="lg")
                interrupt = gr.Button("Interrupt", variant="stop", elem_id="img2img-interrupt")
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                own["init_image"] = gr.Image(
                    type="pil", image_mode="RGB", sources=["upload", "clipboard"], label="Image",
                    elem_id="img2img-image", height=320,
                )  # fmt: skip
                own["resize_mode"] = gr.Radio(
                    list(RESIZE_MODES), value=RESIZE_MODES[0], label="Resize mode", elem_id="img2img-resize-mode"
                )
                with gr.Row():
                    own["img2img_width"] = gr.Slider(
                        MIN_SIDE, adapter.MAX_SIDE_UI, value=512, step=8, label="Width", elem_id="img2img-width"
                    )
                    own["img2img_height"] = gr.Slider(
                        MIN_SIDE, adapter.MAX_SIDE_UI, value=512, step=8, label="Height", elem_id="img2img-height"
                    )
                own["img2img_denoising_strength"] = gr.Slider(
                    0, 1, value=0.75, step=0.01, label="Denoising strength", elem_id="img2img-denoising"
                )
                gr.Markdown(
                    "Sampler, steps, CFG, seed, batch, clip skip and the LoRA stack are the **txt2img** tab's; the "
                    "model and components the model bar's.",
                    elem_id="img2img-shared-note",
                )
            with gr.Column(scale=1, min_width=320):
                progress = gr.HTML(runner.idle_html(), elem_id="img2img-progress")
                preview = gr.Image(label="Live preview", visible=False, interactive=False, height=256,
                                   elem_id="img2img-preview")  # fmt: skip
                gallery = gr.Gallery(label="Images", columns=2, height="auto", object_fit="contain",
                                     elem_id="img2img-gallery", interactive=False)  # fmt: skip
                saved = gr.Textbox(label="File", interactive=False, elem_id="img2img-file", buttons=["copy"])
                infotext = gr.Textbox(label="Infotext (generation parameters)", lines=4, interactive=False,
                                      elem_id="img2img-infotext", buttons=["copy"])  # fmt: skip
                warnings = gr.HTML("", elem_id="img2img-warnings")
        results = gr.State([])
        note = gr.Textbox(visible=False, label="Interrupt", elem_id="img2img-interrupt-note")

    fields = {**txt2img.fields, **own}
    outputs = [gallery, saved, infotext, progress, preview, warnings, bar.status, results]

    def run(values: dict[str, Any], request: gr.Request | None) -> Any:
        with adapter.shown_in_ui("img2img"):
            generation = adapter.build_request(request_values(values), ctx.library, ctx.styles)
            job = ctx.queue.submit(
                generation,
                owner_of(request),
                "img2img",
                preview_every=ctx.prefs.preview_every,
                session=session_of(request),  # the job ends with its page
            )
        with adapter.shown_in_ui("img2img"):
            yield from runner.job_updates(
                job,
                progress,
                preview,
                lambda report: runner.progress_html(report if isinstance(report, Progress) else None),
                lambda current: _finished(ctx, current.result, outputs, values),
            )

    generate.click(
        adapter.by_name(list(fields), run),
        inputs=list(fields.values()),
        outputs=outputs,
        api_name="img2img",
        concurrency_id=GPU,
        concurrency_limit=1,
        show_progress="minimal",
        show_progress_on=[progress],
    )
    def stop(request: gr.Request) -> str:
        return "interrupting…" if ctx.queue.interrupt(owner_of(request)) else "nothing running"

    interrupt.click(stop, outputs=note, api_visibility="private", concurrency_limit=None, concurrency_id="interrupt")
    gallery.select(_select, inputs=results, outputs=[saved, infotext], api_visibility="private", queue=False)
    result = Img2ImgTab(tab, own)
    with txt2img.actions:
        send = gr.Button("Send to img2img", elem_id="txt2img-send-img2img", size="sm")
    send.click(
        lambda path, text: [*send_values(path, text), gr.Tabs(selected="img2img")],
        inputs=[txt2img.file, txt2img.infotext],
        outputs=[*result.targets, tabs], api_visibility="private", queue=False,
    )  # fmt: skip
    return result


def _select(items: list[dict[str, Any]], event: gr.SelectData) -> tuple[str, str]:
    index = event.index if isinstance(event.index, int) else 0
    if not 0 <= index < len(items):
        return "", ""
    return items[index]["path"], items[index]["infotext"]


def _finished(
    ctx: UiContext, result: GenerationResult | None, outputs: list[Any], values: dict[str, Any] | None = None
) -> dict[Any, Any]:
    gallery, saved, infotext, progress, preview, warnings, bar_status, results = outputs
    if result is None:
        return {progress: runner.done_html(None), preview: gr.update(visible=False, value=None)}
    items = [{"path": str(i.path), "seed": i.seed, "infotext": i.infotext} for i in result.images]
    notes = "".join(
        f'<div class="gen-warning">⚠ {html.escape(w)}</div>'
        for w in [*result.info.get("warnings", []), *(r.error for r in result.loras if r.error)]
    )
    first = items[0] if items else {"path": "", "infotext": ""}
    return {
        gallery: [(i["path"], f"seed {i['seed']}") for i in items],
        saved: first["path"],
        infotext: first["infotext"],
        progress: runner.done_html(result),
        preview: gr.update(visible=False, value=None),
        warnings: notes,
        bar_status: status_html(ctx, values),  # the tab's own model, and apart what the engine holds
        results: items,
    }


def file_text(path: str | None) -> str:
    """The infotext saved in an image file ('' when it has none)."""
    if not path or not Path(path).is_file():
        return ""
    from webui.engine.image_metadata import read_image_metadata

    return read_image_metadata(path).parameters or ""
