"""The one queue for every GPU job (UI, API, compare): first in, first out, one job at a time per engine.

Jobs are requests (`submit`) or callables on the engine (`submit_call`). One worker thread per engine (one here;
one per replica when the engine runs as Ray Serve replicas, `webui.cluster`) starts only when `start()` is called.
A job says which model it needs and where it runs (`Placement`), so a spread-out engine can route it. A job that
raises is marked failed with a message a user can act on, memory is released, and the next job runs; the worker
itself never stops on a job's error. Only a job's owner may cancel it: a queued job leaves the queue, a running
one stops within one step (finished images are kept).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from enum import Enum
from typing import TYPE_CHECKING, Any

import torch

from webui.engine import memory
from webui.engine.limits import RequestError
from webui.engine.pipeline_fit import ModelLoadError
from webui.engine.progress import CancelToken

if TYPE_CHECKING:
    from webui.engine.pipelines import ModelChoice
    from webui.engine.request import GenerationRequest
    from webui.engine.txt2img import Engine

log = logging.getLogger(__name__)

DEFAULT_MAX_SIZE = 32
FINISHED_KEPT = 100  # finished jobs kept for lookups by id (`JobQueue.get`)
# fn(engine, progress, cancel): `progress` takes the engine's Progress (or any object with `fraction`).
JobCall = Callable[["Engine", Callable[[Any], None], CancelToken], Any]


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


class Placement(str, Enum):
    """Where a job runs when the engine is spread over several replicas (`python launch.py --ray`). With one
    engine (the default) every job simply runs on it, whatever its placement."""

    ANY = "any"  # one engine: preferably one that holds the job's model (multiplexed routing)
    EVERY = "every"  # every engine, and any started later (settings, unloading: each replica has its own memory)
    FRONT = "front"  # in the front process, handing its generations to the engines (a comparison's cells)


class QueueFullError(RuntimeError):
    """The queue already holds `max_size` waiting jobs."""

    def __init__(self, size: int) -> None:
        super().__init__(f"the queue is full ({size} jobs); try again in a moment")
        self.size = size


class Job:
    """One unit of GPU work. Its state, progress, result and error are written by the queue's worker only."""

    def __init__(
        self,
        queue: JobQueue,
        call: JobCall,
        owner: str,
        kind: str,
        request: Any = None,
        model: ModelChoice | None = None,
        placement: Placement = Placement.ANY,
        session: str | None = None,
    ) -> None:
        self.id = uuid.uuid4().hex
        self.owner = owner
        self.session = session  # the browser page that submitted it (None: API, CLI): its job ends with the page
        self.kind = kind
        self.request = request  # the GenerationRequest of a `submit`ted job; None for a call
        self.model = model  # the model the job needs (routing: the replica holding it); None when it needs none
        self.placement = placement
        self.replica: str | None = None  # which replica runs it (set on a spread-out engine)
        self.cancel_token = CancelToken()
        self.state = JobState.QUEUED
        self.progress: Any = None  # the last progress report (engine Progress, or what a call reports)
        self.preview: Any = None  # the last live preview image a report carried
        self.result: Any = None
        self.error: str | None = None
        self.error_type: str | None = None  # the exception's class name, for API error bodies
        self.error_field: str | None = None  # the request field a RequestError named: a bad request, not a fault
        self.error_role: Any = None  # the component a refused model load blames (ModelLoadError.role), if any
        self.submitted_at = time.time()
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self._queue = queue
        self._call = call
        self._done = threading.Event()
        self._callbacks: list[Callable[[Job], None]] = []

    @property
    def position(self) -> int | None:
        """0 while running, N while N-th in line (1 = next), None once finished."""
        return self._queue.position_of(self)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job has finished (done, failed or cancelled); False if `timeout` ran out first."""
        return self._done.wait(timeout)

    def cancel(self, by_owner: str) -> None:
        """Remove the job from the queue, or stop it if running; only its owner may. Finished jobs stay as they are."""
        self._queue.cancel(self, by_owner)

    def add_done_callback(self, callback: Callable[[Job], None]) -> None:
        """Call `callback(job)` once the job has finished (at once if it already has), on the finishing thread."""
        with self._queue._cond:
            if not self._done.is_set():
                self._callbacks.append(callback)
                return
        callback(self)

    def _report(self, progress: Any) -> None:
        self.progress = progress
        preview = getattr(progress, "preview", None)
        if preview is not None:
            self.preview = preview

    def __repr__(self) -> str:
        return f"Job({self.id[:8]}, {self.kind}, owner={self.owner!r}, {self.state.value})"


def _generate(request: GenerationRequest, preview_every: int) -> JobCall:
    def call(engine: Engine, progress: Callable[[Any], None], cancel: CancelToken) -> Any:
        return engine.generate(request, progress=progress, cancel=cancel, preview_every=preview_every)

    return call


def describe_failure(error: BaseException) -> str:
    """What a user is told when a job raised: the engine's own message for errors it explains, else the type too."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        first = (str(error).strip().splitlines() or ["CUDA out of memory"])[0]
        return f"out of GPU memory: {first}; memory was freed, try a smaller size or batch"
    if isinstance(error, MemoryError):
        return f"out of memory: {error or 'an allocation failed'}; memory was freed, try a smaller size or batch"
    if isinstance(error, (ValueError, LookupError, OSError)) and str(error):
        return str(error)  # the project's errors name the field or file and what to do
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


class JobQueue:
    """FIFO of GPU jobs run one at a time by a single worker thread (started by `start()`, never at import)."""

    def __init__(self, engine: Engine, max_size: int = DEFAULT_MAX_SIZE) -> None:
        if max_size < 1:
            raise ValueError(f"max_size: {max_size} would refuse every job; use 1 or more")
        self.engine = engine
        self.max_size = max_size
        self._cond = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._running: list[Job] = []  # in the order they started
        self._finished: deque[Job] = deque(maxlen=FINISHED_KEPT)
        self._threads: list[threading.Thread] = []
        self._stopping = False

    @property
    def workers(self) -> int:
        """How many jobs run at once: one per engine (a spread-out engine has one per replica)."""
        return 1

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker threads (once)."""
        with self._cond:
            if self._stopping:
                raise RuntimeError("this queue was stopped; build a new JobQueue")
            if not self._threads:
                self._threads = [
                    threading.Thread(target=self._work, name=f"webui-job-queue-{n}", daemon=True)
                    for n in range(self.workers)
                ]
                for thread in self._threads:
                    thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Cancel every waiting job, ask the running one to stop, and let the worker end."""
        with self._cond:
            self._stopping = True
            waiting = list(self._waiting)
            self._waiting.clear()
            for job in waiting:
                self._mark_finished(job, JobState.CANCELLED)
            for job in self._running:
                job.cancel_token.cancel()
            self._cond.notify_all()
            threads = list(self._threads)
        for job in waiting:
            self._run_callbacks(job)
        for thread in threads:
            thread.join(timeout)

    # -- submitting ------------------------------------------------------------------------------
    def submit(
        self,
        request: GenerationRequest,
        owner: str,
        kind: str = "txt2img",
        preview_every: int = 0,
        session: str | None = None,
    ) -> Job:
        """Queue one generation; the job's result is the engine's GenerationResult. Raises QueueFullError.
        `session`: the browser page it comes from (see `cancel_session`)."""
        job = Job(self, _generate(request, preview_every), owner, kind, request, request.model, session=session)
        return self._enqueue(job)

    def submit_call(
        self,
        fn: JobCall,
        owner: str,
        kind: str,
        model: ModelChoice | None = None,
        placement: Placement = Placement.ANY,
        session: str | None = None,
    ) -> Job:
        """Queue `fn(engine, progress, cancel)` (a compare grid, a model load); its return value is the result.
        `model` is the model it will load (so a spread-out engine sends it where that model is held); `placement`
        says where it runs there (`Placement`). A call that runs on a replica must pickle (no open files, locks).
        `session`: the browser page it comes from (see `cancel_session`)."""
        return self._enqueue(Job(self, fn, owner, kind, model=model, placement=placement, session=session))

    def _enqueue(self, job: Job) -> Job:
        with self._cond:
            if self._stopping:
                raise RuntimeError("the job queue has been stopped; no more jobs are taken")
            if len(self._waiting) >= self.max_size:
                raise QueueFullError(len(self._waiting))
            self._waiting.append(job)
            self._cond.notify_all()
        return job

    # -- cancelling --------------------------------------------------------------------------
    def cancel(self, job: Job, by_owner: str) -> None:
        if by_owner != job.owner:
            raise PermissionError(f"job {job.id} belongs to another user; only its owner can cancel it")
        with self._cond:
            if job.state is not JobState.QUEUED:
                job.cancel_token.cancel()  # running: stops within one step; finished: nothing to stop
                return
            self._waiting.remove(job)
            self._mark_finished(job, JobState.CANCELLED)
        self._run_callbacks(job)

    def cancel_session(self, session: str) -> list[Job]:
        """Cancel every unfinished job a browser page submitted: the page is gone (closed, reloaded), so nobody
        waits for them, and a long one would hold the one queue. Returns those jobs."""
        jobs = [job for job in self.jobs() if session is not None and job.session == session]
        for job in jobs:
            job.cancel(job.owner)
        if jobs:
            log.info("a page closed: cancelled %d job(s) it left: %s", len(jobs), ", ".join(map(repr, jobs)))
        return jobs

    def interrupt(self, owner: str) -> list[Job]:
        """Cancel every job of `owner`, running or waiting (the A1111 Interrupt button); others' jobs go on."""
        jobs = self.jobs(owner)
        for job in jobs:
            job.cancel(owner)
        return jobs

    def skip(self, owner: str) -> Job | None:
        """Skip the current batch of `owner`'s running job (the A1111 Skip button); it goes on with the next."""
        with self._cond:
            running = next((job for job in self._running if job.owner == owner), None)
        if running is None:
            return None
        running.cancel_token.skip()
        return running

    # -- looking ---------------------------------------------------------------------------------
    def position_of(self, job: Job) -> int | None:
        with self._cond:
            if any(job is running for running in self._running):
                return 0
            for number, waiting in enumerate(self._waiting, 1):
                if waiting is job:
                    return number
            return None

    def current(self) -> Job | None:
        """The running job (the first started, when several engines run one each), whoever owns it."""
        with self._cond:
            return self._running[0] if self._running else None

    def jobs(self, owner: str | None = None) -> list[Job]:
        """Unfinished jobs (running first, then in queue order), all or one owner's."""
        with self._cond:
            active = list(self._running) + list(self._waiting)
        return [job for job in active if owner is None or job.owner == owner]

    def progress_of(self, owner: str) -> Job | None:
        """The job an owner's progress bar shows: theirs that runs, else their next in line; None when idle."""
        mine = self.jobs(owner)
        return mine[0] if mine else None

    def replicas(self) -> list[Any]:
        """The engine replicas behind this queue and what each holds (`webui.cluster`); none for the one engine
        of the single-process studio."""
        return []

    def get(self, job_id: str) -> Job:
        with self._cond:
            for job in (*self.jobs(), *self._finished):
                if job.id == job_id:
                    return job
        raise LookupError(f"no job {job_id!r}: it never existed or finished long ago")

    def __len__(self) -> int:
        """Jobs waiting (not counting the running one)."""
        return len(self._waiting)

    # -- the worker ------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                job = self._waiting.popleft()
                job.state = JobState.RUNNING
                job.started_at = time.time()
                self._running.append(job)
            state = self._run(job)
            with self._cond:
                self._running.remove(job)
                self._mark_finished(job, state)
            self._run_callbacks(job)

    def _run(self, job: Job) -> JobState:
        failure = None
        try:
            job.result = self._execute(job)
        except Exception as error:  # any job's failure is that job's, never the worker's
            failure = describe_failure(error)
            job.error, job.error_type = failure, type(error).__name__
            job.error_field = _field_of(error)
            job.error_role = getattr(error, "role", None)
            if not isinstance(error, (ValueError, LookupError, OSError, MemoryError)):
                log.error("job %s (%s) failed", job.id, job.kind, exc_info=error)
        if failure is not None:
            # After the except block: the traceback (and the tensors its frames hold) is gone, so this frees them.
            memory.release_memory()
            return JobState.FAILED
        return JobState.CANCELLED if job.cancel_token.cancelled else JobState.DONE

    def _execute(self, job: Job) -> Any:
        """Run the job's call on the engine; a spread-out engine overrides this to run it on a replica."""
        return job._call(self.engine, job._report, job.cancel_token)

    def _mark_finished(self, job: Job, state: JobState) -> None:
        """Under the lock: record the end; callbacks run after the lock is released (`_run_callbacks`)."""
        job.state = state
        job.finished_at = time.time()
        self._finished.append(job)
        job._done.set()

    @staticmethod
    def _run_callbacks(job: Job) -> None:
        callbacks, job._callbacks = job._callbacks, []
        for callback in callbacks:
            try:
                callback(job)
            except Exception:  # a listener's bug must not stop the worker
                log.exception("a done-callback of job %s failed", job.id)


def _field_of(error: Exception) -> str | None:
    """The request field a failure blames: a RequestError's own; `model` for a model that cannot be loaded (a broken
    or missing file, a missing component: the client's choice, answered 422, not a server fault); else None."""
    if isinstance(error, RequestError):
        return error.field
    return "model" if isinstance(error, ModelLoadError) else None
