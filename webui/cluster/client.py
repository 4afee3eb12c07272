"""The front side of the cluster: start (or join) Ray, deploy the replicas, run a call on one or on every replica.

`Cluster.start` connects to Ray (a local instance unless an address is given), starts Serve without its HTTP
proxy (the studio's own server stays the only door), creates the control actor and deploys `engine_deployment`.
`Cluster.run` sends one call through the Serve handle, routed by its model (`multiplexed_model_id`), and turns the
streamed events back into progress reports and the call's result; an interrupt of the caller's CancelToken is
forwarded through the control actor. A replica that dies before it took the call is retried once (the job was only
waiting); one that dies while running it fails the job with `ReplicaLostError`.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from webui.cluster.replica import ReplicaConfig, engine_deployment
from webui.cluster.routing import model_id
from webui.engine.progress import CancelToken
from webui.engine.request import GenerationResult

if TYPE_CHECKING:
    from webui.cluster.control import ReplicaRecord
    from webui.engine.jobs import JobCall
    from webui.engine.pipelines import ModelChoice
    from webui.engine.request import GenerationRequest
    from webui.engine.txt2img import Engine

log = logging.getLogger(__name__)

APP_NAME = "webui"
NAMESPACE = "webui"
FORWARD_SECONDS = 0.05  # how often interrupts are forwarded to the control actor


class ReplicaLostError(ConnectionError):
    """The replica running a job stopped (killed, crashed, its machine gone) before the job finished."""


@dataclass(frozen=True)
class ClusterOptions:
    """How to reach Ray and how many replicas to run. `address` None starts a local instance (or joins the one
    `ray start` runs here); `replicas` None is one per GPU of the cluster, or one without GPUs. `num_cpus` and
    `object_store_bytes` size a local instance started here (tests keep it small); `torch_threads` overrides a
    CPU-only replica's torch threads (the benchmark keeps tiny models on one, as its single-process figures)."""

    address: str | None = None
    replicas: int | None = None
    models_per_replica: int = 1
    num_cpus: int | None = None
    object_store_bytes: int | None = None
    torch_threads: int | None = None  # per CPU-only replica; None: its share of the cores

    def __post_init__(self) -> None:
        if self.replicas is not None and self.replicas < 1:
            raise ValueError(f"ray_replicas: {self.replicas} runs nothing; use 1 or more (default: one per GPU)")
        if self.models_per_replica < 1:
            raise ValueError(f"ray_models_per_replica: {self.models_per_replica}; use 1 or more")


def _generate_call(request: GenerationRequest, preview_every: int, options: dict[str, Any], engine: Engine,
                   progress: Callable[[Any], None], cancel: CancelToken) -> GenerationResult:  # fmt: skip
    return engine.generate(request, progress, cancel, preview_every, **options)


class Cluster:
    """A running deployment: `run` one call, `everywhere` for every replica, `replicas()` for the UI."""

    def __init__(self, handle: Any, control: Any, size: int, owns_ray: bool) -> None:
        self.handle, self.control, self.size = handle, control, size
        self._owns_ray = owns_ray
        self._inflight: dict[str, CancelToken] = {}
        self._forwarded: set[str] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        threading.Thread(target=self._forward_interrupts, name="cluster-interrupts", daemon=True).start()

    @classmethod
    def start(cls, config: ReplicaConfig, options: ClusterOptions) -> Cluster:
        """Connect to Ray, deploy the replicas and wait until they are ready (each has scanned the library).
        ValueError when the cluster lacks the GPUs or CPUs the replicas need."""
        import ray
        from ray import serve

        owns_ray = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"namespace": NAMESPACE, "include_dashboard": False}
            if options.address:
                ray.init(address=options.address, **kwargs)
            else:
                ray.init(num_cpus=options.num_cpus, object_store_memory=options.object_store_bytes, **kwargs)
                owns_ray = True
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
        size = options.replicas or max(1, gpus)
        if gpus:
            if size > gpus:
                raise ValueError(f"ray_replicas: {size} replicas need {size} GPUs; the cluster has {gpus}")
            cpus_each, gpus_each, threads = 1.0, 1.0, None
        else:
            if size > cpus:
                raise ValueError(f"ray_replicas: {size} replicas need {size} CPUs; the cluster has {cpus}")
            cpus_each, gpus_each = float(cpus // size), 0.0
            threads = options.torch_threads or int(cpus_each)
        from webui.cluster.control import start_control

        control_name = f"webui-control-{uuid.uuid4().hex[:8]}"
        control = start_control(control_name, NAMESPACE)
        config = replace(config, control_name=control_name, control_namespace=NAMESPACE, torch_threads=threads)
        serve.start(proxy_location="Disabled")
        app = engine_deployment(config, size, options.models_per_replica, gpus_each, cpus_each)
        handle = serve.run(app, name=APP_NAME, route_prefix=None)
        log.info("Ray Serve: %d engine replica(s) ready (%s)", size, "GPU" if gpus else "CPU")
        return cls(handle, control, size, owns_ray)

    # -- one call on one replica -------------------------------------------------------------------
    def run(
        self,
        call: JobCall,
        model: ModelChoice | None = None,
        progress: Callable[[Any], None] | None = None,
        cancel: CancelToken | None = None,
        kind: str = "job",
        on_replica: Callable[[str], None] | None = None,
        route_by_model: bool = True,
    ) -> Any:
        """`call(engine, progress, cancel)` on a replica (the one holding `model`, when one does); its result.
        Raises what the call raised, or ReplicaLostError. `route_by_model=False` lets Serve pick any replica,
        which then loads `model` (the benchmark's baseline)."""
        import ray

        job_id = uuid.uuid4().hex
        token = cancel or CancelToken()
        with self._lock:
            self._inflight[job_id] = token
        options: dict[str, Any] = {"method_name": "run", "stream": True}
        held = ""
        if model is not None and route_by_model:
            options["multiplexed_model_id"] = model_id(model)
        elif model is not None:
            held = model_id(model)
        try:
            for attempt in (1, 2):
                replica = None
                outcome: tuple[str, Any] | None = None
                try:
                    for event, value in self.handle.options(**options).remote(job_id, call, kind, held):
                        if event == "replica":
                            replica = value["replica"]
                            if on_replica is not None:
                                on_replica(replica)
                        elif event == "progress":
                            if progress is not None:
                                progress(value)
                        else:
                            outcome = (event, value)
                except ray.exceptions.RayError as error:
                    if replica is None and attempt == 1:
                        log.warning("job %s: the replica it waited for went away; sending it again", job_id)
                        continue
                    where = f"replica {replica}" if replica else "the replica it was sent to"
                    raise ReplicaLostError(
                        f"{where} stopped while running this job ({type(error).__name__}); the job was lost, "
                        "the other replicas go on: run it again"
                    ) from None
                if outcome is None:
                    raise ReplicaLostError(f"replica {replica} ended the job without a result; run it again")
                event, value = outcome
                if event == "failed":
                    raise value
                if isinstance(value, GenerationResult):
                    value.info["replica"] = replica
                return value
            raise ReplicaLostError("no replica could take the job; run it again")  # unreachable: attempt 2 raises
        finally:
            with self._lock:
                self._inflight.pop(job_id, None)
                self._forwarded.discard(job_id)
            self.control.finished.remote(job_id)

    def _forward_interrupts(self) -> None:
        while not self._closed.wait(FORWARD_SECONDS):
            with self._lock:
                inflight = list(self._inflight.items())
            for job_id, token in inflight:
                if token.cancelled and job_id not in self._forwarded:
                    self._forwarded.add(job_id)
                    self.control.cancel.remote(job_id)
                if token.take_skip():
                    self.control.skip.remote(job_id)

    # -- every replica -----------------------------------------------------------------------------
    def everywhere(self, call: JobCall, timeout: float | None = None) -> Any:
        """Run `call` on every live replica (each after its current job) and on any started later; the first
        replica's result. ValueError naming the replicas where it failed; TimeoutError after `timeout` s."""
        import ray

        sequence = ray.get(self.control.broadcast.remote(call))
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            state = ray.get(self.control.broadcast_state.remote(sequence))
            if not state["pending"]:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"replicas {', '.join(state['pending'])} did not answer within {timeout} s")
            time.sleep(FORWARD_SECONDS)
        if state["errors"]:
            raise ValueError("; ".join(f"replica {r}: {e}" for r, e in sorted(state["errors"].items())))
        results = state["results"]
        return results[min(results)] if results else None

    def replicas(self) -> list[ReplicaRecord]:
        import ray

        return ray.get(self.control.replicas.remote())

    def close(self) -> None:
        """Remove the deployment and the control actor; shut Ray down if this process started it."""
        import ray
        from ray import serve

        if self._closed.is_set():
            return
        self._closed.set()
        try:
            serve.delete(APP_NAME)
            ray.kill(self.control)
        finally:
            if self._owns_ray:
                serve.shutdown()
                ray.shutdown()


class RemoteEngine:
    """The engine a front-side job (a comparison) is handed: `generate` runs on a replica, `parallel_jobs` of them
    at once; images are saved where the replicas save them (the shared outputs folder)."""

    def __init__(self, cluster: Cluster, front: Engine) -> None:
        self.cluster = cluster
        self.outputs_dir = front.outputs_dir
        self.parallel_jobs = cluster.size

    def generate(
        self,
        request: GenerationRequest,
        progress: Callable[[Any], None] | None = None,
        cancel: CancelToken | None = None,
        preview_every: int = 0,
        **options: Any,
    ) -> GenerationResult:
        """As `Engine.generate`, on the replica holding the request's model."""
        call = functools.partial(_generate_call, request, preview_every, options)
        return self.cluster.run(call, request.model, progress, cancel, kind="compare-cell")
