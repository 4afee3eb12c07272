"""The LoRA stack in the txt2img tab: up to MAX_LORAS rows, each a LoRA of the current family, its UNet and
text-encoder weights, an on/off toggle, its trigger words (click one to add it to the prompt), and after a run
what applied. Rows are fixed components shown and hidden, so the stack stays as set across generations."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from webui.engine.lora import LoraReport
from webui.models.kinds import Kind
from webui.ui import adapter, choices, model_info
from webui.ui.adapter import MAX_LORAS, lora_names
from webui.ui.context import UiContext
from webui.ui.model_bar import ModelBar

WEIGHT_RANGE = (-2.0, 3.0)


@dataclass
class LoraRow:
    group: gr.Group
    lora: gr.Dropdown
    unet_weight: gr.Slider
    te_weight: gr.Slider
    enabled: gr.Checkbox
    triggers: gr.Radio
    report: gr.HTML
    remove: gr.Button


@dataclass
class LoraStack:
    rows: list[LoraRow]
    shown: gr.State  # list[bool]: which rows are on screen
    add: gr.Button

    @property
    def fields(self) -> dict[str, Any]:
        """The stack's request widgets by adapter name (lora_1, lora_1_unet_weight, ...)."""
        out: dict[str, Any] = {}
        for number, row in enumerate(self.rows, start=1):
            names = lora_names(number)
            out.update(
                {
                    names["name"]: row.lora,
                    names["unet_weight"]: row.unet_weight,
                    names["te_weight"]: row.te_weight,
                    names["enabled"]: row.enabled,
                }
            )
        return out

    def match_reports(
        self, values: dict[str, Any], reports: tuple[LoraReport, ...], library: Any
    ) -> tuple[list[LoraReport | None], list[LoraReport]]:
        """The engine's report for each row (matched by the LoRA file's name, in stack order), and the
        reports left over: LoRAs from `<lora:…>` tags in the prompt."""
        unused = list(reports)
        per_row: list[LoraReport | None] = []
        for number in range(1, len(self.rows) + 1):
            name = values.get(lora_names(number)["name"])
            report = None
            if name:
                try:
                    stem = choices.resolve(library, name, Kind.LORA).stem
                except LookupError:  # gone from the library: reported under the name the row shows
                    stem = Path(str(name)).stem
                report = next((r for r in unused if r.name == stem), None)
                if report is not None:
                    unused.remove(report)
            per_row.append(report)
        return per_row, unused


def report_html(report: LoraReport | None) -> str:
    if report is None:
        return ""
    if report.error:
        return f'<div class="lora-report error">✗ {html.escape(report.error)}</div>'
    if not report.applied and not report.unapplied:
        return '<div class="lora-report off">off: not applied</div>'
    text = f"✓ {report.applied} modules patched"
    css = "ok"
    if report.unapplied:
        examples = ", ".join(report.examples)
        text += f"; ⚠ {report.unapplied} not applied" + (f" (e.g. {html.escape(examples)})" if examples else "")
        css = "warn"
    return f'<div class="lora-report {css}">{text}</div>'


def trigger_update(ctx: UiContext, name: str | None) -> Any:
    if not name:
        return gr.update(choices=[], value=None, visible=False)
    try:
        entry = ctx.library.find(name, Kind.LORA)
    except LookupError:
        return gr.update(choices=[], value=None, visible=False)
    words = model_info.trigger_words(model_info.header_metadata(entry))
    return gr.update(choices=words, value=None, visible=bool(words))


def insert_word(prompt: str, word: str) -> str:
    prompt = (prompt or "").rstrip()
    if not word or word in [part.strip() for part in prompt.split(",")]:
        return prompt
    return f"{prompt}, {word}" if prompt else word


def on_trigger(text: str, event: gr.SelectData) -> tuple[str, Any]:
    """A trigger word clicked: add it to the prompt, and let the word be clicked again."""
    return insert_word(text, str(event.value)), gr.update(value=None)


def _build_row(number: int) -> LoraRow:
    with gr.Group(visible=False, elem_id=f"lora-row-{number}", elem_classes=["lora-row"]) as group:
        with gr.Row(equal_height=True):
            lora = gr.Dropdown(
                choices=[],
                value=None,
                label=f"LoRA {number}",
                allow_custom_value=True,
                elem_id=f"lora-{number}",
                scale=4,
                min_width=180,
            )
            enabled = gr.Checkbox(value=True, label="on", elem_id=f"lora-{number}-enabled", scale=0, min_width=60)
            remove = gr.Button(
                "✖", elem_id=f"lora-{number}-remove", scale=0, min_width=40, elem_classes=["tool-button"]
            )
        with gr.Row():
            unet_weight = gr.Slider(
                *WEIGHT_RANGE, value=1.0, step=0.05, label="UNet weight", elem_id=f"lora-{number}-unet"
            )
            te_weight = gr.Slider(
                *WEIGHT_RANGE, value=1.0, step=0.05, label="Text encoder weight", elem_id=f"lora-{number}-te"
            )
        triggers = gr.Radio(
            choices=[],
            value=None,
            label="Trigger words (click to add to the prompt)",
            interactive=True,
            visible=False,
            elem_id=f"lora-{number}-triggers",
            elem_classes=["trigger-words"],
        )
        report = gr.HTML("", elem_id=f"lora-{number}-report")
    return LoraRow(group, lora, unet_weight, te_weight, enabled, triggers, report, remove)


def build(ctx: UiContext, bar: ModelBar, prompt: gr.Textbox) -> LoraStack:
    with gr.Accordion("LoRA", open=True, elem_id="lora-stack"):
        shown = gr.State([False] * MAX_LORAS)
        rows = [_build_row(number) for number in range(1, MAX_LORAS + 1)]
        add = gr.Button("+ Add LoRA", elem_id="lora-add", size="sm")
    stack = LoraStack(rows, shown, add)

    def show_next(visible: list[bool]) -> list[Any]:
        visible = list(visible)
        if False in visible:
            visible[visible.index(False)] = True
        else:
            gr.Warning(f"The stack holds at most {MAX_LORAS} LoRAs.")
        return [visible, *(gr.update(visible=v) for v in visible)]

    groups = [row.group for row in rows]
    add.click(show_next, inputs=shown, outputs=[shown, *groups], api_visibility="private", queue=False)

    for number, row in enumerate(rows, start=1):
        index = number - 1

        def on_pick(name: str | None, visible: list[bool], index: int = index) -> list[Any]:
            visible = list(visible)
            visible[index] = visible[index] or bool(name)
            return [visible, gr.update(visible=visible[index]), trigger_update(ctx, name), ""]

        row.lora.change(
            on_pick,
            inputs=[row.lora, shown],
            outputs=[shown, row.group, row.triggers, row.report],
            api_visibility="private",
            queue=False,
        )

        def on_remove(visible: list[bool], index: int = index) -> list[Any]:
            visible = list(visible)
            visible[index] = False
            return [visible, gr.update(visible=False), None, 1.0, 1.0, True]

        row.remove.click(
            on_remove,
            inputs=shown,
            outputs=[shown, row.group, row.lora, row.unet_weight, row.te_weight, row.enabled],
            api_visibility="private",
            queue=False,
        )
        row.triggers.select(
            on_trigger,
            inputs=[prompt],
            outputs=[prompt, row.triggers],
            api_visibility="private",
            queue=False,
        )

    lora_widgets = [row.lora for row in rows]

    def sync(values: dict[str, Any], _request: Any) -> list[Any]:
        """Each row's choices: the LoRAs of the checkpoint's family; a LoRA of another family is cleared."""
        family = choices.family_of(ctx.library, values.get("checkpoint"))
        available = choices.loras(ctx.library, family)
        out = []
        for number in range(1, MAX_LORAS + 1):
            current = values.get(lora_names(number)["name"])
            # The value is set only when it must go: a page-load or refresh answer never undoes a pick.
            keep = current is None or current in available
            out.append(gr.update(choices=available) if keep else gr.update(choices=available, value=None))
        return out

    names = ["checkpoint", *(lora_names(n)["name"] for n in range(1, MAX_LORAS + 1))]
    bar.on_models_changed(adapter.by_name(names, sync), inputs=[bar.checkpoint, *lora_widgets], outputs=lora_widgets)
    return stack
