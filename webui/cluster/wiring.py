"""Builds the job queue over Ray Serve replicas from the launch settings (`python launch.py --ray [ADDRESS]`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from webui.cluster.client import Cluster, ClusterOptions
from webui.cluster.queue import ClusterJobQueue
from webui.cluster.replica import ReplicaConfig

if TYPE_CHECKING:
    from webui.config import Settings
    from webui.engine.device import DevicePolicy
    from webui.engine.txt2img import Engine

MISSING_EXTRA = '--ray needs Ray Serve, the "cluster" extra: pip install -c constraints.txt -e ".[cluster]"'


def cluster_queue(settings: Settings, engine: Engine, policy: DevicePolicy, budgets: dict[str, int]) -> ClusterJobQueue:
    """Start (or join) Ray, deploy the engine replicas with the front's device policy, memory budgets and folders,
    and return the queue in front of them (not started). ValueError when Ray Serve is not installed or the cluster
    cannot hold the replicas."""
    try:
        import ray.serve  # noqa: F401  (only to say clearly what is missing)
    except ImportError:
        raise ValueError(MISSING_EXTRA) from None
    config = ReplicaConfig(
        models_dir=settings.models_dir.absolute(),
        outputs_dir=settings.outputs_dir.absolute(),
        extra_model_paths=settings.extra_model_paths.absolute() if settings.extra_model_paths else None,
        device=policy.device,
        precision=policy.precision,
        attention_slicing=policy.attention_slicing,
        budgets=tuple(sorted(budgets.items())),
        samples_format=engine.samples_format,
    )
    options = ClusterOptions(
        address=settings.ray or None, replicas=settings.ray_replicas, models_per_replica=settings.ray_models_per_replica
    )
    return ClusterJobQueue(engine, Cluster.start(config, options))
