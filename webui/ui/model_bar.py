"""The model bar above every tab: the checkpoint and its component choices, family badge, load state, cache.

The bar owns the whole model selection: the checkpoint dropdown it shows, and the UNet / text-encoder /
VAE dropdowns the Components tab renders (created here with render=False, so every tab can use them
as inputs whatever the tab order).
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import gradio as gr

from webui.cluster.routing import model_id, model_label
from webui.families import Family
from webui.models.kinds import Kind
from webui.models.loading import Role
from webui.ui import adapter, choices, empty_state, families, runner
from webui.ui.context import GPU, UiContext, owner_of, session_of

OVERRIDE_ROLES = (Role.UNET, Role.TEXT_ENCODER, Role.TEXT_ENCODER_2, Role.TEXT_ENCODER_3, Role.VAE)


@dataclass
class ModelBar:
    checkpoint: gr.Dropdown
    overrides: dict[str, gr.Dropdown]  # by ModelChoice field name: unet, text_encoder(_2, _3), vae
    badge: gr.HTML
    status: gr.HTML
    refreshed: Any  # the Refresh button's event; `.then(...)` runs after the library is re-read
    app: gr.Blocks
    loaded: Any = None  # the invisible State a model load writes to (see `load_events`)

    def load_events(self, ctx: UiContext, trigger: Any, api_name: str, fit: bool = False) -> Any:
        """Wire `trigger` (`dropdown.input`, `button.click`) to load the selection now: a "loading" note, the load as
        a job of the shared queue, then the status and the reset of a refused component. The load's own output is
        an invisible State, so a refused load leaves its toast and never an "Error" mark over the status. `fit`:
        first reset the overrides the checkpoint's family cannot take (a checkpoint picked by hand)."""
        names = list(self.selection)
        widgets = list(self.selection.values())
        quiet = {"api_visibility": "private", "queue": False, "show_progress": "hidden"}

        def load(values: dict[str, Any], request: Any) -> None:
            unet = values.get("unet")
            if values.get("checkpoint") == choices.NO_CHECKPOINT and unet in (None, "", choices.FROM_CHECKPOINT):
                return  # components only, none picked yet: nothing to load, the status says what to choose
            load_selection(ctx, fitting_overrides(ctx, values) if fit else values, request)

        def loading(values: dict[str, Any], _request: Any) -> str:
            return status_html(ctx, values, note="loading…")

        loaded = trigger(adapter.by_name(names, loading), inputs=widgets, outputs=self.status, **quiet).then(
            adapter.by_name(names, load),
            inputs=widgets,
            outputs=self.loaded,
            api_name=api_name,
            concurrency_id=GPU,
            concurrency_limit=1,
            show_progress="hidden",
        )
        self.after(ctx, loaded, fit=fit)
        return loaded

    def after(self, ctx: UiContext, event: Any, fit: bool = False) -> None:
        """After `event` (a load, a generation), whether it succeeded or failed (Gradio's `.then` runs on success
        only, `.failure` on failure): the status for the tab's choice, and a refused component reset (with `fit`,
        also those the checkpoint's family cannot take, as the load left them out)."""
        names = list(self.selection)
        options = {
            "inputs": list(self.selection.values()),
            "outputs": [self.status, *self.overrides.values()],
            "api_visibility": "private",
            "queue": False,
            "show_progress": "hidden",
        }
        handler = adapter.by_name(names, lambda values, request: after_load(ctx, values, request, fit))
        event.then(handler, **options)
        event.failure(handler, **options)

    def on_models_changed(self, fn: Any, inputs: list[Any], outputs: list[Any]) -> None:
        """Run `fn` when the checkpoint changes, after Refresh, and on every page load (choices go stale)."""
        options = {
            "inputs": inputs,
            "outputs": outputs,
            "api_visibility": "private",
            "queue": False,
            "show_progress": "hidden",  # quick; a spinner would only flash over the status
        }
        self.checkpoint.change(fn, **options)
        self.refreshed.then(fn, **options)
        self.app.load(fn, **options)

    @property
    def selection(self) -> dict[str, gr.Dropdown]:
        """Every ModelChoice field's widget, by field name."""
        return {"checkpoint": self.checkpoint, **self.overrides}


def initial_checkpoint(ctx: UiContext) -> str | None:
    names = choices.checkpoints(ctx.library)
    wanted = ctx.preferences.current.checkpoint
    return wanted if wanted in names else (names[0] if names else None)


def badge_html(ctx: UiContext, checkpoint: str | None, unet: str | None = None) -> str:
    """The family badge of the model: its UNet / transformer file's when one is picked, else the checkpoint's."""
    entry = choices.model_entry(ctx.library, checkpoint, unet)
    text = families.badge(entry)
    if not text:
        return '<span class="family-badge empty">no model</span>'
    return f'<span class="family-badge">{html.escape(text)}</span>'


def _mb(nbytes: int) -> str:
    return f"{nbytes / 2**20:,.1f} MB" if nbytes < 2**30 else f"{nbytes / 2**30:,.2f} GB"


def _choice_text(choice: Any) -> str:
    """`<b>model</b> · VAE: file`: a ModelChoice as the bar names it."""
    parts = [f"<b>{html.escape(choice.name)}</b>"]
    for role in OVERRIDE_ROLES:
        path = choice.override(role)
        if path is not None and not (role is Role.UNET and choice.checkpoint is None):  # the UNet names the model
            parts.append(f"{choices.ROLE_LABELS[role]}: {html.escape(path.name)}")
    return " · ".join(parts)


def _loaded_text(loaded: Any) -> str:
    """The loaded model as the bar names it: its choice, a part chosen by rule, and its UNet variant."""
    parts = [_choice_text(loaded.choice)]
    for role, path in loaded.defaults.items():  # a no-VAE checkpoint's VAE, chosen by the library's rule
        parts.append(f"{choices.ROLE_LABELS[role]}: {html.escape(path.name)} (default: the checkpoint has none)")
    if loaded.variant is not None:
        parts.append(f"{html.escape(loaded.variant.name)} UNet")
    return " · ".join(parts)


def tab_choice(ctx: UiContext, values: Mapping[str, Any] | None) -> Any:
    """The ModelChoice this tab's dropdowns name; None when no checkpoint is chosen. LookupError for a name the
    library lost since (the caller says so)."""
    if not values or not values.get("checkpoint"):
        return None
    return adapter.model_choice(values, ctx.library)


def status_html(ctx: UiContext, values: Mapping[str, Any] | None = None, note: str = "") -> str:
    """The tab's own model (its dropdowns: `values` by field name) and whether the engine holds it; what the
    engine holds when that is something else (another tab's or job's last model); the component cache."""
    try:
        mine = tab_choice(ctx, values)
    except (LookupError, ValueError) as error:
        mine, head = None, f"this tab's model is not usable: {html.escape(str(error))}"
    else:
        head = "no checkpoint chosen" if values is not None else ""
    records = ctx.queue.replicas()
    if records:  # the engine as Ray Serve replicas (--ray): each has its own models and memory, the front none
        if mine is not None:
            held = any(model_id(mine) in record.models for record in records)
            head = f"{_choice_text(mine)} · {'held by a replica' if held else 'loads on Generate'}"
        return _bar_html(head, replicas_html(records), "", note)
    manager = ctx.engine.manager
    loaded = manager.current
    status = manager.status()
    if mine is not None and loaded is not None and loaded.choice == mine:
        read = ", ".join(r.value for r in loaded.loaded_from_disk) or "nothing: all from cache"
        head = f"{_loaded_text(loaded)} loaded in {loaded.load_seconds:.2f} s (read {read})"
        if status.get("vae_scaling"):  # which latent scaling decodes: a VAE of the wrong family washes images out
            head += " · " + html.escape(status["vae_scaling"])
    elif mine is not None:
        head = f"{_choice_text(mine)} · loads on Generate"
    engine = ""
    if loaded is None:
        engine = "the engine holds no model yet: it loads on first Generate"
    elif mine is None or loaded.choice != mine:
        engine = f"the engine holds {_loaded_text(loaded)} (the last job's)"
    items = "".join(
        f"<li>{html.escape(item['label'])} — {_mb(item['nbytes'])} ({item['dtype']}, {item['device']})</li>"
        for item in status["cached"]
    )
    cache = (
        f"<details><summary>cache: {len(status['cached'])} components, {_mb(status['cached_bytes'])} "
        f"on {html.escape(status['device'])}</summary><ul>{items}</ul></details>"
    )
    return _bar_html(head, engine, cache, note)


def _bar_html(head: str, engine: str, cache: str, note: str) -> str:
    """The bar's parts, each in its own block: the tab's model, what the engine holds, the cache, a note."""
    lines = [f'<div class="model-status-text">{head}</div>' if head else ""]
    lines.append(f'<div class="model-engine">{engine}</div>' if engine else "")
    lines.append(cache)
    lines.append(f'<div class="model-note">{html.escape(note)}</div>' if note else "")
    return "".join(lines)


def replicas_html(records: list[Any]) -> str:
    """The engine replicas (`--ray`): how many are up, and per replica what it holds, runs and has done."""
    now = time.time()
    alive = [r for r in records if r.alive(now)]
    items = []
    for record in records:
        held = ", ".join(model_label(model) for model in record.models) or "no model yet"
        state = f"running {record.running}" if record.running else "idle"
        if not record.alive(now):
            state = "gone (restarting)"
        cached = record.memory.get("cached_bytes")
        memory = f" · cache {_mb(cached)}" if cached else ""
        items.append(
            f"<li>{html.escape(record.replica)} on {html.escape(record.node)}: holds {html.escape(held)} · "
            f"{html.escape(state)} · {record.jobs} jobs, {record.loads} loads{memory}</li>"
        )
    summary = f"Ray Serve: {len(alive)} of {len(records)} replicas up; jobs go to the one holding their model"
    return f"<details><summary>{html.escape(summary)}</summary><ul>{''.join(items)}</ul></details>"


def override_updates(ctx: UiContext, checkpoint: str | None, current: dict[str, Any]) -> dict[str, Any]:
    """Choices for each override dropdown under this checkpoint's family; a value that no longer exists
    falls back to "From checkpoint"; roles the family lacks are hidden."""
    family = choices.family_of(ctx.library, checkpoint)
    roles = family_roles(family)
    updates = {}
    for role in OVERRIDE_ROLES:
        options = choices.component_choices(ctx.library, role, family)
        update = gr.update(choices=options, visible=role in roles)
        if role is Role.UNET:  # named as the family names its denoiser
            denoiser = family.description.denoiser.role if family is not None and family.supported else Role.UNET
            update["label"] = "UNet" if denoiser is Role.UNET else "Transformer (diffusion model)"
        if (current.get(role.value) or choices.FROM_CHECKPOINT) not in choices.values_of(options):
            update["value"] = choices.FROM_CHECKPOINT  # only when it must change: never undo a pick
        updates[role.value] = update
    return updates


def fitting_overrides(ctx: UiContext, values: dict[str, Any]) -> dict[str, Any]:
    """The selection with the overrides the checkpoint's family cannot take reset to "From checkpoint"."""
    family = choices.family_of(ctx.library, values.get("checkpoint"))
    out = dict(values)
    for role in OVERRIDE_ROLES:
        if role not in family_roles(family) or out.get(role.value) not in choices.fitting_components(
            ctx.library, role, family
        ):
            out[role.value] = choices.FROM_CHECKPOINT
    return out


def family_roles(family: Family | None) -> tuple[Role, ...]:
    """The override dropdowns a family's model shows: the roles its description has (all without one); the
    UNet dropdown stands for any denoiser (a DiT transformer too)."""
    if family is None or not family.supported:
        return OVERRIDE_ROLES
    description = family.description
    return tuple(role for role in OVERRIDE_ROLES if description.has(role) or role is Role.UNET)


def checkpoint_choices(ctx: UiContext) -> list[str]:
    """The checkpoints, then "None: components only" for a model made of split files (FLUX.1's) when the
    library has a usable UNet / transformer file."""
    modular = any(entry.usable for entry in ctx.library.entries(Kind.UNET))
    return [*choices.checkpoints(ctx.library), *([choices.NO_CHECKPOINT] if modular else [])]


@contextmanager
def noting_refusal(ctx: UiContext, request: Any) -> Iterator[None]:
    """Remember, for this browser session, the component a refused model load blames (ModelLoadError.role,
    carried by JobFailed), so that `after_load` resets it; the error goes on as it was."""
    try:
        yield
    except (runner.JobFailed, ValueError) as error:
        role = getattr(error, "role", None)
        if role is not None:
            ctx.note_refusal(session_of(request), role.value)
        raise


def load_selection(ctx: UiContext, values: dict[str, Any], request: Any) -> None:
    """Load the selected model now, as a job of the shared queue (a checkpoint pick, the Components tab's
    Load now); a refused choice is a toast with the engine's reason (ModelLoadError)."""
    with adapter.shown_in_ui("Loading the model"), noting_refusal(ctx, request):
        choice = adapter.model_choice(values, ctx.library)

        def load(engine: Any, _progress: Any, _cancel: Any) -> None:
            with engine.gpu_lock:
                engine.manager.load(choice)

        runner.call(ctx.queue, load, owner_of(request), "load", session_of(request), model=choice)


def after_load(ctx: UiContext, values: dict[str, Any], request: Any, fit: bool = False) -> list[Any]:
    """After a load, whatever its outcome: the status for this tab's choice, and the refused override (if the
    load was refused for one) back at "From checkpoint"; with `fit`, also every override the checkpoint's
    family cannot take."""
    refused = {ctx.take_refusal(session_of(request))}
    if fit:
        fitted = fitting_overrides(ctx, values)
        refused |= {role.value for role in OVERRIDE_ROLES if fitted[role.value] != values.get(role.value)}
    reset = [role.value in refused and values.get(role.value) != choices.FROM_CHECKPOINT for role in OVERRIDE_ROLES]
    cleared = {role.value: choices.FROM_CHECKPOINT for role, r in zip(OVERRIDE_ROLES, reset, strict=True) if r}
    values = {**values, **cleared}
    updates = [gr.update(value=choices.FROM_CHECKPOINT) if r else gr.skip() for r in reset]
    return [status_html(ctx, values), *updates]


def empty_updates(ctx: UiContext) -> tuple[Any, Any, Any]:
    """(model bar row, empty-state panel, panel text): the panel in place of the bar while there is no model."""
    empty = empty_state.library_is_empty(ctx.library)
    text = empty_state.empty_state_html(ctx.library) if empty else gr.skip()
    return gr.update(visible=not empty), gr.update(visible=empty), text


def build(ctx: UiContext, app: gr.Blocks) -> ModelBar:
    library = ctx.library
    family = choices.family_of(library, initial_checkpoint(ctx))
    empty = empty_state.library_is_empty(library)
    with gr.Column(visible=empty, elem_id="model-empty") as empty_panel:
        empty_text = gr.HTML(empty_state.empty_state_html(library) if empty else "", elem_id="model-empty-text")
        empty_refresh = gr.Button("Refresh: look for models again", elem_id="model-empty-refresh", variant="primary")
    with gr.Row(elem_id="model-bar", equal_height=True, visible=not empty) as bar_row:
        with gr.Column(scale=4, min_width=300), gr.Row(equal_height=True):  # dropdown and refresh side by side
            checkpoint = gr.Dropdown(
                choices=checkpoint_choices(ctx),
                value=initial_checkpoint(ctx),
                label="Checkpoint",
                allow_custom_value=True,  # the library judges names (new files, API clients)
                elem_id="model-checkpoint",
                scale=1,
                min_width=200,
            )
            refresh = gr.Button("↻", elem_id="model-refresh", scale=0, min_width=44, elem_classes=["tool-button"])
        with gr.Column(scale=5, min_width=300), gr.Row(elem_id="model-state", equal_height=True):
            badge = gr.HTML(badge_html(ctx, initial_checkpoint(ctx)), elem_id="model-badge", container=False, scale=0)
            status = gr.HTML(status_html(ctx), elem_id="model-status", container=False, scale=1)
    overrides = {
        role.value: gr.Dropdown(
            choices=choices.component_choices(library, role, family),
            value=choices.FROM_CHECKPOINT,
            label=choices.ROLE_LABELS[role],
            allow_custom_value=True,
            elem_id=f"component-{role.value.replace('_', '-')}",
            visible=role in family_roles(family),
            min_width=240,
            render=False,
        )
        for role in OVERRIDE_ROLES
    }
    selection = {"checkpoint": checkpoint, **overrides}
    names, widgets = list(selection), list(selection.values())

    def refresh_library(values: dict[str, Any], _request: Any) -> str:
        with adapter.shown_in_ui("Refreshing the model list"):
            library.refresh()
        changes = library.last_changes
        note = f"{len(changes.added)} added, {len(changes.changed)} changed, {len(changes.removed)} removed"
        return status_html(ctx, values, note=f"model list refreshed: {note}")

    def sync(values: dict[str, Any], _request: Any) -> list[Any]:
        """Choices after a checkpoint change, a refresh or a page load; the status for the tab's choice."""
        available = checkpoint_choices(ctx)
        current = values.get("checkpoint")
        real = choices.checkpoints(library)  # a vanished pick falls back to a checkpoint, never to "None"
        value = current if current in available else (real[0] if real else None)
        updates = override_updates(ctx, value, values)
        shown = {**values, "checkpoint": value}
        shown.update({name: update["value"] for name, update in updates.items() if "value" in update})
        return [
            gr.update(choices=available) if value == current else gr.update(choices=available, value=value),
            badge_html(ctx, value, values.get("unet")),
            *(updates[name] for name in overrides),
            status_html(ctx, shown),
            *empty_updates(ctx),
        ]

    quiet = {"api_visibility": "private", "queue": False, "show_progress": "hidden"}
    refreshed = gr.on(
        [refresh.click, empty_refresh.click],
        adapter.by_name(names, refresh_library),
        inputs=widgets,
        outputs=status,
        api_name="refresh_models",
    )
    bar = ModelBar(checkpoint, overrides, badge, status, refreshed, app)
    built_with = initial_checkpoint(ctx)

    def page_load() -> Any:
        """The checkpoint list as it is now; the checkpoint itself only if Settings changed it since start."""
        wanted = initial_checkpoint(ctx)
        update = gr.update(choices=checkpoint_choices(ctx))
        if wanted != built_with:
            update["value"] = wanted
        return update

    app.load(page_load, outputs=checkpoint, **quiet)
    bar.on_models_changed(
        adapter.by_name(names, sync),
        inputs=widgets,
        outputs=[checkpoint, badge, *overrides.values(), status, bar_row, empty_panel, empty_text],
    )
    overrides["unet"].change(
        lambda checkpoint_name, unet: badge_html(ctx, checkpoint_name, unet),
        inputs=[checkpoint, overrides["unet"]],
        outputs=badge,
        api_visibility="private",
        queue=False,
    )
    for override in overrides.values():  # a component picked on the Components tab: "loads on Generate"
        override.change(
            adapter.by_name(names, lambda values, _request: status_html(ctx, values)),
            inputs=widgets,
            outputs=status,
            **quiet,
        )
    bar.loaded = gr.State(None)
    bar.load_events(ctx, checkpoint.input, "load_model", fit=True)
    return bar
