"""Where model files live: our folder layout, A1111 and ComfyUI layouts, extra roots from a TOML file,
and walking them.

`models/extra_model_paths.toml` names existing installs so they are used in place, not copied:

    [[roots]]
    path = "~/stable-diffusion-webui"     # the A1111 / Forge install folder (holding models/ and embeddings/)
    preset = "a1111"

    [[roots]]
    path = "/data/ComfyUI"                # the ComfyUI folder (holding models/)
    preset = "comfyui"

    [[roots]]
    path = "../shared-models"             # relative paths are relative to this file
    [roots.folders]                       # or name the folders yourself: kind = folder or [folders]
    checkpoint = ["sd15", "sdxl"]
    lora = "loras"

Kinds: checkpoint, unet, text_encoder, vae, lora, embedding, upscaler.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from webui.models.files import MODEL_SUFFIXES
from webui.models.kinds import Kind

EXTRA_ROOTS_FILE = "extra_model_paths.toml"
log = logging.getLogger(__name__)

# Folder (relative to the models dir) -> what it holds. Our layout is ComfyUI's.
OWN_LAYOUT: dict[Kind, tuple[str, ...]] = {
    Kind.CHECKPOINT: ("checkpoints",),
    Kind.UNET: ("diffusion_models", "unet"),
    Kind.TEXT_ENCODER: ("text_encoders", "clip"),
    Kind.VAE: ("vae",),
    Kind.LORA: ("loras",),
    Kind.EMBEDDING: ("embeddings",),
    Kind.UPSCALER: ("upscalers", "upscale_models"),
}
# Folders relative to an install's root (the `models/...` forms) or to its models folder.
PRESETS: dict[str, dict[Kind, tuple[str, ...]]] = {
    "a1111": {
        Kind.CHECKPOINT: ("models/Stable-diffusion", "Stable-diffusion"),
        Kind.TEXT_ENCODER: ("models/text_encoder", "text_encoder"),
        Kind.VAE: ("models/VAE", "VAE"),
        Kind.LORA: ("models/Lora", "Lora", "models/LyCORIS", "LyCORIS"),
        Kind.EMBEDDING: ("embeddings",),
        Kind.UPSCALER: tuple(
            f"{base}{folder}" for folder in ("ESRGAN", "RealESRGAN", "SwinIR", "DAT", "HAT") for base in ("models/", "")
        ),
    },
    "comfyui": {
        kind: tuple(f"models/{f}" for f in folders) + folders for kind, folders in OWN_LAYOUT.items()
    },
}
_KIND_NAMES = ", ".join(k.value for k in OWN_LAYOUT)


class ExtraRootsError(ValueError):
    """The extra-roots file cannot be used; the message names the file, the entry and the fix."""


@dataclass(frozen=True)
class ModelRoot:
    """A folder scanned recursively for models of one kind (a hint: identification decides)."""

    path: Path
    kind: Kind
    origin: str = "models dir"  # where this root came from, for messages


def own_roots(models_dir: Path) -> list[ModelRoot]:
    """Our own folders under the models dir, whether or not they exist yet."""
    return [
        ModelRoot(models_dir / folder, kind) for kind, folders in OWN_LAYOUT.items() for folder in folders
    ]


def read_extra_roots(config: Path) -> tuple[list[ModelRoot], list[str]]:
    """Roots named in the TOML file, and a warning for each root that names nothing on disk.

    Raises ExtraRootsError for a file that cannot be parsed or an entry that makes no sense.
    """
    data = _load_toml(config)
    entries = data.get("roots", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ExtraRootsError(f'{config}: write each root as a [[roots]] table with path = "..."')
    roots: list[ModelRoot] = []
    warnings: list[str] = []
    for number, entry in enumerate(entries, start=1):
        where = f"{config}: root {number}"
        base = _root_path(entry, config, where)
        if not base.is_dir():
            warnings.append(f"{where}: {base} is not a folder; it was skipped (fix path = ...)")
            continue
        folders = _folders(entry, where)
        found = [
            ModelRoot(base / folder, kind, origin=f"{config.name}: {base}")
            for kind, names in folders.items()
            for folder in names
            if (base / folder).is_dir()
        ]
        if not found:
            expected = ", ".join(f for names in folders.values() for f in names)
            warnings.append(f"{where}: none of the expected folders ({expected}) exist under {base}")
        roots.extend(found)
    return roots, warnings


def install_folders(config: Path, preset: str = "a1111") -> list[Path]:
    """The install folders the TOML file names with `preset` (for files kept beside the models, like A1111's
    styles.csv); [] when the file is missing or unreadable (read_extra_roots reports why)."""
    if not config.is_file():
        return []
    try:
        entries = _load_toml(config).get("roots", [])
    except ExtraRootsError:
        return []
    folders = []
    for entry in entries if isinstance(entries, list) else []:
        raw = entry.get("path") if isinstance(entry, dict) else None
        if isinstance(raw, str) and raw.strip() and entry.get("preset") == preset:
            path = Path(raw).expanduser()
            folders.append(path if path.is_absolute() else config.parent / path)
    return [folder for folder in folders if folder.is_dir()]


def _load_toml(config: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise ExtraRootsError(f"{config}: reading it needs Python 3.11+ or `pip install tomli`") from None
    try:
        return tomllib.loads(config.read_text(encoding="utf-8"))
    except OSError as error:
        raise ExtraRootsError(f"{config}: cannot be read ({error.strerror or error})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ExtraRootsError(f"{config}: not valid TOML ({error}); see webui/models/roots.py") from None


def _root_path(entry: dict, config: Path, where: str) -> Path:
    raw = entry.get("path")
    if not isinstance(raw, str) or not raw.strip():
        raise ExtraRootsError(f'{where}: needs path = "/folder/of/the/install"')
    path = Path(raw).expanduser()
    return path if path.is_absolute() else (config.parent / path)


def _folders(entry: dict, where: str) -> dict[Kind, tuple[str, ...]]:
    preset, folders = entry.get("preset"), entry.get("folders")
    if (preset is None) == (folders is None):
        raise ExtraRootsError(
            f'{where}: give either preset = "a1111" / "comfyui" or a [roots.folders] table, not '
            f"{'both' if preset is not None else 'neither'}"
        )
    if preset is not None:
        if preset not in PRESETS:
            raise ExtraRootsError(f"{where}: preset {preset!r} is unknown; use one of: {', '.join(PRESETS)}")
        return PRESETS[preset]
    if not isinstance(folders, dict):
        raise ExtraRootsError(f'{where}: folders must be a table such as {{ checkpoint = "sd" }}')
    out: dict[Kind, tuple[str, ...]] = {}
    for name, value in folders.items():
        try:
            kind = Kind(name)
        except ValueError:
            raise ExtraRootsError(
                f"{where}: folders.{name} is not a kind; use one of: {_KIND_NAMES}"
            ) from None
        names = (value,) if isinstance(value, str) else value
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
            raise ExtraRootsError(f"{where}: folders.{name} must be a folder name or a list of them")
        out[kind] = tuple(names)
    return out


@dataclass
class FoundModel:
    """A model file or diffusers folder found under a root, with what a stat tells about it."""

    root: ModelRoot
    name: str  # relative to the root folder, without extension
    size: int = 0
    mtime_ns: int = 0
    problem: str | None = None  # could not even stat it (a broken link)
    sidecar_mtime_ns: int | None = None  # the A1111 `<stem>.yaml` beside it, if any
    aliases: tuple[str, ...] = ()  # names of other paths (links) to the same file


MAX_WALK_DEPTH = 32  # folders below a root; deeper is a loop or a mistake, not a model collection
MAX_WALK_ENTRIES = 200_000  # directory entries looked at per root


@dataclass
class WalkBudget:
    """How much of a folder tree one walk may look at; `exhausted` says the walk was cut short."""

    entries: int = MAX_WALK_ENTRIES
    exhausted: bool = False

    def spend(self, folder: Path) -> bool:
        self.entries -= 1
        if self.entries < 0 and not self.exhausted:
            self.exhausted = True
            log.warning("stopped listing models under %s: more than %d entries", folder, MAX_WALK_ENTRIES)
        return not self.exhausted


def walk_models(
    folder: Path, root: Path, visited: set[str] | None = None, budget: WalkBudget | None = None, depth: int = 0
) -> Iterator[tuple[Path, str]]:
    """(path, name) of model files and diffusers folders under `folder`; hidden entries skipped.

    Bounded: each real folder once (symlink loops end), at most MAX_WALK_DEPTH deep and MAX_WALK_ENTRIES entries.
    An entry that cannot even be inspected (a symlink loop named like a model) is yielded, so its problem is listed.
    """
    visited = set() if visited is None else visited
    budget = budget or WalkBudget()
    real = os.path.realpath(folder)
    if real in visited:
        return  # a symlink loop
    visited.add(real)
    if depth > MAX_WALK_DEPTH:
        log.warning("not listing models under %s: more than %d folders deep", folder, MAX_WALK_DEPTH)
        return
    try:
        children = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as error:
        log.warning("cannot list %s: %s", folder, error)
        return
    for child in children:
        if child.name.startswith(".") or not budget.spend(folder):
            continue
        path = Path(child.path)
        relative = path.relative_to(root).as_posix()
        try:
            is_dir = child.is_dir()
        except OSError:  # a symlink loop or an entry gone meanwhile: not a folder to enter
            is_dir = False
        if is_dir:
            if (path / "model_index.json").is_file():
                yield path, relative
            elif path.suffix.lower() in MODEL_SUFFIXES:  # listed so that its problem is seen
                yield path, relative[: -len(path.suffix)]
            else:
                yield from walk_models(path, root, visited, budget, depth + 1)
        elif path.suffix.lower() in MODEL_SUFFIXES:
            yield path, relative[: -len(path.suffix)]


def linked_folders(path: Path, root: Path) -> int:
    """How many folders between `root` and `path` are symlinks (the file itself not counted)."""
    count, folder = 0, path.parent
    while folder != root and root in folder.parents:
        count += folder.is_symlink()
        folder = folder.parent
    return count


def stat_model(path: Path, found: FoundModel) -> FoundModel:
    """Fill in size and mtime (a folder: sum and newest of its files); a broken link gets a problem."""
    try:
        if path.is_dir():
            found.size, found.mtime_ns = _folder_size_and_mtime(path)
        else:
            stat = path.stat()
            found.size, found.mtime_ns = stat.st_size, stat.st_mtime_ns
            sidecar = path.with_suffix(".yaml")
            found.sidecar_mtime_ns = sidecar.stat().st_mtime_ns if sidecar.is_file() else None
    except OSError as error:
        target = f" (it points to {os.readlink(path)})" if path.is_symlink() else ""
        found.problem = f"cannot be read: {error.strerror or error}{target}; fix or remove it"
    return found


def _folder_size_and_mtime(folder: Path) -> tuple[int, int]:
    """Sum of sizes and newest mtime of a diffusers folder's files (links not followed into folders)."""
    size, newest, budget = 0, folder.stat().st_mtime_ns, WalkBudget()
    for base, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            if not budget.spend(folder):
                return size, newest
            stat = os.stat(os.path.join(base, name))
            size += stat.st_size
            newest = max(newest, stat.st_mtime_ns)
    return size, newest
