"""Models tab: everything the library found with each file's problem, one file's details and metadata
(a LoRA's family and trigger words, a merge's recipe), and conversion of a legacy .ckpt or a diffusers folder to
.safetensors."""

from __future__ import annotations

from typing import Any

import gradio as gr

from webui.models.kinds import FileFormat
from webui.models.library import ModelEntry, ModelLibrary
from webui.ui import adapter, choices, model_info
from webui.ui.context import UiContext
from webui.ui.convert import convert_to_safetensors
from webui.ui.model_bar import ModelBar

COLUMNS = ["name", "kind", "family", "format", "size", "hash", "problem", "path"]


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**20:,.1f} MB" if nbytes < 2**30 else f"{nbytes / 2**30:,.2f} GB"


def row(entry: ModelEntry) -> list[Any]:
    return [
        choices.title(entry),
        entry.kind.value,
        entry.family.label,
        entry.format.value,
        _size(entry.size),
        entry.hash or "",
        entry.problem or "",
        str(entry.path),
    ]


def library_rows(library: ModelLibrary, refresh: bool = True) -> list[list[Any]]:
    """One table row per file; `refresh` re-reads what changed on disk first."""
    if refresh:
        library.refresh()
    return [row(entry) for entry in library.entries()]


def file_choices(library: ModelLibrary) -> list[tuple[str, str]]:
    return [choices.any_kind_choice(e) for e in library.entries()]


def _entry(library: ModelLibrary, value: str | None) -> ModelEntry | None:
    """The file a `file_choices` value names; None for no pick, or a name no longer in the list."""
    if not value:
        return None
    try:
        return choices.find_any_kind(library, value)
    except LookupError:
        return None


def details_of(library: ModelLibrary, value: str | None) -> tuple[str, Any, str]:
    """(the details as readable tables, the convert button's update, the trigger-word line) for one file."""
    entry = _entry(library, value)
    if entry is None:
        return "", gr.update(visible=False), ""
    data = model_info.details(entry)
    words = data.get("trigger_words") or []
    line = f"**Trigger words:** {', '.join(words)}" if words else ""
    if "target_family" in data:
        line = f"**LoRA for:** {data['target_family']}" + (f" · {line}" if line else "")
    if "merge_summary" in data:
        line = f"**Merged:** {data['merge_summary']}"
    convertible = entry.format is FileFormat.PICKLE or (entry.format is FileFormat.DIFFUSERS and entry.usable)
    return model_info.details_html(entry), gr.update(visible=convertible), line


def build_tab(ctx: UiContext, bar: ModelBar) -> gr.Tab:
    library = ctx.library
    with gr.Tab("Models", id="models", elem_id="tab-models") as tab:
        with gr.Row():
            refresh = gr.Button("↻ Refresh", elem_id="models-refresh", scale=0, min_width=140)
            gr.Markdown(f"Files under `{library.models_dir}` and its extra roots; problems say what to do.")
        table = gr.Dataframe(
            headers=COLUMNS,
            value=library_rows(library, refresh=False),
            interactive=False,
            wrap=True,
            max_height=420,
            column_widths=["220px", "100px", "80px", "115px", "90px", "110px", "190px", "300px"],  # scrolls on a phone
            elem_id="models-table",
            show_search="filter",
        )
        with gr.Row():
            with gr.Column(scale=2, min_width=300):
                file = gr.Dropdown(choices=file_choices(library), value=None, label="Details of", elem_id="models-file")
                summary = gr.Markdown("", elem_id="models-summary")
                convert = gr.Button(
                    "Convert to .safetensors", visible=False, elem_id="models-convert", variant="secondary"
                )
                convert_note = gr.Markdown("", elem_id="models-convert-note")
            with gr.Column(scale=3, min_width=300):
                details = gr.HTML("", label="File details and metadata", elem_id="models-details")

    def refreshed(current: str | None) -> tuple[Any, Any]:
        with adapter.shown_in_ui("Refreshing the model list"):
            rows = library_rows(library)
        options = file_choices(library)
        value = current if current in choices.values_of(options) else None
        return rows, gr.update(choices=options, value=value)

    refresh.click(refreshed, inputs=file, outputs=[table, file], api_name="list_models")
    bar.app.load(
        lambda: (library_rows(library, refresh=False), gr.update(choices=file_choices(library))),
        outputs=[table, file],
        api_visibility="private",
        queue=False,
    )
    bar.refreshed.then(
        lambda current: (library_rows(library, refresh=False), gr.update(choices=file_choices(library), value=current)),
        inputs=file,
        outputs=[table, file],
        api_visibility="private",
        queue=False,
    )

    def on_row(event: gr.SelectData) -> Any:
        values = event.row_value or []
        if len(values) != len(COLUMNS):
            return gr.update()
        return f"{values[COLUMNS.index('kind')]}: {values[COLUMNS.index('name')]}"  # as any_kind_choice

    table.select(on_row, outputs=file, api_visibility="private", queue=False)

    def show(value: str | None) -> tuple[str, Any, str, str]:
        with adapter.shown_in_ui("Reading the file"):
            data, button, line = details_of(library, value)
        return data, button, line, ""

    file.change(show, inputs=file, outputs=[details, convert, summary, convert_note], api_name="model_details")

    def run_convert(value: str | None) -> tuple[str, list[list[Any]], Any]:
        entry = _entry(library, value)
        if entry is None:
            raise gr.Error("Pick a file first.", print_exception=False)
        with adapter.shown_in_ui("Converting"):
            target = convert_to_safetensors(entry)
            rows = library_rows(library)
        return f"Wrote `{target}`. The original is untouched.", rows, gr.update(choices=file_choices(library))

    convert.click(
        run_convert,
        inputs=file,
        outputs=[convert_note, table, file],
        api_name="convert_to_safetensors",
        concurrency_id="convert",
        concurrency_limit=1,
    )
    return tab
