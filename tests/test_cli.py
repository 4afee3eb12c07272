"""`python -m webui …`: models listing, tiny-model writer, headless generate; nothing touches the network."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from PIL import Image

from webui.cli import main


def run_json(capsys, *argv: str):
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_make_tiny_models_then_models_json_lists_every_fixture(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "webui", "make-tiny-models", str(tmp_path)], check=True, env=env)
    out = subprocess.run(
        [sys.executable, "-m", "webui", "models", "--json", "--models-dir", str(tmp_path)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    listed = {os.path.relpath(row["path"], tmp_path): row for row in json.loads(out)}
    manifest = json.loads((tmp_path / "tiny_manifest.json").read_text())
    files = manifest["files"] if isinstance(manifest, dict) else manifest
    assert len(files) >= 40
    for expected in files:
        row = listed[expected["path"]]
        assert row["kind"] == expected["kind"], expected["path"]
        if row["kind"] in ("vae", "text_encoder"):  # one SD VAE / one CLIP-L file fits several families
            assert expected["family"] in row["compatible"], expected["path"]
        else:
            assert row["architecture"] == expected["family"], expected["path"]
        assert row["problem"] is None and row["size"] > 0
        assert set(row) >= {"path", "kind", "architecture", "format", "size", "hash", "problem"}


def test_models_json_reports_a_broken_file_and_keeps_going(tiny_models_dir, tmp_path, capsys):
    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    (models / "checkpoints" / "empty.safetensors").write_bytes(b"")
    good = tiny_models_dir / "checkpoints" / "tiny-sd1.safetensors"
    (models / "checkpoints" / "good.safetensors").write_bytes(good.read_bytes())
    rows = {os.path.basename(r["path"]): r for r in run_json(capsys, "models", "--json", "--models-dir", str(models))}
    assert rows["empty.safetensors"]["problem"] and "empty" in rows["empty.safetensors"]["problem"]
    assert rows["good.safetensors"]["problem"] is None and rows["good.safetensors"]["architecture"] == "sd1"
    assert rows["good.safetensors"]["hash"] is None  # not computed until asked ...
    hashed = run_json(capsys, "models", "--json", "--hash", "--models-dir", str(models))
    rows = {os.path.basename(r["path"]): r for r in hashed}
    assert len(rows["good.safetensors"]["hash"]) == 10  # ... then cached


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_generate_json_from_a_single_file_checkpoint_offline(tiny_models_dir, tmp_path, capsys, no_network):
    result = run_json(
        capsys,
        "generate",
        "--models-dir", str(tiny_models_dir),
        "--outputs-dir", str(tmp_path),
        "--checkpoint", "tiny-sdxl",
        "--prompt", "a red hat, on a table",
        "--negative", "blurry",
        "--steps", "2",
        "--width", "32",
        "--height", "32",
        "--seed", "42",
        "--json",
    )  # fmt: skip
    (image,) = result["images"]
    assert image["seed"] == 42 and set(result["timings"]) >= {"load", "denoise", "decode", "save", "total"}
    path = tmp_path / "txt2img"
    assert str(path) in image["path"] and image["path"].endswith("-42.png")
    with Image.open(image["path"]) as png:
        assert png.text["parameters"] == image["infotext"]
    assert image["infotext"].startswith("a red hat, on a table\nNegative prompt: blurry\nSteps: 2,")
    assert "Seed: 42" in image["infotext"] and "Model: tiny-sdxl" in image["infotext"]


def test_generate_with_an_unknown_checkpoint_names_it(tiny_models_dir, tmp_path, capsys):
    code = main(["generate", "--models-dir", str(tiny_models_dir), "--checkpoint", "no-such-model", "--json"])
    assert code == 2
    assert "no-such-model" in capsys.readouterr().err


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_init_images_that_are_fifos_bombs_or_not_images_are_errors_naming_the_flag(tiny_models_dir, tmp_path, capsys):
    import struct
    import zlib

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # opened normally, this would wait forever for a writer

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    bomb = tmp_path / "bomb.png"  # a few bytes whose header claims 60000x60000 pixels
    header = struct.pack(">IIBBBBB", 60_000, 60_000, 8, 2, 0, 0, 0)
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")))
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    for path, words in ((fifo, "FIFO"), (bomb, "too many pixels"), (text, "not an image file")):
        argv = ["generate", "--models-dir", str(tiny_models_dir), "--outputs-dir", str(tmp_path / "out"),
                "--checkpoint", "tiny-sd1", "--init-image", str(path), "--steps", "1"]  # fmt: skip
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "--init-image" in err and words in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_mistyped_infotext_image_path_is_an_error_not_the_prompt(tiny_models_dir, tmp_path, capsys):
    argv = ["generate", "--models-dir", str(tiny_models_dir), "--outputs-dir", str(tmp_path / "out"),
            "--checkpoint", "tiny-sd1", "--infotext", str(tmp_path / "no-such-image.png")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--infotext" in err or "infotext:" in err
    assert "no such image file" in err and not (tmp_path / "out").exists()
