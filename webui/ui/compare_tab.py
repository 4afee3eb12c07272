"""Compare tab: one prompt and seed over up to three axes (files from the library, sampler, schedule, numbers, LoRA
weight, prompt S/R) as a job of the shared queue with job-wide progress; the saved grid, every cell, a two-image
slider, and "send to" buttons between this tab and txt2img."""

from __future__ import annotations

from typing import Any

import gradio as gr

from webui.engine.compare import run_compare
from webui.engine.compare_plan import CompareJob, library_resolver, plan
from webui.engine.jobs import Job, Placement
from webui.engine.request import MAX_STEPS, MIN_SIDE
from webui.merge.compare_merges import CompareMerges
from webui.ui import adapter, compare_form, compare_pickers, runner
from webui.ui.compare_form import AXES, BASE_FIELDS
from webui.ui.context import GPU, UiContext, owner_of, session_of
from webui.ui.img2img_tab import Img2ImgTab, send_values
from webui.ui.model_bar import ModelBar, status_html
from webui.ui.txt2img_tab import (
    MAX_SIDE_UI,
    SAMPLER_CHOICES,
    Txt2ImgTab,
    field_defaults,
    schedule_update,
    updates_from_infotext,
)

QUIET = {"api_visibility": "private", "queue": False}


def _base_widgets(d: dict[str, Any]) -> dict[str, Any]:
    """The base request's settings, as on txt2img; every cell starts from them."""
    w: dict[str, Any] = {}
    with gr.Accordion("Base settings", open=True, elem_id="compare-base"):
        with gr.Row():
            w["sampler"] = gr.Dropdown(SAMPLER_CHOICES, value=d["sampler"], label="Sampler", elem_id="compare-sampler")
            w["schedule"] = gr.Dropdown(
                [d["schedule"]], value=d["schedule"], label="Schedule type", elem_id="compare-schedule"
            )
        w["steps"] = gr.Slider(1, MAX_STEPS, value=d["steps"], step=1, label="Steps", elem_id="compare-steps")
        with gr.Row():
            for side in ("width", "height"):
                w[side] = gr.Slider(
                    MIN_SIDE, MAX_SIDE_UI, value=d[side], step=8, label=side.title(), elem_id=f"compare-{side}"
                )
        w["cfg_scale"] = gr.Slider(0, 30, value=d["cfg_scale"], step=0.5, label="CFG scale", elem_id="compare-cfg")
        with gr.Row():
            w["seed"] = gr.Number(
                value=-1,
                label="Seed (-1: one random seed for the job)",
                precision=0,
                minimum=-1,
                maximum=2**32 - 1,
                elem_id="compare-seed",
            )
            w["clip_skip"] = gr.Slider(
                1, 12, value=d["clip_skip"], step=1, label="Clip skip", elem_id="compare-clip-skip"
            )
    return w


MERGE_HINT = (
    "Checkpoint values may be merges: type `merge 0.3` between two checkpoints (A, merge 0.3, merge 0.5, B) for "
    "A·0.7 + B·0.3. Each merge is written once into `checkpoints/merges/` and reused."
)


def build_tab(
    ctx: UiContext, bar: ModelBar, txt2img: Txt2ImgTab, tabs: gr.Tabs, img2img: Img2ImgTab | None = None
) -> gr.Tab:
    defaults = field_defaults(ctx)
    with gr.Tab("Compare", id="compare", elem_id="tab-compare") as tab:
        with gr.Row(elem_id="compare-top"):
            with gr.Column(scale=5, min_width=300):
                prompt = gr.Textbox(value=defaults["prompt"], label="Prompt", lines=2, elem_id="compare-prompt")
                negative = gr.Textbox(
                    value=defaults["negative_prompt"], label="Negative prompt", lines=1, elem_id="compare-negative"
                )
            with gr.Column(scale=1, min_width=160, elem_id="compare-buttons"):
                run_button = gr.Button("Run", variant="primary", elem_id="compare-run", size="lg")
                interrupt = gr.Button("Interrupt", variant="stop", elem_id="compare-interrupt")
        with gr.Row(elem_id="compare-main"):
            with gr.Column(scale=1, min_width=320, elem_id="compare-settings"):
                axes = {axis: compare_pickers.build(ctx, axis) for axis in AXES}
                gr.Markdown(MERGE_HINT, elem_id="compare-merge-hint")
                base = {"prompt": prompt, "negative_prompt": negative, **_base_widgets(defaults)}
            with gr.Column(scale=1, min_width=320, elem_id="compare-output"):
                progress = gr.HTML(runner.idle_html(), elem_id="compare-progress")
                preview = gr.Image(
                    label="Live preview", visible=False, interactive=False, height=256, elem_id="compare-preview"
                )
                grid_pick = gr.Dropdown([], label="Grid", visible=False, elem_id="compare-grid-pick")
                grid = gr.Image(
                    type="filepath",
                    label="Grid",
                    interactive=False,
                    elem_id="compare-grid",
                    buttons=["download", "fullscreen"],
                )
                cells = gr.Gallery(
                    label="Cells",
                    columns=4,
                    height="auto",
                    object_fit="contain",
                    interactive=False,
                    elem_id="compare-cells",
                    buttons=["download", "fullscreen"],
                )
                cell_info = gr.Textbox(
                    label="Cell infotext (click a cell)",
                    lines=3,
                    interactive=False,
                    elem_id="compare-cell-infotext",
                    buttons=["copy"],
                )
                with gr.Row():
                    send_cell = gr.Button("Send cell to txt2img", elem_id="compare-send-txt2img", size="sm")
                    send_image = gr.Button("Send cell to img2img", elem_id="compare-send-img2img", size="sm")
                cell_file = gr.State("")
                with gr.Row(equal_height=True):
                    left = gr.Dropdown([], label="Slider: left cell", elem_id="compare-left", min_width=160)
                    right = gr.Dropdown([], label="Slider: right cell", elem_id="compare-right", min_width=160)
                slider = gr.ImageSlider(
                    type="filepath", label="Two cells", interactive=False, height=400, elem_id="compare-slider"
                )
                with gr.Accordion("Result (JSON)", open=False):
                    details = gr.JSON(label="Result", elem_id="compare-result")
        items = gr.State([])
        # Inside the tab: a stray child of gr.Tabs becomes a phantom tab.
        interrupt_note = gr.Textbox(visible=False, label="Interrupt", elem_id="compare-interrupt-note")
    with txt2img.actions:
        to_compare = gr.Button("Send to Compare", elem_id="txt2img-send-compare", size="sm")

    fields = {**base, **bar.selection, **{n: w for widgets in axes.values() for n, w in widgets.items()}}
    names = [n for n in defaults if n in base]
    bar.app.load(lambda: [field_defaults(ctx)[n] for n in names], outputs=[base[n] for n in names], **QUIET)
    bar.app.load(schedule_update, inputs=[base["sampler"], base["schedule"]], outputs=base["schedule"], **QUIET)
    base["sampler"].input(
        schedule_update, inputs=[base["sampler"], base["schedule"]], outputs=base["schedule"], **QUIET
    )
    compare_pickers.wire(ctx, bar, axes)
    outputs = [grid, cells, details, progress, preview, grid_pick, left, right, slider, cell_info, bar.status, items]

    def run(values: dict[str, Any], request: gr.Request | None) -> Any:
        """The comparison as a job of the shared queue: job-wide progress and previews, then the grid and cells."""
        with adapter.shown_in_ui("Comparison"):
            job = compare_form.build_job(values, ctx.library)
            resolve = library_resolver(ctx.library)
            merges = CompareMerges(ctx.library)  # "merge 0.3" on a checkpoint axis: written when its cell runs
            plan(job, resolve, merges)  # what no cell could use fails now, not after waiting in the queue
            every = ctx.prefs.preview_every
            queued = ctx.queue.submit_call(
                lambda engine, report, cancel: run_compare(engine, job, resolve, report, cancel, every, merges),
                owner_of(request),
                "compare",
                session=session_of(request),
                placement=Placement.FRONT,  # a spread-out engine runs its cells on several replicas at once
            )
        with adapter.shown_in_ui("Comparison"):
            yield from runner.job_updates(
                queued,
                progress,
                preview,
                compare_form.progress_html,
                lambda current: _finished(ctx, job, current, outputs, values),
            )

    run_button.click(
        adapter.by_name(list(fields), run),
        inputs=list(fields.values()),
        outputs=outputs,
        api_name="compare",
        concurrency_id=GPU,
        concurrency_limit=1,
        show_progress="minimal",
        show_progress_on=[progress],
    )

    def stop(request: gr.Request) -> str:
        """Interrupt this user's jobs (running or waiting): finished cells are kept and drawn in the grid."""
        return "interrupting…" if ctx.queue.interrupt(owner_of(request)) else "nothing running"

    interrupt.click(
        stop, outputs=interrupt_note, api_visibility="private", concurrency_limit=None, concurrency_id="interrupt"
    )
    def pick_grid(value: str) -> str:
        with adapter.shown_in_ui("Showing the grid"):
            return str(compare_form.grid_path(ctx.engine.outputs_dir, value))

    grid_pick.input(pick_grid, inputs=grid_pick, outputs=grid, **QUIET)
    for picker in (left, right):
        picker.input(compare_form.slider_value, inputs=[items, left, right], outputs=slider, **QUIET)
    cells.select(_selected_infotext, inputs=items, outputs=cell_info, **QUIET)
    cells.select(_selected_file, inputs=items, outputs=cell_file, **QUIET)
    if img2img is not None:
        send_image.click(
            lambda path, text: [*send_values(path, text), gr.Tabs(selected="img2img")],
            inputs=[cell_file, cell_info], outputs=[*img2img.targets, tabs], **QUIET,
        )  # fmt: skip
    send_cell.click(
        lambda text: _send_to_txt2img(ctx, txt2img, tabs, text),
        inputs=cell_info,
        outputs=[*txt2img.fields.values(), *(row.group for row in txt2img.stack.rows), txt2img.stack.shown, tabs],
        **QUIET,
    )
    sent = [n for n in BASE_FIELDS if n in txt2img.fields]

    def from_txt2img(*values: Any) -> dict[Any, Any]:
        given = dict(zip(sent, values, strict=True))
        updates: dict[Any, Any] = {base[n]: given[n] for n in sent}
        updates[base["schedule"]] = schedule_update(given.get("sampler"), given.get("schedule"))
        return {**updates, tabs: gr.Tabs(selected="compare")}

    to_compare.click(
        from_txt2img, inputs=[txt2img.fields[n] for n in sent], outputs=[*(base[n] for n in sent), tabs], **QUIET
    )
    return tab


def _finished(
    ctx: UiContext, job: CompareJob, done: Job, outputs: list[Any], values: dict[str, Any]
) -> dict[Any, Any]:
    """The outputs once the job has ended; its result is None when it was interrupted before it started. The model
    bar shows this tab's model (`values`), and apart from it what the engine holds after the grid's last cell."""
    grid, cells, details, progress, preview, grid_pick, left, right, slider, cell_info, bar_status, items = outputs
    result = done.result
    seconds = (done.finished_at or 0) - (done.started_at or done.finished_at or 0)
    if result is None:
        return {progress: compare_form.done_html(None, 0), preview: gr.update(visible=False, value=None)}
    cell_list = compare_form.cell_items(result)
    grids = compare_form.grid_choices(job, result, ctx.engine.outputs_dir)
    shown = [(item["label"], i) for i, item in enumerate(cell_list) if item["path"]]
    pair = (shown[0][1], shown[min(1, len(shown) - 1)][1]) if shown else (None, None)
    return {
        grid: str(result.grids[0]) if result.grids else None,
        cells: compare_form.gallery_value(cell_list),
        details: compare_form.result_json(result),
        progress: compare_form.done_html(result, seconds),
        preview: gr.update(visible=False, value=None),
        grid_pick: gr.update(choices=grids, value=grids[0][1] if grids else None, visible=len(grids) > 1),
        left: gr.update(choices=shown, value=pair[0]),
        right: gr.update(choices=shown, value=pair[1]),
        slider: compare_form.slider_value(cell_list, *pair),
        cell_info: cell_list[pair[0]]["infotext"] if shown else "",
        bar_status: status_html(ctx, values),
        items: cell_list,
    }


def _selected_infotext(cell_list: list[dict[str, Any]], event: gr.SelectData) -> str:
    index = event.index if isinstance(event.index, int) else -1
    return cell_list[index]["infotext"] if 0 <= index < len(cell_list) else ""


def _selected_file(cell_list: list[dict[str, Any]], event: gr.SelectData) -> str:
    index = event.index if isinstance(event.index, int) else 0
    return (cell_list[index]["path"] or "") if 0 <= index < len(cell_list) else ""


def _send_to_txt2img(ctx: UiContext, txt2img: Txt2ImgTab, tabs: gr.Tabs, text: str) -> dict[Any, Any]:
    """The cell's settings into txt2img, model and LoRAs too (as PNG Info's "Send to txt2img")."""
    if not text:
        raise gr.Error("No cell with an image chosen: click one in the Cells gallery first.", print_exception=False)
    return updates_from_infotext(ctx, txt2img, tabs, text, "cell's parameters")
