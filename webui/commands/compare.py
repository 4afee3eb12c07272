"""`python -m webui compare`: one prompt and seed over up to three axes, saved as labelled grids."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from webui.commands.generate import add_device_arguments, add_request_arguments
from webui.config import add_path_arguments

if TYPE_CHECKING:
    from webui.engine.compare_axes import Axis
    from webui.engine.progress import CancelToken

AXES_HELP = """\
axes: checkpoint, unet, text-encoder, vae, lora, cfg, steps, sampler, schedule, seed, clip-skip, prompt-sr
  --x checkpoint=model-a,model-b      names as `python -m webui models` lists them, or paths
  --x "checkpoint=a,merge 0.3,merge 0.5,b"  merge α: A*(1-α) + B*α of the checkpoints around it, written once
                                       into models/checkpoints/merges/ (reused after) so each image names a real file
  --y cfg=4,7 --z sampler="Euler a",DDIM
  --x vae=Automatic,my-vae             Automatic: the checkpoint's own component
  --x text-encoder="clip-l + clip-g"   a model with two text encoders: both, joined by " + "
  --x lora:NAME=off,0.5,1              one LoRA of the stack: on, off, a weight, or UNET_W:TE_W
  --x prompt-sr=red,"blue, green"      the first value is searched in the prompt; each value replaces it
Values holding commas are quoted CSV-style. Every cell is one image (batch flags are ignored); seed -1 draws one
seed for the whole job. Ctrl-C stops the job and the grid is drawn with what finished."""


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "compare",
        help="run one prompt over up to three axes (checkpoints, VAEs, LoRA weights, CFG, ...) and save grids",
        epilog=AXES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_path_arguments(parser)
    add_request_arguments(parser)
    add_device_arguments(parser)
    parser.add_argument("--x", required=True, metavar="AXIS=V1,V2,...", help="the grid's columns")
    parser.add_argument("--y", metavar="AXIS=V1,V2,...", help="the grid's rows")
    parser.add_argument("--z", metavar="AXIS=V1,V2,...", help="one grid per value")
    parser.add_argument("--json", action="store_true", help="print grids and cells as JSON")
    parser.set_defaults(func=cmd_compare)


@contextmanager
def _ctrl_c_cancels(cancel: CancelToken) -> Iterator[None]:
    """The first Ctrl-C stops the job cleanly (the grid is drawn with what finished); a second one aborts."""

    def handler(_signum: int, _frame: object) -> None:
        print("interrupting after this step (Ctrl-C again to abort)", file=sys.stderr)
        cancel.cancel()
        signal.signal(signal.SIGINT, previous)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _with_model_from_axes(args: argparse.Namespace, axes: list[Axis]) -> argparse.Namespace:
    """Without --checkpoint or --unet, the first named value of a checkpoint (or UNet) axis is the base model."""
    from webui.engine.compare_axes import AxisKind, is_automatic

    if args.checkpoint is not None or args.unet is not None:
        return args
    for kind, flag in ((AxisKind.CHECKPOINT, "checkpoint"), (AxisKind.UNET, "unet")):
        axis = next((a for a in axes if a.kind is kind), None)
        value = next((v for v in axis.values if not is_automatic(v)), None) if axis else None
        if value is not None:
            return argparse.Namespace(**{**vars(args), flag: value.strip()})
    return args


def cmd_compare(args: argparse.Namespace) -> int:
    from webui.cli import require_models_dir
    from webui.commands.generate import check_request_flags

    check_request_flags(args)  # before the libraries load: a typo is answered at once
    require_models_dir(args.models_dir)
    from webui.cli import quiet_libraries
    from webui.commands.generate import engine_from_args, lora_problems, resolve_request
    from webui.engine.compare import CellStatus, cell_label, run_compare
    from webui.engine.compare_axes import parse_axis
    from webui.engine.compare_plan import CompareJob, library_resolver
    from webui.engine.progress import CancelToken
    from webui.merge.compare_merges import CompareMerges
    from webui.models.library import open_library

    x, y, z = (None if spec is None else parse_axis(spec) for spec in (args.x, args.y, args.z))
    quiet_libraries()
    library = open_library(args.models_dir, args.extra_model_paths)
    library.scan()
    resolved = resolve_request(_with_model_from_axes(args, [a for a in (x, y, z) if a is not None]), library)
    for line in resolved.notes:
        print(f"note: {line}", file=sys.stderr)
    for problem in lora_problems(resolved.missing):
        print(f"warning: {problem}", file=sys.stderr)
    job = CompareJob(resolved.request, x, y, z)
    engine = engine_from_args(args, library)
    cancel = CancelToken()
    with _ctrl_c_cancels(cancel):
        merges = CompareMerges(library)  # a checkpoint axis' "merge 0.3" values, written into checkpoints/merges/
        result = run_compare(engine, job, library_resolver(library), cancel=cancel, merges=merges)
    if args.json:
        json.dump(result.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for path in result.grids:
            print(path)
        for cell in result.cells:
            if cell.status is CellStatus.DONE:
                print(f"  {cell_label(cell.cell)}: {cell.path}  {cell.seconds:.2f} s (load {cell.load_seconds:.2f} s)")
            else:
                print(f"  {cell_label(cell.cell)}: {cell.to_json()['error']}")
    return 130 if result.interrupted else 0
