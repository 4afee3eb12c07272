"""Settings tab: txt2img defaults, device and memory, saved to the settings file and applied without restart
where possible (device, precision and slicing for the next generation, budgets at once, defaults on reload)."""

from __future__ import annotations

import html
from typing import Any

import gradio as gr

from webui.config import DEVICES, FP8_MODES, PRECISIONS, SLICING_MODES
from webui.engine.jobs import Placement
from webui.engine.request import MAX_STEPS
from webui.engine.samplers import SCHEDULE_TYPES
from webui.ui import adapter, choices, runner
from webui.ui.context import GPU, UiContext, apply_engine_preferences, owner_of, session_of
from webui.ui.preferences import FAMILY_SAMPLER, PREFERENCE_NAMES, preferences_from_widgets
from webui.ui.txt2img_tab import MAX_SIDE_UI, SAMPLER_CHOICES

CLI_OPTIONS = ("device", "precision", "attention_slicing", "ram_budget_gb", "vram_budget_gb")


def _widgets(ctx: UiContext) -> dict[str, Any]:
    current = ctx.preferences.current  # the build's values; each page load reads the file's again
    w: dict[str, Any] = {}
    with gr.Accordion("txt2img defaults", open=True):
        w["checkpoint"] = gr.Dropdown(
            choices=["", *choices.checkpoints(ctx.library)],
            value=current.checkpoint,
            label="Checkpoint at start (empty: the first listed)",
            elem_id="settings-checkpoint",
        )
        w["prompt"] = gr.Textbox(value=current.prompt, label="Prompt", lines=2, elem_id="settings-prompt")
        w["negative_prompt"] = gr.Textbox(value=current.negative_prompt, label="Negative prompt", lines=2)
        with gr.Row():
            w["sampler"] = gr.Dropdown(
                [FAMILY_SAMPLER, *SAMPLER_CHOICES],
                value=current.sampler,
                label="Sampler (Family default: A1111's DPM++ 2M Karras for SD models)",
                elem_id="settings-sampler",
            )
            w["schedule"] = gr.Dropdown(
                list(SCHEDULE_TYPES), value=current.schedule, label="Schedule type (with a sampler chosen here)"
            )
        with gr.Row():
            w["steps"] = gr.Slider(1, MAX_STEPS, step=1, value=current.steps, label="Steps", elem_id="settings-steps")
            w["cfg_scale"] = gr.Slider(0, 30, step=0.5, value=current.cfg_scale, label="CFG scale")
        with gr.Row():
            w["width"] = gr.Slider(
                0, MAX_SIDE_UI, step=8, value=current.width, label="Width (0: the model family's native size)"
            )
            w["height"] = gr.Slider(
                0,
                MAX_SIDE_UI,
                step=8,
                value=current.height,
                label="Height (0: the model family's native size)",
            )
        with gr.Row():
            w["batch_count"] = gr.Slider(1, 100, step=1, value=current.batch_count, label="Batch count")
            w["batch_size"] = gr.Slider(1, 8, step=1, value=current.batch_size, label="Batch size")
            w["clip_skip"] = gr.Slider(1, 12, step=1, value=current.clip_skip, label="Clip skip")
        w["preview_every"] = gr.Slider(
            0, 50, step=1, value=current.preview_every, label="Live preview every N steps (0: off)"
        )
        w["samples_format"] = gr.Radio(
            ["png", "jpg", "webp"],
            value=current.samples_format,
            label="File format for images (the infotext goes in the PNG text or the JPEG/WebP EXIF, as A1111)",
            elem_id="settings-samples-format",
        )
    with gr.Accordion("Device and memory", open=True):
        with gr.Row():
            w["device"] = gr.Dropdown(
                list(DEVICES),
                value=current.device,
                label="Device",
                allow_custom_value=True,
                elem_id="settings-device",
            )
            w["precision"] = gr.Dropdown(list(PRECISIONS), value=current.precision, label="Precision")
            w["attention_slicing"] = gr.Dropdown(
                list(SLICING_MODES), value=current.attention_slicing, label="Attention slicing"
            )
            w["fp8_storage"] = gr.Dropdown(
                list(FP8_MODES),
                value=current.fp8_storage,
                label="Transformer weights in fp8",
                info="auto: when bf16 would not fit the VRAM budget; halves its memory, nearly the same images",
                elem_id="settings-fp8-storage",
            )
        with gr.Row():
            # No `minimum`: Gradio's own check would refuse -5 with a message naming no field; ours names it.
            w["ram_budget_gb"] = gr.Number(
                value=current.ram_budget_gb,
                label="RAM for cached models, GB (0: half the RAM)",
                elem_id="settings-ram-budget",
            )
            w["vram_budget_gb"] = gr.Number(
                value=current.vram_budget_gb,
                label="VRAM for cached models, GB (0: 80% of the GPU)",
            )
    return w


def _file_note(ctx: UiContext) -> str:
    lines = [f"Saved in `{ctx.preferences.path}` (never served to the browser)."]
    flags = [name for name in CLI_OPTIONS if getattr(ctx.settings, name) is not None]
    if flags:
        given = ", ".join("--" + name.replace("_", "-") for name in flags)
        lines.append(f"The command line set {given}: those flags win at launch; saving here applies now.")
    lines += [f"⚠ {html.escape(note)}" for note in ctx.preferences.notes]
    lines.append(
        f"Images are saved with their infotext under `{ctx.engine.outputs_dir}/txt2img/YYYY-MM-DD/`"
        f" as `NNNNN-SEED.{ctx.prefs.samples_format}`."
    )
    return "\n\n".join(lines)


def preferences_with_labels(values: dict[str, Any], labels: dict[str, str]) -> Any:
    """Preferences from the widgets' values; a bad value's error names the field as the page labels it
    ("RAM for cached models, GB (0: half the RAM): -5.0 is negative; ..."), not by its internal name."""
    try:
        return preferences_from_widgets(values)
    except ValueError as error:
        name, _, rest = str(error).partition(":")
        if name in labels and rest:
            raise ValueError(f"{labels[name]}:{rest}") from None
        raise


def build_tab(ctx: UiContext, app: gr.Blocks) -> gr.Tab:
    with gr.Tab("Settings", id="settings", elem_id="tab-settings") as tab:
        widgets = _widgets(ctx)
        with gr.Row():
            save = gr.Button("Save and apply", variant="primary", elem_id="settings-save", scale=0, min_width=180)
        result = gr.Markdown(_file_note(ctx), elem_id="settings-result")
    names = list(widgets)
    assert set(names) == set(PREFERENCE_NAMES), "every preference has a widget"

    built = ctx.preferences.current

    def page_load() -> list[Any]:
        """What was saved since the page was built (a page-load answer must not undo what was typed)."""
        now = ctx.preferences.current
        listing = gr.update(choices=["", *choices.checkpoints(ctx.library)])
        if now.checkpoint != built.checkpoint:
            listing["value"] = now.checkpoint
        values = [gr.skip() if getattr(now, n) == getattr(built, n) else getattr(now, n) for n in names[1:]]
        return [listing, *values, _file_note(ctx)]

    assert names[0] == "checkpoint"
    app.load(page_load, outputs=[*widgets.values(), result], api_visibility="private", queue=False)

    labels = {name: widget.label for name, widget in widgets.items()}

    def save_settings(values: dict[str, Any], request: Any) -> str:
        """Validate, apply to the engine between two jobs of the queue, then save."""
        with adapter.shown_in_ui("Saving settings"):
            preferences = preferences_with_labels(values, labels)
            changes = runner.call(
                ctx.queue,
                lambda engine, _progress, _cancel: apply_engine_preferences(engine, preferences),
                owner_of(request),
                "settings",
                session=session_of(request),
                placement=Placement.EVERY,  # each replica of a spread-out engine has its own device and memory
            )
            ctx.preferences.save(preferences)
        applied = f" Applied now: {', '.join(changes)}." if changes else ""
        return (
            f"Saved to `{ctx.preferences.path}`.{applied} Memory budgets apply at once; "
            "the txt2img defaults apply when the page is reloaded."
        )

    save.click(
        adapter.by_name(names, save_settings),
        inputs=list(widgets.values()),
        outputs=result,
        api_name="save_settings",
        concurrency_id=GPU,
        concurrency_limit=1,
    )
    return tab
