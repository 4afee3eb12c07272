"""The engine as Ray Serve replicas (`--ray`): two CPU replicas on a local Ray instance, tiny models.

Every job's image equals the single-process engine's; a comparison split over the replicas equals the single-process
grid; repeat jobs for a model go to the replica holding it (loads counted); progress and previews stream back; only
the owner interrupts; settings and unloading reach every replica; the A1111 API works unchanged; memory per replica
stays flat over model switches; a replica killed mid-job fails that job clearly and the others go on. The tests
share one cluster (starting Ray takes most of a minute here) and run in file order: routing first, on fresh replicas,
the kill last.
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("ray.serve", reason='the cluster extra is not installed: pip install -e ".[cluster]"')

from webui.cluster.client import Cluster, ClusterOptions  # noqa: E402  (after the skip: these import ray)
from webui.cluster.queue import ClusterJobQueue  # noqa: E402
from webui.cluster.replica import ReplicaConfig  # noqa: E402
from webui.engine.compare import CellStatus, run_compare  # noqa: E402
from webui.engine.compare_axes import parse_axis  # noqa: E402
from webui.engine.compare_plan import CompareJob, library_resolver  # noqa: E402
from webui.engine.jobs import JobState, Placement  # noqa: E402
from webui.engine.pipelines import ModelChoice  # noqa: E402
from webui.engine.request import GenerationRequest  # noqa: E402
from webui.models.library import open_library  # noqa: E402
from webui.wiring import build_engine  # noqa: E402

pytestmark = pytest.mark.slow
WAIT = 240  # seconds; a bound on every wait (a killed replica restarts in about 30 s on this busy box)
SMALL = {"prompt": "a red hat", "negative_prompt": "blurry", "steps": 3, "width": 32, "height": 32, "seed": 7}


@pytest.fixture(scope="module")
def library(tiny_models_dir):
    lib = open_library(tiny_models_dir)
    lib.scan()
    return lib


@pytest.fixture(scope="module")
def local(library, tmp_path_factory):
    """The single-process engine, the reference for every image."""
    return build_engine(library, tmp_path_factory.mktemp("local-outputs"))


@pytest.fixture(scope="module")
def queue(library, tiny_models_dir, tmp_path_factory) -> Iterator[ClusterJobQueue]:
    outputs = tmp_path_factory.mktemp("cluster-outputs")
    config = ReplicaConfig(models_dir=tiny_models_dir, outputs_dir=outputs, device="cpu")
    options = ClusterOptions(replicas=2, num_cpus=2, object_store_bytes=128 * 2**20, models_per_replica=1)
    jobs = ClusterJobQueue(build_engine(library, outputs), start_cluster(config, options))
    jobs.start()
    yield jobs
    jobs.stop(timeout=WAIT)


def start_cluster(config: ReplicaConfig, options: ClusterOptions) -> Cluster:
    """Cluster.start, tried twice: on a loaded 2-core box Ray's raylet can miss its fixed 30 s start deadline."""
    import ray

    try:
        return Cluster.start(config, options)
    except Exception as error:  # Ray raises a bare Exception for it
        if "timed out during startup" not in str(error):
            raise
        ray.shutdown()
        return Cluster.start(config, options)


def checkpoint(models: Path, name: str) -> ModelChoice:
    suffix = "" if Path(name).suffix else ".safetensors"
    return ModelChoice(models / "checkpoints" / f"{name}{suffix}")


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def run(queue: ClusterJobQueue, request: GenerationRequest, owner: str = "alice", preview_every: int = 0):  # noqa: ANN201
    job = queue.submit(request, owner, preview_every=preview_every)
    assert job.wait(WAIT), "the job did not finish"
    assert job.state is JobState.DONE, job.error
    return job


def records_when(queue: ClusterJobQueue, done: callable) -> list:  # noqa: ANN001
    """The replica list once `done(records)` holds (replicas report after each job, asynchronously; a new replica
    registers once it has started)."""
    deadline = time.monotonic() + WAIT
    while True:
        records = [r for r in queue.replicas() if r.alive(time.time())]
        if done(records) or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def test_repeat_jobs_go_to_the_replica_holding_their_model_so_each_model_loads_once(queue, tiny_models_dir):
    names = ["tiny-sd1", "tiny-sd2"] * 3
    where: dict[str, set[str]] = {"tiny-sd1": set(), "tiny-sd2": set()}
    for name in names:
        job = run(queue, GenerationRequest(model=checkpoint(tiny_models_dir, name), **SMALL))
        where[name].add(job.replica)
        assert job.result.info["replica"] == job.replica
    assert all(len(replicas) == 1 for replicas in where.values()), where  # every repeat found its model
    assert where["tiny-sd1"] != where["tiny-sd2"]  # the second model went to the replica holding none
    records = records_when(queue, lambda rs: sum(r.jobs for r in rs) >= len(names))
    assert sum(r.loads for r in records) == 2  # one load per model; random routing would reload on switches
    assert sorted(len(r.models) for r in records) == [1, 1]


def test_every_image_equals_the_single_process_engine_and_progress_streams_back(queue, local, tiny_models_dir):
    requests = [
        GenerationRequest(model=checkpoint(tiny_models_dir, "tiny-sd1"), batch_size=2, **SMALL),
        GenerationRequest(model=checkpoint(tiny_models_dir, "tiny-sd2"), sampler="Euler a", **SMALL),
        GenerationRequest(
            model=checkpoint(tiny_models_dir, "tiny-sd1"),
            sampler="DPM++ 2M",
            schedule="Karras",
            **{**SMALL, "seed": 123},
        ),  # fmt: skip
    ]
    for request in requests:
        job = run(queue, request, preview_every=1)
        expected = local.generate(request)
        assert len(job.result.images) == len(expected.images) == request.batch_size
        for got, want in zip(job.result.images, expected.images, strict=True):
            assert np.array_equal(pixels(got.path), pixels(want.path)), request
            assert got.infotext == want.infotext
        assert job.progress.step == job.progress.steps >= request.steps  # the last report (PLMS warms up: 4 of 3)
        assert isinstance(job.preview, Image.Image)  # a live preview came back from the replica
    reports = []
    queue.cluster.run(
        lambda engine, progress, cancel: engine.generate(requests[1], progress, cancel, preview_every=1),
        requests[1].model,
        progress=reports.append,
    )
    assert [r.step for r in reports] == [1, 2, 3] and all(r.preview is not None for r in reports)


def test_a_comparison_split_across_replicas_equals_the_single_process_grid(queue, local, library, tiny_models_dir):
    base = GenerationRequest(model=checkpoint(tiny_models_dir, "tiny-sd1"), **SMALL)
    job = CompareJob(base, parse_axis("checkpoint=tiny-sd1,tiny-sd2"), parse_axis("cfg=1,7"))
    resolve = library_resolver(library)
    before = {r.replica: r.jobs for r in records_when(queue, lambda rs: not any(r.running for r in rs))}
    reports = []

    def compare(engine, report, cancel):  # noqa: ANN001, ANN202
        reports.append(engine.parallel_jobs)
        return run_compare(engine, job, resolve, report, cancel)

    queued = queue.submit_call(compare, "bob", "compare", placement=Placement.FRONT)
    assert queued.wait(WAIT) and queued.state is JobState.DONE, queued.error
    result = queued.result
    expected = run_compare(local, job, resolve)
    assert reports == [2]  # the comparison saw both replicas
    assert [c.status for c in result.cells] == [CellStatus.DONE] * 4
    for got, want in zip(result.cells, expected.cells, strict=True):
        assert np.array_equal(pixels(got.path), pixels(want.path)), got.cell
        assert got.infotext == want.infotext
    (grid,), (expected_grid,) = result.grids, expected.grids
    assert np.array_equal(pixels(grid), pixels(expected_grid))
    with Image.open(grid) as got, Image.open(expected_grid) as want:
        assert got.text == want.text
    after = records_when(queue, lambda rs: sum(r.jobs for r in rs) >= sum(before.values()) + 4)
    assert all(r.jobs > before.get(r.replica, 0) for r in after)  # both replicas ran cells


def test_only_the_owner_interrupts_a_running_job_and_its_partial_image_is_kept(queue, tiny_models_dir):
    request = GenerationRequest(
        model=checkpoint(tiny_models_dir, "tiny-sd1"), sampler="Euler", **{**SMALL, "steps": 800}
    )
    job = queue.submit(request, "alice")
    deadline = time.monotonic() + WAIT
    while job.progress is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.progress is not None, f"no progress came back from the replica: {job.error}"
    with pytest.raises(PermissionError):
        job.cancel("bob")
    assert queue.interrupt("bob") == []
    time.sleep(0.3)
    assert job.state is JobState.RUNNING
    queue.interrupt("alice")
    assert job.wait(WAIT)
    assert job.state is JobState.CANCELLED
    assert job.result.info["interrupted"] and len(job.result.images) == 1  # stopped where it was, image kept
    assert job.progress.step < 800


def test_settings_and_unloading_reach_every_replica(queue, tiny_models_dir):
    from webui.api.info_routes import _unload
    from webui.ui.context import apply_engine_preferences
    from webui.ui.preferences import Preferences

    webp = Preferences(device="cpu", samples_format="webp")
    settings = queue.submit_call(
        lambda engine, _progress, _cancel: apply_engine_preferences(engine, webp),
        "alice",
        "settings",
        placement=Placement.EVERY,
    )
    assert settings.wait(WAIT) and settings.state is JobState.DONE, settings.error
    assert settings.result == ["images saved as webp"]
    for name in ("tiny-sd1", "tiny-sd2"):  # held by different replicas
        job = run(queue, GenerationRequest(model=checkpoint(tiny_models_dir, name), **SMALL))
        assert job.result.images[0].path.suffix == ".webp"
    replicas = {r.replica for r in queue.replicas() if r.alive(time.time())}
    assert len(replicas) == 2
    png = Preferences(device="cpu", samples_format="png")
    back = queue.submit_call(
        lambda engine, _progress, _cancel: apply_engine_preferences(engine, png), "alice", "settings",
        placement=Placement.EVERY,
    )  # fmt: skip
    unload = queue.submit_call(_unload(), "alice", "unload-model", placement=Placement.EVERY)
    assert back.wait(WAIT) and unload.wait(WAIT) and unload.state is JobState.DONE, unload.error
    records = records_when(queue, lambda rs: all(r.memory.get("cached_bytes") == 0 for r in rs))
    assert [r.memory["cached_bytes"] for r in records] == [0, 0]  # each replica freed its cache


def test_the_a1111_api_runs_on_the_replicas_unchanged(queue, local, library, tiny_models_dir):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from webui.api import ApiOptions, build_api_router

    app = FastAPI()
    app.include_router(build_api_router(queue, library, ApiOptions()))
    body = {"prompt": "a cat", "steps": 3, "width": 32, "height": 32, "seed": 3, "sampler_name": "Euler a",
            "override_settings": {"sd_model_checkpoint": "tiny-sd2"}}  # fmt: skip
    with TestClient(app) as client:
        answer = client.post("/sdapi/v1/txt2img", json=body)
        assert answer.status_code == 200, answer.text
        progress = client.get("/sdapi/v1/progress").json()
    assert progress["progress"] == 0.0 and progress["current_image"] is None  # the caller's job is over
    image = Image.open(io.BytesIO(base64.b64decode(answer.json()["images"][0])))
    request = GenerationRequest(model=checkpoint(tiny_models_dir, "tiny-sd2"), prompt="a cat", steps=3, width=32,
                                height=32, seed=3, sampler="Euler a")  # fmt: skip
    expected = local.generate(request)
    assert np.array_equal(np.asarray(image.convert("RGB")), pixels(expected.images[0].path))


def test_memory_per_replica_stays_flat_over_model_switches(queue, local, tiny_models_dir):
    names = ["tiny-sd1", "tiny-sd2", "tiny-sd1.ckpt"]  # three models, two replicas holding one each: switches
    sizes = []
    for name in names:
        local.manager.cache.clear()
        local.manager.load(checkpoint(tiny_models_dir, name))
        sizes.append(local.manager.cache.total_bytes())
    rss: list[dict[str, int]] = []
    for _round in range(3):
        for name in names:
            run(queue, GenerationRequest(model=checkpoint(tiny_models_dir, name), **SMALL))
            for record in queue.replicas():
                if record.alive(time.time()) and record.memory:
                    assert record.memory["cached_bytes"] <= max(sizes), record  # one model's components at most
        records = records_when(queue, lambda rs: not any(r.running for r in rs))
        rss.append({r.replica: r.memory["rss"] for r in records})
    for replica, first in rss[0].items():
        assert rss[-1][replica] - first < 64 * 2**20, (replica, [r[replica] for r in rss])


def test_a_replica_killed_mid_job_fails_that_job_clearly_and_queued_jobs_complete(queue, tiny_models_dir):
    import ray

    long = GenerationRequest(model=checkpoint(tiny_models_dir, "tiny-sd1"), sampler="Euler", **{**SMALL, "steps": 800})
    victim = queue.submit(long, "alice")
    deadline = time.monotonic() + WAIT
    while (victim.progress is None or victim.replica is None) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert victim.progress is not None, victim.error
    others = [
        queue.submit(GenerationRequest(model=checkpoint(tiny_models_dir, name), **SMALL), "bob")
        for name in ("tiny-sd2", "tiny-sd1", "tiny-sd2", "tiny-sd1")
    ]
    assert any(job.position and job.position > 0 for job in others)  # some wait in the front's queue
    (record,) = [r for r in queue.replicas() if r.replica == victim.replica]
    ray.kill(ray.get_actor(record.actor, namespace="serve"))
    assert victim.wait(WAIT)
    assert victim.state is JobState.FAILED
    assert f"replica {record.replica} stopped while running this job" in victim.error
    assert "run it again" in victim.error
    for job in others:
        assert job.wait(WAIT) and job.state is JobState.DONE, job.error
    after = run(queue, replace(long, steps=3))  # and the next job completes as well
    assert after.result.images
    up = records_when(queue, lambda rs: len(rs) == 2 and record.replica not in {r.replica for r in rs})
    assert len(up) == 2 and record.replica not in {r.replica for r in up}  # Serve started a new replica
