"""Subcommands of `python -m webui`: models, make-tiny-models; the rest register themselves from webui/commands/."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from webui.config import add_path_arguments


def _human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def require_models_dir(path: Path) -> None:
    """FileNotFoundError naming `path` when the models folder is missing (rather than "no models found")."""
    if not Path(path).is_dir():
        kind = "is not a folder" if Path(path).exists() else "does not exist"
        raise FileNotFoundError(
            f"--models-dir: {path} {kind}; give the folder holding checkpoints/, loras/, vae/ ... "
            "(python -m webui make-tiny-models DIR writes a small one to try)"
        )


def cmd_models(args: argparse.Namespace) -> int:
    from webui.models.library import open_library

    require_models_dir(args.models_dir)
    library = open_library(args.models_dir, args.extra_model_paths)
    entries = library.scan()
    if args.hash:
        library.hash_all(entries)
        entries = library.scan()
    rows = [entry.to_json() for entry in entries]
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    if not rows:
        print(f"No model files found under {args.models_dir} (see {args.models_dir}/README.md).")
        return 0
    for row in rows:
        status = row["problem"] or f"{row['kind']}, {row['architecture']}"
        print(f"{row['path']}  [{row['format']}, {_human_size(row['size'])}, hash {row['hash'] or '-'}]  {status}")
    return 0


def quiet_libraries() -> None:
    """diffusers and transformers log advice meant for their own developers; keep the user's terminal clean."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()


def cmd_make_tiny_models(args: argparse.Namespace) -> int:
    from webui.testing.tiny import write_tiny_models

    files = write_tiny_models(args.dir)
    print(f"Wrote {len(files)} tiny model files under {args.dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m webui", description="Local Stable Diffusion studio.")
    sub = parser.add_subparsers(dest="command", required=True)

    models = sub.add_parser("models", help="list what the model library found")
    add_path_arguments(models)
    models.add_argument("--json", action="store_true", help="print JSON (one object per file)")
    models.add_argument("--hash", action="store_true", help="compute missing hashes before printing")
    models.set_defaults(func=cmd_models)

    for module in ("generate", "compare", "bench", "merge"):
        importlib.import_module(f"webui.commands.{module}").register(sub)

    tiny = sub.add_parser("make-tiny-models", help="write tiny random test models in every file layout")
    tiny.add_argument("dir", type=Path, help="models dir to write into")
    tiny.set_defaults(func=cmd_make_tiny_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, LookupError, OSError) as error:
        print(f"error: {error_text(error)}", file=sys.stderr)
        return 2


def error_text(error: BaseException) -> str:
    """What went wrong, in words: the message of the project's own errors (they name the field or file), else the
    error's type with its value (a KeyError's text is only the key: `5` says nothing)."""
    message = str(error)
    if isinstance(error, KeyError) or not message:
        return f"{type(error).__name__}: {message or 'no details'} (unexpected; please report it)"
    return message
