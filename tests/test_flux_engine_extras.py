"""FLUX.1 in the engine's other paths: live previews of packed latents, interrupt, a Compare grid beside SD1."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from webui.cli import main
from webui.engine.device import DevicePolicy
from webui.engine.pipelines import ModelChoice, PipelineManager
from webui.engine.progress import CancelToken
from webui.engine.request import GenerationRequest
from webui.engine.txt2img import Engine


def request(root: Path, steps: int) -> GenerationRequest:
    choice = ModelChoice(root / "checkpoints/tiny-flux-dev-aio.safetensors")
    return GenerationRequest(choice, prompt="a cat", steps=steps, cfg_scale=1.0, width=48, height=32, seed=2)


def test_live_previews_and_interrupt(tiny_models_dir, tmp_path):
    engine = Engine(PipelineManager(tiny_models_dir, DevicePolicy(device="cpu")), tmp_path)
    seen = []
    result = engine.generate(request(tiny_models_dir, 3), progress=seen.append, preview_every=1)
    previews = [p.preview for p in seen if p.preview is not None]
    assert len(previews) == 3 and len(result.images) == 1
    assert previews[0].size == (6, 4)  # the unpacked latent (48x32 over the VAE's 8x), not the 2x2 packing (3x2)
    for partial, images in ((True, 1), (False, 0)):
        cancel, steps = CancelToken(), []

        def stop_after_first(progress, cancel=cancel, steps=steps) -> None:  # noqa: ANN001
            steps.append(progress.step)
            cancel.cancel()

        stopped = engine.generate(
            request(tiny_models_dir, 5), progress=stop_after_first, cancel=cancel, partial=partial
        )
        assert stopped.info["interrupted"] and steps == [1]  # stopped within one step of five
        assert len(stopped.images) == images  # A1111's partial image, decoded where it stopped; or none


def test_compare_grid_across_sd1_and_flux_checkpoints(tiny_models_dir, tmp_path, capsys):
    argv = ["compare", "--models-dir", str(tiny_models_dir), "--outputs-dir", str(tmp_path), "--prompt", "a red hat"]
    argv += ["--steps", "2", "--width", "32", "--height", "32", "--seed", "3", "--cfg", "1", "--guidance", "2"]
    argv += ["--x", "checkpoint=tiny-sd1,tiny-flux-dev-aio", "--json"]
    assert main(argv) == 0
    cells = json.loads(capsys.readouterr().out)["cells"]
    assert [c["error"] for c in cells] == [None, None]
    with Image.open(cells[0]["path"]) as sd1, Image.open(cells[1]["path"]) as flux:
        assert "Distilled CFG Scale" not in sd1.text["parameters"]
        assert "Distilled CFG Scale: 2, " in flux.text["parameters"] and "Sampler: Euler," in flux.text["parameters"]


def test_a_prompt_longer_than_t5_reads_is_said_not_silently_cut(tiny_models_dir, tmp_path):
    import dataclasses

    engine = Engine(PipelineManager(tiny_models_dir, DevicePolicy(device="cpu")), tmp_path)
    short = engine.generate(request(tiny_models_dir, 1))
    assert not [w for w in short.info["warnings"] if "tokens" in w]
    loaded = engine.manager.load(request(tiny_models_dir, 1).model)
    limit = Engine.sequence_length(loaded)
    long_prompt = "a cat " * (limit + 10)
    assert Engine.sequence_tokens(loaded, long_prompt) > limit
    result = engine.generate(dataclasses.replace(request(tiny_models_dir, 1), prompt=long_prompt))
    said = [w for w in result.info["warnings"] if w.startswith("prompt:")]
    assert len(said) == 1 and f"reads the first {limit}" in said[0] and len(result.images) == 1
