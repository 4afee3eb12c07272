"""The UI figure's server: the real app (`webui.app.serve`) when its /generate endpoint takes our request by
name, else a minimal `gr.Blocks` with one event calling `Engine.generate`; both driven through gradio_client.

Servers listen on 127.0.0.1 only, and keep their settings file and outputs in the run's scratch folder.
"""

from __future__ import annotations

import os
import socket
from contextlib import ExitStack
from typing import Any

from webui.bench.session import CFG_SCALE, NEGATIVE, PROMPT, SAMPLER, SEED, Session, release
from webui.engine.txt2img import Engine

ENDPOINT = "/generate"
REQUEST_PARAMETERS = ("prompt", "negative_prompt", "steps", "cfg_scale", "width", "height", "seed", "sampler")
HASHING_TIMEOUT_S = 600


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class UiServer:
    """A running Gradio server and a client; `engine` is the Engine its generate event calls."""

    def __init__(self, engine: Engine, client: Any, arguments: dict[str, Any], note: str) -> None:
        self.engine, self.client, self.arguments, self.note = engine, client, arguments, note
        self.endpoint = ENDPOINT

    def roundtrip(self) -> None:
        outputs = self.client.predict(**self.arguments, api_name=ENDPOINT)
        outputs = outputs if isinstance(outputs, tuple | list) else (outputs,)
        if not any(isinstance(o, str) and o.startswith(PROMPT) for o in outputs):
            raise RuntimeError(f"UI round trip returned no infotext: {str(outputs)[:300]}")


def _client(url: str, session: Session) -> Any:
    from gradio_client import Client

    downloads = session.scratch / "ui-downloads"  # the client downloads the images, as a browser would
    downloads.mkdir(parents=True, exist_ok=True)
    return Client(url, verbose=False, download_files=str(downloads), analytics_enabled=False)


def _real_app(session: Session, stack: ExitStack) -> UiServer:
    """The real UI, over its own engine (as a user gets it); raises LookupError when /generate does not fit."""
    from webui.app import open_context, serve
    from webui.config import Settings

    settings = Settings(
        models_dir=session.bench_set.models_dir,
        outputs_dir=session.scratch / "app-outputs",
        port=_free_port(),
        device=str(session.manager.device),
        settings_file=session.scratch / "app-settings.json",
    )
    context = open_context(settings)
    stack.callback(release, context.engine.manager)  # its models' memory goes back with the server
    app, url = serve(settings, block=False, context=context)
    stack.callback(context.library.stop_background_hashing)  # callbacks run last-first: after the server
    stack.callback(context.queue.stop, timeout=30)
    stack.callback(app.close, verbose=False)
    context.library.start_background_hashing().wait(HASHING_TIMEOUT_S)  # no hashing thread while timing
    client = _client(url, session)
    stack.callback(client.close)
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"].get(ENDPOINT)
    names = {p["parameter_name"]: p for p in (api or {}).get("parameters", [])}
    missing = [name for name in (*REQUEST_PARAMETERS, "checkpoint") if name not in names]
    if missing:
        raise LookupError(f"the real app's {ENDPOINT} has no parameter(s) {', '.join(missing)}")
    checkpoint = session.bench_set.checkpoint.name
    if checkpoint not in names["checkpoint"].get("type", {}).get("enum", [checkpoint]):
        raise LookupError(f"the real app's checkpoint list does not offer {checkpoint}")
    arguments = {**_request_arguments(session), "checkpoint": checkpoint}
    note = (
        f"through the real app (webui.app.serve, {ENDPOINT} with parameters by name) and gradio_client on "
        "127.0.0.1, images downloaded by the client; divided by that app's own Engine.generate in-process"
    )
    return UiServer(context.engine, client, arguments, note)


def _request_arguments(session: Session) -> dict[str, Any]:
    s = session.bench_set
    return {
        "prompt": PROMPT,
        "negative_prompt": NEGATIVE,
        "steps": session.steps,
        "cfg_scale": CFG_SCALE,
        "width": s.width,
        "height": s.height,
        "seed": SEED,
        "sampler": SAMPLER,
    }


def _minimal_app(session: Session, stack: ExitStack, why: str) -> UiServer:
    """One queued event calling the session's Engine.generate, returning the saved PNG and its infotext."""
    import gradio as gr

    def generate(prompt: str, seed: float) -> tuple[str, str]:
        result = session.engine.generate(session.request(prompt=prompt, seed=int(seed)))
        return str(result.images[0].path), result.images[0].infotext

    with gr.Blocks(title="webui bench") as app:
        prompt, seed = gr.Textbox(label="prompt"), gr.Number(label="seed", precision=0)
        image, infotext = gr.Image(type="filepath", format="png"), gr.Textbox(label="infotext")
        button = gr.Button("Generate")
        button.click(generate, [prompt, seed], [image, infotext], api_name="generate", concurrency_id="gpu")
    app.queue()
    port = _free_port()
    outputs = str(session.engine.outputs_dir.resolve())
    app.launch(
        server_name="127.0.0.1",
        server_port=port,
        prevent_thread_lock=True,
        quiet=True,
        ssr_mode=False,
        allowed_paths=[outputs],
    )
    stack.callback(app.close, verbose=False)
    client = _client(f"http://127.0.0.1:{port}/", session)
    stack.callback(client.close)
    note = (
        f"the real app could not be measured ({why}); measured through a minimal in-process gr.Blocks with one "
        "queued event calling Engine.generate, driven by gradio_client on 127.0.0.1 (PNG downloaded by the client)"
    )
    return UiServer(session.engine, client, {"prompt": PROMPT, "seed": SEED}, note)


def start_ui(session: Session, stack: ExitStack) -> UiServer:
    """The real app if it can take the request, else the minimal app; servers stop when `stack` closes."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing may leave the machine
    attempt = ExitStack()
    try:
        with attempt:
            server = _real_app(session, attempt)
            stack.push(attempt.pop_all())
            return server
    except (LookupError, TypeError, ValueError, OSError, KeyError) as error:
        why = f"{type(error).__name__}: {error}"
    return _minimal_app(session, stack, why)
