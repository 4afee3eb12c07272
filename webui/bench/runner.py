"""Runs the benchmark for one size: prepares the files, measures every figure per family, builds the report."""

from __future__ import annotations

import datetime as dt
import subprocess
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import torch

from webui.bench import SIZES, dit_figures, sets
from webui.bench.cuda_figures import cuda_figures
from webui.bench.generation import request_and_ui, speed, unet_step
from webui.bench.loading import cached_switch, cold_load, vae_swap
from webui.bench.lora_figures import lora_figures
from webui.bench.machine import machine_info, versions
from webui.bench.memory_probe import memory_figure
from webui.bench.merge_figures import merge_figure
from webui.bench.report import family_block
from webui.bench.second_pass_figures import hires_overhead
from webui.bench.session import Figure, Session, release
from webui.bench.ui_roundtrip import UiServer, start_ui
from webui.engine.device import DevicePolicy

# (steps, repeats) per size and device type; --steps / --repeats override them.
DEFAULTS = {
    ("tiny", "cpu"): (4, 5),
    ("tiny", "cuda"): (4, 5),
    ("small", "cpu"): (4, 3),
    ("small", "cuda"): (20, 5),
    ("full", "cpu"): (2, 2),
    ("full", "cuda"): (20, 5),
}


def about(size: str) -> str:
    """What a run of `size` measures, for the report (family names from the descriptions' bench runs)."""
    if size == "tiny":
        return (
            "tiny fixtures (a few MB, milliseconds per call): fixed costs dominate every ratio; this run shows "
            "the command works, the figures worth quoting come from --size small or full"
        )
    recipes = sets.small_recipes() if size == "small" else sets.full_recipes()
    labels = " and ".join(recipe.family.label for recipe in recipes)
    if size == "small":
        return f"{labels} models scaled down from the real configs (random weights, a few hundred MB each)"
    return f"real-size {labels} architectures from the bundled configs, random weights (images are noise)"


@dataclass(frozen=True)
class BenchOptions:
    size: str = "tiny"
    device: str = "auto"
    models_dir: Path | None = None
    out: Path = Path("benchmarks/results")
    repeats: int | None = None
    warmup: int = 1
    steps: int | None = None
    threads: int | None = None  # torch CPU threads; None: 1 for tiny, torch's default otherwise

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise ValueError(f"size: {self.size!r} is unknown; use {', '.join(SIZES)}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device: {self.device!r} is unknown; use auto, cpu or cuda")
        if self.repeats is not None and self.repeats < 1:
            raise ValueError(f"repeats: {self.repeats} is out of range; allowed 1 and more")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads: {self.threads} is out of range; allowed 1 and more")
        if self.warmup < 0:
            raise ValueError(f"warmup: {self.warmup} is out of range; allowed 0 and more")


def _full_recipes(device: torch.device, skipped: dict[str, str]) -> list[sets.Recipe]:
    """The full-size recipes this machine's RAM can hold (two checkpoints each); the rest go to `skipped`."""
    available = psutil.virtual_memory().available
    fits = []
    for recipe in sets.full_recipes():
        # Bytes per parameter at the peak. CPU: two fp32 models (two checkpoints, or the engine's and the UI
        # app's) plus a load's fp16 file pages and its conversion; CUDA: fp16 weights pass through RAM.
        per_weight = 12 if device.type == "cpu" else 6
        needed = int(recipe.parameters() * per_weight)
        if needed > available:
            skipped[recipe.name] = (
                f"needs about {needed / 2**30:.0f} GiB of free RAM, {available / 2**30:.0f} GiB is free; skipped"
            )
        else:
            fits.append(recipe)
    if not fits:
        reasons = "; ".join(f"{name}: {why}" for name, why in skipped.items())
        raise ValueError(f"size: full does not fit this machine ({reasons}); use --size small, or a bigger machine")
    return fits


def bench_sets(options: BenchOptions, scratch: Path, device: torch.device, skipped: dict[str, str]) -> list[Any]:
    if options.size == "tiny":
        return [sets.tiny_set(options.models_dir, scratch)]
    root = options.models_dir or options.out / "cache"
    recipes = sets.small_recipes() if options.size == "small" else _full_recipes(device, skipped)
    return [sets.generated_set(recipe, root / recipe.name) for recipe in recipes]


def _session(options: BenchOptions, bench_set: Any, policy: DevicePolicy, scratch: Path) -> Session:
    from webui.models.hashing import HashCache
    from webui.models.library import ModelLibrary
    from webui.wiring import build_engine

    # The bench keeps its hash cache to itself: it writes nothing into a models dir it was pointed at.
    library = ModelLibrary(bench_set.models_dir, hash_cache=HashCache(scratch / "hashes.json"))
    library.scan()
    engine = build_engine(library, scratch / "outputs", policy)
    steps, repeats = DEFAULTS[(options.size, engine.manager.device.type)]
    return Session(bench_set, engine, options.steps or steps, options.repeats or repeats, options.warmup, scratch)


def _measure(session: Session) -> tuple[dict[str, Figure], dict[str, Any]]:
    figures: dict[str, Figure] = {}
    figures["cold_load_vs_file_read"], cold = cold_load(session)
    figures["cached_switch_vs_cold_load"] = cached_switch(session, cold)
    figures["vae_swap_ms"] = vae_swap(session)
    session.manager.load(session.choice())
    session.manager.cache.evict()  # from here on one model is enough: the second checkpoint's RAM goes back
    figures["engine_vs_diffusers_speed"], step = speed(session)
    with ExitStack() as stack:
        try:
            ui: UiServer | None = start_ui(session, stack)
            problem = ""
        except (OSError, RuntimeError, ValueError, ImportError) as error:
            ui, problem = None, f"no UI server could be started: {type(error).__name__}: {error}"
        figures["request_overhead"], figures["ui_roundtrip_vs_engine"] = request_and_ui(session, ui, problem)
    figures["lora_weight_change_vs_step"], figures["lora_first_load_vs_file_read"] = lora_figures(session, step)
    figures["merge_vs_file_read"] = merge_figure(session)
    figures["hires_pass_vs_diffusers_img2img"] = hires_overhead(session)
    extra: dict[str, Any] = {"unet_step": unet_step(session)}
    cuda = session.manager.device.type == "cuda"
    extra["cuda"] = cuda_figures(session) if cuda else None
    if not cuda:
        extra["notes_cuda"] = "fp16 vs fp32, attention slicing and TFLOP/s vs peak are measured on CUDA only"
    release(session.manager)  # the memory probe's process needs the RAM more than this one
    try:
        figures["memory_vs_unique_components"] = memory_figure(session)
    except (RuntimeError, subprocess.TimeoutExpired) as error:
        figures["memory_vs_unique_components"] = Figure(None, {}, f"memory probe failed: {error}")
    return figures, extra


def _transformer_figures(options: BenchOptions, all_sets: list[Any], device: torch.device) -> dict[str, Any]:
    """DiT families (FLUX.1): the tiny fixtures against plain diffusers, or the real-shape transformer on CUDA."""
    figures: dict[str, Any] = {}
    for family in dit_figures.dit_families():
        if options.size == "tiny":
            steps, repeats = DEFAULTS[("tiny", device.type)]
            figures[family.value] = dit_figures.tiny_figures(
                all_sets[0].models_dir,
                family,
                options.steps or steps,
                options.repeats or repeats,
                options.warmup,
                str(device),
            )
        elif options.size == "full":
            figures[family.value] = dit_figures.full_figures(family, device)
        else:
            figures[family.value] = {"skipped": "transformer families run at --size tiny and full"}
    return figures


def run(options: BenchOptions) -> dict[str, Any]:
    """Every figure for `options.size`; the first family's figures are the report's top-level keys."""
    from transformers.utils import logging as hf_logging

    threads = options.threads or (1 if options.size == "tiny" else None)
    before, bars = torch.get_num_threads(), hf_logging.is_progress_bar_enabled()
    if threads is not None:
        # Tiny models gain nothing from a second thread, and its spin-waiting on a busy box costs several times.
        torch.set_num_threads(threads)
    hf_logging.disable_progress_bar()  # "Loading weights" bars on every load
    try:
        return _run(options)
    finally:
        torch.set_num_threads(before)
        if bars:
            hf_logging.enable_progress_bar()


def _run(options: BenchOptions) -> dict[str, Any]:
    from webui.cli import quiet_libraries

    started = time.perf_counter()
    quiet_libraries()
    policy = DevicePolicy(device=options.device)
    device = policy.resolve_device()
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device: the benchmark runs on cpu or cuda, not {device.type}")
    machine = machine_info(device)  # before the run: free RAM and load average as the run found them
    skipped: dict[str, str] = {}
    blocks = []
    transformers: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="webui-bench-") as tmp:
        scratch = Path(tmp)
        all_sets = bench_sets(options, scratch, device, skipped)
        transformers = _transformer_figures(options, all_sets, device)
        for bench_set in all_sets:
            session = _session(options, bench_set, policy, scratch / bench_set.name)
            figures, extra = _measure(session)
            settings = {"model": bench_set.name, **session.settings()}
            blocks.append(family_block(settings, figures, extra))
            dtype = str(session.manager.dtype).removeprefix("torch.")
            del session
    first, *more = blocks
    return {
        "size": options.size,
        "device": device.type,
        "dtype": dtype,
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "about": about(options.size),
        "machine": machine,
        "versions": versions(),
        **first,
        "more_families": {block["settings"]["model"]: block for block in more},
        "transformer_families": transformers,
        "skipped": skipped,
        "total_seconds": time.perf_counter() - started,
    }
