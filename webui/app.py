"""Wires the parts: settings → model library (→ engine) → Gradio app."""

from __future__ import annotations

from webui.config import Settings


def build_app(settings: Settings):  # noqa: ANN201 (gradio.Blocks; gradio imported lazily)
    import gradio as gr

    from webui.models.library import open_library
    from webui.ui import models_tab

    library = open_library(settings.models_dir, settings.extra_model_paths)
    with gr.Blocks(title="webui") as app:
        gr.Markdown("# webui — local Stable Diffusion studio")
        models_tab.build_tab(library)
    return app


def launch(settings: Settings) -> int:
    settings.outputs_dir.mkdir(parents=True, exist_ok=True)
    app = build_app(settings)
    app.queue().launch(
        server_name=settings.host,
        server_port=settings.port,
        allowed_paths=[str(settings.outputs_dir.resolve())],
        blocked_paths=[str(settings.models_dir.resolve())],
        share=False,
    )
    return 0
