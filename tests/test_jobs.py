"""The shared job queue: FIFO, one job at a time, owner-only cancel, and failures that never stop the worker."""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from webui.engine import memory
from webui.engine.jobs import JobQueue, JobState, QueueFullError
from webui.engine.pipelines import ModelChoice
from webui.engine.request import GenerationRequest
from webui.models.library import open_library
from webui.wiring import build_engine

WAIT = 60  # seconds; a bound on every wait, never reached when things work


@pytest.fixture(scope="module")
def library(tiny_models_dir):
    lib = open_library(tiny_models_dir)
    lib.scan()
    return lib


@pytest.fixture(scope="module")
def engine(library, tmp_path_factory):
    return build_engine(library, tmp_path_factory.mktemp("outputs"))


@pytest.fixture
def queue(engine) -> Iterator[JobQueue]:
    jobs = JobQueue(engine)
    jobs.start()
    yield jobs
    jobs.stop(timeout=WAIT)


def tiny(models, seed: int, steps: int = 2) -> GenerationRequest:
    return GenerationRequest(
        model=ModelChoice(models / "checkpoints/tiny-sd1.safetensors"),
        prompt="a cat",
        steps=steps,
        width=32,
        height=32,
        seed=seed,
        sampler="Euler a",  # stochastic: every step's noise must come from this image's own seed
    )


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


class Concurrency:
    """Wraps a method to count how many calls are inside it at once."""

    def __init__(self, method) -> None:  # noqa: ANN001
        self.method, self.active, self.most, self.calls = method, 0, 0, 0
        self.lock = threading.Lock()

    def __call__(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN204
        with self.lock:
            self.active += 1
            self.calls += 1
            self.most = max(self.most, self.active)
        try:
            time.sleep(0.002)  # widen the window in which a second caller would be seen
            return self.method(*args, **kwargs)
        finally:
            with self.lock:
                self.active -= 1


def blocker(release: threading.Event, started: threading.Event | None = None):  # noqa: ANN201
    """A job that holds the worker until `release` is set (or its cancel token, or WAIT seconds)."""

    def run(_engine, _progress, cancel):  # noqa: ANN001, ANN202
        if started is not None:
            started.set()
        deadline = time.monotonic() + WAIT
        while not release.wait(0.01) and not cancel.cancelled and time.monotonic() < deadline:
            pass
        return "released"

    return run


def test_four_clients_forty_jobs_run_one_at_a_time_each_with_its_own_seed(engine, queue, tiny_models_dir, monkeypatch):
    seeds = {client: [100 + client * 10 + i for i in range(10)] for client in range(4)}
    alone = {s: pixels(engine.generate(tiny(tiny_models_dir, s)).images[0].path) for ids in seeds.values() for s in ids}
    jobs_inside = Concurrency(engine.generate)
    pipeline_inside = Concurrency(engine.denoise)
    monkeypatch.setattr(engine, "generate", jobs_inside)
    monkeypatch.setattr(engine, "denoise", pipeline_inside)
    submitted: dict[int, list] = {}
    errors: list[BaseException] = []

    def client(number: int) -> None:
        """Like an API client: submit, wait for the image, submit the next."""
        try:
            for seed in seeds[number]:
                job = queue.submit(tiny(tiny_models_dir, seed), owner=f"client-{number}")
                submitted.setdefault(number, []).append(job)
                job.wait(WAIT)
        except BaseException as error:  # surfaced by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert not errors
    for number, jobs in submitted.items():
        for seed, job in zip(seeds[number], jobs, strict=True):
            assert job.wait(WAIT), f"{job} did not finish"
            assert job.state is JobState.DONE, job.error
            assert job.owner == f"client-{number}" and job.position is None
            image = job.result.images[0]
            assert image.seed == seed and f"Seed: {seed}," in image.infotext
            assert np.abs(pixels(image.path) - alone[seed]).max() <= 1, f"seed {seed} differs from its image alone"
    assert jobs_inside.calls == 40 and jobs_inside.most == 1
    assert pipeline_inside.calls == 40 and pipeline_inside.most == 1


def test_jobs_run_first_in_first_out_with_live_positions(engine):
    jobs = JobQueue(engine)  # not started: everything waits
    order: list[str] = []

    def record(name: str):  # noqa: ANN202
        return lambda _engine, _progress, _cancel: order.append(name)

    first, second, third = (jobs.submit_call(record(n), "me", "test") for n in ("first", "second", "third"))
    assert [first.position, second.position, third.position] == [1, 2, 3]
    assert first.state is JobState.QUEUED and len(jobs) == 3 and jobs.progress_of("me") is first
    jobs.start()
    try:
        assert third.wait(WAIT)
    finally:
        jobs.stop(timeout=WAIT)
    assert order == ["first", "second", "third"]
    assert all(job.state is JobState.DONE for job in (first, second, third))
    assert jobs.get(second.id) is second and jobs.progress_of("me") is None


def test_a_full_queue_refuses_with_a_clear_message(engine):
    jobs = JobQueue(engine, max_size=2)  # not started: the two jobs stay queued
    release = threading.Event()
    waiting = [jobs.submit_call(blocker(release), "me", "test") for _ in range(2)]
    with pytest.raises(QueueFullError, match=r"^the queue is full \(2 jobs\); try again in a moment$"):
        jobs.submit_call(blocker(release), "me", "test")
    waiting[0].cancel("me")
    waiting.append(jobs.submit_call(blocker(release), "me", "test"))  # room again
    jobs.stop(timeout=WAIT)
    assert [job.state for job in waiting] == [JobState.CANCELLED] * 3 and jobs.jobs() == []


def test_only_the_owner_cancels_and_interrupt_stops_only_the_owners_job(queue, tiny_models_dir):
    slow = queue.submit(tiny(tiny_models_dir, 7, steps=150), owner="alice")
    bobs = queue.submit(tiny(tiny_models_dir, 8), owner="bob")
    bobs_extra = queue.submit(tiny(tiny_models_dir, 9), owner="bob")
    deadline = time.monotonic() + WAIT
    while slow.progress is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert slow.state is JobState.RUNNING and queue.current() is slow and slow.position == 0
    assert bobs.position == 1 and bobs_extra.position == 2

    with pytest.raises(PermissionError, match="only its owner can cancel it"):
        slow.cancel("bob")
    with pytest.raises(PermissionError):
        bobs.cancel("alice")
    bobs_extra.cancel("bob")  # a queued job leaves the queue at once
    assert bobs_extra.state is JobState.CANCELLED and bobs_extra.wait(0) and bobs.position == 1
    assert queue.interrupt("carol") == []
    assert not slow.cancel_token.cancelled

    assert queue.interrupt("alice") == [slow]
    assert slow.wait(WAIT) and slow.state is JobState.CANCELLED
    assert len(slow.result.images) == 1 and slow.progress.step < 150  # A1111's partial image of the stopped batch
    assert bobs.wait(WAIT) and bobs.state is JobState.DONE and len(bobs.result.images) == 1
    assert bobs_extra.result is None


def test_out_of_gpu_memory_fails_that_job_frees_memory_and_the_next_runs(engine, queue, tiny_models_dir, monkeypatch):
    denoise = engine.denoise
    released: list[bool] = []
    release = memory.release_memory

    def oom_on_seed_666(loaded, request, seeds, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if 666 in seeds:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB\nmore details")
        return denoise(loaded, request, seeds, *args, **kwargs)

    monkeypatch.setattr(engine, "denoise", oom_on_seed_666)
    monkeypatch.setattr(memory, "release_memory", lambda: released.append(True) or release())
    failing = queue.submit(tiny(tiny_models_dir, 666), owner="alice")
    buggy = queue.submit_call(lambda *_: 1 / 0, owner="alice", kind="compare")
    after = queue.submit(tiny(tiny_models_dir, 667), owner="bob")
    assert after.wait(WAIT)
    assert failing.state is JobState.FAILED and failing.result is None
    assert failing.error == (
        "out of GPU memory: CUDA out of memory. Tried to allocate 20.00 MiB; "
        "memory was freed, try a smaller size or batch"
    )
    assert buggy.state is JobState.FAILED and buggy.error == "ZeroDivisionError: division by zero"
    assert len(released) == 2
    assert after.state is JobState.DONE and after.result.images[0].seed == 667


def test_a_full_disk_fails_the_job_cleanly_and_leaves_no_partial_file(
    engine, queue, tiny_models_dir, monkeypatch, tmp_path
):
    save = Image.Image.save

    def disk_fills_up(image, stream, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        stream.write(b"\x89PNG\r\n\x1a\n partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(engine, "outputs_dir", tmp_path)
    monkeypatch.setattr(Image.Image, "save", disk_fills_up)
    full = queue.submit(tiny(tiny_models_dir, 5), owner="alice")
    assert full.wait(WAIT)
    monkeypatch.setattr(Image.Image, "save", save)
    assert full.state is JobState.FAILED
    assert full.error.startswith("could not save the image in ") and full.error.endswith("No space left on device")
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    again = queue.submit(tiny(tiny_models_dir, 5), owner="alice")
    assert again.wait(WAIT) and again.state is JobState.DONE
    assert [p.name for p in tmp_path.rglob("*.png")] == [again.result.images[0].path.name]


class TwoEngineQueue(JobQueue):
    """A queue as a spread-out engine has it (`webui.cluster`): two workers, jobs still first in, first out."""

    @property
    def workers(self) -> int:
        return 2


def test_a_queue_with_two_workers_runs_two_jobs_at_once_and_keeps_positions_and_owners():
    release = threading.Event()
    started = threading.Semaphore(0)

    def hold(_engine, _progress, cancel):  # noqa: ANN001, ANN202
        started.release()
        deadline = time.monotonic() + WAIT
        while not release.wait(0.01) and not cancel.cancelled and time.monotonic() < deadline:
            pass
        return "held"

    queue = TwoEngineQueue(engine=None)
    queue.start()
    try:
        model = ModelChoice(Path("/models/a.safetensors"))
        first = queue.submit_call(hold, "alice", "one", model=model)
        second = queue.submit_call(hold, "bob", "two")
        third = queue.submit_call(hold, "alice", "three")
        assert started.acquire(timeout=WAIT) and started.acquire(timeout=WAIT)  # two run at the same time
        assert (first.position, second.position, third.position) == (0, 0, 1)
        assert first.model == model and second.model is None
        assert queue.current() is first and [j.kind for j in queue.jobs()] == ["one", "two", "three"]
        assert queue.skip("bob") is second and queue.skip("carol") is None
        queue.interrupt("alice")  # alice's running and waiting jobs; bob's goes on
        assert first.wait(WAIT) and third.wait(WAIT)
        assert (first.state, third.state, second.state) == (JobState.CANCELLED, JobState.CANCELLED, JobState.RUNNING)
        release.set()
        assert second.wait(WAIT) and second.state is JobState.DONE and second.result == "held"
        assert queue.replicas() == []
    finally:
        release.set()
        queue.stop(timeout=WAIT)
