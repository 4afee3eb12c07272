"""The command line as a new user meets it: errors at once and named by flag, a progress bar, clear model names,
LoRA problems reported (on stderr) while the image is still made."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from webui.cli import main

FAST = ["--width", "32", "--height", "32", "--steps", "2", "--seed", "5"]


def test_bad_flags_are_refused_by_name_before_torch_loads(tiny_models_dir, tmp_path):
    cases = [
        (["--steps", "0"], "--steps: 0 is out of range"),
        (["--width", "8"], "--width: 8 is out of range; allowed 16..4096"),
        (["--cfg", "101"], "--cfg: 101.0 is out of range"),
        (["--sampler", "Eulr"], "--sampler: unknown sampler 'Eulr'; did you mean 'Euler'?"),
        (["--schedule", "Fancy"], "--schedule: unknown 'Fancy'"),
        (["--lora", "tiny-sd1-kohya:20"], "--lora tiny-sd1-kohya: unet_weight 20.0 is out of range"),
    ]
    script = (
        "import sys, json, contextlib, io\n"
        "from webui.cli import main\n"
        "out = []\n"
        "for flags in json.loads(sys.argv[1]):\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err):\n"
        "        code = main(['generate', '--models-dir', sys.argv[2], '--outputs-dir', sys.argv[3],\n"
        "                     '--checkpoint', 'tiny-sd1', *flags])\n"
        "    out.append([code, err.getvalue()])\n"
        "loaded = {name: name in sys.modules for name in ('torch', 'diffusers')}\n"
        "print(json.dumps({'results': out, **loaded}))\n"
    )
    flags = json.dumps([case[0] for case in cases])
    done = subprocess.run(
        [sys.executable, "-c", script, flags, str(tiny_models_dir), str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    report = json.loads(done.stdout)
    for (_, message), (code, err) in zip(cases, report["results"], strict=True):
        assert code == 2 and err.startswith("error: ") and message in err, (message, err)
    assert not report["torch"] and not report["diffusers"]  # refused before the 10 s of library imports


def test_models_on_a_missing_folder_says_the_folder_does_not_exist(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert main(["models", "--models-dir", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"{missing} does not exist" in err and "README" not in err and "no model files" not in err.lower()


def test_an_unknown_checkpoint_suggests_checkpoints_once_and_no_ui_advice(tiny_models_dir, capsys):
    assert main(["generate", "--models-dir", str(tiny_models_dir), "--checkpoint", "tiny-sd", *FAST]) == 2
    err = capsys.readouterr().err
    close = err.split("close names: ", 1)[1].split(".", 1)[0].split(", ")
    assert close and len(close) == len(set(close))  # tiny-sd1.safetensors and tiny-sd1.ckpt: one name
    assert all("vae" not in name and "unet" not in name and "kohya" not in name for name in close)
    assert "refresh" not in err.lower()


@pytest.mark.slow
def test_generate_names_the_file_it_picks_reports_lora_problems_and_shows_progress(tiny_models_dir, tmp_path, capsys):
    argv = ["generate", "--models-dir", str(tiny_models_dir), "--outputs-dir", str(tmp_path), *FAST]
    loras = ["--lora", "nope", "--lora", "tiny-sd2-kohya", "--prompt", "a hat <lora:nada:0.5>"]
    assert main([*argv, "--checkpoint", "tiny-sd1", *loras]) == 0
    out, err = capsys.readouterr()
    assert "note: 'tiny-sd1' names 2 files (tiny-sd1.safetensors, tiny-sd1.ckpt); using tiny-sd1.safetensors" in err
    for name in ("nope", "nada", "tiny-sd2-kohya"):
        assert f"warning: LoRA {name} was not applied: " in err
    assert "SD2.x" in err.split("warning: LoRA tiny-sd2-kohya", 1)[1]
    assert "txt2img" in err and "2/2" in err  # the progress bar
    (path,) = [line for line in out.splitlines() if line.endswith(".png")]
    assert os.path.isfile(path)

    assert main([*argv, "--checkpoint", "tiny-sd1.safetensors", "--lora", "nope", "--json"]) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert len(result["images"]) == 1 and [r["name"] for r in result["loras"]] == ["nope"]
    assert result["loras"][0]["error"] and "warning: LoRA nope was not applied" in err
    assert "note:" not in err and "txt2img" not in err  # the full file name picks one; --json: no bar


def test_the_api_lists_lora_problems_in_its_warnings_as_the_cli_and_ui_do(tiny_models_dir):
    from webui.api.translate import Txt2ImgPlan, txt2img_info
    from webui.engine.lora import LoraReport, lora_warnings
    from webui.engine.pipelines import ModelChoice
    from webui.engine.request import GenerationRequest, GenerationResult

    request = GenerationRequest(model=ModelChoice(tiny_models_dir / "checkpoints" / "tiny-sd1.safetensors"))
    reports = (
        LoraReport("nope", error="no lora model named 'nope'"),
        LoraReport("half", applied=3, unapplied=2, examples=("lora_unet_x",)),
        LoraReport("fine", applied=5),
    )
    result = GenerationResult(images=(), loras=reports)
    info = txt2img_info(Txt2ImgPlan(request, "DPM++ 2M", warnings=("s_churn: ignored",)), result, 0.0)
    lines = lora_warnings(reports)
    assert lines == [
        "LoRA nope was not applied: no lora model named 'nope'",
        "LoRA half: 2 of its modules matched nothing in this model and were not applied (e.g. lora_unet_x); 3 were",
    ]
    assert info["warnings"] == ["s_churn: ignored", *lines]
    assert [r["name"] for r in info["loras"]] == ["nope", "half", "fine"]
