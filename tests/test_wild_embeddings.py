"""Embeddings from the wild (issue 13): diffusers' learned_embeds, the original textual-inversion repo's pickles,
multi-vector A1111 files, and files that cannot load (reported in `embeddings.skipped`, never read as words).

The right image is the one an A1111 `emb_params` file with the same vectors gives (that layout was right before).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import wild_inputs as wild
from PIL import Image
from safetensors.torch import load_file, save_file

from webui.engine.pipelines import ModelChoice
from webui.engine.request import GenerationRequest
from webui.models.kinds import Kind
from webui.models.library import open_library
from webui.wiring import build_engine

CHECKPOINT = "checkpoints/tiny-sd1.safetensors"


class _Payload:
    """What a malicious pickle carries: unpickling it would run a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def models(tiny_models_dir, tmp_path_factory) -> Path:
    root = wild.linked_models(tmp_path_factory.mktemp("wild-embeddings"), tiny_models_dir, (CHECKPOINT,))
    vectors = load_file(tiny_models_dir / "embeddings/tiny-sd1-emb.safetensors")["emb_params"].float()  # (2, 768)
    folder = root / "embeddings"
    save_file({"emb_params": vectors.half()}, folder / "reference.safetensors")
    torch.save({"<wild-token>": vectors[0].clone()}, folder / "learned_embeds.bin")  # diffusers, one vector
    save_file({"<wild-pair>": vectors.clone()}, folder / "diffusers-pair.safetensors")  # diffusers, two vectors
    save_file({"emb_params": vectors[:1].half().clone()}, folder / "reference-one.safetensors")
    original = torch.nn.ParameterDict({"*": torch.nn.Parameter(vectors.clone())})
    torch.save({"string_to_token": {"*": torch.tensor(265)}, "string_to_param": original}, folder / "original-ti.pt")
    four = torch.cat([vectors, vectors.flip(0)])
    torch.save({"string_to_param": {"*": four}, "name": "four", "step": 3000}, folder / "four-vectors.pt")
    save_file({"emb_params": four.half()}, folder / "reference-four.safetensors")
    payload = {"string_to_param": torch.nn.ParameterDict({"*": torch.nn.Parameter(vectors.clone())}),
               "name": _Payload(root / "pwned")}  # fmt: skip
    torch.save(payload, folder / "trojan.pt")
    return root


@pytest.fixture(scope="module")
def engine(models, tmp_path_factory):
    library = open_library(models)
    library.scan()
    return library, build_engine(library, tmp_path_factory.mktemp("outputs"))


def run(engine, models: Path, name: str) -> tuple[np.ndarray, dict]:
    request = GenerationRequest(
        model=ModelChoice(models / CHECKPOINT), prompt=f"a photo of {name} on a table", steps=2, width=32, height=32,
        seed=5,
    )  # fmt: skip
    result = engine.generate(request)
    with Image.open(result.images[0].path) as image:
        return np.asarray(image.convert("RGB")), result.info["embeddings"]


@pytest.mark.parametrize(
    ("name", "file", "reference"),
    [
        ("learned_embeds", "learned_embeds.bin", "reference-one"),
        ("<wild-token>", "learned_embeds.bin", "reference-one"),
        ("diffusers-pair", "diffusers-pair.safetensors", "reference"),
        ("<wild-pair>", "diffusers-pair.safetensors", "reference"),
        ("original-ti", "original-ti.pt", "reference"),
        ("four-vectors", "four-vectors.pt", "reference-four"),
    ],
)
def test_each_layout_is_listed_usable_and_gives_the_image_of_the_same_vectors(engine, models, name, file, reference):
    library, generator = engine
    entry = library.find(models / "embeddings" / file, Kind.EMBEDDING)
    assert entry.usable and entry.problem is None and entry.family.value == "sd1"
    image, used = run(generator, models, name)
    assert used == {"used": [name], "skipped": {}}
    expected, _ = run(generator, models, reference)
    assert np.array_equal(image, expected)


def test_a_payload_beside_the_parameter_dict_is_refused_and_reported_when_named(engine, models):
    library, generator = engine
    entry = library.find(models / "embeddings/trojan.pt", Kind.EMBEDDING)
    assert not entry.usable and "code execution" in entry.problem and "posix.system" in entry.problem
    _, used = run(generator, models, "trojan")
    assert used["used"] == [] and "code execution" in used["skipped"]["trojan"]
    assert not (models / "pwned").exists()


def test_an_embedding_file_without_vectors_is_skipped_with_its_reason(engine, models, tmp_path):
    library, generator = engine
    broken = models / "embeddings/broken.safetensors"
    save_file({"one": torch.zeros(3, 768), "two": torch.zeros(3, 768)}, broken)
    try:
        library.refresh()
        _, used = run(generator, models, "broken")
    finally:
        broken.unlink()
        library.refresh()
    assert used["used"] == [] and "no embedding vectors" in used["skipped"]["broken"]
