"""txt2img tab: prompts with token counters, sampling settings, the LoRA stack, Generate / Interrupt with live
progress and preview, and the gallery with the selected image's infotext and file."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import gradio as gr

from webui.engine.lora import LoraReport, lora_warnings
from webui.engine.progress import Progress
from webui.engine.prompt_plan import count_prompt_tokens
from webui.engine.request import MAX_STEPS, MIN_SIDE, GenerationResult
from webui.engine.samplers import (
    DISTILLED_PRESET,
    SAMPLER_NAMES,
    SAMPLERS,
    SCHEDULE_TYPES,
    is_family_default,
    supported_schedules,
)
from webui.ui import adapter, choices, families, lora_stack, runner, second_pass_widgets
from webui.ui.context import GPU, UiContext, owner_of, session_of
from webui.ui.lora_stack import LoraStack
from webui.ui.model_bar import ModelBar, initial_checkpoint, noting_refusal, status_html
from webui.ui.preferences import FAMILY_SAMPLER, REQUEST_DEFAULTS, Preferences

MAX_SIDE_UI = adapter.MAX_SIDE_UI
SAMPLER_CHOICES = list(SAMPLER_NAMES)  # A1111's list; a page starts from the family's default (see field_defaults)
DISTILLED_FIELDS = ("sampler", "schedule", "steps", "cfg_scale")


@dataclass
class Txt2ImgTab:
    """What other tabs use: `fields` (every request widget by adapter name, model selection and LoRA stack
    included), the results, and `actions`, a row under the gallery where a later tab (Compare) adds its
    "send to" button with `with tab.actions: ...`."""

    tab: gr.Tab
    fields: dict[str, Any]
    stack: LoraStack
    gallery: gr.Gallery
    results: gr.State
    infotext: gr.Textbox
    actions: gr.Row
    file: gr.Textbox  # the selected image's saved file


def token_counter(ctx: UiContext, text: str, steps: Any = 20, positive: bool = True) -> str:
    """A1111's counter, `tokens/limit`: comments, tags and prompt editing resolved (the longest step's text
    counts), 75 for every chunk but the last. The tooltip lists AND weights, a trailing `:N` included."""
    tokenizer = ctx.tokenizer()
    if tokenizer is None:
        return '<span class="token-counter" title="no CLIP tokenizer found">?/75</span>'
    try:
        step_count = max(1, int(steps or 20))
    except (TypeError, ValueError):
        step_count = 20
    count = count_prompt_tokens(tokenizer, text or "", step_count, positive)
    title = f"{count.limit // 75} chunk(s) of 75 tokens"
    if count.weights:
        weights = ", ".join(f"{w:g}" for w in count.weights)
        title += f"; AND parts weighted {weights} (a trailing ':N' is read as a weight, as A1111 reads it)"
    return f'<span class="token-counter" title="{html.escape(title)}">{count}</span>'


def style_names(ctx: UiContext) -> list[str]:
    """The styles the styles.csv files hold (read again when one changed)."""
    return list(ctx.styles.styles()) if ctx.styles is not None else []


def schedule_update(sampler: str | None, schedule: str | None, *, set_value: bool = True) -> Any:
    """The schedule types `sampler` can use, and `schedule` if among them (else Automatic). With
    set_value=False the value is sent only when it must change (after a pick by hand, at page load)."""
    allowed = list(supported_schedules(sampler)) if sampler in SAMPLERS else ["Automatic"]
    if schedule not in allowed:
        return gr.update(choices=allowed, value="Automatic")
    return gr.update(choices=allowed, value=schedule) if set_value else gr.update(choices=allowed)


def schedule_choices(sampler: str | None, schedule: str | None) -> Any:
    return schedule_update(sampler, schedule, set_value=False)


def sampling_values(sampler: str, schedule: str, steps: int, cfg_scale: float) -> list[Any]:
    """Values for (sampler, schedule, steps, cfg) set together: the schedule's choices follow the sampler."""
    return [sampler, schedule_update(sampler, schedule), steps, cfg_scale]


def default_size(ctx: UiContext, prefs: Preferences) -> tuple[int, int]:
    native = families.native_size(choices.checkpoint_entry(ctx.library, initial_checkpoint(ctx)))
    return prefs.width or native[0], prefs.height or native[1]


def sampling_for(ctx: UiContext, checkpoint: str | None) -> tuple[str, str]:
    """(sampler, schedule) a page starts from with `checkpoint`: the preference, or its family's default."""
    return ctx.prefs.sampling_for(choices.family_of(ctx.library, checkpoint))


def field_defaults(ctx: UiContext) -> dict[str, Any]:
    """The txt2img fields' values on a fresh page: the saved preferences (read again at every page load), the
    family's sampler and schedule when the preference is the family default."""
    prefs = ctx.prefs
    width, height = default_size(ctx, prefs)
    values = {name: getattr(prefs, name) for name in REQUEST_DEFAULTS}
    sampler, schedule = sampling_for(ctx, initial_checkpoint(ctx))
    return {**values, "sampler": sampler, "schedule": schedule, "width": width, "height": height}


def _request_widgets(d: dict[str, Any]) -> dict[str, Any]:
    """Sampling settings, laid out as A1111 users expect, starting at the defaults `d`."""
    w: dict[str, Any] = {}
    with gr.Row():
        w["sampler"] = gr.Dropdown(SAMPLER_CHOICES, value=d["sampler"], label="Sampler", elem_id="txt2img-sampler")
        w["schedule"] = gr.Dropdown(
            list(SCHEDULE_TYPES), value=d["schedule"], label="Schedule type", elem_id="txt2img-schedule"
        )
    w["steps"] = gr.Slider(1, MAX_STEPS, value=d["steps"], step=1, label="Steps", elem_id="txt2img-steps")
    with gr.Row(equal_height=True):
        with gr.Column(scale=4, min_width=200):
            w["width"] = gr.Slider(
                MIN_SIDE,
                MAX_SIDE_UI,
                value=d["width"],
                step=8,
                label="Width",
                elem_id="txt2img-width",
            )
            w["height"] = gr.Slider(
                MIN_SIDE,
                MAX_SIDE_UI,
                value=d["height"],
                step=8,
                label="Height",
                elem_id="txt2img-height",
            )
        with gr.Column(scale=1, min_width=110):
            swap = gr.Button("⇅ swap", elem_id="txt2img-swap", size="sm")
            preset = gr.Dropdown([], value=None, label="Size preset", elem_id="txt2img-size-preset")
    with gr.Row():
        w["batch_count"] = gr.Slider(
            1, 100, value=d["batch_count"], step=1, label="Batch count", elem_id="txt2img-batch-count", min_width=200
        )
        w["batch_size"] = gr.Slider(
            1, 8, value=d["batch_size"], step=1, label="Batch size", elem_id="txt2img-batch-size", min_width=200
        )
    w["cfg_scale"] = gr.Slider(0, 30, value=d["cfg_scale"], step=0.5, label="CFG scale", elem_id="txt2img-cfg")
    w["distilled_guidance"] = gr.Slider(
        0,
        30,
        value=families.DISTILLED_GUIDANCE,
        step=0.1,
        label="Distilled CFG Scale",
        info="the guidance a guidance-distilled model takes as an input (Forge's name)",
        visible=False,
        elem_id="txt2img-distilled-cfg",
    )
    with gr.Row(equal_height=True):
        w["seed"] = gr.Number(
            value=-1,
            label="Seed (-1: random)",
            precision=0,
            minimum=-1,
            maximum=2**32 - 1,
            elem_id="txt2img-seed",
            scale=4,
            min_width=160,
        )
        random_seed = gr.Button("⚄", elem_id="txt2img-seed-random", scale=0, min_width=44, elem_classes=["tool-button"])
        reuse_seed = gr.Button("♻", elem_id="txt2img-seed-reuse", scale=0, min_width=44, elem_classes=["tool-button"])
    with gr.Row(equal_height=True):
        w["clip_skip"] = gr.Slider(
            1, 12, value=d["clip_skip"], step=1, label="Clip skip", elem_id="txt2img-clip-skip", min_width=200
        )
        distilled = gr.Checkbox(
            False, label="Distilled preset (Turbo / LCM)", elem_id="txt2img-distilled", min_width=200
        )
    with gr.Accordion("Variation seed and eta", open=False, elem_id="txt2img-extra"):
        with gr.Row(equal_height=True):
            w["subseed"] = gr.Number(
                value=-1, label="Variation seed (-1: random)", precision=0, minimum=-1, maximum=2**32 - 1,
                elem_id="txt2img-subseed", min_width=160,
            )  # fmt: skip
            w["subseed_strength"] = gr.Slider(
                0, 1, value=0, step=0.01, label="Variation strength", elem_id="txt2img-subseed-strength", min_width=200
            )
        w["eta"] = gr.Number(
            value=None, label="Eta (empty: the sampler's own; Euler a, DPM fast/adaptive, DDIM take one)",
            minimum=0, elem_id="txt2img-eta",
        )  # fmt: skip
    w["_swap"], w["_preset"], w["_random"], w["_reuse"], w["_distilled"] = (
        swap,
        preset,
        random_seed,
        reuse_seed,
        distilled,
    )
    return w


def build_tab(ctx: UiContext, bar: ModelBar) -> Txt2ImgTab:
    defaults = field_defaults(ctx)
    with gr.Tab("txt2img", id="txt2img", elem_id="tab-txt2img") as tab:
        with gr.Row(elem_id="txt2img-top"):
            with gr.Column(scale=5, min_width=300):
                prompt = gr.Textbox(
                    value=defaults["prompt"],
                    label="Prompt",
                    lines=3,
                    max_lines=12,
                    elem_id="txt2img-prompt",
                    placeholder="a photo of a cat, (detailed:1.2) <lora:name:0.8>",
                )
                prompt_tokens = gr.HTML(
                    token_counter(ctx, ""), elem_id="txt2img-prompt-tokens", container=False, padding=False
                )
                negative = gr.Textbox(
                    value=defaults["negative_prompt"],
                    label="Negative prompt",
                    lines=2,
                    max_lines=8,
                    elem_id="txt2img-negative",
                )
                negative_tokens = gr.HTML(
                    token_counter(ctx, ""), elem_id="txt2img-negative-tokens", container=False, padding=False
                )
                styles = gr.Dropdown(
                    style_names(ctx), value=[], multiselect=True, label="Styles (A1111 styles.csv)",
                    elem_id="txt2img-styles",
                )  # fmt: skip
            with gr.Column(scale=1, min_width=160, elem_id="txt2img-buttons"):
                generate = gr.Button("Generate", variant="primary", elem_id="txt2img-generate", size="lg")
                interrupt = gr.Button("Interrupt", variant="stop", elem_id="txt2img-interrupt")
        with gr.Row(elem_id="txt2img-main"):
            with gr.Column(scale=1, min_width=320, elem_id="txt2img-settings"):
                widgets = _request_widgets(defaults)
                widgets |= second_pass_widgets.build_hires(ctx, bar, initial_checkpoint(ctx))
                widgets |= second_pass_widgets.build_refiner(ctx, bar)
                stack = lora_stack.build(ctx, bar, prompt)
            with gr.Column(scale=1, min_width=320, elem_id="txt2img-output"):
                progress = gr.HTML(runner.idle_html(), elem_id="txt2img-progress")
                preview = gr.Image(
                    label="Live preview", visible=False, interactive=False, elem_id="txt2img-preview", height=256
                )
                gallery = gr.Gallery(
                    label="Images",
                    columns=2,
                    height="auto",
                    object_fit="contain",
                    elem_id="txt2img-gallery",
                    buttons=["download", "fullscreen"],
                    interactive=False,
                )
                saved = gr.Textbox(label="File", interactive=False, elem_id="txt2img-file", buttons=["copy"])
                infotext = gr.Textbox(
                    label="Infotext (generation parameters)",
                    lines=4,
                    interactive=False,
                    elem_id="txt2img-infotext",
                    buttons=["copy"],
                )
                other_loras = gr.HTML("", elem_id="txt2img-lora-report")
                actions = gr.Row(elem_id="txt2img-actions")
        results = gr.State([])
        selected = gr.State(0)
        # Inside the tab: a stray child of gr.Tabs becomes a phantom tab.
        interrupt_note = gr.Textbox(visible=False, label="Interrupt", elem_id="txt2img-interrupt-note")

    swap, preset, random_seed, reuse_seed, distilled = (
        widgets.pop(k) for k in ("_swap", "_preset", "_random", "_reuse", "_distilled")
    )
    fields: dict[str, Any] = {
        "prompt": prompt,
        "negative_prompt": negative,
        adapter.STYLES_FIELD: styles,
        **widgets,
        **bar.selection,
        **stack.fields,
    }
    adapter.check_names(list(fields))
    names = list(defaults)
    bar.app.load(
        # Only the defaults Settings changed since start: a page-load answer must not undo what was typed.
        lambda: [gr.skip() if v == defaults[k] else v for k, v in field_defaults(ctx).items()],
        outputs=[fields[name] for name in names],
        api_visibility="private",
        queue=False,
    )
    _wire_helpers(ctx, bar, fields, prompt, prompt_tokens, negative, negative_tokens, swap, preset, distilled)
    bar.app.load(
        lambda: gr.update(choices=style_names(ctx)), outputs=styles, api_visibility="private", queue=False
    )

    random_seed.click(lambda: -1, outputs=fields["seed"], api_visibility="private", queue=False)
    reuse_seed.click(
        lambda items, index: items[index]["seed"] if 0 <= index < len(items) else gr.update(),
        inputs=[results, selected],
        outputs=fields["seed"],
        api_visibility="private",
        queue=False,
    )

    def on_select(items: list[dict[str, Any]], event: gr.SelectData) -> tuple[int, str, str]:
        index = event.index if isinstance(event.index, int) else 0
        if not 0 <= index < len(items):
            return 0, "", ""
        return index, items[index]["path"], items[index]["infotext"]

    gallery.select(
        on_select, inputs=results, outputs=[selected, saved, infotext], api_visibility="private", queue=False
    )

    outputs = [
        gallery,
        saved,
        infotext,
        progress,
        preview,
        other_loras,
        bar.status,
        results,
        selected,
        *(row.report for row in stack.rows),
    ]

    def run(values: dict[str, Any], request: gr.Request | None) -> Any:
        """Generate, as a job of the shared queue: progress and previews while it runs, then the saved images."""
        missing: list[LoraReport] = []  # stack rows naming a LoRA no longer in the library: reported, not fatal
        with adapter.shown_in_ui("Generation"):
            generation = adapter.build_request(values, ctx.library, ctx.styles, missing)
            job = ctx.queue.submit(
                generation,
                owner_of(request),
                "txt2img",
                preview_every=ctx.prefs.preview_every,
                session=session_of(request),
            )
        with adapter.shown_in_ui("Generation"), noting_refusal(ctx, request):
            yield from runner.job_updates(
                job,
                progress,
                preview,
                lambda report: runner.progress_html(report if isinstance(report, Progress) else None),
                lambda current: _finished(ctx, values, current.result, stack, outputs, missing),
            )

    generated = generate.click(
        adapter.by_name(list(fields), run),
        inputs=list(fields.values()),
        outputs=outputs,
        api_name="generate",
        concurrency_id=GPU,
        concurrency_limit=1,
        show_progress="minimal",
        show_progress_on=[progress],
    )
    bar.after(ctx, generated)  # a component the load refused goes back to "From checkpoint"

    def stop(request: gr.Request) -> str:
        """Interrupt this user's jobs (running or waiting); other users' jobs go on."""
        stopped = ctx.queue.interrupt(owner_of(request))
        return "interrupting…" if stopped else "nothing running"

    interrupt.click(
        stop, outputs=interrupt_note, api_name="interrupt", concurrency_limit=None, concurrency_id="interrupt"
    )
    return Txt2ImgTab(tab, fields, stack, gallery, results, infotext, actions, saved)


def _finished(
    ctx: UiContext,
    values: dict[str, Any],
    result: GenerationResult | None,
    stack: LoraStack,
    outputs: list[Any],
    missing: list[LoraReport],
) -> dict[Any, Any]:
    """The outputs once a job has ended; `result` is None for a job interrupted before it started. A LoRA that
    was not applied (or only in part) is a warning toast, as on the CLI's stderr and in the API's warnings."""
    gallery, saved, infotext, progress, preview, other_loras, bar_status, results, selected, *reports = outputs
    if result is None:
        return {progress: runner.done_html(None), preview: gr.update(visible=False, value=None)}
    loras = (*missing, *result.loras)
    for line in lora_warnings(loras):
        gr.Warning(html.escape(line, quote=False), title="LoRA not applied")
    items = [{"path": str(i.path), "seed": i.seed, "infotext": i.infotext} for i in result.images]
    row_reports, rest = stack.match_reports(values, loras, ctx.library)
    prompt_loras = "".join(
        f'<div class="prompt-lora"><b>{html.escape(r.name)}</b> (prompt tag) {lora_stack.report_html(r)}</div>'
        for r in rest
    )
    # What did not apply as written (other extra networks, eta, schedule types a sampler ignores), never silent.
    lora_tags = {r.name for r in rest}
    prompt_loras += "".join(
        f'<div class="gen-warning">⚠ {html.escape(w)}</div>'
        for w in result.info.get("warnings", [])
        if not any(w.startswith(f"{tag}: ") for tag in lora_tags)  # those show in their LoRA report
    )
    first = items[0] if items else {"path": "", "infotext": ""}
    return {
        gallery: [(i["path"], f"seed {i['seed']}") for i in items],
        saved: first["path"],
        infotext: first["infotext"],
        progress: runner.done_html(result),
        preview: gr.update(visible=False, value=None),
        other_loras: prompt_loras,
        bar_status: status_html(ctx, values),
        results: items,
        selected: 0,
        **{widget: lora_stack.report_html(r) for widget, r in zip(reports, row_reports, strict=True)},
    }


def _wire_helpers(
    ctx: UiContext,
    bar: ModelBar,
    fields: dict[str, Any],
    prompt: gr.Textbox,
    prompt_tokens: gr.HTML,
    negative: gr.Textbox,
    negative_tokens: gr.HTML,
    swap: gr.Button,
    preset: gr.Dropdown,
    distilled: gr.Checkbox,
) -> None:
    """Token counters, sampler → schedule types, size presets and swap, the distilled preset."""
    quiet = {"api_visibility": "private", "queue": False}
    steps = fields["steps"]
    for box, counter, positive in ((prompt, prompt_tokens, True), (negative, negative_tokens, False)):
        count = (lambda text, n: token_counter(ctx, text, n)) if positive else (
            lambda text, n: token_counter(ctx, text, n, positive=False)
        )
        box.change(count, inputs=[box, steps], outputs=counter, trigger_mode="always_last", **quiet)
    sampler, schedule, width, height = fields["sampler"], fields["schedule"], fields["width"], fields["height"]
    # By hand only: code that sets a sampler sets its schedule with it (sampling_values).
    sampler.input(schedule_choices, inputs=[sampler, schedule], outputs=schedule, **quiet)
    swap.click(lambda w, h: (h, w), inputs=[width, height], outputs=[width, height], **quiet)
    preset.input(
        lambda label: families.parse_size_label(label) if label else (gr.update(), gr.update()),
        inputs=preset,
        outputs=[width, height],
        **quiet,
    )

    def preset_value(sizes: tuple[tuple[int, int], ...], w: Any, h: Any) -> str | None:
        """The preset's label when the size is one of them (else blank: a size of one's own)."""
        try:
            size = (int(w), int(h))
        except (TypeError, ValueError):
            return None
        return families.size_label(size) if size in sizes else None

    def presets_for(checkpoint: str | None, w: Any, h: Any) -> Any:
        sizes = families.size_presets(choices.checkpoint_entry(ctx.library, checkpoint))
        return gr.update(choices=[families.size_label(s) for s in sizes], value=preset_value(sizes, w, h))

    bar.on_models_changed(
        adapter.by_name(
            ["checkpoint", "width", "height"],
            lambda values, _r: presets_for(values["checkpoint"], values["width"], values["height"]),
        ),
        inputs=[bar.checkpoint, width, height],
        outputs=[preset],
    )
    for side in (width, height):
        side.change(
            presets_for,
            inputs=[bar.checkpoint, width, height],
            outputs=preset,
            trigger_mode="always_last",
            **quiet,
        )

    def on_checkpoint_picked(
        checkpoint: str | None, w: int, h: int, distilled_on: bool, sampler: str | None, schedule: str | None
    ) -> list[Any]:
        """A checkpoint picked by hand: the family's native size unless the size already fits it, the distilled
        preset switched on or off to match the model, and the family's default sampler when the page still shows
        a family default (the user's own pick stays)."""
        entry = choices.checkpoint_entry(ctx.library, checkpoint)
        sizes = families.size_presets(entry)
        # Only what changes is sent: a late answer must not undo a size typed meanwhile.
        updates: list[Any] = [gr.skip(), gr.skip(), gr.skip()] if (w, h) in sizes else [*sizes[0], gr.skip()]
        preset_fields = families.distilled_preset(entry)
        if preset_fields is not None:
            values = preset_fields.request_fields()
            updates[2] = True
            return updates + sampling_values(
                values["sampler"], values["schedule"], values["steps"], values["cfg_scale"]
            )
        prefs = ctx.prefs
        wanted = sampling_for(ctx, checkpoint)
        if distilled_on:
            updates[2] = False
            return updates + sampling_values(*wanted, prefs.steps, prefs.cfg_scale)
        if prefs.sampler == FAMILY_SAMPLER and (sampler, schedule) != wanted and is_family_default(
            sampler, schedule
        ):
            return updates + [*sampling_values(*wanted, 0, 0)[:2], gr.skip(), gr.skip()]
        return updates + [gr.skip()] * 4

    guidance = fields["distilled_guidance"]

    def family_hints(values: dict[str, Any], _request: Any) -> list[Any]:
        """The guidance slider shown for guidance-distilled models, the negative prompt's note."""
        entry = choices.model_entry(ctx.library, values.get("checkpoint"), values.get("unet"))
        note = families.negative_prompt_note(entry)
        return [gr.update(visible=families.takes_distilled_guidance(entry)), gr.update(info=note or None)]

    hint_inputs = [bar.checkpoint, bar.overrides["unet"]]
    hints = adapter.by_name(["checkpoint", "unet"], family_hints)
    bar.on_models_changed(hints, inputs=hint_inputs, outputs=[guidance, negative])
    bar.overrides["unet"].change(hints, inputs=hint_inputs, outputs=[guidance, negative], **quiet)

    def family_start(values: dict[str, Any], _request: Any) -> list[Any]:
        """A model picked by hand whose family sets steps / CFG / guidance (FLUX.1): start from those."""
        settings = families.family_settings(
            choices.model_entry(ctx.library, values.get("checkpoint"), values.get("unet"))
        )
        return [settings.get(name, gr.skip()) for name in ("steps", "cfg_scale", "distilled_guidance")]

    start_outputs = [fields["steps"], fields["cfg_scale"], guidance]
    for picker in hint_inputs:
        picker.input(
            adapter.by_name(["checkpoint", "unet"], family_start), inputs=hint_inputs, outputs=start_outputs, **quiet
        )

    def unet_picked(values: dict[str, Any], _request: Any) -> list[Any]:
        """A UNet / transformer picked by hand in Components (a FLUX.1 model of split files): its family's
        sampler and schedule when the page still shows a family default, as for a checkpoint pick."""
        entry = choices.model_entry(ctx.library, values.get("checkpoint"), values.get("unet"))
        wanted = ctx.prefs.sampling_for(entry.family if entry is not None else None)
        shown = (values.get("sampler"), values.get("schedule"))
        if ctx.prefs.sampler == FAMILY_SAMPLER and shown != wanted and is_family_default(*shown):
            return sampling_values(*wanted, 0, 0)[:2]
        return [gr.skip(), gr.skip()]

    bar.overrides["unet"].input(
        adapter.by_name(["checkpoint", "unet", "sampler", "schedule"], unet_picked),
        inputs=[bar.checkpoint, bar.overrides["unet"], sampler, schedule],
        outputs=[sampler, schedule],
        **quiet,
    )

    preset_outputs = [fields[name] for name in DISTILLED_FIELDS]
    bar.checkpoint.input(
        on_checkpoint_picked,
        inputs=[bar.checkpoint, width, height, distilled, sampler, schedule],
        outputs=[width, height, distilled, *preset_outputs],
        **quiet,
    )

    def on_distilled(on: bool, checkpoint: str | None) -> list[Any]:
        if on:
            chosen = families.distilled_preset(choices.checkpoint_entry(ctx.library, checkpoint)) or DISTILLED_PRESET
            values = chosen.request_fields()
            return sampling_values(values["sampler"], values["schedule"], values["steps"], values["cfg_scale"])
        prefs = ctx.prefs
        return sampling_values(*sampling_for(ctx, checkpoint), prefs.steps, prefs.cfg_scale)

    distilled.input(on_distilled, inputs=[distilled, bar.checkpoint], outputs=preset_outputs, **quiet)
    bar.app.load(schedule_choices, inputs=[sampler, schedule], outputs=schedule, **quiet)


def updates_from_infotext(ctx: UiContext, txt2img: Txt2ImgTab, tabs: gr.Tabs, text: str, what: str) -> dict[Any, Any]:
    """Every txt2img field an infotext names, the model and components when the library has them, the LoRA
    rows, and a switch to the txt2img tab: what PNG Info's and Compare's "Send to txt2img" do."""
    from webui.engine.reproduce import request_from_infotext

    with adapter.shown_in_ui(f"Reading the {what}"):
        reproduction = request_from_infotext(text, ctx.library)
        values = adapter.values_from_reproduction(reproduction, text, ctx.library)
    notes = reproduction.notes + adapter.fit_to_widgets(values)
    for item in reproduction.missing:
        gr.Warning(f"Not in the library: {item}. Left as it was.")
    for note in notes:
        gr.Info(note)
    if not values.get("checkpoint"):
        values.pop("checkpoint", None)
    fields, stack = txt2img.fields, txt2img.stack
    family = choices.family_of(ctx.library, values.get("checkpoint"))
    updates: dict[Any, Any] = {fields[name]: value for name, value in values.items() if name in fields}
    updates[fields["schedule"]] = schedule_update(values["sampler"], values["schedule"])
    shown = [False] * adapter.MAX_LORAS
    for number, row in enumerate(stack.rows, start=1):
        lora = values.get(adapter.lora_names(number)["name"])
        shown[number - 1] = bool(lora)
        updates[row.lora] = gr.update(choices=choices.loras(ctx.library, family), value=lora)
        updates[row.group] = gr.update(visible=bool(lora))
    updates[stack.shown] = shown
    updates[tabs] = gr.Tabs(selected="txt2img")
    return updates
