"""Model ids for Ray Serve's model multiplexing: a ModelChoice as a string, and back.

Serve routes a request carrying `multiplexed_model_id` to a replica that reported holding that id (then to the
replica holding the fewest models); the id is the choice's files as canonical JSON, so two requests for the same
checkpoint with the same component overrides share it, and the replica can rebuild the choice from it.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

from webui.engine.pipelines import ModelChoice


def model_id(choice: ModelChoice) -> str:
    """The multiplexed model id of `choice`: `{"checkpoint": "/abs/path", "vae": ...}` (set fields, sorted)."""
    paths = {f.name: getattr(choice, f.name) for f in fields(choice)}
    return json.dumps(
        {name: str(Path(path).absolute()) for name, path in paths.items() if path is not None}, sort_keys=True
    )


def choice_of(model_id_text: str) -> ModelChoice:
    """The ModelChoice a `model_id` names; ValueError names the id when it is not one of ours."""
    try:
        paths = json.loads(model_id_text)
        return ModelChoice(**{name: Path(path) for name, path in paths.items()})
    except (ValueError, TypeError, AttributeError) as error:
        raise ValueError(f"multiplexed model id: {model_id_text!r} is not a model choice ({error})") from None


def model_label(model_id_text: str) -> str:
    """A short name for a model id, for the replica list (the checkpoint's or UNet's name)."""
    try:
        return choice_of(model_id_text).name
    except ValueError:
        return model_id_text
