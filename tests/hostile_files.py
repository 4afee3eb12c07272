"""Hostile and broken model files for the tests: hand-built pickles, torch containers, and a seeded fuzz corpus.

Every builder returns bytes (or writes files) and never unpickles anything itself.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch/serialization.py MAGIC_NUMBER


class Reduce:
    """Pickles as `fn(*args)` (a REDUCE of the global `fn`)."""

    def __init__(self, fn: Any, *args: Any) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.fn, self.args


class Persistent:
    """Pickles as the persistent id `pid` (how torch.save refers to tensor storages)."""

    def __init__(self, pid: tuple[Any, ...]) -> None:
        self.pid = pid


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj: Any) -> Any:
        return obj.pid if isinstance(obj, Persistent) else None


def dumps(obj: Any, protocol: int = 2) -> bytes:
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=protocol).dump(obj)
    return buffer.getvalue()


def torch_zip(data_pkl: bytes, records: dict[str, bytes] | None = None) -> bytes:
    """A torch.save zip container (archive/data.pkl plus archive/data/<key> records)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/version", "3\n")
        for key, data in (records or {}).items():
            archive.writestr(f"archive/data/{key}", data)
    return buffer.getvalue()


def torch_legacy(main: bytes, keys: list[str] | None = None, data: bytes = b"") -> bytes:
    """A legacy (non-zip) torch.save stream: magic, protocol, sys_info, the main pickle, storage keys, data."""
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    head = dumps(LEGACY_MAGIC) + dumps(1001) + dumps(sys_info)
    return head + main + dumps(list(keys or [])) + data


def zip_storage(key: str, numel: int, storage: Any = None) -> Persistent:
    return Persistent(("storage", storage or torch.FloatStorage, key, "cpu", numel))


def legacy_storage(key: str, numel: int) -> Persistent:
    return Persistent(("storage", torch.FloatStorage, key, "cpu", numel, None))


def tensor(storage: Persistent, shape: tuple[int, ...], stride: tuple[int, ...]) -> Reduce:
    return Reduce(torch._utils._rebuild_tensor_v2, storage, 0, shape, stride, False, OrderedDict())


# --- pickles built opcode by opcode (the standard pickler cannot write these shapes) -------------------------


def _text(value: str) -> bytes:
    raw = value.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE


def memo_dag(levels: int = 40) -> bytes:
    """Dicts each holding the previous one twice, through the memo: 2**levels paths in ~30 bytes a level."""
    out = b"\x80\x02}r" + struct.pack("<I", 0)  # PROTO 2, EMPTY_DICT, LONG_BINPUT 0
    for level in range(1, levels + 1):
        get = b"j" + struct.pack("<I", level - 1)  # LONG_BINGET
        out += b"}r" + struct.pack("<I", level) + b"(" + _text("a") + get + _text("b") + get + b"u"
    return out + b"."


def memo_cycle() -> bytes:
    """A dict that contains itself."""
    return b"\x80\x02}r" + struct.pack("<I", 0) + _text("self") + b"j" + struct.pack("<I", 0) + b"s."


def deep_dicts(depth: int = 100_000) -> bytes:
    """Dicts nested `depth` deep: {'a': {'a': ...}}."""
    return b"\x80\x02" + (b"}" + _text("a")) * depth + b"}" + b"s" * depth + b"."


def deep_safetensors_json(depth: int = 100_000) -> bytes:
    raw = b'{"a": ' + b"[" * depth + b"]" * depth + b"}"
    return struct.pack("<Q", len(raw)) + raw


def bytearray_bomb(size: int = 2**40) -> bytes:
    """An allow-listed global (builtins.bytearray) asked for `size` bytes."""
    return torch_zip(dumps({"w": Reduce(bytearray, size)}))


def legacy_storage_bomb(numel: int = 2**40) -> bytes:
    """A legacy file whose pickle claims a storage far larger than the file (torch allocates it before reading)."""
    main = dumps({"w": tensor(legacy_storage("0", numel), (numel,), (1,))})
    return torch_legacy(main, ["0"], struct.pack("<q", numel) + b"\0" * 16)


def view_bomb() -> bytes:
    """A tensor of 2**40 elements over a 4-element storage."""
    return torch_zip(dumps({"w": tensor(zip_storage("0", 4), (2**20, 2**20), (2**20, 1))}), {"0": b"\0" * 16})


def protocol_payload(protocol: int, target: Path) -> bytes:
    """A protocol-4/5 pickle (STACK_GLOBAL, FRAME) whose payload would create `target` if run."""
    return torch_zip(dumps({"w": Reduce(open, str(target), "w")}, protocol=protocol))


def relabelled(state: dict[str, torch.Tensor], double_shapes: bool = True) -> bytes:
    """A safetensors file of `state` in F32 whose header calls the data F16, each shape's first dim doubled to
    keep the byte ranges consistent (or not doubled: the ranges then disagree with dtype × shape)."""
    data = save({key: value.float() for key, value in state.items()})
    length = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + length])
    for key, info in header.items():
        if key != "__metadata__":
            info["dtype"] = "F16"
            if double_shapes:
                info["shape"] = [info["shape"][0] * 2, *info["shape"][1:]] if info["shape"] else [2]
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data[8 + length :]


# --- the fuzz corpus ----------------------------------------------------------------------------------------


@dataclass
class Corpus:
    """What was written: paths relative to the models dir, split by what the library must say about them."""

    broken: list[str] = field(default_factory=list)  # must be listed with a problem
    mutated: list[str] = field(default_factory=list)  # bytes flipped: must be listed; may even still be valid

    @property
    def all(self) -> list[str]:
        return self.broken + self.mutated


def _gguf(tensors: int = 3) -> bytes:
    def text(value: str) -> bytes:
        return struct.pack("<Q", len(value)) + value.encode()

    kv = text("general.architecture") + struct.pack("<I", 8) + text("flux")
    infos = b"".join(
        text(f"blk.{i}.weight") + struct.pack("<I", 2) + struct.pack("<QQ", 64, 32) + struct.pack("<IQ", 0, i * 8192)
        for i in range(tensors)
    )
    head = b"GGUF" + struct.pack("<IQQ", 3, tensors, 1) + kv + infos
    head += b"\0" * (-len(head) % 32)
    return head + b"\1" * (8192 * tensors)


def _offsets(rng: random.Random, size: int, header: int, count: int) -> list[int]:
    """Cut points: half inside the header (where readers parse), half anywhere; never 0 or the whole file."""
    near = [rng.randrange(1, max(2, min(size, header + 64))) for _ in range(count // 2)]
    return sorted(set(near + [rng.randrange(1, size) for _ in range(count - count // 2)]))


def write_fuzz_corpus(
    models_dir: Path, state: dict[str, torch.Tensor], seed: int = 1234, per_format: int = 50
) -> Corpus:
    """A few hundred malformed model files under `models_dir` (loras/ and checkpoints/), from a fixed seed."""
    rng = random.Random(seed)
    corpus = Corpus()
    folder = models_dir / "loras"
    folder.mkdir(parents=True, exist_ok=True)

    def put(name: str, data: bytes, broken: bool = True) -> None:
        (folder / name).write_bytes(data)
        (corpus.broken if broken else corpus.mutated).append(f"loras/{name}")

    sources = {
        "st": (save(state), 8 + struct.unpack("<Q", save(state)[:8])[0]),
        "zip": (_torch_bytes(state, zip_format=True), 4096),
        "legacy": (_torch_bytes(state, zip_format=False), 4096),
        "gguf": (_gguf(), 256),
    }
    suffix = {"st": ".safetensors", "zip": ".ckpt", "legacy": ".pt", "gguf": ".gguf"}
    for fmt, (data, header) in sources.items():
        for offset in _offsets(rng, len(data), header, per_format):
            put(f"cut-{fmt}-{offset}{suffix[fmt]}", data[:offset])
        for number in range(per_format // 5):  # a few bytes changed where the parser looks
            mutated = bytearray(data)
            for _ in range(rng.randrange(1, 6)):
                mutated[rng.randrange(0, min(len(data), header))] = rng.randrange(256)
            put(f"flip-{fmt}-{number}{suffix[fmt]}", bytes(mutated), broken=False)
    st, _ = sources["st"]
    real_length = struct.unpack("<Q", st[:8])[0]
    lengths = {0, 1, 7, real_length - 1, real_length + 1, 2**63 - 1, 2**64 - 1, len(st) - 7}
    lengths |= {rng.randrange(0, 2**64) for _ in range(12)} | {rng.randrange(0, len(st)) for _ in range(12)}
    for length in sorted(lengths - {real_length}):
        put(f"length-{length}.safetensors", struct.pack("<Q", length) + st[8:])
    gguf = _gguf()
    for number in range(10):  # random tensor and metadata counts
        counts = struct.pack("<QQ", rng.randrange(2**64), rng.randrange(2**64))
        put(f"counts-{number}.gguf", gguf[:8] + counts + gguf[24:])
    hostile = {
        "memo-dag.ckpt": torch_zip(memo_dag()),
        "memo-dag-legacy.pt": torch_legacy(memo_dag()),
        "memo-cycle.ckpt": torch_zip(memo_cycle()),
        "deep-dicts.ckpt": torch_zip(deep_dicts()),
        "deep-dicts-legacy.pt": torch_legacy(deep_dicts()),
        "deep-json.safetensors": deep_safetensors_json(),
        "bytearray-bomb.ckpt": bytearray_bomb(),
        "bytearray-bomb-8g.ckpt": bytearray_bomb(2**33),
        "storage-bomb.pt": legacy_storage_bomb(),
        "storage-bomb-8g.pt": legacy_storage_bomb(2**31),
        "view-bomb.ckpt": view_bomb(),
        "five-bytes.ckpt": bytes.fromhex("80024a0100"),
        "protocol-4.ckpt": protocol_payload(4, models_dir / "pwned"),
        "protocol-5.ckpt": protocol_payload(5, models_dir / "pwned"),
    }
    for name, data in hostile.items():
        put(name, data)
    _write_special_files(models_dir, corpus, st)
    return corpus


def _write_special_files(models_dir: Path, corpus: Corpus, good_safetensors: bytes) -> None:
    """FIFOs (plain, behind a symlink, inside a diffusers folder), symlink loops, a truncated diffusers folder."""
    checkpoints = models_dir / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    outside = models_dir.parent / f"{models_dir.name}-outside"
    outside.mkdir(exist_ok=True)
    os.mkfifo(checkpoints / "fifo.ckpt")
    os.mkfifo(outside / "elsewhere")
    (checkpoints / "fifo-link.safetensors").symlink_to(outside / "elsewhere")
    (checkpoints / "loop-a.ckpt").symlink_to(checkpoints / "loop-b.ckpt")
    (checkpoints / "loop-b.ckpt").symlink_to(checkpoints / "loop-a.ckpt")
    (checkpoints / "loop-dir").symlink_to(checkpoints / "loop-dir")
    (checkpoints / "parent").symlink_to(checkpoints)  # a loop through a real folder: walked once, lists nothing
    corpus.broken += [f"checkpoints/{n}" for n in ("fifo.ckpt", "fifo-link.safetensors", "loop-a.ckpt", "loop-b.ckpt")]
    for name, weight in (("fifo-pipe", None), ("cut-pipe", good_safetensors[: len(good_safetensors) // 2])):
        pipe = checkpoints / name
        (pipe / "unet").mkdir(parents=True)
        (pipe / "model_index.json").write_text(json.dumps({"_class_name": "X", "unet": ["diffusers", "UNet"]}))
        target = pipe / "unet" / "diffusion_pytorch_model.safetensors"
        if weight is None:
            os.mkfifo(target)
        else:
            target.write_bytes(weight)
        corpus.broken.append(f"checkpoints/{name}")


def _torch_bytes(state: dict[str, torch.Tensor], zip_format: bool) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer, _use_new_zipfile_serialization=zip_format)
    return buffer.getvalue()
