"""The A1111 routes that describe and manage the server rather than generate: styles, embeddings, memory, scripts,
upscalers, command-line flags, skip, unloading and reloading the checkpoint, and `/internal/ping`.

Each answers with A1111's shape; where this studio has nothing of a kind (scripts) the list is empty, as A1111's is
when nothing of that kind is installed.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures, whose owner type is a parameter.
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import psutil
import torch
from fastapi import APIRouter

from webui.api.models import (
    EmbeddingsResponse,
    LatentUpscalerModeItem,
    MemoryResponse,
    PromptStyleItem,
    ScriptInfo,
    ScriptsList,
    UpscalerItem,
)
from webui.api.second_pass import upscaler_items
from webui.engine.embeddings import load_embedding
from webui.engine.jobs import JobCall, JobQueue, Placement
from webui.engine.styles import StyleLibrary
from webui.engine.upscalers import LATENT_MODES
from webui.models.kinds import Kind


def memory() -> dict[str, Any]:
    """A1111's /memory: this process's RAM (used = its resident size, as A1111 counts it) and CUDA's figures."""
    used = psutil.Process(os.getpid()).memory_info().rss
    total = psutil.virtual_memory().total
    ram = {"free": total - used, "used": used, "total": total}
    if not torch.cuda.is_available():
        return {"ram": ram, "cuda": {"error": "unavailable"}}
    free, whole = torch.cuda.mem_get_info()
    stats = torch.cuda.memory_stats()

    def pair(name: str) -> dict[str, int]:
        return {"current": stats.get(f"{name}.all.current", 0), "peak": stats.get(f"{name}.all.peak", 0)}

    cuda = {
        "system": {"free": free, "used": whole - free, "total": whole},
        "active": pair("active_bytes"),
        "allocated": pair("allocated_bytes"),
        "reserved": pair("reserved_bytes"),
        "inactive": pair("inactive_split_bytes"),
        "events": {"retries": stats.get("num_alloc_retries", 0), "oom": stats.get("num_ooms", 0)},
    }
    return {"ram": ram, "cuda": cuda}


def embeddings(library: Any, widths: tuple[int, ...] | None) -> dict[str, Any]:
    """A1111's /embeddings: those the loaded model can use (`loaded`) and the others (`skipped`), each with its
    vector width (`shape`) and count. With no model loaded, every readable embedding counts as loaded."""
    loaded: dict[str, Any] = {}
    skipped: dict[str, Any] = {}
    for entry in library.entries(Kind.EMBEDDING):
        if not entry.usable:
            continue
        try:
            embedding = load_embedding(entry.path)
        except (OSError, ValueError) as error:
            skipped[entry.path.stem] = {"shape": 0, "vectors": 0, "sd_checkpoint_name": str(error)}
            continue
        width = (widths or embedding.widths)[-1]
        vectors = embedding.vectors.get(width, next(iter(embedding.vectors.values())))
        item = {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None}
        item |= {"shape": int(vectors.shape[-1]), "vectors": int(vectors.shape[0])}
        fits = widths is None or all(w in embedding.vectors for w in widths)
        (loaded if fits else skipped)[embedding.name] = item
    return {"loaded": loaded, "skipped": skipped}


def _encoder_widths(engine: Any) -> tuple[int, ...] | None:
    current = engine.manager.current
    if current is None:
        return None
    models = [getattr(current.pipeline, name, None) for name in ("text_encoder", "text_encoder_2")]
    return tuple(model.config.hidden_size for model in models if model is not None)


def _unload() -> JobCall:
    def run(engine: Any, _progress: Callable[[Any], None], _cancel: Any) -> None:
        with engine.gpu_lock:
            engine.loras.unfuse()
            engine.manager.current = None
            engine.manager.cache.clear()  # drops every component and frees the memory (measured in test_memory)
            engine.upscaler_models.clear()

    return run


def _reload(checkpoint: Callable[[], Path | None]) -> JobCall:
    def run(engine: Any, _progress: Callable[[Any], None], _cancel: Any) -> None:
        from webui.engine.pipelines import ModelChoice

        path = checkpoint()
        if path is None:
            raise ValueError("sd_model_checkpoint: no checkpoint to reload; set one with /sdapi/v1/options")
        with engine.gpu_lock:
            engine.loras.unfuse()
            engine.manager.current = None
            engine.manager.cache.clear()
            engine.manager.load(ModelChoice(path))

    return run


def add_info_routes(
    router: APIRouter,
    queue: JobQueue,
    library: Any,
    styles: StyleLibrary | None,
    cmd_flags: Mapping[str, Any],
    submit: Callable[[JobCall, str, str, Placement], Any],
    checkpoint: Callable[[], Path | None],
    owner_type: Any,
) -> None:
    """Add the routes to the /sdapi/v1 `router`. `submit(call, owner, kind, placement)` runs a call as a queue job
    and waits; `checkpoint()` is the option's checkpoint file; `owner_type` the route parameter type naming the
    caller."""

    @router.get("/prompt-styles", response_model=list[PromptStyleItem])
    def prompt_styles() -> list[dict[str, Any]]:
        found = styles.styles() if styles is not None else {}
        return [{"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt} for s in found.values()]

    @router.get("/embeddings", response_model=EmbeddingsResponse)
    def get_embeddings() -> dict[str, Any]:
        return embeddings(library, _encoder_widths(queue.engine))

    @router.post("/refresh-embeddings")
    def refresh_embeddings() -> None:
        library.refresh()

    @router.get("/upscalers", response_model=list[UpscalerItem])
    def upscalers() -> list[dict[str, Any]]:
        return upscaler_items(library)

    @router.get("/latent-upscale-modes", response_model=list[LatentUpscalerModeItem])
    def latent_upscale_modes() -> list[dict[str, Any]]:
        return [{"name": name} for name in LATENT_MODES]

    @router.get("/scripts", response_model=ScriptsList)
    def scripts() -> dict[str, list[str]]:
        return {"txt2img": [], "img2img": []}  # no A1111 scripts or extensions run here

    @router.get("/script-info", response_model=list[ScriptInfo])
    def script_info() -> list[dict[str, Any]]:
        return []

    @router.get("/memory", response_model=MemoryResponse)
    def get_memory() -> dict[str, Any]:
        return memory()

    @router.get("/cmd-flags")
    def get_cmd_flags() -> dict[str, Any]:
        return dict(cmd_flags)

    @router.post("/skip")
    def skip(owner: owner_type) -> dict[str, Any]:
        queue.skip(owner)
        return {}

    @router.post("/unload-checkpoint")
    async def unload_checkpoint(owner: owner_type) -> Any:
        return await submit(_unload(), owner, "unload-model", Placement.EVERY)

    @router.post("/reload-checkpoint")
    async def reload_checkpoint(owner: owner_type) -> Any:
        return await submit(_reload(checkpoint), owner, "load-model", Placement.EVERY)


def build_internal_router(dependency: Any) -> APIRouter:
    """`/internal/ping`, which A1111's own front end and some clients call to see that the server is up."""
    router = APIRouter(prefix="/internal", tags=["internal"], dependencies=[dependency])

    @router.get("/ping")
    def ping() -> dict[str, Any]:
        return {}

    return router
