"""The model library: scanning our folders and extra roots, bad files, refresh, find, hashes, speed."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from stripped_headers import (
    diffusers_shapes,
    header_only_bytes,
    kohya_lora,
    ldm_checkpoint,
    sparse_files_supported,
    write_header_only,
)

import webui.models.library as library_module
from webui.families import Family
from webui.models.kinds import FileFormat, Kind, Prediction
from webui.models.library import ModelLibrary, ModelNotFoundError, open_library

SD1, SD2, SDXL = Family.SD1, Family.SD2, Family.SDXL
FLUX_UNET = {
    "double_blocks.0.img_attn.qkv.weight": (9216, 3072),
    "single_blocks.0.linear1.weight": (21504, 3072),
    "img_in.weight": (3072, 64),
}


class _WritesAFile:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


def checkpoint(path: Path, family: Family = SD1, metadata=None) -> Path:
    return write_header_only(path, ldm_checkpoint(family, True), metadata)


def lora(path: Path, family: Family = SD1, seed: int = 0) -> Path:
    """A small real LoRA file (hashable), kohya layout."""
    unet = diffusers_shapes(family, "unet", True)
    key = next(k for k in unet if k.endswith("attn2.to_k.weight"))
    module = "lora_unet_" + key.removesuffix(".weight").replace(".", "_")
    generator = torch.Generator().manual_seed(seed)
    tensors = {
        f"{module}.lora_down.weight": torch.randn(4, unet[key][1], generator=generator),
        f"{module}.lora_up.weight": torch.randn(unet[key][0], 4, generator=generator),
        f"{module}.alpha": torch.tensor(4.0),
    }
    return save(tensors, path)


def save(tensors: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path


def by_name(entries):
    return {e.name: e for e in entries}


@pytest.fixture
def models(tmp_path) -> Path:
    root = tmp_path / "models"
    checkpoint(root / "checkpoints" / "sd1.safetensors")
    checkpoint(root / "checkpoints" / "sub" / "xl.safetensors", SDXL)
    write_header_only(root / "diffusion_models" / "sd2-unet.safetensors", diffusers_shapes(SD2, "unet", True))
    write_header_only(root / "unet" / "flux.safetensors", FLUX_UNET)
    write_header_only(root / "vae" / "vae.safetensors", diffusers_shapes(SDXL, "vae", True))
    write_header_only(root / "clip" / "clip-l.safetensors", diffusers_shapes(SD1, "text_encoder", True))
    lora(root / "loras" / "style.safetensors")
    save({"emb_params": torch.zeros(2, 1024)}, root / "embeddings" / "wave.safetensors")
    return root


@pytest.fixture
def small_models(tmp_path) -> Path:
    """Few small files, for tests that hash everything."""
    root = tmp_path / "small"
    write_header_only(
        root / "checkpoints" / "unet-as-checkpoint.safetensors", diffusers_shapes(SD1, "unet", True)
    )
    write_header_only(root / "vae" / "vae.safetensors", diffusers_shapes(SD1, "vae", True))
    lora(root / "loras" / "style.safetensors")
    save({"emb_params": torch.zeros(2, 1024)}, root / "embeddings" / "wave.safetensors")
    folder = root / "checkpoints" / "pipe"
    write_header_only(folder / "unet" / "model.safetensors", diffusers_shapes(SD1, "unet", True))
    (folder / "model_index.json").write_text(json.dumps({"unet": []}))
    return root


# --- scanning our own folders ------------------------------------------------------------------


def test_scan_finds_and_identifies_each_folder(models):
    entries = by_name(ModelLibrary(models).scan())
    expected = {
        "sd1": (Kind.CHECKPOINT, SD1),
        "sub/xl": (Kind.CHECKPOINT, SDXL),
        "sd2-unet": (Kind.UNET, SD2),
        "flux": (Kind.UNET, Family.FLUX),
        "vae": (Kind.VAE, SD1),
        "clip-l": (Kind.TEXT_ENCODER, SD1),
        "style": (Kind.LORA, SD1),
        "wave": (Kind.EMBEDDING, SD2),
    }
    assert {name: (e.kind, e.family) for name, e in entries.items()} == expected
    assert all(e.problem is None and e.usable for e in entries.values())  # FLUX.1 transformers included
    assert entries["sd1"].size == (models / "checkpoints" / "sd1.safetensors").stat().st_size


def test_to_json_has_the_contract_keys(models):
    entry = by_name(ModelLibrary(models).scan())["sub/xl"]
    data = entry.to_json()
    assert {"path", "name", "kind", "architecture", "format", "size", "hash", "problem"} <= set(data)
    assert (data["kind"], data["architecture"], data["format"]) == ("checkpoint", "sdxl", "safetensors")
    assert data["text_encoders"] == ["clip_l", "open_clip_g"] and data["prediction"] is None
    json.dumps(data)


def test_entries_filter_by_kind_and_family(models):
    library = ModelLibrary(models)
    library.scan()
    assert [e.name for e in library.entries(kind=Kind.LORA)] == ["style"]
    sdxl = {e.name for e in library.entries(family=SDXL)}
    assert sdxl == {"sub/xl", "vae", "clip-l"}  # an SD VAE and CLIP-L fit SDXL too
    assert {e.name for e in library.entries(kind=Kind.VAE, family=SD2)} == {"vae"}


def test_hidden_cache_and_other_files_are_skipped(models):
    (models / "checkpoints" / ".hidden.safetensors").write_bytes(b"x")
    (models / ".webui-hashes.json").write_text("{}")
    (models / "checkpoints" / "notes.txt").write_text("hi")
    (models / "checkpoints" / "sd1.yaml").write_text("model: {}")
    (models / "checkpoints" / ".git").mkdir()
    checkpoint(models / "checkpoints" / ".git" / "inside.safetensors")
    names = {e.name for e in ModelLibrary(models).scan()}
    assert not {".hidden", "notes", "inside", ".git/inside"} & names


def test_folder_kind_is_a_hint_and_a_mismatch_is_noted(models):
    lora(models / "checkpoints" / "misplaced.safetensors")
    entry = by_name(ModelLibrary(models).scan())["misplaced"]
    assert entry.kind is Kind.LORA and entry.problem is None
    assert "found in checkpoints/ (a checkpoint folder) but it is a lora" in entry.identity.detail


def test_diffusers_folder_is_one_checkpoint(models):
    folder = models / "checkpoints" / "my-model"
    for name in ("unet", "vae", "text_encoder"):
        write_header_only(folder / name / "model.safetensors", diffusers_shapes(SD1, name, True))
    (folder / "model_index.json").write_text(json.dumps({"unet": [], "vae": [], "text_encoder": []}))
    entries = ModelLibrary(models).scan()
    entry = by_name(entries)["my-model"]
    assert (entry.kind, entry.family, entry.format) == (Kind.CHECKPOINT, SD1, FileFormat.DIFFUSERS)
    assert entry.size == sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert not any(e.name.startswith("my-model/") for e in entries)


def test_sidecar_yaml_declares_v_prediction(models):
    checkpoint(models / "checkpoints" / "sd2-768.safetensors", SD2)
    (models / "checkpoints" / "sd2-768.yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
    entry = by_name(ModelLibrary(models).scan())["sd2-768"]
    assert entry.identity.prediction is Prediction.V and "sd2-768.yaml" in entry.identity.detail


def test_symlink_loops_and_duplicates_are_harmless(models):
    (models / "checkpoints" / "loop").symlink_to(models / "checkpoints")
    (models / "loras" / "again.safetensors").symlink_to(models / "loras" / "style.safetensors")
    entries = ModelLibrary(models).scan()
    assert len(entries) == 8
    (models / "loras" / "dangling.safetensors").symlink_to(models / "nowhere.safetensors")
    entry = by_name(ModelLibrary(models).scan())["dangling"]
    assert "cannot be read" in entry.problem and "nowhere.safetensors" in entry.problem


# --- bad files: each its own problem, and the scan goes on -------------------------------------------


def test_every_bad_file_is_listed_with_its_own_problem(models, monkeypatch):
    bad = models / "checkpoints" / "bad"
    bad.mkdir(parents=True)
    (bad / "empty.safetensors").write_bytes(b"")
    good = (models / "checkpoints" / "sd1.safetensors").read_bytes()
    (bad / "cut.safetensors").write_bytes(good[: len(good) // 2])
    (bad / "absurd.safetensors").write_bytes(struct.pack("<Q", 2**40) + b"{" + b"\0" * 64)
    (bad / "badjson.safetensors").write_bytes(struct.pack("<Q", 10) + b"{not json}" + b"\0" * 8)
    torch.save({"state_dict": {"a": torch.zeros(2)}}, bad / "renamed.safetensors")
    (bad / "folder.safetensors").mkdir()
    (bad / "locked.safetensors").write_bytes(good)
    (bad / "noise.ckpt").write_bytes(b"\x01\x02\x03\x04" * 32)
    target = models / "pwned"
    torch.save({"x": _WritesAFile(target)}, bad / "evil.ckpt")
    write_header_only(bad / "resnet.safetensors", {"backbone.layer1.weight": (64, 3, 7, 7)})
    real_open = os.open

    def guarded_open(file, *args, **kwargs):
        if str(file).endswith("locked.safetensors"):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(os, "open", guarded_open)
    entries = by_name(ModelLibrary(models).scan())
    problems = {
        name.removeprefix("bad/"): e.problem for name, e in entries.items() if name.startswith("bad/")
    }
    expected = {
        "empty": "empty (0 bytes)",
        "cut": "truncated file",
        "absurd": "corrupt safetensors header: it claims 1,099,511,627,776",
        "badjson": "not valid JSON",
        "renamed": "pickle (legacy .ckpt) file named .safetensors",
        "folder": "not a diffusers model either",
        "locked": "permission denied",
        "noise": "unknown format",
        "evil": "needs code execution to load",
        "resnet": "not recognised as a model",
    }
    assert set(problems) == set(expected)
    for name, fragment in expected.items():
        assert fragment in problems[name], (name, problems[name])
    assert len({problems[n] for n in expected}) == len(expected)
    assert not target.exists()
    assert entries["sd1"].problem is None and entries["sd1"].family is SD1  # the scan went on
    assert entries["bad/renamed"].format is FileFormat.PICKLE and entries["bad/renamed"].identity is not None
    assert entries["bad/empty"].kind is Kind.CHECKPOINT  # unreadable: the folder's kind


def test_identification_bug_becomes_a_problem_not_a_crash(models, monkeypatch):
    def broken(header):
        raise IndexError("tuple index out of range")

    monkeypatch.setattr(library_module, "identify", broken)
    entries = ModelLibrary(models).scan()
    assert entries and all("identification failed" in e.problem for e in entries)


# --- refresh ---------------------------------------------------------------------------------


def test_refresh_sees_added_changed_and_removed_and_rereads_only_those(models, monkeypatch):
    library = ModelLibrary(models)
    library.scan()
    reads = []
    real_read_header = library_module.read_header
    monkeypatch.setattr(library_module, "read_header", lambda p: reads.append(p) or real_read_header(p))

    assert len(library.refresh()) == 8 and reads == []
    checkpoint(models / "checkpoints" / "new.safetensors", SD2)
    lora(models / "loras" / "style.safetensors", seed=7)  # same size: the mtime must tell
    os.utime(models / "loras" / "style.safetensors", ns=(10**18, 10**18))
    (models / "vae" / "vae.safetensors").unlink()
    entries = by_name(library.refresh())
    changes = library.last_changes
    assert [p.name for p in changes.added] == ["new.safetensors"]
    assert [p.name for p in changes.changed] == ["style.safetensors"]
    assert [p.name for p in changes.removed] == ["vae.safetensors"]
    assert sorted(p.name for p in reads) == ["new.safetensors", "style.safetensors"]
    assert entries["new"].family is SD2 and "vae" not in entries


# --- extra roots -------------------------------------------------------------------------------


def a1111_install(root: Path) -> Path:
    checkpoint(root / "models" / "Stable-diffusion" / "anything" / "v3.safetensors")
    lora(root / "models" / "Lora" / "char.safetensors")
    lora(root / "models" / "LyCORIS" / "lyco.safetensors", seed=3)
    write_header_only(root / "models" / "VAE" / "kl-f8.safetensors", diffusers_shapes(SD1, "vae", True))
    save({"emb_params": torch.zeros(1, 768)}, root / "embeddings" / "bad-hands.safetensors")
    a1111_embedding = {"string_to_token": {"*": torch.tensor(265)}, "string_to_param": {"*": torch.zeros(2, 768)}}
    torch.save({**a1111_embedding, "name": "old-style", "step": 500}, root / "embeddings" / "old-style.pt")
    return root


def test_a1111_install_is_used_in_place(models, tmp_path):
    install = a1111_install(tmp_path / "stable-diffusion-webui")
    (models / "extra_model_paths.toml").write_text(f'[[roots]]\npath = "{install}"\npreset = "a1111"\n')
    library = ModelLibrary(models)
    entries = by_name(library.scan())
    assert library.problems == ()
    assert entries["anything/v3"].kind is Kind.CHECKPOINT and entries["anything/v3"].path.is_relative_to(
        install
    )
    assert entries["char"].kind is Kind.LORA and entries["lyco"].kind is Kind.LORA
    assert entries["kl-f8"].kind is Kind.VAE
    assert entries["bad-hands"].kind is Kind.EMBEDDING and entries["bad-hands"].family is SD1
    old = entries["old-style"]
    assert (old.kind, old.family, old.format, old.problem) == (Kind.EMBEDDING, SD1, FileFormat.PICKLE, None)
    assert entries["sd1"].kind is Kind.CHECKPOINT  # our own folders are still scanned


def test_comfyui_preset_and_explicit_folders_with_relative_paths(models, tmp_path):
    comfy = tmp_path / "ComfyUI"
    checkpoint(comfy / "models" / "checkpoints" / "comfy-xl.safetensors", SDXL)
    write_header_only(
        comfy / "models" / "clip" / "g.safetensors", diffusers_shapes(SDXL, "text_encoder_2", True)
    )
    shared = tmp_path / "shared"
    checkpoint(shared / "sd" / "shared-sd2.safetensors", SD2)
    config = tmp_path / "paths.toml"
    config.write_text(
        '[[roots]]\npath = "ComfyUI"\npreset = "comfyui"\n\n'
        '[[roots]]\npath = "shared"\n[roots.folders]\ncheckpoint = ["sd"]\nlora = "loras"\n'
    )
    entries = by_name(ModelLibrary(models, extra_roots_file=config).scan())
    assert entries["comfy-xl"].family is SDXL
    assert entries["g"].kind is Kind.TEXT_ENCODER and entries["g"].family is SDXL
    assert entries["shared-sd2"].family is SD2


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("[[roots]\n", "not valid TOML"),
        ('[[roots]]\npreset = "a1111"\n', 'needs path = "'),
        ('[[roots]]\npath = "."\npreset = "automatic"\n', "preset 'automatic' is unknown"),
        ('[[roots]]\npath = "."\n', "not neither"),
        ('[[roots]]\npath = "."\n[roots.folders]\nmodels = "x"\n', "folders.models is not a kind"),
        ('[[roots]]\npath = "/no/such/install"\npreset = "a1111"\n', "is not a folder; it was skipped"),
    ],
)
def test_bad_extra_roots_file_is_reported_and_the_scan_goes_on(models, text, fragment):
    (models / "extra_model_paths.toml").write_text(text)
    library = ModelLibrary(models)
    entries = library.scan()
    assert len(entries) == 8
    assert len(library.problems) == 1 and fragment in library.problems[0], library.problems


# --- find --------------------------------------------------------------------------------------


def test_find_by_name_path_title_and_hash(models):
    library = ModelLibrary(models)
    library.scan()
    xl = models / "checkpoints" / "sub" / "xl.safetensors"
    assert library.find("sub/xl").path == xl
    assert library.find("xl").path == xl  # without its subfolder
    assert library.find("SUB/XL.safetensors").path == xl
    assert library.find(str(xl)).path == xl
    assert library.find("style", kind=Kind.LORA).kind is Kind.LORA
    style = models / "loras" / "style.safetensors"
    short = library.model_hash(style)
    assert library.find(f"style.safetensors [{short}]").path == style
    assert library.find(short).path == style


def test_find_prefers_the_named_file_then_safetensors(models):
    torch.save({"a": torch.zeros(1)}, models / "checkpoints" / "sd1.ckpt")
    library = ModelLibrary(models)
    library.scan()
    assert library.find("sd1").format is FileFormat.SAFETENSORS
    assert library.find("sd1.ckpt").path.name == "sd1.ckpt"
    assert library.find("sd1.safetensors").path.name == "sd1.safetensors"


def test_find_unknown_name_lists_close_names(models):
    library = ModelLibrary(models)
    library.scan()
    with pytest.raises(ModelNotFoundError, match=r"no checkpoint model named 'sub/xll'.*close names: sub/xl"):
        library.find("sub/xll", kind=Kind.CHECKPOINT)


# --- hashes ------------------------------------------------------------------------------------


def test_hashes_in_background_and_after_restart_none_are_recomputed(small_models):
    library = open_library(small_models)
    assert all(e.hash is None for e in library.scan())
    hasher = library.start_background_hashing()
    try:
        assert hasher.wait(timeout=60)
    finally:
        library.stop_background_hashing()
    entries = by_name(library.entries())

    def sha256(relative: str) -> str:
        return hashlib.sha256((small_models / relative).read_bytes()).hexdigest()

    data = (small_models / "loras" / "style.safetensors").read_bytes()
    after_header = data[8 + struct.unpack("<Q", data[:8])[0] :]
    assert entries["style"].hash == hashlib.sha256(after_header).hexdigest()[:12]  # kohya addnet
    assert entries["unet-as-checkpoint"].hash == sha256("checkpoints/unet-as-checkpoint.safetensors")[:10]
    assert entries["vae"].hash == sha256("vae/vae.safetensors")[:10]
    assert entries["wave"].hash == sha256("embeddings/wave.safetensors")[:12]
    assert entries["pipe"].hash is None  # a diffusers folder has no single-file hash
    assert library.hash_cache.files_hashed == 4
    assert (small_models / ".webui-hashes.json").is_file()

    restarted = open_library(small_models)
    assert all(e.hash for e in restarted.scan() if e.name != "pipe")
    assert restarted.pending_hashes() == []
    assert restarted.hash_all() == 0 and restarted.hash_cache.files_hashed == 0


def test_hash_all_and_model_hash(small_models):
    library = ModelLibrary(small_models)
    library.scan()
    assert library.hash_all() == 4
    assert library.model_hash(None) is None
    assert library.model_hash(small_models / "checkpoints" / "pipe") is None
    style = small_models / "loras" / "style.safetensors"
    assert library.model_hash(style) == by_name(library.entries())["style"].hash
    assert len(library.model_hash(small_models / "vae" / "vae.safetensors")) == 10


# --- integration with the tiny fixtures and speed ------------------------------------------------


def test_every_tiny_fixture_is_identified_as_its_manifest_says(tiny_models_dir, tiny_manifest, tmp_path):
    library = ModelLibrary(tiny_models_dir, hash_cache=library_module.HashCache(tmp_path / "hashes.json"))
    entries = {e.path.relative_to(tiny_models_dir).as_posix(): e for e in library.scan()}
    assert tiny_manifest
    for fixture in tiny_manifest:
        entry = entries[fixture.path]
        what = (fixture.path, entry.detail)
        assert entry.problem is None and entry.usable, what
        assert entry.kind is fixture.kind, what
        assert entry.family is fixture.family or entry.identity.fits(fixture.family), what
        if fixture.text_encoder is not None:
            assert fixture.text_encoder in entry.identity.text_encoders, what
        if fixture.prediction is Prediction.V and fixture.kind is Kind.CHECKPOINT:
            assert entry.identity.prediction is Prediction.V, what  # declared by metadata, key or yaml
        if entry.identity.prediction is not None:
            assert entry.identity.prediction is fixture.prediction, what


@pytest.mark.slow
def test_scan_speed_200_files(tmp_path):
    """Prints the time to scan 200 files; real-size headers where the filesystem keeps holes sparse."""
    root = tmp_path / "models"
    root.mkdir()
    real_size = sparse_files_supported(root)
    kinds = {
        "checkpoints": [ldm_checkpoint(f, not real_size) for f in (SD1, SDXL)],
        "loras": [kohya_lora(diffusers_shapes(SDXL, "unet", not real_size), "lora_unet_", only=("attn",))],
        "vae": [diffusers_shapes(SD1, "vae", not real_size)],
        "text_encoders": [diffusers_shapes(SDXL, "text_encoder_2", not real_size)],
    }
    written = {folder: [header_only_bytes(shapes) for shapes in headers] for folder, headers in kinds.items()}
    count = 0
    while count < 200:
        for folder, heads in written.items():
            for head in heads:
                write_header_only(root / folder / f"m{count:03d}.safetensors", head)
                count += 1
    library = ModelLibrary(root)
    start, cpu = time.perf_counter(), time.process_time()
    entries = library.scan()
    scan_seconds, scan_cpu = time.perf_counter() - start, time.process_time() - cpu
    start = time.perf_counter()
    library.refresh()
    refresh_seconds = time.perf_counter() - start
    keys = sum(len(s) for headers in kinds.values() for s in headers) / sum(len(h) for h in kinds.values())
    print(
        f"\nscan of {len(entries)} files ({'real-size' if real_size else 'tiny'} headers, ~{keys:.0f} keys "
        f"each): {scan_seconds:.3f} s ({scan_cpu:.3f} s CPU); refresh with nothing changed: {refresh_seconds:.3f} s"
    )
    assert all(e.problem is None for e in entries)
