"""The Merge tab through gradio_client: a merge lands in the checkpoint list at once, the Models tab shows its
recipe, refusals come back as the merger's message, and the merged model generates."""

from __future__ import annotations

import shutil

import pytest
import torch
from ui_server import SMALL, running_app

from webui.families import Family
from webui.models.ldm_writer import pipeline_to_ldm, save_single_file
from webui.testing.tiny import TOKENIZER_DIR, build_tiny_pipeline

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def app(tiny_models_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("merge-ui-models")
    (root / "checkpoints").mkdir()
    for name in ("tiny-sd1.safetensors", "tiny-sdxl.safetensors"):
        shutil.copy(tiny_models_dir / "checkpoints" / name, root / "checkpoints" / name)
    shutil.copytree(tiny_models_dir / TOKENIZER_DIR, root / TOKENIZER_DIR)
    state = pipeline_to_ldm(build_tiny_pipeline(Family.SD1, 1), Family.SD1)
    save_single_file(state, root / "checkpoints/other.safetensors", dtype=torch.float16)
    with running_app(root, tmp_path_factory.mktemp("merge-ui")) as running:
        yield running


@pytest.fixture(scope="module")
def client(app):
    from gradio_client import Client

    # Nothing downloaded: the Models tab's details JSON has a `path` key, which the client would fetch as a file.
    client = Client(app.url, verbose=False, download_files=False, analytics_enabled=False)
    yield client
    client.close()


def test_merge_tab_writes_lists_and_generates_the_merge(client, app):
    progress, result, checkpoint, *_ = client.predict(
        model_a="tiny-sd1.safetensors",
        model_b="other.safetensors",
        mode="Weighted sum",
        alpha=0.4,
        block_weights="OUT*=1",
        name="ui-mix",
        api_name="/merge_models",
    )
    target = app.settings.models_dir / "checkpoints/ui-mix.safetensors"
    assert target.is_file() and f"Wrote `{target}`" in result and "done in" in progress
    assert "ui-mix.safetensors" in [c[0] for c in checkpoint["choices"]]  # listed without a restart
    client.predict(None, api_name="/list_models")  # the Models tab's list (its Refresh; a page load does the same)
    details, *texts = client.predict("checkpoint: ui-mix.safetensors", api_name="/model_details")  # labels, not paths
    summary = next(t for t in texts if isinstance(t, str) and t)
    assert "<th>Merged</th><td>Weighted sum, M 0.4: tiny-sd1, other" in details  # a readable table, the recipe
    assert "&quot;interp_method&quot;: &quot;Weighted sum&quot;" in details and "&quot;multiplier&quot;: 0.4" in details
    assert summary.startswith("**Merged:** Weighted sum, M 0.4: tiny-sd1, other; per-block weights")
    images = client.predict(prompt="a cat", checkpoint="ui-mix.safetensors", **SMALL, api_name="/generate")
    assert "Model: ui-mix" in images[2]


def test_merge_tab_refuses_two_families_with_the_mergers_message(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="different families"):
        client.predict(
            model_a="tiny-sd1.safetensors",
            model_b="tiny-sdxl.safetensors",
            mode="Weighted sum",
            api_name="/merge_models",
        )
