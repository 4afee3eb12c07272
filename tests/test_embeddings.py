"""Textual-inversion embeddings: used by file name, SDXL pairs feed both encoders, other families reported."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from webui.engine.embeddings import EmbeddingSet, load_embedding
from webui.engine.pipelines import ModelChoice, PipelineManager
from webui.engine.request import GenerationRequest
from webui.engine.txt2img import Engine


@pytest.fixture(scope="module")
def engines(tiny_models_dir, tmp_path_factory):
    manager = PipelineManager(tiny_models_dir)
    out = tmp_path_factory.mktemp("outputs")
    folder = tiny_models_dir / "embeddings"
    with_ti = Engine(manager, out, embeddings=EmbeddingSet(lambda: sorted(folder.glob("*.safetensors"))))
    return with_ti, Engine(manager, out)


def run(engine, models, stem, prompt):
    request = GenerationRequest(
        model=ModelChoice(models / f"checkpoints/{stem}.safetensors"), prompt=prompt, steps=2, width=32, height=32,
        seed=5,
    )  # fmt: skip
    result = engine.generate(request)
    with Image.open(result.images[0].path) as image:
        return np.asarray(image.convert("RGB")), result


@pytest.mark.parametrize("stem", ["tiny-sd1", "tiny-sd2", "tiny-sdxl"])
def test_an_embedding_named_in_the_prompt_changes_the_image(engines, tiny_models_dir, stem):
    with_ti, without = engines
    prompt = f"a photo of {stem}-emb on a table"
    used, result = run(with_ti, tiny_models_dir, stem, prompt)
    literal, _ = run(without, tiny_models_dir, stem, prompt)
    assert result.info["embeddings"] == {"used": [f"{stem}-emb"], "skipped": {}}
    assert np.abs(used.astype(int) - literal.astype(int)).max() > 0
    assert f"TI hashes: \"{stem}-emb: " in result.images[0].infotext or f"TI hashes: {stem}-emb: " in (
        result.images[0].infotext
    )


def test_an_embedding_for_another_family_is_reported_and_left_as_text(engines, tiny_models_dir):
    with_ti, without = engines
    prompt = "a photo of tiny-sd2-emb on a table"
    pixels, result = run(with_ti, tiny_models_dir, "tiny-sd1", prompt)
    literal, _ = run(without, tiny_models_dir, "tiny-sd1", prompt)
    assert result.info["embeddings"]["used"] == []
    assert "1024" in result.info["embeddings"]["skipped"]["tiny-sd2-emb"]
    assert np.array_equal(pixels, literal)


def test_embedding_files_load_in_every_form(tiny_models_dir, tmp_path):
    import torch

    sdxl = load_embedding(tiny_models_dir / "embeddings/tiny-sdxl-emb.safetensors")
    assert sdxl.widths == (768, 1280) and sdxl.vectors[768].shape == (2, 768)
    legacy = tmp_path / "legacy.pt"
    torch.save({"string_to_param": {"*": torch.zeros(3, 768)}, "name": "legacy"}, legacy)
    assert load_embedding(legacy).vectors[768].shape == (3, 768)
