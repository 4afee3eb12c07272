"""The model library: scan the model folders and extra roots, identify each file, list, find and hash."""

from __future__ import annotations

import difflib
import logging
import os
import re
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from webui.families import Family
from webui.models.default_vae import default_vae
from webui.models.files import ModelFileError, extension_problem, open_regular, read_header, sniff_format
from webui.models.hashing import BackgroundHasher, FileHashes, HashCache, HashJob
from webui.models.identify import Identity, identify
from webui.models.kinds import FileFormat, Kind, Prediction, Role
from webui.models.names import match_entries, name_stem
from webui.models.roots import (
    EXTRA_ROOTS_FILE,
    ExtraRootsError,
    FoundModel,
    ModelRoot,
    linked_folders,
    own_roots,
    read_extra_roots,
    stat_model,
    walk_models,
)
from webui.models.widths import check_widths

HASH_CACHE_FILE = ".webui-hashes.json"
MAX_NAME_CHARS = 1024  # a model name or path asked for (paths on Linux stop at 4096 bytes; names far shorter)
# Infotext hashes: LoRAs and embeddings are named by 12 hex digits, everything else by 10.
_TWELVE_HEX_KINDS = (Kind.LORA, Kind.EMBEDDING)
# A1111 reads `<checkpoint stem>.yaml` beside a checkpoint; SD2 v-prediction files ship with one.
_SIDECAR_BYTES = 64 * 1024  # A1111's config yamls are ~2 KB
_YAML_PARAMETERIZATION = re.compile(r"^\s*parameterization:\s*[\"']?(\w+)", re.MULTILINE)
log = logging.getLogger(__name__)


class ModelNotFoundError(LookupError):
    """No library entry matches a name or path; the message lists close names."""


@dataclass(frozen=True)
class ModelEntry:
    """One model file (or diffusers folder) as the library sees it. `problem` says why it is broken,
    unsafe or unusable; `identity` is None only when its header could not be read."""

    path: Path
    name: str  # relative to its root folder, without extension, e.g. "sub/foo"
    kind: Kind
    family: Family
    format: FileFormat
    size: int  # bytes; a folder's is the sum of its files
    mtime: float
    mtime_ns: int = 0
    hash: str | None = None
    problem: str | None = None
    identity: Identity | None = None
    aliases: tuple[str, ...] = ()  # names of other paths to the same file (links), which find it too

    @property
    def usable(self) -> bool:
        return self.identity is not None and self.identity.supported

    @property
    def detail(self) -> str:
        return self.identity.detail if self.identity else (self.problem or "")

    def to_json(self) -> dict[str, Any]:
        identity = self.identity
        return {
            "path": str(self.path),
            "name": self.name,
            "kind": self.kind.value,
            "architecture": self.family.value,
            "format": self.format.value,
            "size": self.size,
            "hash": self.hash,
            "problem": self.problem,
            "prediction": identity.prediction.value if identity and identity.prediction else None,
            "zero_snr": identity.zero_snr if identity else False,
            "text_encoders": [e.value for e in identity.text_encoders] if identity else [],
            "lora_touches_text_encoder": identity.lora_touches_text_encoder if identity else None,
            "compatible": [f.value for f in identity.compatible] if identity else [],
            "supported": self.usable,
            "detail": self.detail,
            "mtime": self.mtime,
            "aliases": list(self.aliases),
        }


@dataclass(frozen=True)
class LibraryChanges:
    """What the last refresh found different on disk."""

    added: tuple[Path, ...] = ()
    changed: tuple[Path, ...] = ()
    removed: tuple[Path, ...] = ()


def entry_hash(entry: ModelEntry, hashes: FileHashes) -> str:
    """The hash A1111 writes for this entry: 12 hex for LoRAs (addnet) and embeddings, else 10."""
    if entry.kind is Kind.LORA:
        return hashes.lora_hash
    return hashes.sha256[:12] if entry.kind in _TWELVE_HEX_KINDS else hashes.model_hash


class ModelLibrary:
    """Everything under the models dir's folders (checkpoints/, loras/, ...) and the extra roots.

    `scan()` reads every header; `refresh()` re-reads only files added or changed (size or mtime)
    and drops removed ones. Only headers are read, never tensor data. Hashes come from the cache,
    from `hash_all()`, or from the background hasher once `start_background_hashing()` is called.
    Thread-safe.
    """

    def __init__(
        self, models_dir: Path, extra_roots_file: Path | None = None, hash_cache: HashCache | None = None
    ) -> None:
        self.models_dir = Path(models_dir)
        self.extra_roots_file = extra_roots_file or self.models_dir / EXTRA_ROOTS_FILE
        self.hash_cache = hash_cache or HashCache(self.models_dir / HASH_CACHE_FILE)
        self.last_changes = LibraryChanges()
        self._problems: list[str] = []
        self._entries: dict[Path, ModelEntry] = {}
        self._sidecars: dict[Path, int | None] = {}
        self._lock = threading.RLock()
        self._hasher: BackgroundHasher | None = None

    # -- scanning -----------------------------------------------------------------------------
    def roots(self) -> list[ModelRoot]:
        """Our folders, then the extra roots; a bad extra-roots file is reported in `problems`."""
        roots = own_roots(self.models_dir)
        problems: list[str] = []
        if self.extra_roots_file.is_file():
            try:
                extra, problems = read_extra_roots(self.extra_roots_file)
            except ExtraRootsError as error:
                extra, problems = [], [str(error)]
            roots += extra
        for problem in set(problems) - set(self._problems):  # each once, not at every refresh
            log.warning("%s", problem)
        self._problems = problems
        return [replace(root, path=root.path.absolute()) for root in roots]

    @property
    def problems(self) -> tuple[str, ...]:
        """Problems with the library's configuration (the extra-roots file), from the last scan."""
        return tuple(self._problems)

    def scan(self) -> list[ModelEntry]:
        """Find and identify every model, re-reading every header."""
        with self._lock:
            self._entries = {}
            return self.refresh()

    def refresh(self) -> list[ModelEntry]:
        """Re-read only what was added or changed since the last scan; forget what was removed."""
        with self._lock:
            found = self._discover()
            added, changed = [], []
            entries: dict[Path, ModelEntry] = {}
            for path, where in found.items():
                old = self._entries.get(path)
                same = old is not None and (old.size, old.mtime_ns) == (where.size, where.mtime_ns)
                if same and not where.problem and self._sidecars.get(path) == where.sidecar_mtime_ns:
                    entries[path] = replace(old, aliases=where.aliases)  # links come and go; the file is the same
                    continue
                (changed if old is not None else added).append(path)
                entries[path] = self._read_entry(path, where)
            removed = [path for path in self._entries if path not in entries]
            self._entries = entries
            self._sidecars = {path: where.sidecar_mtime_ns for path, where in found.items()}
            self.last_changes = LibraryChanges(tuple(added), tuple(changed), tuple(removed))
            if self._hasher is not None:
                self._hasher.submit(self.pending_hashes())
            return self.entries()

    def _discover(self) -> dict[Path, FoundModel]:
        """One FoundModel per real file, under its most direct path; the other paths to it become its aliases.

        The same file reached through two roots, a file link and a linked folder, or two links, is listed once.
        Which path names it does not depend on walk order: the earlier root, then the path through the fewest
        linked folders (a file linked by name keeps its name when a linked folder also holds the file), then
        the file itself before a link to it, then the shallower and alphabetically first name. Every other
        path's name still finds the file."""
        reached: dict[str, list[tuple[tuple[int, int, bool, int, str], Path, FoundModel]]] = {}
        for order, root in enumerate(self.roots()):
            if root.path.is_dir():
                for path, name in walk_models(root.path, root.path):
                    rank = (order, linked_folders(path, root.path), path.is_symlink(), name.count("/"), name)
                    reached.setdefault(os.path.realpath(path), []).append((rank, path, FoundModel(root, name)))
        found: dict[Path, FoundModel] = {}
        for paths in reached.values():
            paths.sort(key=lambda item: item[0])
            _, path, where = paths[0]
            where.aliases = tuple(dict.fromkeys(other.name for _, _, other in paths[1:] if other.name != where.name))
            found[path] = stat_model(path, where)
        return found

    def _read_entry(self, path: Path, where: FoundModel) -> ModelEntry:
        fmt, identity, problem = FileFormat.UNKNOWN, None, where.problem
        if problem is None:
            try:
                header = read_header(path)
                fmt = header.format
                identity = _identify_safely(header, path, where.root.kind)
                check_widths(header, identity, path)
                problem = extension_problem(path, fmt) or _unusable(identity)
            except ModelFileError as error:
                identity, problem = None, error.problem
                fmt = _format_or_unknown(path)
            except Exception as error:  # a reader bug: that file gets a problem, the scan and the server go on
                log.exception("reading %s failed", path)
                identity = None
                problem = f"could not be read ({type(error).__name__}: {str(error)[:200]}); please report this file"
                fmt = _format_or_unknown(path)
        kind, family = where.root.kind, Family.UNKNOWN
        if identity is not None:
            identity = _with_sidecar_prediction(identity, path, where)
            kind, family = identity.kind, identity.family
            if kind not in (where.root.kind, Kind.UNKNOWN):
                note = f"found in {path.parent.name}/ (a {where.root.kind.value} folder) but it is a {kind.value}"
                identity = replace(identity, detail=f"{identity.detail}; {note}")
        return ModelEntry(
            path=path,
            name=where.name,
            kind=kind,
            family=family,
            format=fmt,
            size=where.size,
            mtime=where.mtime_ns / 1e9,
            mtime_ns=where.mtime_ns,
            problem=problem,
            identity=identity,
            aliases=where.aliases,
        )

    # -- listing and finding ------------------------------------------------------------------
    def entries(self, kind: Kind | None = None, family: Family | None = None) -> list[ModelEntry]:
        """Entries in scan order (our folders first), with hashes filled in from the cache.

        `family` keeps the files usable with that family: an SD VAE is listed for SD1, SD2 and SDXL.
        """
        with self._lock:
            snapshot = list(self._entries.values())
        out = []
        for entry in snapshot:
            if kind is not None and entry.kind is not kind:
                continue
            if family is not None and not (entry.identity and entry.identity.fits(family)):
                continue
            out.append(self._with_cached_hash(entry))
        return out

    def find(self, name_or_path: str | Path, kind: Kind | None = None) -> ModelEntry:
        """The entry for a path, a name (`sub/foo`, `foo`, `foo.safetensors`), an A1111 title
        (`foo.safetensors [abcdef1234]`) or a hash; raises ModelNotFoundError listing close names.

        A name held by several files (`foo.ckpt` and `foo.safetensors`, or the same name in two
        roots) gives the .safetensors one, then the first in scan order (our folders first)."""
        return self.matches(name_or_path, kind)[0]

    def matches(self, name_or_path: str | Path, kind: Kind | None = None) -> list[ModelEntry]:
        """Every entry `name_or_path` names (see `find`), the one `find` picks first: more than one when a
        name is held by several files. Raises ModelNotFoundError, listing close names of that kind, when none."""
        candidates = self.entries(kind=kind)
        query = str(name_or_path).strip()
        if len(query) > MAX_NAME_CHARS:  # no file is named so; and close-name matching is quadratic in the length
            raise ModelNotFoundError(
                f"no model named so: a name of {len(query):,} characters (the limit is {MAX_NAME_CHARS:,}); "
                "give a file name or title from the model list"
            )
        path = Path(query).expanduser().absolute()
        for entry in candidates:
            if entry.path == path:
                return [entry]
        hits = match_entries(candidates, query)
        if hits:
            return hits
        stem = name_stem(query.lower())
        names = list(dict.fromkeys(e.name for e in candidates))  # foo.ckpt and foo.safetensors: one name
        close = difflib.get_close_matches(stem, names, n=5, cutoff=0.4)
        what = f"{kind.value} " if kind else ""
        known = f"; close names: {', '.join(close)}" if close else f"; known: {', '.join(names[:10]) or 'none'}"
        raise ModelNotFoundError(
            f"no {what}model named {query!r} under {self.models_dir} or its extra roots{known}. "
            "Give a name from the model list, or the file's path."
        )

    def default_part(self, family: Family, role: Role, checkpoint: Path) -> Path | None:
        """The file for a part a checkpoint lacks: a VAE by webui.models.default_vae's rule; None for other
        parts (a missing text encoder must be chosen) or when no VAE fits."""
        if role is not Role.VAE:
            return None
        entry = default_vae(self.entries(Kind.VAE), family, checkpoint)
        return entry.path if entry is not None else None

    # -- hashes -------------------------------------------------------------------------------
    def _with_cached_hash(self, entry: ModelEntry) -> ModelEntry:
        if entry.hash is not None or not _hashable(entry):
            return entry
        job = _hash_job(entry)
        cached = self.hash_cache.get(entry.path, entry.size, entry.mtime_ns, addnet=job.addnet)
        return replace(entry, hash=entry_hash(entry, cached)) if cached else entry

    def pending_hashes(self) -> list[HashJob]:
        """Jobs for every hashable entry whose hash is not cached yet."""
        return [_hash_job(e) for e in self.entries() if e.hash is None and _hashable(e)]

    def hash_all(self, entries: list[ModelEntry] | None = None) -> int:
        """Hash now (in this thread) every given entry lacking a hash; returns how many files were read."""
        before = self.hash_cache.files_hashed
        for entry in entries if entries is not None else self.entries():
            if entry.hash is None and _hashable(entry):
                try:
                    self.hash_cache.compute(entry.path, addnet=_hash_job(entry).addnet)
                except OSError as error:
                    log.warning("cannot hash %s: %s", entry.path, error)
        return self.hash_cache.files_hashed - before

    def model_hash(self, path: Path | None) -> str | None:
        """A1111's hash for a file (10 hex; 12 for LoRAs and embeddings), computed now if not cached;
        None for no path or a diffusers folder."""
        if path is None or Path(path).is_dir():
            return None
        entry = self._entries.get(Path(path).absolute())
        hashes = self.hash_cache.compute(path, addnet=bool(entry and _hash_job(entry).addnet))
        return entry_hash(entry, hashes) if entry else hashes.model_hash

    def start_background_hashing(self) -> BackgroundHasher:
        """Start (once) a daemon thread hashing every entry lacking a hash, now and after each refresh."""
        with self._lock:
            if self._hasher is None:
                self._hasher = BackgroundHasher(self.hash_cache)
            self._hasher.start()
            self._hasher.submit(self.pending_hashes())
            return self._hasher

    def stop_background_hashing(self) -> None:
        with self._lock:
            hasher, self._hasher = self._hasher, None
        if hasher is not None:
            hasher.stop()


def open_library(models_dir: Path, extra_model_paths: Path | None = None) -> ModelLibrary:
    """The library for a models dir (not scanned yet), with its hash cache and extra roots file."""
    return ModelLibrary(Path(models_dir), extra_model_paths)


def _with_sidecar_prediction(identity: Identity, path: Path, where: FoundModel) -> Identity:
    """The prediction an A1111 `<stem>.yaml` declares (`parameterization: "v"`), when the file itself does not."""
    if where.sidecar_mtime_ns is None or identity.prediction is not None:
        return identity
    if identity.kind not in (Kind.CHECKPOINT, Kind.UNET):
        return identity
    sidecar = path.with_suffix(".yaml")
    try:
        with open_regular(sidecar) as handle:
            text = handle.read(_SIDECAR_BYTES).decode("utf-8", errors="replace")
    except (OSError, ModelFileError):
        return identity  # the yaml only adds a hint; the file itself was identified
    found = _YAML_PARAMETERIZATION.search(text)
    prediction = {"v": Prediction.V, "eps": Prediction.EPSILON}.get(found.group(1) if found else "")
    if prediction is None:
        return identity
    return replace(
        identity, prediction=prediction, detail=f"{identity.detail}; {prediction.value} from {sidecar.name}"
    )


def _identify_safely(header: Any, path: Path, folder_kind: Kind) -> Identity:
    try:
        if folder_kind is Kind.UPSCALER:  # upscaler keys share nothing with the diffusion families'
            from webui.models.upscaler_files import identify_upscaler

            return identify_upscaler(path, header)
        return identify(header, path.name)
    except (
        IndexError,
        KeyError,
        TypeError,
        ValueError,
    ) as error:  # a bug, but one file must not stop the scan
        log.exception("identification failed for %s", path)
        raise ModelFileError(
            path, f"identification failed ({error!r}); please report this file's keys"
        ) from None


def _unusable(identity: Identity) -> str | None:
    if identity.kind is Kind.UPSCALER:
        return None
    if identity.refused is not None:
        return identity.detail
    if identity.kind is Kind.UNKNOWN:
        return f"not recognised as a model this app can use: {identity.detail}"
    if not identity.family.supported:
        what = identity.family.label if identity.family is not Family.UNKNOWN else "this model family"
        return f"{what} is not supported yet ({identity.detail})"
    return None


def _format_or_unknown(path: Path) -> FileFormat:
    try:
        return sniff_format(path)
    except ModelFileError:
        return FileFormat.UNKNOWN


def _hashable(entry: ModelEntry) -> bool:
    """Files that could be read; a diffusers folder has no single-file hash."""
    return entry.identity is not None and entry.format is not FileFormat.DIFFUSERS


def _hash_job(entry: ModelEntry) -> HashJob:
    return HashJob(entry.path, addnet=entry.kind is Kind.LORA and entry.format is FileFormat.SAFETENSORS)
