"""Shared test fixtures: the tiny models written once per session; no test may reach the network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # Before any test module imports huggingface_hub, which reads this once at import time.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models dir holding every tiny family in every layout (see webui/testing/tiny.py)."""
    from webui.testing.tiny import write_tiny_models

    root = tmp_path_factory.mktemp("models")
    write_tiny_models(root)
    return root


@pytest.fixture(scope="session")
def tiny_manifest(tiny_models_dir: Path) -> list:
    """The FixtureFile list describing `tiny_models_dir`."""
    from webui.testing.tiny import read_manifest

    return read_manifest(tiny_models_dir)
