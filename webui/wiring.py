"""Builds the engine over a model library: the one place front ends (CLI, UI, API) get it from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from webui.engine.cache import ComponentCache
from webui.engine.device import DevicePolicy
from webui.engine.embeddings import EmbeddingSet
from webui.engine.pipelines import PipelineManager, default_budgets
from webui.engine.txt2img import Engine
from webui.models.kinds import Kind


def build_engine(
    library: Any,
    outputs_dir: Path,
    policy: DevicePolicy | None = None,
    budgets: dict[str, int] | None = None,
) -> Engine:
    """An Engine whose hashes, LoRA names and embeddings come from `library` (a ModelLibrary)."""
    policy = policy or DevicePolicy()
    device = policy.resolve_device()
    cache = ComponentCache({**default_budgets(device), **(budgets or {})})
    manager = PipelineManager(library.models_dir, policy, cache, default_part=library.default_part)
    return Engine(
        manager,
        outputs_dir,
        hasher=library.model_hash,
        lora_resolver=lambda name: library.find(name, Kind.LORA).path,
        # Unusable embedding files too: a prompt naming one gets told why it was skipped, not read as words.
        embeddings=EmbeddingSet(lambda: [e.path for e in library.entries(Kind.EMBEDDING)]),
        upscaler_resolver=lambda name: library.find(name, Kind.UPSCALER).path,
    )
