"""A1111 / kohya hashes, the hash cache across restarts, and the background hasher."""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading

import pytest
import torch
from safetensors.torch import save_file

from webui.models.hashing import BackgroundHasher, FileHashes, HashCache, HashJob, hash_file


def kohya_addnet_hash(data: bytes) -> str:
    """sd-scripts' `addnet_hash_safetensors`, as A1111 uses it for LoRA hashes (reference)."""
    b = io.BytesIO(data)
    n = int.from_bytes(b.read(8), "little")
    b.seek(n + 8)
    return hashlib.sha256(b.read()).hexdigest()


def lora_file(path, seed=0, metadata=None):
    generator = torch.Generator().manual_seed(seed)
    tensors = {
        "lora_unet_x_attn2_to_k.lora_down.weight": torch.randn(4, 768, generator=generator),
        "lora_unet_x_attn2_to_k.lora_up.weight": torch.randn(320, 4, generator=generator),
    }
    save_file(tensors, str(path), metadata=metadata)
    return path


def files(tmp_path, count):
    return [lora_file(tmp_path / f"lora{i}.safetensors", seed=i) for i in range(count)]


def hasher_threads():
    return [t for t in threading.enumerate() if t.name == "webui-hasher"]


@pytest.mark.parametrize("block_size", [7, 64, 1 << 20])
def test_hashes_equal_hashlib_and_kohya_reference(tmp_path, block_size):
    path = lora_file(tmp_path / "l.safetensors", metadata={"ss_output_name": "l"})
    data = path.read_bytes()
    hashes = hash_file(path, addnet=True, block_size=block_size)
    assert hashes.sha256 == hashlib.sha256(data).hexdigest()
    assert hashes.addnet == kohya_addnet_hash(data)
    assert hashes.model_hash == hashes.sha256[:10]
    assert hashes.lora_hash == hashes.addnet[:12]


def test_addnet_hash_ignores_metadata_edits(tmp_path):
    a = hash_file(lora_file(tmp_path / "a.safetensors", metadata={"note": "one"}), addnet=True)
    b = hash_file(lora_file(tmp_path / "b.safetensors", metadata={"note": "a different, longer note"}), addnet=True)
    assert a.addnet == b.addnet and a.sha256 != b.sha256


def test_lora_hash_without_addnet_is_the_file_hash():
    assert FileHashes("ab" * 32).lora_hash == "ab" * 6


def test_cache_survives_a_restart(tmp_path):
    path = lora_file(tmp_path / "l.safetensors")
    cache = HashCache(tmp_path / ".webui-hashes.json")
    first = cache.compute(path, addnet=True)
    assert cache.compute(path, addnet=True) == first and cache.files_hashed == 1
    restarted = HashCache(tmp_path / ".webui-hashes.json")
    assert restarted.compute(path, addnet=True) == first
    assert restarted.files_hashed == 0
    record = json.loads((tmp_path / ".webui-hashes.json").read_text())["files"][str(path)]
    assert record["sha256"] == first.sha256 and record["size"] == path.stat().st_size
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []  # written atomically


def test_changed_file_is_hashed_again(tmp_path):
    path = lora_file(tmp_path / "l.safetensors", seed=1)
    cache = HashCache(tmp_path / "cache.json")
    before = cache.compute(path)
    lora_file(path, seed=2)
    os.utime(path, ns=(1, 1))
    assert cache.compute(path) != before and cache.files_hashed == 2


def test_asking_for_addnet_later_rehashes_once(tmp_path):
    path = lora_file(tmp_path / "l.safetensors")
    cache = HashCache(tmp_path / "cache.json")
    assert cache.compute(path).addnet is None
    assert cache.compute(path, addnet=True).addnet is not None
    assert cache.compute(path, addnet=True).addnet is not None and cache.files_hashed == 2


def test_corrupt_cache_file_starts_over(tmp_path):
    (tmp_path / "cache.json").write_text("{not json")
    cache = HashCache(tmp_path / "cache.json")
    path = lora_file(tmp_path / "l.safetensors")
    assert cache.compute(path).sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert json.loads((tmp_path / "cache.json").read_text())["version"] == 1


def test_concurrent_requests_hash_a_file_once(tmp_path):
    path = lora_file(tmp_path / "l.safetensors")
    cache = HashCache(tmp_path / "cache.json")
    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.compute(path))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1 and cache.files_hashed == 1


def test_background_hasher_runs_only_when_started_and_restart_rehashes_nothing(tmp_path):
    paths = files(tmp_path, 6)
    cache = HashCache(tmp_path / "cache.json")
    hasher = BackgroundHasher(cache)
    assert hasher_threads() == []  # nothing runs before start()
    assert hasher.submit(HashJob(p, addnet=True) for p in paths) == 6
    hasher.start()
    try:
        assert hasher.wait(timeout=30)
        assert hasher_threads()[0].daemon
    finally:
        hasher.stop(timeout=10)
    assert cache.files_hashed == 6 and hasher_threads() == []
    for path in paths:
        assert cache.compute(path, addnet=True).addnet == kohya_addnet_hash(path.read_bytes())

    restarted_cache = HashCache(tmp_path / "cache.json")
    restarted = BackgroundHasher(restarted_cache)
    restarted.start()
    try:
        assert restarted.submit(HashJob(p, addnet=True) for p in paths) == 0
        assert restarted.wait(timeout=30)
    finally:
        restarted.stop(timeout=10)
    assert restarted_cache.files_hashed == 0


def test_background_hasher_goes_on_after_a_failure(tmp_path):
    good = files(tmp_path, 2)
    cache = HashCache(tmp_path / "cache.json")
    hasher = BackgroundHasher(cache)
    doomed = lora_file(tmp_path / "doomed.safetensors")
    hasher.submit([HashJob(doomed), *(HashJob(p) for p in good)])
    doomed.unlink()  # gone before the thread reaches it
    hasher.start()
    try:
        assert hasher.wait(timeout=30)
    finally:
        hasher.stop(timeout=10)
    assert doomed in hasher.failures and cache.files_hashed == 2
    missing = tmp_path / "never-existed.safetensors"
    assert hasher.submit([HashJob(missing)]) == 0 and missing in hasher.failures


def test_duplicate_submissions_are_queued_once(tmp_path):
    path = lora_file(tmp_path / "l.safetensors")
    hasher = BackgroundHasher(HashCache(tmp_path / "cache.json"))
    assert hasher.submit([HashJob(path), HashJob(path)]) == 1
    assert hasher.pending == 1
