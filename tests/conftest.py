"""Shared test fixtures: the tiny models written once per session; no test may reach the network."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # Before any test module imports huggingface_hub, which reads this once at import time.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


@contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Run a test on one torch thread: tiny models gain nothing from more, and on a busy 2-core box
    the second thread's spin-waiting makes them several times slower (measured 0.12 s vs 1.3 s of CPU
    for a tiny SDXL generation). On for the whole session."""
    with _torch_threads(1):
        yield


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models dir holding every tiny family in every layout (see webui/testing/tiny.py)."""
    from webui.testing.tiny import write_tiny_models

    root = tmp_path_factory.mktemp("models")
    with _torch_threads(1):  # see one_torch_thread: 2.5 s instead of 8-10 s of CPU on a busy box
        write_tiny_models(root)
    return root


@pytest.fixture(scope="session")
def tiny_manifest(tiny_models_dir: Path) -> list:
    """The FixtureFile list describing `tiny_models_dir`."""
    from webui.testing.tiny import read_manifest

    return read_manifest(tiny_models_dir)
