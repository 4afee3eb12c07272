"""Wires the parts: settings → model library and engine → one gr.Blocks of tabs (one module per tab) → server."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from webui.config import Settings

if TYPE_CHECKING:
    import gradio as gr

    from webui.ui.context import UiContext

log = logging.getLogger(__name__)


def open_context(settings: Settings) -> UiContext:
    """The library (scanned: headers only), the preferences file, the engine they configure and its job queue
    (not started: `serve` starts it)."""
    from webui.engine.jobs import JobQueue
    from webui.models.library import open_library
    from webui.ui.context import UiContext, budgets_of, policy_of
    from webui.ui.preferences import Preferences, PreferencesStore
    from webui.wiring import build_engine

    library = open_library(settings.models_dir, settings.extra_model_paths)
    library.scan()
    store = PreferencesStore(settings.settings_path)
    prefs = store.current.with_cli(settings)
    try:
        engine = build_engine(library, settings.outputs_dir, policy_of(prefs), budgets_of(prefs))
    except ValueError as error:
        if any(getattr(settings, k) is not None for k in ("device", "precision", "attention_slicing")):
            raise  # the command line asked for it: say so rather than run on something else
        store.notes.append(f"the saved device settings cannot be used here ({error}); running with auto")
        log.warning("%s: %s", store.path, store.notes[-1])
        prefs = Preferences(ram_budget_gb=prefs.ram_budget_gb, vram_budget_gb=prefs.vram_budget_gb).with_cli(settings)
        engine = build_engine(library, settings.outputs_dir, policy_of(prefs), budgets_of(prefs))
    from webui.engine.styles import StyleLibrary

    engine.samples_format = prefs.samples_format
    styles = StyleLibrary(library.models_dir, library.extra_roots_file)
    if settings.ray is None:
        queue = JobQueue(engine)
    else:  # the engine as Ray Serve replicas; nothing imports Ray without --ray
        from webui.cluster.wiring import cluster_queue

        queue = cluster_queue(settings, engine, policy_of(prefs), budgets_of(prefs))
    return UiContext(engine=engine, queue=queue, library=library, settings=settings, preferences=store, styles=styles)


def build_app(settings: Settings, context: UiContext | None = None) -> gr.Blocks:
    """The whole UI. Nothing is served until `serve`; the bench may call this to time a page build."""
    import gradio as gr

    from webui.ui import (
        compare_tab,
        components_tab,
        img2img_tab,
        merge_tab,
        model_bar,
        models_tab,
        pnginfo_tab,
        queue_status,
        settings_tab,
        txt2img_tab,
    )

    ctx = context or open_context(settings)
    with gr.Blocks(title="webui — local Stable Diffusion studio", fill_width=True) as app:
        bar = model_bar.build(ctx, app)
        queue_status.build(ctx, app)
        with gr.Tabs(elem_id="tabs", overflow_behavior="wrap") as tabs:  # every tab in sight on a phone
            txt2img = txt2img_tab.build_tab(ctx, bar)
            img2img = img2img_tab.build_tab(ctx, bar, txt2img, tabs)  # adds "Send to img2img" under txt2img's
            compare_tab.build_tab(ctx, bar, txt2img, tabs, img2img)  # adds "Send to Compare" under txt2img's gallery
            components_tab.build_tab(ctx, bar)
            models_tab.build_tab(ctx, bar)
            merge_tab.build_tab(ctx, bar)
            pnginfo_tab.build_tab(ctx, txt2img, tabs, img2img)
            settings_tab.build_tab(ctx, app)
        if settings.host not in ("127.0.0.1", "localhost", "::1"):
            from webui.security import server_urls

            urls = server_urls(settings.host, settings.port, settings.tls_keyfile is not None)
            gr.Markdown("Shared on your network: " + " · ".join(urls), elem_id="lan-address")
    return app


def served_paths(settings: Settings, context: UiContext) -> tuple[list[str], list[str]]:
    """(allowed, blocked) for Gradio: only outputs/ is served; the model folders and the settings file never
    are (blocked wins over anything Gradio would allow). Gradio itself serves nothing else from the working
    directory: /file= answers only for allowed paths, its upload dir and its cache."""
    allowed = [str(settings.outputs_dir.resolve())]
    blocked = [str(settings.models_dir.resolve()), str(settings.settings_path.resolve())]
    blocked += [str(root.path.resolve()) for root in context.library.roots()]
    return allowed, list(dict.fromkeys(blocked))


def launch_options(settings: Settings, context: UiContext) -> dict[str, Any]:
    """What Gradio 6 takes at launch() rather than in Blocks(): theme, css, served paths."""
    import gradio as gr

    from webui.ui.style import CSS

    allowed, blocked = served_paths(settings, context)
    theme = gr.themes.Default(primary_hue="orange", neutral_hue="slate", spacing_size="sm", radius_size="sm")
    return {
        "server_name": settings.host,
        "server_port": settings.port,
        "allowed_paths": allowed,
        "blocked_paths": blocked,
        "theme": theme,
        "css": CSS,
        "show_error": True,
        "ssr_mode": False,
        "share": False,
        "footer_links": ["api"],  # the Settings tab is ours; Gradio's own "Settings" link would be a second one
    }


def serve(settings: Settings, *, block: bool = True, context: UiContext | None = None) -> tuple[Any, str]:
    """Build and start the server (with background hashing of the library); returns (server, local URL).
    With block=False it returns at once, the server running on its own thread (stop it with `.close()`)."""
    from webui.cli import quiet_libraries
    from webui.server import start

    quiet_libraries()
    settings.outputs_dir.mkdir(parents=True, exist_ok=True)
    ctx = context or open_context(settings)
    ctx.library.start_background_hashing()
    ctx.queue.start()
    running = start(settings, ctx, block=block)
    scheme = "https" if settings.tls_keyfile else "http"
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    return running, f"{scheme}://{host}:{settings.port}/"


def launch(settings: Settings) -> int:
    context = open_context(settings)
    try:
        serve(settings, block=True, context=context)
    finally:  # with --ray this also removes the replicas from the cluster (they would outlive us on a remote one)
        context.queue.stop(timeout=30)
    return 0
