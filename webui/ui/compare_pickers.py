"""The Compare tab's axis pickers: what each axis varies, and its values picked from lists that follow the library
(Refresh, page load) or typed as comma-separated text."""

from __future__ import annotations

from typing import Any

import gradio as gr

from webui.engine.compare_axes import AxisKind
from webui.ui import choices, compare_form
from webui.ui.compare_form import PICKED, PLACEHOLDERS
from webui.ui.context import UiContext
from webui.ui.model_bar import ModelBar

QUIET = {"api_visibility": "private", "queue": False}
DEFAULT_KINDS = {"x": AxisKind.CHECKPOINT, "y": None, "z": None}


def build(ctx: UiContext, axis: str) -> dict[str, Any]:
    """What an axis varies and its values: picked from a list, or typed (plus the LoRA a LoRA axis varies)."""
    kind, names, upper = DEFAULT_KINDS[axis], compare_form.axis_names(axis), axis.upper()
    with gr.Row(equal_height=True, elem_id=f"compare-{axis}"):
        widgets = {
            names["axis"]: gr.Dropdown(
                compare_form.kind_choices(optional=axis != "x"),
                value=kind.value if kind else compare_form.NO_AXIS,
                label=f"{upper} axis",
                elem_id=f"compare-{axis}-axis",
                scale=1,
                min_width=150,
            ),
            names["pick"]: gr.Dropdown(
                compare_form.pick_choices(ctx.library, kind),
                value=[],
                multiselect=True,
                allow_custom_value=True,  # SDXL text encoders as "clip-l + clip-g"; the library judges names
                label=f"{upper} values",
                visible=kind in PICKED,
                elem_id=f"compare-{axis}-pick",
                scale=3,
                min_width=220,
            ),
            names["values"]: gr.Textbox(
                label=f"{upper} values (comma-separated; quote a value holding commas)",
                placeholder=PLACEHOLDERS.get(kind, ""),
                visible=kind is not None and kind not in PICKED,
                elem_id=f"compare-{axis}-values",
                scale=3,
                min_width=220,
            ),
            names["lora"]: gr.Dropdown(
                choices.loras(ctx.library, None),
                value=None,
                label="LoRA it varies",
                allow_custom_value=True,
                visible=kind is AxisKind.LORA,
                elem_id=f"compare-{axis}-lora",
                scale=2,
                min_width=160,
            ),
        }
    return widgets


def wire(ctx: UiContext, bar: ModelBar, axes: dict[str, dict[str, Any]]) -> None:
    """Choosing what an axis varies shows the right value widget; the lists follow the library (Refresh, page load)."""
    library = ctx.library
    parts = {axis: {part: axes[axis][name] for part, name in compare_form.axis_names(axis).items()} for axis in axes}

    def on_kind(value: str | None) -> tuple[Any, Any, Any]:
        kind = compare_form.axis_kind(value)
        return (
            gr.update(choices=compare_form.pick_choices(library, kind), value=[], visible=kind in PICKED),
            gr.update(value="", placeholder=PLACEHOLDERS.get(kind, ""), visible=bool(kind) and kind not in PICKED),
            gr.update(choices=choices.loras(library, None), visible=kind is AxisKind.LORA),
        )

    for w in parts.values():
        w["axis"].input(on_kind, inputs=w["axis"], outputs=[w["pick"], w["values"], w["lora"]], **QUIET)

    def sync(*kinds: str | None) -> list[Any]:
        """Fresh lists for every axis; the values stay as they are (typed ones too: the library judges them at Run)."""
        picks = [gr.update(choices=compare_form.pick_choices(library, compare_form.axis_kind(k))) for k in kinds]
        return picks + [gr.update(choices=choices.loras(library, None))] * len(parts)

    bar.on_models_changed(
        sync,
        inputs=[w["axis"] for w in parts.values()],
        outputs=[*(w["pick"] for w in parts.values()), *(w["lora"] for w in parts.values())],
    )
