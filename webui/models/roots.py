"""Where model files live: our folder layout, A1111 and ComfyUI layouts, and extra roots from a TOML file.

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

Kinds: checkpoint, unet, text_encoder, vae, lora, embedding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from webui.models.kinds import Kind

EXTRA_ROOTS_FILE = "extra_model_paths.toml"

# Folder (relative to the models dir) -> what it holds. Our layout is ComfyUI's.
OWN_LAYOUT: dict[Kind, tuple[str, ...]] = {
    Kind.CHECKPOINT: ("checkpoints",),
    Kind.UNET: ("diffusion_models", "unet"),
    Kind.TEXT_ENCODER: ("text_encoders", "clip"),
    Kind.VAE: ("vae",),
    Kind.LORA: ("loras",),
    Kind.EMBEDDING: ("embeddings",),
}
# Folders relative to an install's root (the `models/...` forms) or to its models folder.
PRESETS: dict[str, dict[Kind, tuple[str, ...]]] = {
    "a1111": {
        Kind.CHECKPOINT: ("models/Stable-diffusion", "Stable-diffusion"),
        Kind.TEXT_ENCODER: ("models/text_encoder", "text_encoder"),
        Kind.VAE: ("models/VAE", "VAE"),
        Kind.LORA: ("models/Lora", "Lora", "models/LyCORIS", "LyCORIS"),
        Kind.EMBEDDING: ("embeddings",),
    },
    "comfyui": {kind: tuple(f"models/{f}" for f in folders) + folders for kind, folders in OWN_LAYOUT.items()},
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
            raise ExtraRootsError(f"{where}: folders.{name} is not a kind; use one of: {_KIND_NAMES}") from None
        names = (value,) if isinstance(value, str) else value
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
            raise ExtraRootsError(f'{where}: folders.{name} must be a folder name or a list of them')
        out[kind] = tuple(names)
    return out
