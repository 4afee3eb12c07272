"""txt2img's Hires. fix and Refiner accordions, laid out and named as A1111's (`enable_hr`, `hr_upscaler`, ...).

The upscaler choices follow the checkpoint's family: its latents may be upscaled (A1111's "Latent" modes) or,
for flow/DiT families, only pixel-space upscalers are offered and a note under the dropdown says why.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from webui.engine.request import MAX_STEPS
from webui.engine.samplers import SAMPLER_NAMES, SCHEDULE_TYPES
from webui.engine.second_pass import DEFAULT_HR_UPSCALER
from webui.engine.upscalers import upscaler_names
from webui.models.kinds import Kind
from webui.ui import adapter, choices
from webui.ui.context import UiContext
from webui.ui.model_bar import ModelBar

SAME_SAMPLER = "Use same sampler"  # A1111's choice meaning "the first pass's"
SAME_SCHEDULE = "Use same scheduler"
NO_REFINER = "None"


def hires_choices(ctx: UiContext, checkpoint: str | None, unet: str | None = None) -> tuple[list[str], str]:
    """The upscalers the model's family can use (its UNet / transformer file's when one is picked, else the
    checkpoint's), and the note saying why the latent modes are missing."""
    entry = choices.model_entry(ctx.library, checkpoint, unet)
    family = entry.family if entry is not None else None
    second = family.description.second_pass if family is not None else None
    latent = second is None or second.latent_upscale  # no checkpoint yet: everything, checked when it runs
    models = [e.name for e in ctx.library.entries(Kind.UPSCALER) if e.usable]
    note = "" if second is None or latent else second.why_no_latent_upscale(family.label)
    return upscaler_names(latent, models), note


def refiner_choices(ctx: UiContext) -> list[str]:
    """"None", then the checkpoints whose family can finish another model's denoising (the SDXL ones)."""
    fitting = [
        choices.title(e)
        for e in ctx.library.entries(Kind.CHECKPOINT)
        if e.usable and e.family.description.second_pass.handoff
    ]
    return [NO_REFINER, *fitting]


def build_hires(ctx: UiContext, bar: ModelBar, checkpoint: str | None) -> dict[str, Any]:
    """The Hires. fix accordion's widgets by field name (a `_note` for the family's upscaler note)."""
    names, note = hires_choices(ctx, checkpoint)
    w: dict[str, Any] = {}
    with gr.Accordion("Hires. fix", open=False, elem_id="txt2img-hires"):
        w["enable_hr"] = gr.Checkbox(False, label="Hires. fix: upscale, then denoise again", elem_id="txt2img-hr")
        with gr.Row():
            w["hr_upscaler"] = gr.Dropdown(
                names, value=names[0] if names[0] == DEFAULT_HR_UPSCALER else "Lanczos", label="Upscaler",
                elem_id="txt2img-hr-upscaler",
            )  # fmt: skip
            w["hr_second_pass_steps"] = gr.Slider(
                0, MAX_STEPS, value=0, step=1, label="Hires steps (0: as the first pass)", elem_id="txt2img-hr-steps"
            )
            w["denoising_strength"] = gr.Slider(
                0, 1, value=0.7, step=0.01, label="Denoising strength", elem_id="txt2img-hr-denoising"
            )
        note_box = gr.Markdown(note, visible=bool(note), elem_id="txt2img-hr-note")
        with gr.Row():
            w["hr_scale"] = gr.Slider(1, 4, value=2, step=0.05, label="Upscale by", elem_id="txt2img-hr-scale")
            w["hr_resize_x"] = gr.Slider(0, 4096, value=0, step=8, label="Resize width to", elem_id="txt2img-hr-x")
            w["hr_resize_y"] = gr.Slider(0, 4096, value=0, step=8, label="Resize height to", elem_id="txt2img-hr-y")
        with gr.Row():
            w["hr_sampler_name"] = gr.Dropdown(
                [SAME_SAMPLER, *SAMPLER_NAMES], value=SAME_SAMPLER, label="Hires sampling method",
                elem_id="txt2img-hr-sampler",
            )  # fmt: skip
            w["hr_scheduler"] = gr.Dropdown(
                [SAME_SCHEDULE, *SCHEDULE_TYPES], value=SAME_SCHEDULE, label="Hires schedule type",
                elem_id="txt2img-hr-schedule",
            )  # fmt: skip
            w["hr_cfg"] = gr.Slider(0, 30, value=0, step=0.5, label="Hires CFG scale (0: as the first pass)",
                                    elem_id="txt2img-hr-cfg")  # fmt: skip
        w["hr_prompt"] = gr.Textbox(label="Hires prompt (empty: the prompt)", lines=2, elem_id="txt2img-hr-prompt")
        w["hr_negative_prompt"] = gr.Textbox(
            label="Hires negative prompt (empty: the negative prompt)", lines=2, elem_id="txt2img-hr-negative"
        )

    def follow(values: dict[str, Any], _request: Any) -> tuple[Any, Any]:
        names, note = hires_choices(ctx, values["checkpoint"], values["unet"])
        return gr.update(choices=names), gr.update(value=note, visible=bool(note))

    inputs, outputs = [bar.checkpoint, bar.overrides["unet"]], [w["hr_upscaler"], note_box]
    follow_models = adapter.by_name(["checkpoint", "unet"], follow)
    bar.on_models_changed(follow_models, inputs=inputs, outputs=outputs)
    bar.overrides["unet"].change(follow_models, inputs=inputs, outputs=outputs, api_visibility="private", queue=False)
    return w


def build_refiner(ctx: UiContext, bar: ModelBar) -> dict[str, Any]:
    """The Refiner accordion's widgets by field name: the checkpoint ("None": off) and where it takes over."""
    w: dict[str, Any] = {}
    with gr.Accordion("Refiner", open=False, elem_id="txt2img-refiner"):
        with gr.Row():
            w["refiner_checkpoint"] = gr.Dropdown(
                refiner_choices(ctx), value=NO_REFINER, label="Refiner checkpoint",
                elem_id="txt2img-refiner-checkpoint",
            )  # fmt: skip
            w["refiner_switch_at"] = gr.Slider(
                0.01, 1, value=0.8, step=0.01, label="Switch at", elem_id="txt2img-refiner-switch"
            )
    bar.on_models_changed(lambda *_: gr.update(choices=refiner_choices(ctx)), inputs=[bar.checkpoint],
                          outputs=[w["refiner_checkpoint"]])  # fmt: skip
    return w
