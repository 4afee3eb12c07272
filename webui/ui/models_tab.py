"""Models tab: everything the library found, with each file's problem, and a refresh."""

from __future__ import annotations

from typing import Any

import gradio as gr

COLUMNS = ["name", "kind", "architecture", "format", "size", "hash", "problem", "path"]


def library_rows(library: Any) -> list[list[Any]]:
    rows = []
    for entry in library.refresh():
        data = entry.to_json()
        data["size"] = f"{data['size'] / 2**20:.1f} MB"
        rows.append([data.get(column) if data.get(column) is not None else "" for column in COLUMNS])
    return rows


def build_tab(library: Any) -> None:
    with gr.Tab("Models"):
        refresh = gr.Button("Refresh", variant="secondary", elem_id="models-refresh")
        table = gr.Dataframe(
            headers=COLUMNS,
            value=lambda: library_rows(library),
            interactive=False,
            wrap=True,
            elem_id="models-table",
        )
        refresh.click(lambda: library_rows(library), outputs=table, api_name="list_models")
