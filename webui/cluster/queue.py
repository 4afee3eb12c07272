"""The one job queue in front of the replicas: the same FIFO, positions and interrupts, one worker per replica.

Users see what the single-process queue shows: their place in line, then progress and previews (streamed back
from the replica), interrupts of their own jobs only. A job placed `ANY` runs on one replica (the one holding its
model, when one does), `EVERY` on each replica, `FRONT` here with a `RemoteEngine` (a comparison's cells spread
over the replicas, the grid drawn here).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from webui.cluster.client import Cluster, RemoteEngine
from webui.engine.jobs import DEFAULT_MAX_SIZE, Job, JobQueue, Placement

if TYPE_CHECKING:
    from webui.cluster.control import ReplicaRecord
    from webui.engine.txt2img import Engine


class ClusterJobQueue(JobQueue):
    """A JobQueue whose jobs run on the replicas of `cluster`. `engine` is the front's own, which never generates:
    it answers what the front asks without a job (the outputs folder, the samples format)."""

    def __init__(self, engine: Engine, cluster: Cluster, max_size: int = DEFAULT_MAX_SIZE) -> None:
        super().__init__(engine, max_size)
        self.cluster = cluster

    @property
    def workers(self) -> int:
        return self.cluster.size

    def replicas(self) -> list[ReplicaRecord]:
        return self.cluster.replicas()

    def _execute(self, job: Job) -> Any:
        if job.placement is Placement.EVERY:
            return self.cluster.everywhere(job._call)
        if job.placement is Placement.FRONT:
            return job._call(RemoteEngine(self.cluster, self.engine), job._report, job.cancel_token)

        def on_replica(replica: str) -> None:
            job.replica = replica

        return self.cluster.run(job._call, job.model, job._report, job.cancel_token, job.kind, on_replica)

    def stop(self, timeout: float | None = None) -> None:
        """Stop the queue, then remove the replicas (and shut Ray down if this process started it)."""
        super().stop(timeout)
        self.cluster.close()
