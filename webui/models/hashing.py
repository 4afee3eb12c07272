"""File hashes as A1111 and kohya compute them, cached by (path, size, mtime), computed in the background.

- A1111 "Model hash": SHA-256 of the whole file, first 10 hex digits (LoRA / embedding hashes in
  infotext use the first 12).
- kohya "addnet" hash (sd-scripts `addnet_hash_safetensors`, used by A1111 for LoRA hashes): SHA-256
  of a safetensors file's bytes after its header (from offset 8 + header length), first 12 hex digits.
  It does not change when only the metadata is edited.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

BLOCK_SIZE = 1 << 20
CACHE_VERSION = 1
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileHashes:
    sha256: str
    addnet: str | None = None  # only for safetensors files hashed with addnet=True

    @property
    def model_hash(self) -> str:
        """A1111's short model hash (checkpoints, VAEs): 10 hex digits."""
        return self.sha256[:10]

    @property
    def lora_hash(self) -> str:
        """A1111's LoRA hash: the addnet hash when there is one, else the file's SHA-256; 12 hex digits."""
        return (self.addnet or self.sha256)[:12]


@dataclass(frozen=True)
class HashJob:
    """One file to hash; `addnet` asks for the kohya hash too (safetensors LoRAs)."""

    path: Path
    addnet: bool = False


def hash_file(path: Path | str, *, addnet: bool = False, block_size: int = BLOCK_SIZE) -> FileHashes:
    """SHA-256 of the whole file and, when asked, the addnet hash, in one chunked pass."""
    whole = hashlib.sha256()
    after_header = hashlib.sha256() if addnet else None
    with open(path, "rb") as handle:
        skip = position = 0
        if after_header is not None:
            head = handle.read(8)
            whole.update(head)
            skip = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
            position = len(head)
        while chunk := handle.read(block_size):
            whole.update(chunk)
            if after_header is not None:
                start = max(0, 8 + skip - position)
                if start < len(chunk):
                    after_header.update(chunk[start:] if start else chunk)
                position += len(chunk)
    return FileHashes(whole.hexdigest(), after_header.hexdigest() if after_header is not None else None)


class HashCache:
    """A JSON file (absolute path -> size, mtime_ns, sha256, addnet) so a restart re-hashes nothing.

    Thread-safe; every new hash is written at once, atomically (temp file + os.replace).
    `files_hashed` counts the files this instance actually read.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.files_hashed = 0
        self._lock = threading.RLock()
        self._path_locks: dict[str, threading.Lock] = {}
        self._records: dict[str, dict] | None = None  # loaded on first use

    @staticmethod
    def _key(path: Path | str) -> str:
        return os.path.abspath(path)

    def _load(self) -> dict[str, dict]:
        if self._records is None:
            self._records = {}
            try:
                data = json.loads(self.path.read_text())
                if data.get("version") == CACHE_VERSION and isinstance(data.get("files"), dict):
                    self._records = data["files"]
            except FileNotFoundError:
                pass  # no cache yet: everything will be hashed once
            except (OSError, ValueError, AttributeError) as error:
                log.warning("hash cache %s is unreadable (%s); starting a new one", self.path, error)
        return self._records

    def get(self, path: Path | str, size: int, mtime_ns: int, *, addnet: bool = False) -> FileHashes | None:
        """The cached hashes if the file still has this size and mtime (and an addnet hash when asked)."""
        with self._lock:
            record = self._load().get(self._key(path))
        if not record or record.get("size") != size or record.get("mtime_ns") != mtime_ns:
            return None
        if addnet and not record.get("addnet"):
            return None
        return FileHashes(record["sha256"], record.get("addnet"))

    def put(self, path: Path | str, size: int, mtime_ns: int, hashes: FileHashes) -> None:
        with self._lock:
            self._load()[self._key(path)] = {
                "size": size,
                "mtime_ns": mtime_ns,
                "sha256": hashes.sha256,
                "addnet": hashes.addnet,
            }
            self._save()

    def compute(self, path: Path | str, *, addnet: bool = False) -> FileHashes:
        """Cached hashes of the file as it is now, hashing it (once, even across threads) if needed."""
        key = self._key(path)
        with self._lock:
            path_lock = self._path_locks.setdefault(key, threading.Lock())
        with path_lock:
            stat = os.stat(path)
            cached = self.get(path, stat.st_size, stat.st_mtime_ns, addnet=addnet)
            if cached is not None:
                return cached
            hashes = hash_file(path, addnet=addnet)
            with self._lock:
                self.files_hashed += 1
            self.put(path, stat.st_size, stat.st_mtime_ns, hashes)
            return hashes

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "w") as out:
                json.dump({"version": CACHE_VERSION, "files": self._records}, out, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class BackgroundHasher:
    """Hashes submitted files one at a time on a daemon thread, into a HashCache.

    Nothing runs until `start()`. Files already in the cache (same size and mtime) are skipped,
    so after a restart nothing is re-hashed. A file that cannot be read is logged and recorded in
    `failures`, and the thread goes on with the next one.
    """

    def __init__(self, cache: HashCache) -> None:
        self.cache = cache
        self.failures: dict[Path, str] = {}
        self._jobs: list[HashJob] = []
        self._queued: set[Path] = set()
        self._busy = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._changed = threading.Condition()

    def start(self) -> None:
        with self._changed:
            if self._thread is not None:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="webui-hasher", daemon=True)
            self._thread.start()

    def submit(self, jobs: Iterable[HashJob]) -> int:
        """Queue the jobs whose file is not hashed yet; returns how many were queued."""
        added = 0
        for job in jobs:
            try:
                stat = os.stat(job.path)
            except OSError as error:
                self.failures[job.path] = str(error)
                continue
            if self.cache.get(job.path, stat.st_size, stat.st_mtime_ns, addnet=job.addnet) is not None:
                continue
            with self._changed:
                if job.path not in self._queued:
                    self._queued.add(job.path)
                    self._jobs.append(job)
                    added += 1
                    self._changed.notify_all()
        return added

    @property
    def pending(self) -> int:
        with self._changed:
            return len(self._jobs) + (1 if self._busy else 0)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every queued job is done; False if `timeout` seconds passed first."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._jobs and not self._busy, timeout)

    def stop(self, timeout: float | None = None) -> None:
        """Finish the file being hashed, drop the rest of the queue, and end the thread."""
        with self._changed:
            self._stopping = True
            self._jobs.clear()
            self._queued.clear()
            self._changed.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._jobs or self._stopping)
                if self._stopping:
                    return
                job = self._jobs.pop(0)
                self._busy = True
            try:
                self.cache.compute(job.path, addnet=job.addnet)
            except OSError as error:  # vanished or unreadable: report it and go on with the next file
                log.warning("cannot hash %s: %s", job.path, error)
                self.failures[job.path] = str(error)
            finally:
                with self._changed:
                    self._busy = False
                    self._queued.discard(job.path)
                    self._changed.notify_all()
