"""The queue line above every tab: what the studio is busy with and where this user's jobs stand; a page's jobs end
with the page.

Jobs belong to a user (their login, or without logins the machine their browser runs on: webui.ui.context.owner_of),
so the same person in any tab sees their running and waiting jobs here and can interrupt them; another user's job is
only "another user's job", never named. Gradio reports a page that closed or reloaded (its `unload` event, after the
page's heartbeat stops); the jobs that page submitted are then cancelled, so a long job nobody waits for does not hold
the one queue.
"""

from __future__ import annotations

import html
from typing import Any

import gradio as gr

from webui.engine.jobs import Job, JobQueue, JobState
from webui.ui.context import UiContext, owner_of, session_of

REFRESH_SECONDS = 1.0
KIND_LABELS = {"txt2img": "txt2img", "compare": "Compare grid", "load": "model load", "load-model": "model load"}


def _label(job: Job) -> str:
    return KIND_LABELS.get(job.kind, job.kind)


def _progress(job: Job) -> str:
    report = job.progress
    step, steps = getattr(report, "step", None), getattr(report, "steps", None)
    if isinstance(step, int) and isinstance(steps, int) and steps:
        batches = getattr(report, "batches", 1) or 1
        extra = f", batch {getattr(report, 'batch', 0) + 1}/{batches}" if batches > 1 else ""
        return f" (step {step}/{steps}{extra})"
    fraction = getattr(report, "fraction", None)
    return f" ({fraction:.0%})" if isinstance(fraction, float) else ""


def queue_text(queue: JobQueue, owner: str) -> tuple[str, bool]:
    """(what the queue line says to `owner`, whether they have jobs to interrupt). Place numbers count the running
    jobs (one per engine replica) first: "busy with another user's job; your txt2img is #2 in line"."""
    everyone = queue.jobs()
    running = [job for job in everyone if job.state is JobState.RUNNING]
    mine = [job for job in everyone if job.owner == owner]
    if not everyone:
        return "Studio idle", False
    parts = [f"running your {_label(job)}{_progress(job)}" for job in running if job.owner == owner]
    others = sum(job.owner != owner for job in running)
    if others:
        parts.append("busy with another user's job" if others == 1 else f"busy with {others} jobs of other users")
    if not running:  # between two jobs: the next is about to start
        parts.append("starting the next job")
    for job in mine:
        position = job.position
        if job.state is JobState.QUEUED and position:
            parts.append(f"your {_label(job)} is #{position + len(running)} in line")
    return "Studio: " + "; ".join(parts), bool(mine)


def queue_html(queue: JobQueue, owner: str) -> str:
    text, busy = queue_text(queue, owner)
    state = "mine" if busy else ("busy" if queue.jobs() else "idle")
    return f'<div class="queue-status {state}">{html.escape(text)}</div>'


def build(ctx: UiContext, app: gr.Blocks) -> None:
    """The queue line (refreshed every REFRESH_SECONDS while the page is open) with an Interrupt for this user's
    jobs, and the unload hook that cancels a closed page's jobs."""
    with gr.Row(elem_id="queue-bar", equal_height=True):
        line = gr.HTML(queue_html(ctx.queue, "local"), elem_id="queue-status", container=False, scale=1)
        stop = gr.Button(
            "Interrupt my jobs", elem_id="queue-interrupt", size="sm", variant="stop", visible=False, scale=0,
            min_width=150,
        )  # fmt: skip
    timer = gr.Timer(REFRESH_SECONDS)
    quiet = {"api_visibility": "private", "queue": False}

    def queue_line(request: gr.Request) -> tuple[str, Any]:
        owner = owner_of(request)
        _, busy = queue_text(ctx.queue, owner)
        return queue_html(ctx.queue, owner), gr.update(visible=busy)

    timer.tick(queue_line, outputs=[line, stop], show_progress="hidden", **quiet)
    app.load(queue_line, outputs=[line, stop], **quiet)

    def interrupt_my_jobs(request: gr.Request) -> tuple[str, Any]:  # (a distinct name: "/interrupt" is txt2img's)
        ctx.queue.interrupt(owner_of(request))
        return queue_line(request)

    stop.click(
        interrupt_my_jobs,
        outputs=[line, stop],
        api_visibility="private",
        concurrency_limit=None,
        concurrency_id="interrupt",
    )

    def cancel_jobs_of_closed_page(request: gr.Request) -> None:
        session = session_of(request)
        if session is not None:
            ctx.queue.cancel_session(session)

    app.unload(cancel_jobs_of_closed_page)
