"""Format sniffing, header reading and safe loading, including every kind of broken or unsafe file."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from webui.models.files import (
    ModelFileError,
    extension_problem,
    load_state_dict,
    read_header,
    sniff_format,
)
from webui.models.kinds import FileFormat

TENSORS = {
    "a.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4),
    "b": torch.ones(5, dtype=torch.float16),
}


class _WritesAFile:
    """A pickle payload that would create a file if it were ever unpickled without weights_only."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


def safetensors_file(path: Path, tensors=TENSORS, metadata=None) -> Path:
    save_file(tensors, str(path), metadata=metadata)
    return path


def problem_of(path: Path, reader=read_header) -> str:
    with pytest.raises(ModelFileError) as caught:
        reader(path)
    assert caught.value.path == path
    return caught.value.problem


def io_read_chars() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


# --- format from bytes ------------------------------------------------------------------------------


def test_sniff_each_format_from_bytes(tmp_path):
    torch.save(TENSORS, tmp_path / "zip.pt")
    torch.save(TENSORS, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    (tmp_path / "q.gguf").write_bytes(b"GGUF" + b"\0" * 20)
    (tmp_path / "noise.bin").write_bytes(os.urandom(64).replace(b"{", b"x").replace(b"\x80", b"x"))
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "model_index.json").write_text("{}")
    assert sniff_format(safetensors_file(tmp_path / "m.safetensors")) is FileFormat.SAFETENSORS
    assert sniff_format(tmp_path / "zip.pt") is FileFormat.PICKLE
    assert sniff_format(tmp_path / "legacy.pt") is FileFormat.PICKLE
    assert sniff_format(tmp_path / "q.gguf") is FileFormat.GGUF
    assert sniff_format(tmp_path / "noise.bin") is FileFormat.UNKNOWN
    assert sniff_format(tmp_path / "pipe") is FileFormat.DIFFUSERS


def test_safetensors_named_ckpt_reads_and_loads_as_safetensors(tmp_path):
    path = safetensors_file(tmp_path / "model.ckpt", metadata={"k": "v"})
    header = read_header(path)
    assert header.format is FileFormat.SAFETENSORS
    assert header.shapes == {"a.weight": (3, 4), "b": (5,)}
    assert header.dtypes == {"a.weight": "F32", "b": "F16"}
    assert header.metadata == {"k": "v"}
    assert torch.equal(load_state_dict(path)["a.weight"], TENSORS["a.weight"])
    assert extension_problem(path, header.format) is None


def test_pickle_named_safetensors_is_read_safely_and_flagged(tmp_path):
    path = tmp_path / "model.safetensors"
    torch.save({"state_dict": TENSORS}, path)
    header = read_header(path)
    assert header.format is FileFormat.PICKLE and header.shapes["a.weight"] == (3, 4)
    assert "pickle (legacy .ckpt) file named .safetensors" in extension_problem(path, header.format)
    assert torch.equal(load_state_dict(path)["b"], TENSORS["b"])


def test_pickle_header_unwraps_state_dict_and_keeps_scalar_metadata(tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": TENSORS, "global_step": 470000}, path)
    header = read_header(path)
    assert header.shapes == {"a.weight": (3, 4), "b": (5,)}
    assert header.dtypes["b"] == "F16"


def test_a1111_embedding_pickle_is_flattened(tmp_path):
    path = tmp_path / "style.pt"
    torch.save(
        {
            "string_to_token": {"*": torch.tensor(265)},
            "string_to_param": {"*": torch.zeros(4, 768)},
            "name": "style",
            "step": 3000,
        },
        path,
    )
    header = read_header(path)
    assert header.shapes["string_to_param.*"] == (4, 768)
    assert header.metadata["name"] == "style"
    assert load_state_dict(path)["string_to_param.*"].shape == (4, 768)


def test_legacy_non_zip_pickle_is_read(tmp_path):
    path = tmp_path / "old.ckpt"
    torch.save(TENSORS, path, _use_new_zipfile_serialization=False)
    assert read_header(path).shapes["a.weight"] == (3, 4)


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux's per-process I/O counters")
def test_header_reading_reads_no_tensor_data(tmp_path):
    big = {"big": torch.zeros(16 * 2**20 // 4)}  # 16 MiB of data
    st = safetensors_file(tmp_path / "big.safetensors", big)
    pt = tmp_path / "big.ckpt"
    torch.save(big, pt)
    for path in (st, pt):
        before = io_read_chars()
        assert read_header(path).shapes == {"big": (4 * 2**20,)}
        assert io_read_chars() - before < 2**20, path


# --- unsafe pickles -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["evil.ckpt", "evil.safetensors"])
def test_pickle_needing_code_is_refused_and_never_runs(tmp_path, name):
    target = tmp_path / "pwned"
    path = tmp_path / name
    torch.save({"state_dict": TENSORS, "payload": _WritesAFile(target)}, path)
    for reader in (read_header, load_state_dict):
        problem = problem_of(path, reader)
        assert "needs code execution" in problem and "refused for safety" in problem
        assert "builtins.open" in problem or "io.open" in problem
        assert ".safetensors" in problem  # says how to convert
        assert not target.exists()
    if name.endswith(".safetensors"):
        assert "pickle (legacy .ckpt) file named .safetensors" in problem


# --- broken files: each its own problem -----------------------------------------------------------------


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    assert "empty (0 bytes)" in problem_of(path)
    assert "empty (0 bytes)" in problem_of(path, load_state_dict)


def test_truncated_header(tmp_path):
    data = safetensors_file(tmp_path / "ok.safetensors").read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[:40])
    assert "truncated file: the header alone" in problem_of(path)


def test_truncated_tensor_data(tmp_path):
    data = safetensors_file(tmp_path / "ok.safetensors").read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[:-4])
    assert "truncated file: the tensors need" in problem_of(path)
    assert "truncated file" in problem_of(path, load_state_dict)


def test_absurd_header_length(tmp_path):
    path = tmp_path / "absurd.safetensors"
    path.write_bytes(struct.pack("<Q", 2**40) + b'{"a": 1}' + b"\0" * 100)
    problem = problem_of(path)
    assert "corrupt safetensors header" in problem and "1,099,511,627,776" in problem


def test_header_length_beyond_file_size(tmp_path):
    path = tmp_path / "short.safetensors"
    path.write_bytes(struct.pack("<Q", 5000) + b'{"a": 1}')
    assert "truncated file" in problem_of(path)


def test_header_not_json(tmp_path):
    raw = b'{"a": {"dtype": "F32", "shape": [1], '  # cut JSON
    path = tmp_path / "badjson.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 16)
    assert "not valid JSON" in problem_of(path)


def test_directory_named_like_a_model(tmp_path):
    path = tmp_path / "x.safetensors"
    path.mkdir()
    assert "not a diffusers model either (no model_index.json" in problem_of(path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_by_mode(tmp_path):
    path = safetensors_file(tmp_path / "locked.safetensors")
    path.chmod(0)
    try:
        assert "permission denied" in problem_of(path)
    finally:
        path.chmod(0o644)


def test_unreadable_file(tmp_path, monkeypatch):
    path = safetensors_file(tmp_path / "locked.safetensors")
    real_open = os.open

    def guarded_open(file, *args, **kwargs):
        if Path(str(file)) == path:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(os, "open", guarded_open)
    assert "permission denied" in problem_of(path)


def test_html_saved_as_model(tmp_path):
    path = tmp_path / "download.safetensors"
    path.write_text("<!DOCTYPE html><html><body>Rate limited</body></html>")
    assert "text file (HTML or JSON)" in problem_of(path)


def test_unknown_bytes(tmp_path):
    path = tmp_path / "noise.ckpt"
    path.write_bytes(b"\x01\x02\x03\x04" * 16)
    assert "unknown format" in problem_of(path)
    assert "unknown format" in problem_of(path, load_state_dict)


def test_tiny_file(tmp_path):
    path = tmp_path / "tiny.safetensors"
    path.write_bytes(b"\x01\x02\x03")
    assert "too short" in problem_of(path)


def test_corrupt_pickles(tmp_path):
    torch.save(TENSORS, tmp_path / "ok.ckpt")
    data = (tmp_path / "ok.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    torch.save(TENSORS, tmp_path / "legacy.ckpt", _use_new_zipfile_serialization=False)
    legacy = (tmp_path / "legacy.ckpt").read_bytes()
    (tmp_path / "cut_legacy.ckpt").write_bytes(legacy[:60])
    (tmp_path / "garbage.ckpt").write_bytes(b"\x80\x02garbage" * 8)
    assert "corrupt or truncated torch file" in problem_of(tmp_path / "cut.ckpt")
    assert "truncated" in problem_of(tmp_path / "cut_legacy.ckpt")
    assert "corrupt pickle" in problem_of(tmp_path / "garbage.ckpt")


def test_pickle_of_something_else(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], path)
    assert "not a dict of tensors" in problem_of(path)


# --- diffusers folders and GGUF ---------------------------------------------------------------------------


def make_diffusers_folder(root: Path, prediction: str = "v_prediction") -> Path:
    root.mkdir(parents=True)
    (root / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "StableDiffusionPipeline",
                "unet": ["diffusers", "UNet2DConditionModel"],
                "vae": ["diffusers", "AutoencoderKL"],
            }
        )
    )
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps({"prediction_type": prediction}))
    for name in ("unet", "vae"):
        (root / name).mkdir()
        safetensors_file(
            root / name / "diffusion_pytorch_model.safetensors", {"conv_in.weight": torch.zeros(2, 4)}
        )
    return root


def test_diffusers_folder_header_prefixes_components(tmp_path):
    header = read_header(make_diffusers_folder(tmp_path / "pipe"))
    assert header.format is FileFormat.DIFFUSERS
    assert header.shapes == {"unet/conv_in.weight": (2, 4), "vae/conv_in.weight": (2, 4)}
    assert header.metadata["diffusers.prediction_type"] == "v_prediction"
    assert header.metadata["diffusers.pipeline"] == "StableDiffusionPipeline"
    assert "component by component" in problem_of(tmp_path / "pipe", load_state_dict)


def test_diffusers_folder_with_missing_weights(tmp_path):
    root = make_diffusers_folder(tmp_path / "pipe")
    (root / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    assert "no weights in unet/" in problem_of(root)


def test_diffusers_folder_with_a_broken_component(tmp_path):
    root = make_diffusers_folder(tmp_path / "pipe")
    (root / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    problem = problem_of(root)
    assert problem.startswith("vae/diffusion_pytorch_model.safetensors:") and "empty" in problem


def _gguf_string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def test_gguf_header(tmp_path):
    """Read by the gguf package: logical shapes in torch order, ggml type names, scalar metadata only."""
    import gguf
    import numpy as np

    path = tmp_path / "flux-Q8_0.gguf"
    writer = gguf.GGUFWriter(str(path), arch="flux")
    writer.add_array("general.tags", ["x"])
    weights = np.linspace(-1, 1, 96 * 64, dtype=np.float32).reshape(96, 64)
    quantised = gguf.quants.quantize(weights, gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("double_blocks.0.img_attn.qkv.weight", quantised, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("img_in.bias", np.zeros(32, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    header = read_header(path)
    assert header.format is FileFormat.GGUF
    assert header.shapes == {"double_blocks.0.img_attn.qkv.weight": (96, 64), "img_in.bias": (32,)}
    assert header.dtypes == {"double_blocks.0.img_attn.qkv.weight": "Q8_0", "img_in.bias": "F32"}
    assert header.metadata == {"general.architecture": "flux"}
    assert "GGUF" in problem_of(path, load_state_dict)
    with path.open("r+b") as handle:  # a download cut inside the tensor data
        handle.truncate(path.stat().st_size - 40)
    assert "truncated GGUF file" in problem_of(path)


def test_header_only_gguf_is_one_problem_not_a_crash(tmp_path):
    path = tmp_path / "header-only.gguf"
    tensor = _gguf_string("double_blocks.0.img_attn.qkv.weight") + struct.pack("<I", 2)
    tensor += struct.pack("<QQ", 3072, 9216) + struct.pack("<IQ", 2, 0)
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 1, 0) + tensor)
    assert "truncated GGUF" in problem_of(path)
    huge = tmp_path / "huge-count.gguf"
    huge.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 10**15, 10**15))
    assert "truncated GGUF" in problem_of(huge)


def test_truncated_gguf(tmp_path):
    path = tmp_path / "cut.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 5, 0))
    assert "truncated GGUF" in problem_of(path)


def test_a_safetensors_header_whose_length_looks_like_a_pickle_protocol_is_safetensors(tmp_path):
    """A header of 0x0280-0x05ff bytes starts the file with 80 02..05, a pickle's protocol marker."""
    import json
    import struct

    from webui.models.files import sniff_format
    from webui.models.kinds import FileFormat

    header = json.dumps({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "__metadata__": {"p": ""}})
    header += " " * (0x0280 - len(header))
    path = tmp_path / "lora.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header.encode() + b"\0\0\0\0")
    assert path.read_bytes()[:2] == b"\x80\x02"
    assert sniff_format(path) is FileFormat.SAFETENSORS
