"""A1111's `/progress` answer for one job of the shared queue (or for nothing running)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from webui.api.translate import image_to_base64
from webui.engine.jobs import Job, JobState

IDLE_STATE: dict[str, Any] = {
    "skipped": False,
    "interrupted": False,
    "stopping_generation": False,
    "job": "",
    "job_count": 0,
    "job_timestamp": "0",
    "job_no": 0,
    "sampling_step": 0,
    "sampling_steps": 0,
}


def _counts(progress: Any) -> tuple[int, int]:
    """(index of the current batch, number of batches); a compare job counts cells (1-based in its reports)."""
    if hasattr(progress, "batches"):
        return progress.batch, progress.batches
    if hasattr(progress, "cells"):
        return max(0, progress.cell - 1), progress.cells
    return 0, 1


def progress_body(job: Job | None, skip_current_image: bool = False) -> dict[str, Any]:
    """`progress` 0..1, `eta_relative` seconds, `state` as A1111's shared.state.dict() (+ queue_position),
    `current_image` the last live preview (base64 PNG) or None, `textinfo` a line for humans."""
    if job is None:
        return {"progress": 0.0, "eta_relative": 0.0, "state": dict(IDLE_STATE), "current_image": None}
    report = job.progress
    position = job.position
    job_no, job_count = _counts(report) if report is not None else (0, 1)
    started = job.started_at or job.submitted_at
    state = {
        **IDLE_STATE,
        "job": job.kind,
        "job_count": job_count,
        "job_no": job_no,
        "job_timestamp": dt.datetime.fromtimestamp(started).strftime("%Y%m%d%H%M%S"),
        "sampling_step": getattr(report, "step", 0),
        "sampling_steps": getattr(report, "steps", 0),
        "interrupted": job.cancel_token.cancelled,
        "queue_position": position,
    }
    if job.state is JobState.QUEUED:
        textinfo = f"Waiting in the queue: number {position} in line"
    else:
        textinfo = None
    preview = None if skip_current_image or job.preview is None else image_to_base64(job.preview)
    return {
        "progress": min(1.0, float(getattr(report, "fraction", 0.0))),
        "eta_relative": float(getattr(report, "eta_seconds", None) or 0.0),
        "state": state,
        "current_image": preview,
        "textinfo": textinfo,
    }
