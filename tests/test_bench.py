"""`python -m webui bench`: the tiny run reports every figure with its raw numbers and writes JSON + markdown.

No timing is asserted: the figures are measurements of a busy machine, not properties of the code.
"""

from __future__ import annotations

import json
import math

import pytest

from webui.bench.report import FIGURES, TARGETS
from webui.bench.stats import Case, interleaved
from webui.cli import main


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@pytest.mark.slow
def test_bench_tiny_json_reports_every_figure_with_raw_numbers_and_writes_files(tiny_models_dir, tmp_path, capsys):
    out = tmp_path / "results"
    argv = ["bench", "--size", "tiny", "--device", "cpu", "--json", "--repeats", "2", "--warmup", "1"]
    assert main([*argv, "--models-dir", str(tiny_models_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(printed)  # nothing but the report on stdout

    for key in FIGURES:
        assert _number(report[key]), (key, report[key], report["notes"].get(key))
        assert report["raw"][key], key
        assert report["targets"][key] == TARGETS[key].label()
        assert report["met"][key] in (True, False, None)
    raw = report["raw"]
    assert _number(raw["engine_vs_diffusers_speed"]["engine_it_s"]["median"])
    assert _number(raw["engine_vs_diffusers_speed"]["diffusers_it_s"]["median"])
    assert raw["engine_vs_diffusers_speed"]["latents_max_abs_difference"] < 1e-3  # the same computation
    assert raw["hires_pass_vs_diffusers_img2img"]["latents_max_abs_difference"] < 1e-3
    assert len(raw["request_overhead"]["engine_request_s"]["runs"]) == 2
    assert raw["cold_load_vs_file_read"]["file_bytes"] > 0
    assert raw["cached_switch_vs_cold_load"]["components_loaded_while_switching"] == 0
    assert raw["vae_swap_ms"]["components_loaded_while_swapping"] == 0
    assert raw["lora_weight_change_vs_step"]["lora_file_reads_during_changes"] == 0
    assert raw["memory_vs_unique_components"]["unique_component_bytes"] > 0
    assert len(raw["memory_vs_unique_components"]["components"]) == 5  # 2 UNets + 2 text encoders + 1 shared VAE
    assert report["notes"]["ui_roundtrip_vs_engine"]  # says which app was measured
    assert _number(report["unet_step"]["flops"]) and report["unet_step"]["flops"] > 0

    assert report["device"] == "cpu" and report["dtype"] == "float32" and report["size"] == "tiny"
    assert report["cuda"] is None and "CUDA" in report["notes_cuda"]
    assert {"cpu", "cores_logical", "ram_bytes", "torch_threads"} <= set(report["machine"])
    assert report["versions"]["torch"] and report["versions"]["diffusers"]

    assert json.loads((out / "tiny-cpu.json").read_text()) == report
    table = (out / "tiny-cpu.md").read_text()
    assert all(f"| {key} |" in table for key in FIGURES)
    assert "| figure | value | target | met? |" in table


def test_a_figure_without_a_value_or_target_is_not_judged():
    assert TARGETS["engine_vs_diffusers_speed"].met(0.99) is True
    assert TARGETS["engine_vs_diffusers_speed"].met(0.5) is False
    assert TARGETS["vae_swap_ms"].met(25.0) is False
    assert TARGETS["vae_swap_ms"].met(None) is None
    assert TARGETS["lora_first_load_vs_file_read"].met(3.0) is None


def test_interleaved_rotates_the_order_and_runs_setup_before_each_timed_call():
    calls: list[str] = []
    cases = {
        "a": Case(lambda: calls.append("a"), setup=lambda: calls.append("setup")),
        "b": Case(lambda: calls.append("b")),
    }
    stats = interleaved(cases, repeats=2, warmup=1)
    assert calls == ["setup", "a", "b", "setup", "a", "b", "b", "setup", "a"]
    assert len(stats["a"].runs) == len(stats["b"].runs) == 2


def test_full_size_refuses_with_a_clear_message_when_ram_is_short(monkeypatch, tmp_path):
    import torch

    from webui.bench import runner

    class Short:
        available = 2**30

    monkeypatch.setattr(runner.psutil, "virtual_memory", lambda: Short())
    with pytest.raises(ValueError, match="does not fit this machine.*--size small"):
        runner.bench_sets(runner.BenchOptions(size="full", out=tmp_path), tmp_path, torch.device("cpu"), {})
