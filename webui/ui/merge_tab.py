"""Merge tab: A1111's checkpoint merger (no interpolation, weighted sum, add difference) plus per-block weights,
parts, VAE and LoRA bake-in, precision and pruning; the merge streams with a per-tensor progress bar and runs in the
shared queue (as A1111's merger does), so Interrupt stops it and nothing is left; the result is listed at once."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import gradio as gr

from webui.families.base import Part
from webui.merge.blocks import PRESETS, blocks_of
from webui.merge.merger import (
    MergeInterrupted,
    MergePlan,
    MergeProgress,
    MergeResult,
    output_kind,
    plan_merge,
    run_merge,
)
from webui.merge.naming import default_name, output_path, resolve_model
from webui.merge.recipe import MergeMode, MergeRecipe, Precision
from webui.models.kinds import Kind
from webui.ui import adapter, choices, runner
from webui.ui.context import GPU, UiContext, owner_of, session_of
from webui.ui.model_bar import ModelBar

NONE = "None"
PART_LABELS = [
    ("UNet / transformer", Part.DENOISER.value),
    ("Text encoder(s)", Part.TEXT_ENCODER.value),
    ("VAE", Part.VAE.value),
]
INTRO = (
    "Make a model from others, as A1111's Checkpoint Merger does: **weighted sum** A·(1−M) + B·M, **add difference** "
    "A + (B − C)·M, or **no interpolation** (A alone: convert to one `.safetensors`, cast, prune, bake in a VAE or "
    "LoRAs). A model may be a checkpoint, a diffusers folder or component files joined by ` + ` (type them). The "
    "merge streams tensor by tensor (memory stays near one tensor), writes the recipe into the file's metadata, "
    "never overwrites, and the result appears in the checkpoint list right away."
)
QUIET = {"api_visibility": "private", "queue": False}


def mergeable(ctx: UiContext) -> list[str]:
    """Checkpoints and lone UNet/DiT files the library can use."""
    library = ctx.library
    return [choices.title(e) for kind in (Kind.CHECKPOINT, Kind.UNET) for e in library.entries(kind) if e.usable]


def vae_choices(ctx: UiContext) -> list[str]:
    return [NONE, *(choices.title(e) for e in ctx.library.entries(Kind.VAE) if e.usable)]


def blocks_note(ctx: UiContext, model: str | None) -> str:
    """The blocks per-block weights name for model A (from its family's description and its keys)."""
    if not model:
        return ""
    try:
        plan = plan_merge(MergeRecipe(MergeMode.NO_INTERPOLATION, resolve_model(ctx.library, model)))
    except (ValueError, LookupError, OSError) as error:
        return f"Model A: {error}"
    plan.close()
    blocks = blocks_of(plan.family, [step.key for step in plan.steps])
    if not blocks:
        return f"{plan.family.label}: no per-block weights for this model"
    return f"{plan.family.label} blocks ({len(blocks)}): {', '.join(blocks)}; BASE is everything else"


def recipe_from(ctx: UiContext, values: dict[str, Any]) -> MergeRecipe:
    """The recipe the widgets describe; ValueError / LookupError naming the field."""
    from webui.commands.generate import parse_lora_flag

    mode = MergeMode(values["mode"])
    models = [values.get(f"model_{letter}") for letter in "abc"][: mode.inputs]
    for letter, model in zip("abc", models, strict=False):
        if not model:
            raise ValueError(f"model_{letter}: {mode.value} needs model {letter.upper()}")
    inputs = [resolve_model(ctx.library, model) for model in models]
    vae = values.get("vae")
    loras = [item.strip() for item in (values.get("loras") or "").split(",") if item.strip()]
    return MergeRecipe(
        mode,
        *inputs,
        alpha=float(values["alpha"]),
        block_weights=values.get("block_weights") or None,
        parts=frozenset(Part(p) for p in values.get("parts") or ()),
        vae=None if not vae or vae == NONE else ctx.library.find(vae, Kind.VAE).path,
        loras=tuple(parse_lora_flag(item, ctx.library) for item in loras),
        precision=Precision(values["precision"]),
        prune=bool(values.get("prune")),
        discard=values.get("discard") or "",
        name=(values.get("name") or "").strip(),
    )


def progress_html(progress: MergeProgress | None) -> str:
    if progress is None:
        return runner.queued_html(None)
    eta = f" · ETA {progress.eta_seconds:.0f} s" if progress.eta_seconds is not None else ""
    text = f"tensor {progress.done}/{progress.total} · {progress.bytes_done / 2**20:,.0f} MiB{eta}"
    return (
        f'<div class="gen-progress running"><div class="gen-bar"><div class="gen-fill" '
        f'style="width:{progress.fraction * 100:.1f}%"></div></div>'
        f'<span class="gen-text">{html.escape(text)}</span></div>'
    )


def result_markdown(result: MergeResult) -> str:
    lines = [
        f"Wrote `{result.path}`: {result.family.label} {result.kind.value}, {result.tensors} tensors "
        f"({result.merged} merged), {result.bytes_written / 2**20:,.1f} MiB in {result.seconds:.1f} s."
    ]
    if result.kept_from_a:
        lines.append(f"Kept from A: {len(result.kept_from_a)} tensors the other model(s) lack.")
    if result.dropped:
        lines.append(f"Dropped: {len(result.dropped)} tensors (pruned or discarded).")
    for report in result.lora_reports:
        lines.append(f"LoRA {report.name}: {report.applied} modules baked in, {report.unapplied} not.")
    return "\n\n".join(lines)


def build_tab(ctx: UiContext, bar: ModelBar) -> gr.Tab:
    with gr.Tab("Merge", id="merge", elem_id="tab-merge") as tab:
        gr.Markdown(INTRO)
        w: dict[str, Any] = {}
        with gr.Row():
            for letter, label in (
                ("a", "Model A (primary)"),
                ("b", "Model B (secondary)"),
                ("c", "Model C (tertiary)"),
            ):
                w[f"model_{letter}"] = gr.Dropdown(
                    mergeable(ctx), value=None, label=label, allow_custom_value=True, elem_id=f"merge-model-{letter}"
                )
        blocks_info = gr.Markdown("", elem_id="merge-blocks-info")
        with gr.Row():
            w["mode"] = gr.Radio(
                [m.value for m in MergeMode],
                value=MergeMode.WEIGHTED_SUM.value,
                label="Interpolation method",
                elem_id="merge-mode",
            )
            w["alpha"] = gr.Slider(0, 1, value=0.3, step=0.05, label="Multiplier (M): 0 gives A", elem_id="merge-alpha")
        with gr.Row():
            preset = gr.Dropdown(["", *PRESETS], value="", label="Block weight preset", elem_id="merge-preset", scale=1)
            w["block_weights"] = gr.Textbox(
                label="Per-block weights (optional): a preset, a number per block (BASE first optional) or NAME=weight",
                placeholder="GRAD_V  ·  IN00=0, OUT*=1, BASE=0.3  ·  0,0.1,0.2,…",
                elem_id="merge-blocks",
                scale=3,
            )
        w["parts"] = gr.CheckboxGroup(
            PART_LABELS,
            value=[p for _, p in PART_LABELS],
            label="Merge these parts (the rest is A's)",
            elem_id="merge-parts",
        )
        with gr.Row():
            w["vae"] = gr.Dropdown(vae_choices(ctx), value=NONE, label="Bake in VAE", elem_id="merge-vae")
            w["loras"] = gr.Textbox(label="Bake in LoRAs: NAME:UNET_W[:TE_W], comma-separated", elem_id="merge-loras")
        with gr.Row():
            w["precision"] = gr.Radio(
                [p.value for p in Precision], value=Precision.FP16.value, label="Save as", elem_id="merge-precision"
            )
            w["prune"] = gr.Checkbox(False, label="Prune (drop EMA weights and leftovers)", elem_id="merge-prune")
            w["discard"] = gr.Textbox(label="Discard weights with matching name (regex)", elem_id="merge-discard")
        w["name"] = gr.Textbox(label="Name (default: A1111's, e.g. 0.7(A) + 0.3(B))", elem_id="merge-name")
        with gr.Row():
            run = gr.Button("Merge", variant="primary", elem_id="merge-run", scale=0, min_width=160)
            interrupt = gr.Button("Interrupt", variant="stop", elem_id="merge-interrupt", scale=0, min_width=120)
        progress = gr.HTML(runner.idle_html(), elem_id="merge-progress")
        result_box = gr.Markdown("", elem_id="merge-result")

    preset.input(lambda name: name, inputs=preset, outputs=w["block_weights"], **QUIET)
    w["model_a"].change(lambda model: blocks_note(ctx, model), inputs=w["model_a"], outputs=blocks_info, **QUIET)
    bar.refreshed.then(
        lambda: [gr.update(choices=mergeable(ctx))] * 3 + [gr.update(choices=vae_choices(ctx))],
        outputs=[w["model_a"], w["model_b"], w["model_c"], w["vae"]],
        **QUIET,
    )

    def merge(values: dict[str, Any], request: gr.Request | None) -> Any:
        with adapter.shown_in_ui("Merge"):
            recipe = recipe_from(ctx, values)
            plan = plan_merge(recipe)  # every refusal happens now, before queueing
            target = output_path(ctx.library.models_dir, recipe.name or default_name(recipe), output_kind(plan))
            if target.exists():
                plan.close()
                raise FileExistsError(f"{target} already exists; nothing was overwritten: choose another name")
            job = ctx.queue.submit_call(
                lambda _engine, report, cancel: _run(plan, target, report, cancel),
                owner_of(request),
                "merge",
                session=session_of(request),  # the job ends with its page
            )
        with adapter.shown_in_ui("Merge"):
            yield from runner.job_updates(job, progress, result_box, progress_html, lambda done: _finished(done.result))

    def _run(plan: MergePlan, target: Path, report: Any, cancel: Any) -> MergeResult | None:
        try:
            return run_merge(plan, target, ctx.library.hash_cache, report, cancel)
        except MergeInterrupted:
            return None

    def _finished(result: MergeResult | None) -> dict[Any, Any]:
        if result is None:
            return {
                progress: runner.idle_html("interrupted: nothing was written"),
                result_box: gr.update(value="", visible=True),
            }
        ctx.library.refresh()
        updates: dict[Any, Any] = {
            progress: runner.idle_html(f"done in {result.seconds:.1f} s"),
            result_box: result_markdown(result),
            bar.checkpoint: gr.update(choices=choices.checkpoints(ctx.library)),
        }
        for letter in "abc":
            updates[w[f"model_{letter}"]] = gr.update(choices=mergeable(ctx))
        return updates

    run.click(
        adapter.by_name(list(w), merge),
        inputs=list(w.values()),
        outputs=[progress, result_box, bar.checkpoint, w["model_a"], w["model_b"], w["model_c"]],
        api_name="merge_models",
        concurrency_id=GPU,
        concurrency_limit=1,
        show_progress="minimal",
        show_progress_on=[progress],
    )

    def stop(request: gr.Request) -> str:
        """Interrupt this user's merge (running or waiting): the partial file is removed."""
        if ctx.queue.interrupt(owner_of(request)):
            return runner.idle_html("interrupting…")
        return runner.idle_html("nothing running")

    interrupt.click(
        stop,
        outputs=progress,
        api_visibility="private",
        concurrency_limit=None,
        concurrency_id="interrupt",
    )
    return tab
