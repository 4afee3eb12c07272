"""Dropdown choices from the model library: titles users see and pick, and the files they name.

A dropdown's values travel to the browser and back, so they are names the library resolves (`title`, or
`kind: title` where every kind is listed), never paths: paths stay on the server, and a value sent back is only
ever looked up in the library, never opened as given."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from webui.families import Family
from webui.families.encoders import encoder_label
from webui.models.kinds import Kind, TextEncoderType
from webui.models.library import ModelEntry, ModelLibrary, ModelNotFoundError
from webui.models.loading import Role

FROM_CHECKPOINT = "From checkpoint"
# The checkpoint dropdown's last choice: a model assembled from the Components tab alone (FLUX.1's split files).
NO_CHECKPOINT = "None: components only"
ROLE_KINDS = {Role.UNET: Kind.UNET, Role.VAE: Kind.VAE, Role.TEXT_ENCODER: Kind.TEXT_ENCODER}
ROLE_LABELS = {
    Role.UNET: "UNet",
    Role.VAE: "VAE",
    Role.TEXT_ENCODER: "Text encoder",
    Role.TEXT_ENCODER_2: "Text encoder 2",
    Role.TEXT_ENCODER_3: "Text encoder 3",
}


def title(entry: ModelEntry) -> str:
    """What a dropdown shows and sends back: the file name as `library.find` reads it (`sub/foo.safetensors`)."""
    return entry.name if entry.path.is_dir() else f"{entry.name}{entry.path.suffix}"


def title_for_path(library: ModelLibrary, path: Path | None) -> str | None:
    """The dropdown value naming `path`: its title, or only its file name when the library does not list it."""
    if path is None:
        return None
    wanted = Path(path).absolute()
    for entry in library.entries():
        if entry.path == wanted:
            return title(entry)
    return Path(path).name


def any_kind_choice(entry: ModelEntry) -> tuple[str, str]:
    """(label, value) for a dropdown of files of every kind: `kind: title` (`lora: sub/foo.safetensors`)."""
    value = f"{entry.kind.value}: {title(entry)}"
    return value, value


def find_any_kind(library: ModelLibrary, value: str) -> ModelEntry:
    """The entry an `any_kind_choice` value names; ModelNotFoundError for anything else."""
    kind_name, _, name = value.partition(": ")
    kinds = {kind.value: kind for kind in Kind}
    if kind_name not in kinds or not name:
        raise ModelNotFoundError(f"{value[:100]!r} is not a file of the model list; pick one from the list")
    return library.find(name, kinds[kind_name])


def resolve(library: ModelLibrary, name: str | None, kind: Kind | None = None) -> Path | None:
    """The file a dropdown value names; None for empty or "From checkpoint"; ModelNotFoundError otherwise."""
    if not name or name in (FROM_CHECKPOINT, NO_CHECKPOINT):
        return None
    return library.find(name, kind).path


def by_name(titles: list[str]) -> list[str]:
    """Titles in the order a person looks for them: case-insensitive (a capitalised name is not first)."""
    return sorted(titles, key=lambda t: (t.casefold(), t))


def checkpoints(library: ModelLibrary) -> list[str]:
    """Usable checkpoints, sorted by name whatever the case; the first is a fresh page's default."""
    return by_name([title(e) for e in library.entries(Kind.CHECKPOINT) if e.usable])


def checkpoint_entry(library: ModelLibrary, name: str | None) -> ModelEntry | None:
    if not name or name == NO_CHECKPOINT:
        return None
    try:
        return library.find(name, Kind.CHECKPOINT)
    except LookupError:
        return None


def family_of(library: ModelLibrary, checkpoint: str | None) -> Family | None:
    entry = checkpoint_entry(library, checkpoint)
    return entry.family if entry is not None else None


def model_entry(library: ModelLibrary, checkpoint: str | None, unet: str | None) -> ModelEntry | None:
    """The file that decides the model's family: the UNet / transformer picked in Components, else the
    checkpoint (None when neither names a library file)."""
    if unet and unet not in (FROM_CHECKPOINT, NO_CHECKPOINT):
        try:
            return library.find(unet, Kind.UNET)
        except LookupError:
            pass
    return checkpoint_entry(library, checkpoint)


def encoder_for(role: Role, family: Family) -> TextEncoderType | None:
    """The text-encoder architecture a family wants in `role` (from its description), None if it has none."""
    description = family.description
    return description.role(role).encoder if description.has(role) else None


def component_files(
    library: ModelLibrary, role: Role, family: Family | None
) -> tuple[list[ModelEntry], list[ModelEntry]]:
    """The usable files for `role`: (those that fit `family`, the rest)."""
    kind = ROLE_KINDS.get(role, Kind.TEXT_ENCODER)
    wanted = encoder_for(role, family) if family is not None else None
    fitting: list[ModelEntry] = []
    others: list[ModelEntry] = []
    for entry in library.entries(kind):
        identity = entry.identity
        if not entry.usable or identity is None:
            continue
        fits = family is None or identity.fits(family)
        if fits and wanted is not None and identity.text_encoders:
            fits = wanted in identity.text_encoders
        (fitting if fits else others).append(entry)
    return fitting, others


def component_choices(library: ModelLibrary, role: Role, family: Family | None) -> list[tuple[str, str]]:
    """(label, value) pairs: "From checkpoint", the files that fit `family`, then the rest, each sorted by name
    and labelled with what it is (`vae.safetensors (SD-family VAE: SD1/SD2/SDXL)`, `te.safetensors (CLIP-L)`); a
    misfit may be chosen: loading refuses it and says why."""
    fitting, others = component_files(library, role, family)
    return [
        (FROM_CHECKPOINT, FROM_CHECKPOINT),
        *((f"{title(e)} ({what(e)})", title(e)) for e in sorted(fitting, key=_name_key)),
        *((f"{title(e)} ({what(e)})", title(e)) for e in sorted(others, key=_name_key)),
    ]


def fitting_components(library: ModelLibrary, role: Role, family: Family | None) -> list[str]:
    return [title(e) for e in component_files(library, role, family)[0]]


def _name_key(entry: ModelEntry) -> tuple[str, str]:
    return title(entry).casefold(), title(entry)


def what(entry: ModelEntry) -> str:
    """What a component file is, as its tag in the dropdowns: the text-encoder architecture (`CLIP-L`), the VAE's
    latent space (`SD-family VAE`: a header does not tell which SD family trained it), else the family."""
    identity = entry.identity
    if identity is not None and identity.text_encoders:
        return encoder_label(identity.text_encoders)
    latent = entry.family.description.latent
    if entry.kind is Kind.VAE and latent is not None:
        return latent.vae.label.replace(" (", ": ").removesuffix(")")  # "SD-family VAE: SD1/SD2/SDXL"
    return entry.family.label


def loras(library: ModelLibrary, family: Family | None) -> list[str]:
    """LoRAs usable with `family` (all of them when no checkpoint is chosen), sorted by name."""
    return by_name([title(e) for e in library.entries(Kind.LORA, family) if e.usable])


def values_of(choices: list[Any]) -> list[str]:
    return [c[1] if isinstance(c, tuple) else c for c in choices]
