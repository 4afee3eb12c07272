"""A model's tensors in its family's single-file key layout, read lazily one tensor at a time from any layout.

A merge input is a single-file checkpoint (LDM keys, `.safetensors` or a legacy pickle), a diffusers folder, or
component files (a UNet/DiT file, text-encoder files, a VAE file) in LDM or diffusers / Hugging Face names. Each
becomes a `ModelSource`: every key of the family's single-file layout (the description's checkpoint prefix and
layout per role) with its shape and dtype known from the headers, and `read(key)` building that one tensor from
the file(s) it lives in (renamed, reshaped, transposed or stacked by the plans of webui.models.ldm_plan, or a
transformer's by its family's `DenoiserLoader.single_file_plan`). Nothing is read before it is asked for.

Memory: safetensors files are read through `safe_open`, whose tensors are views of a memory map; the pages a
read touches stay in this process's RSS for as long as the map is open, so a reader closes and reopens its file
after every `REOPEN_BYTES` read. Pickles are opened with torch.load(weights_only=True, mmap=True) and reopened
alike (a legacy non-zip pickle cannot be memory-mapped and is held whole).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from webui.families import Family
from webui.families.base import CheckpointLayout, Part, RoleSpec
from webui.models.derive import derive_unet_config, derive_vae_config
from webui.models.files import (
    ModelFileError,
    TensorHeader,
    diffusers_weight_files,
    pickle_tensors,
    read_header,
    sniff_format,
)
from webui.models.identify import classify, identify, split_components
from webui.models.identity import Identity
from webui.models.kinds import FileFormat, Kind, Role
from webui.models.ldm_plan import KeySource, Plan, component_plan, unet_plan, vae_plan
from webui.models.safetensors_stream import DTYPES

REOPEN_BYTES = 32 * 2**20
_OPEN_CLIP_ROOTS = (
    "token_embedding.",
    "positional_embedding",
    "transformer.resblocks.",
    "ln_final.",
    "text_projection",
)


class SourceError(ValueError):
    """A merge input that cannot be read in its family's single-file layout; the message names the file."""


class LazyFile:
    """One weights file, read one tensor at a time (see the module docstring for how memory stays bounded)."""

    def __init__(self, path: Path, header: TensorHeader | None = None) -> None:
        self.path = Path(path)
        self.header = header or read_header(self.path)
        self.format = self.header.format
        self._handle: Any = None
        self._state: Mapping[str, torch.Tensor] | None = None
        self._since_open = 0

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return self.header.shapes

    def read(self, key: str) -> torch.Tensor:
        """The tensor `key` of this file (on the CPU, in its stored dtype)."""
        if self._since_open >= REOPEN_BYTES:
            self.close()
        if self.format is FileFormat.SAFETENSORS:
            if self._handle is None:
                from safetensors import safe_open

                self._handle = safe_open(str(self.path), framework="pt", device="cpu")
            tensor = self._handle.get_tensor(key)
        else:
            if self._state is None:
                self._state = pickle_tensors(self.path)
            tensor = self._state[key]
        self._since_open += tensor.numel() * tensor.element_size()
        return tensor

    def close(self) -> None:
        self._handle = None
        self._state = None
        self._since_open = 0


@dataclass(frozen=True)
class SourceTensor:
    """Where one single-file tensor comes from: a file and the plan entry naming its keys there."""

    file: LazyFile
    source: KeySource
    shape: tuple[int, ...]
    dtype: str  # safetensors' dtype name

    def read(self) -> torch.Tensor:
        return self.source.build([self.file.read(key) for key in self.source.keys])

    @property
    def nbytes(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count * torch.empty((), dtype=DTYPES[self.dtype]).element_size()


@dataclass
class ModelSource:
    """One merge input in the family's single-file layout: `tensors` maps each single-file key to its source.

    `files` are the paths it reads (for hashes and messages); `roles` the family roles it holds; `dropped` keys
    of its files with no place in the layout (a CLIP-L `text_projection`), reported, never silent."""

    label: str
    family: Family
    identity: Identity
    files: tuple[Path, ...]
    tensors: dict[str, SourceTensor] = field(default_factory=dict)
    roles: set[Role] = field(default_factory=set)
    dropped: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)

    def read(self, key: str) -> torch.Tensor:
        return self.tensors[key].read()

    def close(self) -> None:
        for tensor in self.tensors.values():
            tensor.file.close()

    def role_of(self, key: str) -> RoleSpec | None:
        return role_of(self.family, key)


def role_of(family: Family, key: str) -> RoleSpec | None:
    """The role whose single-file prefix `key` starts with (the longest one), or None (markers, EMA, buffers)."""
    found = [
        spec for spec in family.description.roles if spec.checkpoint_prefix and key.startswith(spec.checkpoint_prefix)
    ]
    return max(found, key=lambda spec: len(spec.checkpoint_prefix), default=None)


def identify_file(path: Path) -> tuple[TensorHeader, Identity]:
    """A file's header and identity; SourceError naming the file when it cannot be read."""
    try:
        header = read_header(path)
    except ModelFileError as error:
        raise SourceError(str(error)) from None
    return header, identify(header)


def open_checkpoint(path: Path, family: Family, header: TensorHeader, identity: Identity) -> ModelSource:
    """A single-file checkpoint in the family's layout (its keys are the layout's), or a diffusers folder."""
    if sniff_format(path) is FileFormat.DIFFUSERS:
        return _open_diffusers_folder(path, family, identity)
    lazy = LazyFile(path, header)
    source = ModelSource(str(path), family, identity, (path,), metadata=dict(header.metadata))
    for key, shape in header.shapes.items():
        source.tensors[key] = SourceTensor(lazy, KeySource((key,)), tuple(shape), header.dtypes[key])
        spec = role_of(family, key)
        if spec is not None:
            source.roles.add(spec.role)
    return source


def _open_diffusers_folder(folder: Path, family: Family, identity: Identity) -> ModelSource:
    source = ModelSource(str(folder), family, identity, (folder,))
    for spec in family.description.roles:
        sub = folder / spec.role.value
        files = diffusers_weight_files(sub) if sub.is_dir() else []
        if not files:
            continue
        lazies = [LazyFile(file) for file in files]
        where = {key: lazy for lazy in lazies for key in lazy.shapes}
        shapes = {key: lazy.shapes[key] for key, lazy in where.items()}
        dtypes = {key: lazy.header.dtypes[key] for key, lazy in where.items()}
        if spec.part is Part.TEXT_ENCODER:
            plan = _text_encoder_plan(spec, shapes, f"{folder}/{spec.role.value}")
        elif spec.checkpoint_layout is CheckpointLayout.ORIGINAL_DIT:
            plan = _original_dit_plan(sub, family, shapes)
        else:
            try:
                plan = component_plan(spec.checkpoint_layout, _folder_config(sub), shapes)
            except (ValueError, KeyError) as error:
                raise SourceError(
                    f"{sub}: the {spec.role.value} cannot be laid out as a single file ({error})"
                ) from None
        _add(source, spec, plan, where.__getitem__, shapes, dtypes)
        source.files += tuple(files)
    if not source.roles:
        raise SourceError(f"{folder}: the diffusers folder holds none of {family.label}'s components")
    return source


def _folder_config(sub: Path) -> dict[str, Any]:
    try:
        return json.loads((sub / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SourceError(f"{sub}/config.json cannot be read ({error}); download it again") from None


def _add(
    source: ModelSource,
    spec: RoleSpec,
    plan: Plan,
    file_of: Callable[[str], LazyFile],
    shapes: Mapping[str, tuple[int, ...]],
    dtypes: Mapping[str, str],
) -> None:
    for key, entry in plan.items():
        lazy = file_of(entry.keys[0])
        shape = entry.result_shape(shapes)
        source.tensors[spec.checkpoint_prefix + key] = SourceTensor(lazy, entry, shape, dtypes[entry.keys[0]])
    source.roles.add(spec.role)


def open_component(path: Path, role: Role, family: Family, header: TensorHeader, identity: Identity) -> ModelSource:
    """A lone component file (LDM or diffusers / Hugging Face names, any known prefix) as `role` of `family`."""
    spec = family.description.role(role)
    group, prefix = _component_group(path, header, spec)
    if spec.part is Part.TEXT_ENCODER:
        plan = _text_encoder_plan(spec, group, str(path))
    elif spec.checkpoint_layout is CheckpointLayout.LDM_UNET:
        plan = _unet_group_plan(path, family, group)
    elif spec.checkpoint_layout is CheckpointLayout.ORIGINAL_DIT:
        plan = _original_dit_plan(path, family, group)
    elif spec.checkpoint_layout is CheckpointLayout.LDM_VAE:
        plan = _vae_group_plan(path, family, group)
    else:
        raise SourceError(f"{path}: {family.label}'s {role.value} has no single-file layout to merge into yet")
    lazy = LazyFile(path, header)
    source = ModelSource(str(path), family, identity, (path,), metadata=dict(header.metadata))
    used = {key for entry in plan.values() for key in entry.keys}
    source.dropped += sorted(prefix + key for key in group if key not in used and not key.endswith("position_ids"))
    plan = {key: KeySource(tuple(prefix + k for k in entry.keys), entry.op, entry.shape) for key, entry in plan.items()}
    shapes = {prefix + key: shape for key, shape in group.items()}
    _add(source, spec, plan, lambda _key: lazy, shapes, header.dtypes)
    return source


def _component_group(path: Path, header: TensorHeader, spec: RoleSpec) -> tuple[dict[str, tuple[int, ...]], str]:
    """The file's keys of the wanted component, with whatever known prefix they carry stripped (and that prefix)."""
    wanted = {Part.DENOISER: Kind.UNET, Part.VAE: Kind.VAE, Part.TEXT_ENCODER: Kind.TEXT_ENCODER}[spec.part]
    for prefix, _hint, group in split_components(header.shapes):
        component = classify(group)
        if component is not None and component.kind is wanted:
            if spec.encoder is not None and component.encoder is not spec.encoder:
                continue
            return dict(group), prefix
    raise SourceError(f"{path}: no {spec.role.value} weights of the expected kind found in the file")


def _unet_group_plan(path: Path, family: Family, group: Mapping[str, tuple[int, ...]]) -> Plan:
    if any(key.startswith("input_blocks.") for key in group):
        return {key: KeySource((key,)) for key in group}  # LDM names already
    try:
        return unet_plan(derive_unet_config(family, dict(group)), group)
    except ValueError as error:
        raise SourceError(f"{path}: the UNet's diffusers names cannot be laid out as a single file ({error})") from None


def _original_dit_plan(path: Path, family: Family, group: Mapping[str, tuple[int, ...]]) -> Plan:
    """A transformer in either naming laid out in the family's original names (its description's plan)."""
    loader = family.description.denoiser_loader
    planner = loader.planner() if loader is not None else None
    if planner is None:
        raise SourceError(f"{path}: {family.label}'s transformer has no single-file layout to merge into yet")
    try:
        return planner(group)
    except ValueError as error:
        raise SourceError(f"{path}: the transformer cannot be laid out as a single file ({error})") from None


def _vae_group_plan(path: Path, family: Family, group: Mapping[str, tuple[int, ...]]) -> Plan:
    if any(key.startswith("encoder.down.") for key in group):
        return {key: KeySource((key,)) for key in group}
    try:
        return vae_plan(derive_vae_config(family, dict(group)), group)
    except ValueError as error:
        raise SourceError(f"{path}: the VAE's diffusers names cannot be laid out as a single file ({error})") from None


def _open_clip_root(key: str) -> str | None:
    for root in _OPEN_CLIP_ROOTS:
        at = key.find(root)
        if at == 0 or (at > 0 and key[at - 1] == "."):
            return key[at:]
    return None


def _text_encoder_plan(spec: RoleSpec, group: Mapping[str, tuple[int, ...]], where: str) -> Plan:
    """Plan for a text encoder in Hugging Face names (with or without `text_model.`) or OpenCLIP names; keys the
    layout has no place for (a CLIP-L `text_projection`) are left out of the plan."""
    if spec.checkpoint_layout is CheckpointLayout.NONE:
        raise SourceError(
            f"{where}: this family's {spec.role.value} has no single-file layout to merge into yet; merge "
            "single-file checkpoints (or transformer / UNet files), which hold the text encoders in their own layout"
        )
    if any(key.endswith("positional_embedding") for key in group):
        if spec.checkpoint_layout is not CheckpointLayout.OPEN_CLIP:
            raise SourceError(f"{where}: an OpenCLIP-layout text encoder cannot be the {spec.role.value}")
        return {root: KeySource((key,)) for key in group if (root := _open_clip_root(key)) is not None}
    hf: dict[str, str] = {}  # Hugging Face name (with text_model.) -> the file's key
    for key in group:
        at = key.find("text_model.")
        name = key[at:] if at >= 0 else key
        if name.endswith("text_projection.weight"):
            name = "text_projection.weight"
        hf[name] = key
    if spec.checkpoint_layout is CheckpointLayout.HF_CLIP:
        hf.pop("text_projection.weight", None)  # CLIP-L's projection has no place in the LDM layout
    try:
        plan = component_plan(spec.checkpoint_layout, None, {name: group[key] for name, key in hf.items()})
    except ValueError as error:
        raise SourceError(f"{where}: the {spec.role.value} cannot be laid out as a single file ({error})") from None
    return {key: KeySource(tuple(hf[k] for k in entry.keys), entry.op, entry.shape) for key, entry in plan.items()}
