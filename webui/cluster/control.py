"""The control actor: interrupts to the replica running a job, calls for every replica, and the replica list.

A Serve handle routes each request to one replica of its choice, so what must reach a given replica (an interrupt
for the job it runs) or every replica (new settings, an unload) goes through this one small Ray actor instead:
each replica polls it a few times a second (`poll`), which also tells the actor it is alive. Calls for every
replica are kept in order (`broadcast`) and replayed to a replica that starts later, so a restarted replica runs
with the same settings as the others. Plain Python: Ray makes it an actor (`start_control`), tests use it directly.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

LIVE_SECONDS = 5.0  # a replica that has not polled for this long is taken as gone (killed, its node lost)
KEPT_BROADCASTS = 64  # calls for every replica kept for replay (settings are last-wins; older ones matter less)
KEPT_FINISHED = 256  # ids of finished jobs whose interrupt flags are dropped


@dataclass
class ReplicaRecord:
    """What the front shows about one replica (the model bar's replica list, /sdapi/v1/memory on a cluster)."""

    replica: str
    node: str
    actor: str  # the replica's Ray actor name (`ray.get_actor(name, namespace="serve")`)
    started: float
    last_seen: float
    models: list[str] = field(default_factory=list)  # multiplexed model ids it holds, least recently used first
    loads: int = 0  # models it read from disk (a cache hit does not count)
    jobs: int = 0  # jobs it finished
    running: str | None = None  # the kind of job it runs now
    memory: dict[str, Any] = field(default_factory=dict)  # its engine's cache status (PipelineManager.status)
    acked: int = 0  # the last broadcast it has run

    def alive(self, now: float) -> bool:
        return now - self.last_seen < LIVE_SECONDS


class ClusterControl:
    """Interrupt flags by job id, the ordered calls for every replica, and what each replica reported."""

    def __init__(self) -> None:
        self._cancelled: set[str] = set()
        self._skips: Counter[str] = Counter()
        self._finished: list[str] = []
        self._broadcasts: list[tuple[int, Any]] = []  # (sequence number, call)
        self._sequence = 0
        self._errors: dict[int, dict[str, str]] = {}  # sequence -> replica -> error message
        self._results: dict[int, dict[str, Any]] = {}  # sequence -> replica -> what the call returned
        self._replicas: dict[str, ReplicaRecord] = {}

    # -- the front -------------------------------------------------------------------------------
    def cancel(self, job_id: str) -> None:
        """Stop the job within one step (its finished images are kept)."""
        self._cancelled.add(job_id)

    def skip(self, job_id: str) -> None:
        """Skip the job's current batch (A1111's Skip)."""
        self._skips[job_id] += 1

    def finished(self, job_id: str) -> None:
        """The front is done with the job: forget its flags (bounded memory)."""
        self._finished.append(job_id)
        while len(self._finished) > KEPT_FINISHED:
            old = self._finished.pop(0)
            self._cancelled.discard(old)
            self._skips.pop(old, None)

    def broadcast(self, call: Any) -> int:
        """Queue `call(engine, progress, cancel)` for every replica, now and started later; its sequence number."""
        self._sequence += 1
        self._broadcasts.append((self._sequence, call))
        del self._broadcasts[:-KEPT_BROADCASTS]
        for old in [n for n in self._results if n <= self._sequence - KEPT_BROADCASTS]:
            self._results.pop(old)
            self._errors.pop(old, None)
        return self._sequence

    def broadcast_state(self, sequence: int) -> dict[str, Any]:
        """Which live replicas have not run broadcast `sequence` yet; the errors and results of those that have."""
        now = time.time()
        pending = [r.replica for r in self._replicas.values() if r.alive(now) and r.acked < sequence]
        return {
            "pending": pending,
            "errors": dict(self._errors.get(sequence, {})),
            "results": dict(self._results.get(sequence, {})),
        }

    def replicas(self) -> list[ReplicaRecord]:
        """Every replica seen, alive or not (oldest first); a gone one is dropped after a while."""
        now = time.time()
        for key in [k for k, r in self._replicas.items() if now - r.last_seen > 60 * LIVE_SECONDS]:
            del self._replicas[key]
        return [ReplicaRecord(**vars(r)) for r in sorted(self._replicas.values(), key=lambda r: r.started)]

    # -- the replicas ----------------------------------------------------------------------------
    def register(self, replica: str, node: str, actor: str = "") -> None:
        now = time.time()
        self._replicas[replica] = ReplicaRecord(replica, node, actor, started=now, last_seen=now)

    def poll(self, replica: str, running: list[str], after: int) -> dict[str, Any]:
        """What replica `replica` must do now: the running jobs to stop or skip, the broadcasts past `after`."""
        record = self._replicas.get(replica)
        if record is not None:
            record.last_seen = time.time()
        skips = {job: self._skips.pop(job) for job in running if self._skips.get(job)}
        return {
            "cancel": [job for job in running if job in self._cancelled],
            "skip": skips,
            "broadcasts": [(sequence, call) for sequence, call in self._broadcasts if sequence > after],
        }

    def acked(self, replica: str, sequence: int, error: str | None = None, result: Any = None) -> None:
        """Replica `replica` has run broadcast `sequence`: `error` if it raised, else what it returned."""
        record = self._replicas.get(replica)
        if record is not None:
            record.acked = max(record.acked, sequence)
        if error is not None:
            self._errors.setdefault(sequence, {})[replica] = error
        else:
            self._results.setdefault(sequence, {})[replica] = result

    def report(self, replica: str, **changes: Any) -> None:
        """Replica `replica`'s news: held models, load and job counts, what it runs, its memory."""
        record = self._replicas.get(replica)
        if record is None:
            return
        record.last_seen = time.time()
        for name, value in changes.items():
            if name not in {"models", "loads", "jobs", "running", "memory"}:
                raise ValueError(f"report: {name!r} is not something a replica reports")
            setattr(record, name, value)


def start_control(name: str, namespace: str) -> Any:
    """The control actor, named so replicas find it (`ray.get_actor(name, namespace=...)`); it needs no CPU."""
    import ray

    return ray.remote(num_cpus=0)(ClusterControl).options(name=name, namespace=namespace).remote()
