"""Benchmarks of the engine against plain diffusers: `python -m webui bench` (see webui/bench/runner.py)."""

SIZES = ("tiny", "small", "full")  # here, so the CLI's parser can name them without importing torch
