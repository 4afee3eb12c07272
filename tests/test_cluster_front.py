"""The cluster's parts that need no Ray: the control actor's bookkeeping, model ids, the --ray flags, a clear error
without the extra, and the single-process studio importing nothing of Ray."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from webui.cluster.control import LIVE_SECONDS, ClusterControl
from webui.cluster.routing import choice_of, model_id, model_label
from webui.config import Settings, launch_parser, settings_from_args
from webui.engine.pipelines import ModelChoice

ROOT = Path(__file__).resolve().parents[1]


def test_interrupts_reach_only_the_replica_running_that_job():
    control = ClusterControl()
    control.register("r1", "10.0.0.1", "SERVE_REPLICA::webui#Engine#r1")
    control.register("r2", "10.0.0.1")
    control.cancel("job-a")
    control.skip("job-b")
    control.skip("job-b")
    assert control.poll("r2", ["job-c"], 0) == {"cancel": [], "skip": {}, "broadcasts": []}
    assert control.poll("r1", ["job-a"], 0)["cancel"] == ["job-a"]
    assert control.poll("r1", ["job-b"], 0)["skip"] == {"job-b": 2}
    assert control.poll("r1", ["job-b"], 0)["skip"] == {}  # a skip is taken once


def test_calls_for_every_replica_wait_for_each_live_one_and_replay_to_a_late_one():
    control = ClusterControl()
    control.register("r1", "node")
    control.register("r2", "node")
    call = print  # any picklable callable stands in for a JobCall
    sequence = control.broadcast(call)
    assert sorted(control.broadcast_state(sequence)["pending"]) == ["r1", "r2"]
    assert control.poll("r1", [], 0)["broadcasts"] == [(sequence, call)]
    control.acked("r1", sequence, result=["images saved as webp"])
    control.acked("r2", sequence, error="device: 'cuda' is not available")
    state = control.broadcast_state(sequence)
    assert state == {"pending": [], "errors": {"r2": "device: 'cuda' is not available"},
                     "results": {"r1": ["images saved as webp"]}}  # fmt: skip
    assert control.poll("r1", [], sequence)["broadcasts"] == []
    control.register("r3", "node")  # a restarted replica gets every call again, in order
    assert control.poll("r3", [], 0)["broadcasts"] == [(sequence, call)]


def test_a_replica_that_stops_polling_is_no_longer_waited_for():
    control = ClusterControl()
    control.register("r1", "node")
    control.register("gone", "node")
    control._replicas["gone"].last_seen = time.time() - LIVE_SECONDS - 1  # killed: it polls no more
    sequence = control.broadcast(print)
    assert control.broadcast_state(sequence)["pending"] == ["r1"]
    alive = {r.replica: r.alive(time.time()) for r in control.replicas()}
    assert alive == {"r1": True, "gone": False}
    with pytest.raises(ValueError, match="report: 'secret'"):
        control.report("r1", secret=1)


def test_model_ids_round_trip_and_name_the_file(tmp_path):
    choice = ModelChoice(tmp_path / "a.safetensors", vae=tmp_path / "v.safetensors")
    assert choice_of(model_id(choice)) == choice
    assert model_id(choice) == model_id(ModelChoice(tmp_path / "a.safetensors", vae=tmp_path / "v.safetensors"))
    assert model_id(choice) != model_id(ModelChoice(tmp_path / "a.safetensors"))
    assert model_label(model_id(choice)) == "a"
    with pytest.raises(ValueError, match="multiplexed model id: 'nonsense'"):
        choice_of("nonsense")


def test_ray_flags_become_settings():
    parse = launch_parser().parse_args
    assert settings_from_args(parse([])).ray is None
    local = settings_from_args(parse(["--ray", "--ray-replicas", "2"]))
    assert (local.ray, local.ray_replicas, local.ray_models_per_replica) == ("", 2, 1)
    remote = settings_from_args(parse(["--ray", "127.0.0.1:6379", "--ray-models-per-replica", "3"]))
    assert (remote.ray, remote.ray_replicas, remote.ray_models_per_replica) == ("127.0.0.1:6379", None, 3)
    with pytest.raises(ValueError, match="ray_replicas: 0"):
        Settings(ray="", ray_replicas=0)


def test_without_the_cluster_extra_ray_says_what_to_install(monkeypatch, tmp_path):
    from webui.cluster.wiring import MISSING_EXTRA, cluster_queue
    from webui.engine.device import DevicePolicy

    monkeypatch.setitem(sys.modules, "ray.serve", None)  # as if ray[serve] were not installed
    with pytest.raises(ValueError, match="cluster") as raised:
        cluster_queue(Settings(models_dir=tmp_path, ray=""), engine=None, policy=DevicePolicy(), budgets={})
    assert str(raised.value) == MISSING_EXTRA and 'pip install -c constraints.txt -e ".[cluster]"' in MISSING_EXTRA


@pytest.mark.slow
def test_the_single_process_studio_imports_nothing_of_ray(tiny_models_dir, tmp_path):
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from webui.app import build_app, open_context
        from webui.api import build_api_router
        from webui.config import Settings
        settings = Settings(models_dir=Path({str(tiny_models_dir)!r}), outputs_dir=Path({str(tmp_path)!r}),
                            settings_file=Path({str(tmp_path / "settings.json")!r}), api=True)
        context = open_context(settings)
        build_app(settings, context)
        build_api_router(context.queue, context.library)
        loaded = sorted(name for name in sys.modules if name == "ray" or name.startswith("ray."))
        print("ray modules:", loaded)
        sys.exit(1 if loaded or context.queue.replicas() else 0)
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "ray modules: []" in done.stdout


def test_the_model_bar_lists_the_replicas_and_a_result_names_its_replica(tmp_path):
    from types import SimpleNamespace

    from webui.cluster.control import ReplicaRecord
    from webui.engine.request import GenerationResult
    from webui.ui.model_bar import status_html
    from webui.ui.runner import done_html

    now = time.time()
    held = model_id(ModelChoice(tmp_path / "dreamshaper_8.safetensors"))
    records = [
        ReplicaRecord("4kq2m0xv", "10.0.0.5", "a", now, now, models=[held], loads=1, jobs=3, running="txt2img",
                      memory={"cached_bytes": 2 * 2**30}),
        ReplicaRecord("9zz1ab2c", "10.0.0.6", "b", now, now - LIVE_SECONDS - 1),
    ]  # fmt: skip
    context = SimpleNamespace(queue=SimpleNamespace(replicas=lambda: records))
    text = status_html(context)
    assert "Ray Serve: 1 of 2 replicas up" in text
    assert "4kq2m0xv on 10.0.0.5: holds dreamshaper_8 · running txt2img · 3 jobs, 1 loads · cache 2.00 GB" in text
    assert "9zz1ab2c on 10.0.0.6: holds no model yet · gone (restarting)" in text
    result = GenerationResult((), {"total": 2.1}, (), {"replica": "4kq2m0xv"})
    assert "0 images in 2.1 s on replica 4kq2m0xv" in done_html(result)
    assert "on replica" not in done_html(GenerationResult((), {"total": 2.1}, (), {}))


def test_launching_with_ray_builds_the_queue_over_the_replicas(monkeypatch, tiny_models_dir, tmp_path):
    import webui.cluster.wiring
    from webui.app import open_context

    seen = {}

    def fake_cluster_queue(settings, engine, policy, budgets):  # noqa: ANN001, ANN202
        seen.update(settings=settings, engine=engine, policy=policy, budgets=budgets)
        return "the cluster's queue"

    monkeypatch.setattr(webui.cluster.wiring, "cluster_queue", fake_cluster_queue)
    settings = Settings(models_dir=tiny_models_dir, outputs_dir=tmp_path, settings_file=tmp_path / "s.json", ray="",
                        ram_budget_gb=3, device="cpu")  # fmt: skip
    context = open_context(settings)
    assert context.queue == "the cluster's queue"
    assert seen["engine"] is context.engine and seen["policy"].device == "cpu"
    assert seen["budgets"] == {"cpu": 3 * 2**30}


def test_the_cluster_benchmark_checks_its_options_and_tables_both_figures(tmp_path):
    from webui.bench.cluster_figures import ClusterBenchOptions, markdown, write

    with pytest.raises(ValueError, match="replicas: 1"):
        ClusterBenchOptions(replicas=1)
    with pytest.raises(ValueError, match="size: 'full'"):
        ClusterBenchOptions(size="full")
    report = {
        "size": "tiny",
        "settings": {"model": "tiny-sd1", "steps": 4, "jobs": 8, "rounds": 2, "replicas": 2, "width": 32, "height": 32},
        "cluster_throughput_vs_one_replica": 1.5,
        "routed_loads_vs_random": 0.4,
        "raw": {"jobs_per_s": {"1": [2.0, 2.2], "2": [3.1, 3.3]}, "loads": {"routed": 2, "random": 5, "jobs": 8}},
        "notes": {"cluster_throughput_vs_one_replica": "2 CPU cores for 2 replicas"},
        "total_seconds": 200.0,
    }
    written = write(report, tmp_path)
    table = Path(written["files"]["markdown"]).read_text()
    assert table == markdown(written)
    assert "| cluster_throughput_vs_one_replica | 1.5 | 3.2 vs 2.1 jobs/s (2 vs 1 replica) |" in table
    assert "| routed_loads_vs_random | 0.4 | 2 vs 5 models read from disk for 8 jobs alternating" in table
