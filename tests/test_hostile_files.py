"""Hostile and broken model files: each is one library entry with a problem; nothing crashes, hangs or allocates.

The red-team examples (a 5-byte pickle, memo cycles, deep nesting, allocation bombs, protocol 4/5 payloads,
FIFOs, symlink loops) one by one, then a seeded fuzz corpus of a few hundred files scanned in a subprocess.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.hostile_files import (
    bytearray_bomb,
    deep_dicts,
    deep_safetensors_json,
    dumps,
    legacy_storage_bomb,
    memo_cycle,
    memo_dag,
    protocol_payload,
    relabelled,
    torch_legacy,
    torch_zip,
    view_bomb,
    write_fuzz_corpus,
)
from webui.models.files import ModelFileError, load_state_dict, read_header
from webui.models.library import ModelLibrary

ROOT = Path(__file__).resolve().parents[1]
needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX named pipes")


def problem_of(path: Path, reader=read_header) -> str:
    with pytest.raises(ModelFileError) as caught:
        reader(path)
    return caught.value.problem


def bounded(fn, *args):  # noqa: ANN001, ANN201
    """Run `fn` on a thread: a reader that blocks (a FIFO) fails the test instead of hanging the suite."""
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(("value", fn(*args)))
        except Exception as error:  # handed back to the test
            outcome.append(("error", error))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(60)
    assert outcome, f"{fn.__name__}{args} is still blocked after 60 s"
    kind, value = outcome[0]
    if kind == "error":
        raise value
    return value


def scan(models_dir: Path) -> dict[str, str | None]:
    library = ModelLibrary(models_dir)
    return {entry.path.relative_to(models_dir).as_posix(): entry.problem for entry in bounded(library.scan)}


# --- the red team's examples -------------------------------------------------------------------------------


def test_a_five_byte_pickle_is_listed_with_its_problem_and_the_cli_goes_on(tmp_path):
    folder = tmp_path / "models" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "x.ckpt").write_bytes(bytes.fromhex("80024a0100"))
    assert "truncated file" in scan(tmp_path / "models")["checkpoints/x.ckpt"]
    result = subprocess.run(
        [sys.executable, "-m", "webui", "models", "--models-dir", str(tmp_path / "models")],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "x.ckpt" in result.stdout and "truncated file" in result.stdout


def test_the_app_opens_over_a_models_folder_of_broken_files(tmp_path):
    from webui.app import open_context
    from webui.config import Settings

    folder = tmp_path / "models" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "x.ckpt").write_bytes(bytes.fromhex("80024a0100"))
    (folder / "deep.safetensors").write_bytes(deep_safetensors_json(50_000))
    settings = Settings(models_dir=tmp_path / "models", outputs_dir=tmp_path / "out", settings_file=tmp_path / "s.json")
    context = open_context(settings)  # what launch.py does before serving
    assert {entry.path.name for entry in context.library.entries() if entry.problem} == {"x.ckpt", "deep.safetensors"}
    context.library.refresh()  # the Refresh button


def test_the_cli_says_what_went_wrong_for_an_unexpected_error(monkeypatch, capsys, tmp_path):
    from webui import cli
    from webui.models import library

    def broken_scan(self):  # noqa: ANN001, ANN202
        raise KeyError(5)

    monkeypatch.setattr(library.ModelLibrary, "scan", broken_scan)
    assert cli.main(["models", "--models-dir", str(tmp_path)]) == 2  # a folder that exists: the scan is reached
    error = capsys.readouterr().err
    assert "KeyError" in error and error.strip() != "error: 5"


def test_memo_shared_and_self_containing_dicts_are_walked_once(tmp_path):
    dag, cycle = tmp_path / "dag.ckpt", tmp_path / "cycle.ckpt"
    dag.write_bytes(torch_zip(memo_dag(40)))  # 2**40 paths through 41 dicts
    cycle.write_bytes(torch_zip(memo_cycle()))
    (tmp_path / "dag.pt").write_bytes(torch_legacy(memo_dag(40)))
    for path in (dag, cycle, tmp_path / "dag.pt"):
        assert bounded(read_header, path).shapes == {}  # no tensors, and no endless walk


def test_nesting_thousands_deep_is_a_problem_not_a_recursion_error(tmp_path):
    (tmp_path / "deep.ckpt").write_bytes(torch_zip(deep_dicts()))
    (tmp_path / "deep.pt").write_bytes(torch_legacy(deep_dicts()))
    (tmp_path / "deep.safetensors").write_bytes(deep_safetensors_json())
    assert "nested more than 64 deep" in problem_of(tmp_path / "deep.ckpt")
    assert "nested more than 64 deep" in problem_of(tmp_path / "deep.pt")
    assert "nested thousands deep" in problem_of(tmp_path / "deep.safetensors")


def test_allocation_requests_beyond_the_file_are_refused_before_allocating(tmp_path):
    files = {
        "bytearray.ckpt": (bytearray_bomb(2**40), "bytearray allocation"),
        "bytearray-8g.ckpt": (bytearray_bomb(2**33), "bytearray allocation"),
        "storage.pt": (legacy_storage_bomb(2**40), "truncated file: the tensor data needs more"),
        "storage-8g.pt": (legacy_storage_bomb(2**31), "truncated file: the tensor data needs more"),
        "view.ckpt": (view_bomb(), "needs 4,398,046,511,104 bytes but its storage '0' holds 16"),
    }
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    for name, (data, expected) in files.items():
        (tmp_path / name).write_bytes(data)
        for reader in (read_header, load_state_dict):  # loading checks first, so torch.load never sees them
            assert expected in problem_of(tmp_path / name, reader), name
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 512 * 1024


def test_a_storage_record_of_the_wrong_size_is_corrupt(tmp_path):
    path = tmp_path / "short-record.ckpt"
    path.write_bytes(torch_zip(dumps({"w": _tensor_of(4)}), {"0": b"\0" * 8}))  # 4 floats need 16 bytes
    assert "should hold 16 bytes (4 × F32) but holds 8" in problem_of(path)


def _tensor_of(numel: int):  # noqa: ANN202
    from tests.hostile_files import tensor, zip_storage

    return tensor(zip_storage("0", numel), (numel,), (1,))


@pytest.mark.parametrize("protocol", [4, 5])
def test_protocol_4_and_5_payloads_are_refused_as_code_not_called_corrupt(tmp_path, protocol):
    target = tmp_path / "pwned"
    path = tmp_path / f"evil-{protocol}.ckpt"
    path.write_bytes(protocol_payload(protocol, target))
    for reader in (read_header, load_state_dict):
        problem = problem_of(path, reader)
        assert "needs code execution" in problem and "refused for safety" in problem, problem
        assert "builtins.open" in problem or "io.open" in problem
        assert "corrupt" not in problem
    assert not target.exists()


def test_a_plain_protocol_4_file_says_safe_loading_cannot_read_it(tmp_path):
    path = tmp_path / "p4.pt"
    torch.save({"w": torch.zeros(2)}, path, pickle_protocol=4)
    problem = problem_of(path)
    assert "pickle protocol 4" in problem and "weights_only" in problem and ".safetensors" in problem


@needs_fifo
def test_fifos_are_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "x.ckpt")
    (tmp_path / "link.safetensors").symlink_to(tmp_path / "x.ckpt")
    pipe = tmp_path / "pipe"
    (pipe / "unet").mkdir(parents=True)
    (pipe / "model_index.json").write_text(json.dumps({"_class_name": "X", "unet": ["diffusers", "UNet"]}))
    os.mkfifo(pipe / "unet" / "diffusion_pytorch_model.safetensors")
    for path in (tmp_path / "x.ckpt", tmp_path / "link.safetensors", pipe):
        with pytest.raises(ModelFileError, match="FIFO"):
            bounded(read_header, path)
    with pytest.raises(ModelFileError, match="FIFO"):
        bounded(load_state_dict, tmp_path / "x.ckpt")


def test_symlink_loops_are_listed_with_a_problem_and_the_walk_ends(tmp_path):
    folder = tmp_path / "models" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "a.ckpt").symlink_to(folder / "b.ckpt")
    (folder / "b.ckpt").symlink_to(folder / "a.ckpt")
    (folder / "loop").symlink_to(folder / "loop")
    (folder / "up").symlink_to(folder)
    found = scan(tmp_path / "models")
    assert set(found) == {"checkpoints/a.ckpt", "checkpoints/b.ckpt"}
    assert all("symbolic links" in problem for problem in found.values())


def test_a_relabelled_dtype_is_caught_by_the_widths_its_architecture_fixes(tmp_path, tiny_models_dir):
    state = load_file(tiny_models_dir / "checkpoints" / "tiny-sd1.safetensors")
    folder = tmp_path / "models" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "relabelled.safetensors").write_bytes(relabelled(state))  # F32 bytes called F16, shapes doubled
    (folder / "ranges.safetensors").write_bytes(relabelled(state, double_shapes=False))
    library = ModelLibrary(tmp_path / "models")
    entries = {entry.path.name: entry for entry in library.scan()}
    problem = entries["relabelled.safetensors"].problem
    assert "contradict the SD1.x checkpoint" in problem and "154 positions, not 77" in problem
    assert not entries["relabelled.safetensors"].usable  # never offered in a dropdown
    assert "safetensors rejected the file" in entries["ranges.safetensors"].problem  # safe_open's own check
    with pytest.raises(Exception, match="contradict the SD1.x checkpoint"):  # a path given to the engine directly
        from webui.engine.pipelines import _identify

        _identify(folder / "relabelled.safetensors")


def test_every_tiny_fixture_passes_the_width_checks(tiny_models_dir):
    problems = {e.path.name: e.problem for e in ModelLibrary(tiny_models_dir).scan() if e.problem}
    assert not any("contradict" in problem for problem in problems.values()), problems


# --- the fuzz corpus ------------------------------------------------------------------------------------------

SCAN_IN_A_SUBPROCESS = """
import json, resource, sys
from pathlib import Path
from webui.models.library import ModelLibrary
# Address space capped a few GiB above what the imports took: an allocation bomb that got through would fail
# with MemoryError (a problem for that file) instead of taking this machine's memory.
with open("/proc/self/status") as status:
    size = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (size + 4 * 2**30, resource.getrlimit(resource.RLIMIT_AS)[1]))
models = Path(sys.argv[1])
entries = ModelLibrary(models).scan()
json.dump({e.path.relative_to(models).as_posix(): e.problem for e in entries}, sys.stdout)
"""


@pytest.mark.slow
@needs_fifo
def test_fuzz_corpus_gives_one_entry_per_file_each_with_a_problem(tmp_path, tiny_models_dir):
    state = load_file(tiny_models_dir / "loras" / "tiny-sd1-kohya.safetensors")
    models = tmp_path / "models"
    corpus = write_fuzz_corpus(models, state, seed=1234)
    assert len(corpus.all) >= 300
    result = subprocess.run(
        [sys.executable, "-c", SCAN_IN_A_SUBPROCESS, str(models)],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip  # the wall limit turns a hang into a failure; the readers' own budgets keep it far away
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout)
    assert sorted(found) == sorted(corpus.all)  # one entry per file, none lost, none doubled
    without_problem = [path for path in corpus.broken if not found[path]]
    assert without_problem == []
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert not (models / "pwned").exists()
