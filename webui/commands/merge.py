"""`python -m webui merge` and `python -m webui convert`: make a model from others, or re-save one as a single file."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from webui.config import add_path_arguments

if TYPE_CHECKING:
    from webui.engine.progress import CancelToken
    from webui.merge.merger import MergeProgress

MERGE_HELP = """\
models are names as `python -m webui models` lists them, or paths; a model in component files is written
  "unet.safetensors + clip_l.safetensors + vae.safetensors". One model: no interpolation (convert, prune, bake in);
  two: weighted sum A*(1-alpha) + B*alpha; three: add difference A + (B - C)*alpha.
  --blocks GRAD_V                      a preset (GRAD_V, GRAD_A, FLAT_25, WRAP08, OUT12, SMOOTHSTEP, ...)
  --blocks "IN00=0, OUT*=1, BASE=0.3"  named blocks (globs allowed); BASE is everything outside the blocks
  --blocks "0,0.1,...,1"               one number per block in order (IN00.., M00, OUT00..), BASE first optional
                                       (a double/single-block DiT: IN, D00.., S00.., OUT, as supermerger names them)
  --parts denoiser,text_encoder        merge only these (the rest is A's); denoiser, text_encoder, vae
The result goes to models/checkpoints/ (a lone UNet or transformer to diffusion_models/), never over an existing
file. Ctrl-C stops the merge and leaves nothing."""


@contextmanager
def _ctrl_c_cancels(cancel: CancelToken) -> Iterator[None]:
    def handler(_signum: int, _frame: object) -> None:
        print("\ninterrupting after this tensor (Ctrl-C again to abort)", file=sys.stderr)
        cancel.cancel()
        signal.signal(signal.SIGINT, previous)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class _ProgressLine:
    """One progress line on stderr, redrawn at most every 0.2 s (plain lines every 10% when not a terminal)."""

    def __init__(self, verb: str) -> None:
        self.verb = verb
        self.terminal = sys.stderr.isatty()
        self.shown = -1.0
        self.last = 0.0

    def __call__(self, progress: MergeProgress) -> None:
        now = time.monotonic()
        done = progress.done == progress.total
        if self.terminal:
            if now - self.last < 0.2 and not done:
                return
            self.last = now
            eta = f", {progress.eta_seconds:.0f} s left" if progress.eta_seconds is not None else ""
            line = f"\r{self.verb}: {progress.fraction:6.1%} ({progress.done}/{progress.total} tensors{eta})"
            print(line, end="\n" if done else "", file=sys.stderr, flush=True)
        elif progress.fraction - self.shown >= 0.1 or done:
            self.shown = progress.fraction
            print(f"{self.verb}: {progress.fraction:.0%} ({progress.done}/{progress.total} tensors)", file=sys.stderr)


def _recipe(args: argparse.Namespace, library: Any, models: list[str]) -> Any:
    from webui.commands.generate import parse_lora_flag
    from webui.families.base import Part
    from webui.merge.naming import resolve_model
    from webui.merge.recipe import MergeMode, MergeRecipe

    inputs = [resolve_model(library, text) for text in models]
    mode = MergeMode(args.mode) if args.mode else (list(MergeMode)[len(inputs) - 1] if len(inputs) <= 3 else None)
    if mode is None:
        raise ValueError("models: give one, two or three models")
    parts = frozenset(Part(p.strip()) for p in args.parts.split(",")) if args.parts else frozenset(Part)
    vae = None
    if args.vae:
        vae = Path(args.vae) if Path(args.vae).exists() else library.find(args.vae).path
    return MergeRecipe(
        mode,
        *inputs,
        alpha=args.alpha,
        block_weights=args.blocks,
        parts=parts,
        vae=vae,
        loras=tuple(parse_lora_flag(value, library) for value in args.lora or []),
        precision=args.precision,
        prune=args.prune,
        discard=args.discard or "",
        name=args.name or "",
    )


def _run(args: argparse.Namespace, models: list[str]) -> int:
    from webui.cli import quiet_libraries
    from webui.engine.progress import CancelToken
    from webui.merge.merger import MergeInterrupted, output_kind, plan_merge, run_merge
    from webui.merge.naming import default_name, output_path
    from webui.merge.recipe import MergeMode
    from webui.models.library import open_library

    quiet_libraries()
    library = open_library(args.models_dir, args.extra_model_paths)
    library.scan()
    recipe = _recipe(args, library, models)
    plan = plan_merge(recipe)
    if args.out:
        target = Path(args.out)
    else:
        target = output_path(library.models_dir, args.name or default_name(recipe), output_kind(plan))
    cancel = CancelToken()
    try:
        with _ctrl_c_cancels(cancel):
            verb = "writing" if recipe.mode is MergeMode.NO_INTERPOLATION else "merging"
            result = run_merge(plan, target, library.hash_cache, _ProgressLine(verb), cancel)
    except MergeInterrupted as stopped:
        print(f"interrupted: {stopped}", file=sys.stderr)
        return 130
    if args.json:
        json.dump(result.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(result.path)
    print(
        f"{result.family.label} {result.kind.value}: {result.tensors} tensors ({result.merged} merged), "
        f"{result.bytes_written / 2**20:,.1f} MiB in {result.seconds:.1f} s"
    )
    if result.kept_from_a:
        print(f"kept from A: {len(result.kept_from_a)} tensors the other model(s) lack, e.g. {result.kept_from_a[0]}")
    if result.dropped:
        print(f"dropped: {len(result.dropped)} tensors, e.g. {result.dropped[0]}")
    for report in result.lora_reports:
        print(f"LoRA {report.name}: {report.applied} modules baked in, {report.unapplied} not")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    return _run(args, args.models)


def cmd_convert(args: argparse.Namespace) -> int:
    """Any layout -> one .safetensors in the family's single-file layout (default: beside the input)."""
    if not args.out and not args.name:
        source = Path(args.model.split(" + ")[0]).expanduser()
        if source.exists():
            stem = source.name if source.is_dir() else source.stem
            args.out = str(source.parent / f"{stem}.safetensors")
    return _run(args, [args.model])


def _add_output_arguments(parser: argparse.ArgumentParser, precision: str) -> None:
    parser.add_argument("--precision", default=precision, choices=["fp16", "bf16", "fp32"], help="stored float dtype")
    parser.add_argument("--prune", action="store_true", help="keep only the model's components (drop EMA, leftovers)")
    parser.add_argument("--discard", metavar="REGEX", help="drop tensors whose key matches (A1111's discard weights)")
    parser.add_argument("--vae", help="bake in this VAE file")
    parser.add_argument("--lora", action="append", metavar="NAME_OR_PATH:UNET_W[:TE_W]", help="bake in a LoRA")
    parser.add_argument("--name", help="output name in the models folder (default: A1111's, e.g. '0.7(a) + 0.3(b)')")
    parser.add_argument("--out", help="output path instead (must not exist)")
    parser.add_argument("--json", action="store_true", help="print the result and its recipe as JSON")


def register(sub: Any) -> None:
    merge = sub.add_parser(
        "merge",
        help="merge checkpoints (weighted sum, add difference, per-block weights), bake in a VAE or LoRAs",
        epilog=MERGE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_path_arguments(merge)
    merge.add_argument("models", nargs="+", metavar="MODEL", help="A, then B, then C")
    merge.add_argument("--mode", choices=["No interpolation", "Weighted sum", "Add difference"])
    merge.add_argument("--alpha", type=float, default=0.5, help="multiplier, 0..1 (default 0.5)")
    merge.add_argument("--blocks", metavar="SPEC", help="per-block weights over the denoiser's blocks")
    merge.add_argument("--parts", metavar="LIST", help="what to merge: denoiser, text_encoder, vae (default all)")
    _add_output_arguments(merge, "fp16")
    merge.set_defaults(func=cmd_merge)

    convert = sub.add_parser(
        "convert", help="re-save any model layout (diffusers folder, .ckpt, split files) as one .safetensors"
    )
    add_path_arguments(convert)
    convert.add_argument("model", metavar="MODEL", help="a checkpoint, folder, or component files joined by ' + '")
    _add_output_arguments(convert, "fp16")
    convert.set_defaults(func=cmd_convert, mode=None, alpha=0.0, blocks=None, parts=None)
