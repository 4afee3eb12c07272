"""Follows a job of the shared queue for an event handler: its progress while it runs, then its end; the HTML."""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Iterator
from typing import Any

from webui.engine.jobs import Job, JobCall, JobQueue, JobState, Placement
from webui.engine.progress import Progress
from webui.engine.request import GenerationResult

MIN_UPDATE_SECONDS = 0.2  # browsers need no more; each update is a message over the wire


class JobFailed(RuntimeError):
    """A queued job raised; the message is the queue's account of it (the engine's own message). `role`: the
    component override a refused model load blames (see ModelLoadError), else None."""

    def __init__(self, message: str, role: Any = None) -> None:
        super().__init__(message)
        self.role = role


def stream(job: Job, poll_seconds: float = 0.05) -> Iterator[Job]:
    """The job at each new progress report (at most every MIN_UPDATE_SECONDS; previews always) while it waits
    or runs, then once more when it has finished. Closing the stream early (the browser went away) cancels
    the job. Raises JobFailed if the job failed."""
    last_report, last_time = None, 0.0
    finished = False
    try:
        while not job.wait(poll_seconds):
            report = job.progress
            now = time.monotonic()
            if report is not last_report and (
                getattr(report, "preview", None) is not None or now - last_time >= MIN_UPDATE_SECONDS
            ):
                last_report, last_time = report, now
                yield job
        finished = True
        if job.state is JobState.FAILED:
            raise JobFailed(job.error or "the job failed", job.error_role)
        yield job
    finally:
        if not finished:
            job.cancel(job.owner)


def job_updates(
    job: Job,
    progress: Any,
    preview: Any,
    progress_text: Callable[[Any], str],
    finished: Callable[[Job], dict[Any, Any]],
) -> Iterator[dict[Any, Any]]:
    """Gradio updates for a streamed job: its place in line, then its progress text and live preview, then
    what `finished` shows. `progress` and `preview` are the components to update."""
    import gradio as gr

    yield {progress: queued_html(job.position), preview: gr.update(visible=True, value=None)}
    for current in stream(job):
        if current.state.finished:
            yield finished(current)
        elif current.state is JobState.QUEUED:
            yield {progress: queued_html(current.position)}
        else:
            report = current.progress
            update = {progress: progress_text(report)}
            if getattr(report, "preview", None) is not None:
                update[preview] = gr.update(value=report.preview, visible=True)
            yield update


def call(
    queue: JobQueue,
    fn: JobCall,
    owner: str,
    kind: str,
    session: str | None = None,
    model: Any = None,
    placement: Placement = Placement.ANY,
) -> Any:
    """Run `fn(engine, progress, cancel)` as a job of the shared queue and wait for its result (`session`, `model`
    and `placement`: see `JobQueue.submit_call`)."""
    job = queue.submit_call(fn, owner, kind, model=model, placement=placement, session=session)
    for _ in stream(job):
        pass
    return job.result


def queued_html(position: int | None) -> str:
    text = f"waiting: {position - 1} job(s) ahead" if position and position > 1 else "starting…"
    return f'<div class="gen-progress waiting"><span class="gen-text">{html.escape(text)}</span></div>'


def progress_html(progress: Progress | None, note: str = "") -> str:
    """The progress bar: step of steps, which batch, time left."""
    if progress is None:
        fraction, text = 0.0, note or "starting…"
    else:
        fraction = progress.fraction
        text = f"step {progress.step}/{progress.steps}"
        if progress.batches > 1:
            text += f" · batch {progress.batch + 1}/{progress.batches}"
        if progress.eta_seconds is not None:
            text += f" · ETA {progress.eta_seconds:.0f} s"
    return (
        f'<div class="gen-progress running"><div class="gen-bar"><div class="gen-fill" '
        f'style="width:{fraction * 100:.1f}%"></div></div><span class="gen-text">{html.escape(text)}</span></div>'
    )


def done_html(result: GenerationResult | None) -> str:
    if result is None:
        return '<div class="gen-progress interrupted"><span class="gen-text">interrupted before it started</span></div>'
    timings = result.timings
    count = len(result.images)
    if result.info.get("interrupted"):
        text = f"interrupted: {count} image{'s' if count != 1 else ''} kept"
        state = "interrupted"
    else:
        text = f"{count} image{'s' if count != 1 else ''} in {timings.get('total', 0):.1f} s"
        state = "done"
    if result.info.get("replica"):  # the engine runs as Ray Serve replicas (--ray)
        text += f" on replica {result.info['replica']}"
    parts = [f"{k} {timings[k]:.2f} s" for k in ("load", "lora", "denoise", "decode") if timings.get(k, 0) >= 0.01]
    detail = f' <span class="gen-detail">({", ".join(parts)})</span>' if parts else ""
    return (
        f'<div class="gen-progress {state}"><div class="gen-bar"><div class="gen-fill" style="width:100%"></div>'
        f'</div><span class="gen-text">{html.escape(text)}</span>{detail}</div>'
    )


def idle_html(text: str = "") -> str:
    return f'<div class="gen-progress idle"><span class="gen-text">{html.escape(text)}</span></div>'
