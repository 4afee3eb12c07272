"""One replica of the engine deployment: its own engine, memory budget and held models; jobs stream back.

Each replica is a Ray Serve replica (an actor; one GPU each, or some CPUs) holding a whole engine built as the
single-process studio builds it (`build_engine`). A job arrives as `run(job_id, call)` with the job's model as
Serve's multiplexed model id: `held_model` (decorated with `@serve.multiplexed` by `engine_deployment`) loads it
once and reports the id to Serve's router, so later jobs for that model come here. When the multiplexer drops a
model to make room (`models_per_replica`), its components are evicted from this replica's cache, so memory stays
flat over model switches. `run` streams `("replica", info)`, then `("progress", report)` per step (previews
included), then `("result", value)` or `("failed", error)`.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webui.cluster.routing import choice_of
from webui.engine.jobs import JobCall, describe_failure

log = logging.getLogger(__name__)

POLL_SECONDS = 0.1  # how often a replica asks the control actor for interrupts and broadcasts


@dataclass(frozen=True)
class ReplicaConfig:
    """What every replica builds its engine from (the front's settings and preferences), and where the control
    actor is. `torch_threads` is the CPU share of a CPU-only replica (None: torch's default)."""

    models_dir: Path
    outputs_dir: Path
    control_name: str = ""  # set by Cluster.start
    control_namespace: str = ""
    extra_model_paths: Path | None = None
    device: str = "auto"
    precision: str = "auto"
    attention_slicing: str = "auto"
    budgets: tuple[tuple[str, int], ...] = ()  # (device type, bytes)
    samples_format: str = "png"
    torch_threads: int | None = None


class HeldModel:
    """A model this replica holds for Serve's multiplexer; dropping it (Serve calls `__del__` on eviction) evicts
    its components from the replica's cache, unless another held model shares them."""

    def __init__(self, replica: EngineReplica, model_id: str) -> None:
        self.replica, self.model_id = replica, model_id
        self.released = False

    def __del__(self) -> None:
        if not self.released:  # Serve calls it once on eviction; the garbage collector's later call does nothing
            self.released = True
            self.replica.release_model(self.model_id)


def _portable(error: BaseException) -> BaseException:
    """The error itself when it survives pickling (the front re-raises it), else a RuntimeError with its text."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # any pickling failure: the message is what the user needs
        return RuntimeError(describe_failure(error))


class EngineReplica:
    """The body of the Serve deployment (see the module docstring); `engine_deployment` adds `held_model`."""

    def __init__(self, config: ReplicaConfig) -> None:
        import ray
        import torch
        from ray import serve

        from webui.engine.device import DevicePolicy
        from webui.models.library import open_library
        from webui.wiring import build_engine

        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        library = open_library(config.models_dir, config.extra_model_paths)
        library.scan()
        policy = DevicePolicy(config.device, config.precision, config.attention_slicing)
        self.engine = build_engine(library, config.outputs_dir, policy, dict(config.budgets) or None)
        self.engine.samples_format = config.samples_format
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self.control = ray.get_actor(config.control_name, namespace=config.control_namespace)
        self.held: dict[str, list[Any]] = {}  # model id -> its component keys, least recently used first
        self.tokens: dict[str, Any] = {}  # job id -> CancelToken of the running job
        self.loads = self.jobs = 0
        self._lock = threading.Lock()
        self._work = ThreadPoolExecutor(1, thread_name_prefix="replica-job")  # loads and jobs, one at a time
        self._broadcasts = ThreadPoolExecutor(1, thread_name_prefix="replica-broadcast")
        self._seen = 0
        self._stop = threading.Event()
        node = ray.util.get_node_ip_address()
        actor = ray.get_runtime_context().get_actor_name() or ""
        ray.get(self.control.register.remote(self.replica_id, node, actor))
        threading.Thread(target=self._watch, name="replica-control", daemon=True).start()

    # -- jobs ------------------------------------------------------------------------------------
    async def run(
        self, job_id: str, call: JobCall, kind: str = "job", model: str = ""
    ) -> AsyncIterator[tuple[str, Any]]:
        """Run `call(engine, progress, cancel)` here; see the module docstring for what is streamed. The model to
        hold is the request's multiplexed model id, or `model` for a request Serve routed without one (the
        benchmark's random-routing baseline: same memory policy, no routing)."""
        from ray import serve

        from webui.engine.progress import CancelToken

        yield "replica", {"replica": self.replica_id}
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        token = CancelToken()
        with self._lock:
            self.tokens[job_id] = token
        self._report(running=kind)
        try:
            model_id = serve.get_multiplexed_model_id() or model
            if model_id:
                await self.held_model(model_id)  # type: ignore[attr-defined]  (added by engine_deployment)

            def progress(report: Any) -> None:
                loop.call_soon_threadsafe(events.put_nowait, ("progress", report))

            def work() -> tuple[str, Any]:
                try:
                    return "result", call(self.engine, progress, token)
                except Exception as error:  # the job's failure goes back to its owner; the replica goes on
                    if not isinstance(error, (ValueError, LookupError, OSError, MemoryError)):
                        log.error("job %s failed on replica %s", job_id, self.replica_id, exc_info=error)
                    return "failed", _portable(error)

            done = loop.run_in_executor(self._work, work)
            while not done.done():
                waiting = asyncio.ensure_future(events.get())
                finished, _ = await asyncio.wait({waiting, done}, return_when=asyncio.FIRST_COMPLETED)
                if waiting in finished:
                    yield waiting.result()
                else:
                    waiting.cancel()
            while not events.empty():
                yield events.get_nowait()
            outcome = done.result()
            if outcome[0] == "failed":
                from webui.engine import memory

                memory.release_memory()
            yield outcome
        finally:
            with self._lock:
                self.tokens.pop(job_id, None)
                self.jobs += 1
            self._report(running=None, jobs=self.jobs, memory=self.memory())

    # -- held models (Serve's multiplexer calls these) ---------------------------------------------
    async def load_model(self, model_id: str) -> HeldModel:
        """Load the model `model_id` names (on the job thread, so never during another job)."""
        choice = choice_of(model_id)

        def load() -> list[Any]:
            with self.engine.gpu_lock:
                loaded = self.engine.manager.load(choice)
            if loaded.loaded_from_disk:
                self.loads += 1
            return list(loaded.keys.values())

        keys = await asyncio.get_running_loop().run_in_executor(self._work, load)
        with self._lock:
            self.held[model_id] = keys
        self._report(models=list(self.held), loads=self.loads, memory=self.memory())
        return HeldModel(self, model_id)

    def memory(self) -> dict[str, Any]:
        """The engine's cache status (PipelineManager.status) and this process's resident memory in bytes."""
        from webui.engine.memory import rss_bytes

        return {**self.engine.manager.status(), "rss": rss_bytes()}

    def release_model(self, model_id: str) -> None:
        """Evict the components of a model Serve's multiplexer dropped, except those another held model uses."""
        engine = self.engine
        with engine.gpu_lock:
            with self._lock:
                keys = self.held.pop(model_id, [])
                keep = {key for other in self.held.values() for key in other}
            manager = engine.manager
            if manager.current is not None and set(manager.current.keys.values()) <= set(keys):
                engine.loras.unfuse()
                manager.current = None
            if manager.current is not None:
                keep |= set(manager.current.keys.values())
            manager.cache.pin(keep)
            manager.cache.evict([key for key in keys if key not in keep])
        self._report(models=list(self.held), memory=self.memory())

    # -- the control actor -------------------------------------------------------------------------
    def _report(self, **changes: Any) -> None:
        self.control.report.remote(self.replica_id, **changes)  # fire and forget: news, not a request

    def _watch(self) -> None:
        """Poll the control actor: interrupts for the running job, calls for every replica (in order)."""
        import ray

        while not self._stop.wait(POLL_SECONDS):
            with self._lock:
                running = list(self.tokens)
            try:
                orders = ray.get(self.control.poll.remote(self.replica_id, running, self._seen), timeout=30)
            except (ray.exceptions.RayError, TimeoutError) as error:  # the front has gone: nothing left to obey
                log.warning("replica %s lost the control actor: %s", self.replica_id, error)
                time.sleep(1)
                continue
            with self._lock:  # a job may have ended since the poll: its token is gone, nothing to stop
                for job_id in orders["cancel"]:
                    if job_id in self.tokens:
                        self.tokens[job_id].cancel()
                for job_id, count in orders["skip"].items():
                    if job_id in self.tokens and count:
                        self.tokens[job_id].skip()
            for sequence, call in orders["broadcasts"]:
                self._seen = max(self._seen, sequence)
                self._broadcasts.submit(self._run_broadcast, sequence, call)

    def _run_broadcast(self, sequence: int, call: JobCall) -> None:
        from webui.engine.progress import CancelToken

        error = result = None
        try:
            result = call(self.engine, lambda _report: None, CancelToken())
        except Exception as failure:  # reported to the front, which fails the job with it
            log.warning("replica %s: call for every replica failed", self.replica_id, exc_info=failure)
            error = describe_failure(failure)
        try:
            self.control.acked.remote(self.replica_id, sequence, error, result)
        except Exception as failure:  # a result that does not pickle: the call ran, its answer cannot travel
            self.control.acked.remote(self.replica_id, sequence, None, f"done ({type(failure).__name__})")
        self._report(memory=self.memory())

    def check_health(self) -> None:
        """Serve's health check: the replica is unhealthy once its control thread has stopped."""
        if self._stop.is_set():
            raise RuntimeError(f"replica {self.replica_id} was stopped")


def engine_deployment(
    config: ReplicaConfig,
    replicas: int,
    models_per_replica: int = 1,
    gpus_per_replica: float = 0.0,
    cpus_per_replica: float = 1.0,
) -> Any:
    """The Serve application: `replicas` EngineReplicas, one job at a time each, each holding up to
    `models_per_replica` models for routing (Serve's `@serve.multiplexed`)."""
    from ray import serve

    class Engine(EngineReplica):
        @serve.multiplexed(max_num_models_per_replica=models_per_replica)
        async def held_model(self, model_id: str) -> HeldModel:
            return await self.load_model(model_id)

    actor_options = {"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica}
    deployment = serve.deployment(
        Engine,
        name="Engine",
        num_replicas=replicas,
        max_ongoing_requests=1,  # one generation per device; the rest wait in Serve's router, not on a lock
        ray_actor_options=actor_options,
        graceful_shutdown_timeout_s=5,
    )
    return deployment.bind(config)
