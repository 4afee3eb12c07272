"""Pipeline manager: turns a model choice into a ready diffusers pipeline assembled from cached components.

A choice is a checkpoint plus optional per-role overrides (a UNet, VAE or text-encoder file, or
another checkpoint whose component is used). Components come from the `ComponentCache`, so
switching back to a model or swapping a VAE reads nothing that is cached; pipelines themselves
are cheap wrappers, rebuilt on every switch. A failed load leaves the previous model in place.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from webui.engine.cache import ComponentCache, ComponentKey
from webui.engine.device import DevicePolicy
from webui.engine.memory import device_total_bytes, system_ram_bytes
from webui.engine.memory_plan import FP8_STORAGE, apply_group_offload, estimated_bytes, store_in_fp8, wants_fp8
from webui.engine.pipeline_fit import ModelLoadError, check_fit, encoder_roles
from webui.families import Family
from webui.families.base import RoleSpec, UnetVariant
from webui.families.encoders import ENCODERS
from webui.models.derive import bundled_config
from webui.models.identity import Identity
from webui.models.kinds import Kind, TextEncoderType
from webui.models.loading import (
    ComponentLoadError,
    ComponentSource,
    Role,
    checkpoint_prefix,
    load_component,
)
from webui.models.tokenizers import TokenizerKind, load_tokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelChoice:
    """A checkpoint and optional replacements for its components (paths to files or checkpoints)."""

    checkpoint: Path | None
    unet: Path | None = None
    vae: Path | None = None
    text_encoder: Path | None = None
    text_encoder_2: Path | None = None
    text_encoder_3: Path | None = None  # SD3's T5

    def override(self, role: Role) -> Path | None:
        """The file chosen for `role`; `unet` holds any denoiser (a UNet or a DiT transformer)."""
        return self.unet if role is Role.TRANSFORMER else getattr(self, role.value, None)

    @property
    def name(self) -> str:
        """The model's display name: the checkpoint's, or the UNet file's for a modular choice."""
        path = self.checkpoint or self.unet
        assert path is not None, "a ModelChoice names a checkpoint or a UNet"
        return path.name if path.is_dir() else path.stem

    def __post_init__(self) -> None:
        if self.checkpoint is None and self.unet is None:
            raise ValueError("model: choose a checkpoint, or a UNet file with its text encoder(s) and VAE")


@dataclass
class LoadedModel:
    choice: ModelChoice
    family: Family
    pipeline: Any  # a diffusers pipeline; its scheduler is replaced per request
    scheduler_config: dict[str, Any]
    keys: dict[Role, ComponentKey]
    sources: dict[Role, ComponentSource]
    device: torch.device
    dtype: torch.dtype
    load_seconds: float
    loaded_from_disk: list[Role] = field(default_factory=list)
    defaults: dict[Role, Path] = field(default_factory=dict)  # parts the checkpoint lacks, chosen by rule (a VAE)
    variant: UnetVariant | None = None  # an inpainting / instruct-pix2pix UNet (extra input channels)
    model_variant: str | None = None  # the family's named variant its denoiser's weights show (FLUX.1 dev / schnell)


def _identify(path: Path):  # noqa: ANN202 (webui.models.identify.Identity)
    """The file's identity, read from its header once per file version (every switch asks again)."""
    from webui.models.files import ModelFileError

    try:
        stat = path.stat()
    except OSError as error:
        raise ModelLoadError(f"{path}: cannot read it ({error.strerror}); refresh the model list") from error
    try:
        return _identify_version(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    except ModelFileError as error:
        raise ModelLoadError(f"{path}: {error.problem}") from error


@lru_cache(maxsize=512)
def _identify_version(path: str, _size: int, _mtime_ns: int):  # noqa: ANN202
    from webui.models.files import read_header
    from webui.models.identify import identify
    from webui.models.widths import check_widths

    header = read_header(path)
    identity = identify(header, Path(path).name)
    check_widths(header, identity, path)
    return identity


def _holds(checkpoint: Path | None, identity: Identity | None, spec: RoleSpec) -> bool:
    """Whether the checkpoint (a file or a diffusers folder) holds the part `spec` describes."""
    if checkpoint is None or identity is None:
        return False
    if checkpoint.is_dir():
        return (checkpoint / spec.role.value).is_dir()
    return spec.encoder is None or spec.encoder in identity.text_encoders


def family_of_choice(choice: ModelChoice) -> tuple[Family, str | None] | None:
    """The family and named variant of a choice's denoiser (its UNet file, else its checkpoint), from the file's
    header (cached per file version); None when it cannot be read (loading it then says why)."""
    path = choice.unet or choice.checkpoint
    try:
        identity = _identify(path) if path is not None else None
    except ModelLoadError:
        return None
    return None if identity is None else (identity.family, identity.variant)


def default_budgets(device: torch.device) -> dict[str, int]:
    budgets = {"cpu": int(system_ram_bytes() * 0.5)}
    if device.type == "cuda":
        budgets["cuda"] = int(device_total_bytes(device) * 0.8)
    return budgets


DefaultPart = Callable[[Family, Role, Path], Path | None]


class PipelineManager:
    """Loads model choices into pipelines over cached components (see the module docstring).

    `default_part(family, role, checkpoint)` names the file for a part the checkpoint lacks and the choice does
    not override (the model library's rule for a VAE, webui.models.default_vae); None, or a None answer, leaves
    the part missing and the load is refused saying where to put one."""

    def __init__(
        self,
        models_dir: Path,
        policy: DevicePolicy | None = None,
        cache: ComponentCache | None = None,
        default_part: DefaultPart | None = None,
    ) -> None:
        self.models_dir = Path(models_dir)
        self.default_part = default_part
        self.policy = policy or DevicePolicy()
        self.device = self.policy.resolve_device()
        self.dtype = self.policy.resolve_dtype(self.device)
        # With model CPU offload, components rest in RAM and accelerate moves each to the GPU while it runs;
        # with group offload, diffusers moves their layers as they run.
        self.offload = self.policy.cpu_offload and self.device.type == "cuda"
        self.group_offload = self.policy.group_offload and self.device.type == "cuda"
        self._group_offloaded: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()
        self.home = torch.device("cpu") if self.offload or self.group_offload else self.device
        self.cache = cache or ComponentCache(default_budgets(self.device))
        self.current: LoadedModel | None = None
        self._tokenizers: dict[tuple[str, str], Any] = {}
        self._lock = threading.RLock()

    # -- resolving a choice into component sources -------------------------------------------
    def _source_for(self, role: Role, path: Path, family: Family) -> ComponentSource:
        """A file holding just this component, or a checkpoint (or diffusers folder) to take it from."""
        if path.is_dir():
            return ComponentSource(path)
        try:
            identity = _identify(path)
        except ModelLoadError as error:
            raise ModelLoadError(str(error), role) from error
        if identity.kind is Kind.CHECKPOINT:
            try:
                return ComponentSource(path, checkpoint_prefix(identity.family, role))
            except ComponentLoadError:
                raise ModelLoadError(
                    f"{path}: a {identity.family.label} checkpoint has no {role.label} to take", role
                ) from None
        expected = {Role.UNET: Kind.UNET, Role.TRANSFORMER: Kind.UNET, Role.VAE: Kind.VAE}.get(role, Kind.TEXT_ENCODER)
        if identity.kind is not expected:
            raise ModelLoadError(f"{path}: this is a {identity.kind.label} file, not a {role.label}", role)
        if expected is Kind.UNET and identity.family is not family:
            raise ModelLoadError(
                f"{path}: {identity.family.label} {role.label} does not fit a {family.label} model", role
            )
        theirs, ours = identity.family.description.latent, family.description.latent
        same_shape = theirs is not None and ours is not None and theirs.channels == ours.channels
        if expected is Kind.VAE and same_shape and not identity.fits(family):  # a known pairing of the wrong VAE
            raise ModelLoadError(
                f"{path}: this is the {identity.family.label} VAE ({identity.detail}); {family.label} models take "
                f"latents scaled by {ours.scaling_factor:g} (shift {ours.shift_factor or 0:g}), it decodes latents "
                f"scaled by {theirs.scaling_factor:g} (shift {theirs.shift_factor or 0:g}): the images would come "
                f"out washed out. Choose a {family.label} VAE",
                role,
            )
        return ComponentSource(path)

    def family_of(self, choice: ModelChoice) -> Family:
        """The family `choice` loads as (its UNet/transformer file's, else its checkpoint's), from file headers
        alone. Raises ModelLoadError as `load` would for a choice it cannot plan."""
        return self._plan(choice)[0]

    def _plan(
        self, choice: ModelChoice
    ) -> tuple[Family, Identity | None, dict[Role, ComponentSource], dict[Role, Path], ModelChoice]:
        """The family, the checkpoint's identity (its declared prediction and zero-SNR), each role's source, the
        parts the checkpoint lacks that were chosen by rule (a no-VAE checkpoint's VAE), and the choice itself with
        its text encoders in the roles identification gives them (what infotext names)."""
        base = None
        if choice.checkpoint is not None:
            base = _identify(choice.checkpoint)
            if base.kind is not Kind.CHECKPOINT:
                raise ModelLoadError(f"{choice.checkpoint}: this is a {base.kind.label} file, not a checkpoint")
        if choice.unet is not None and not choice.unet.is_dir():
            family = _identify(choice.unet).family
        elif base is not None:
            family = base.family
        else:
            raise ModelLoadError("model: choose a checkpoint, or a UNet file together with its text encoder(s) and VAE")
        if not family.supported:
            raise ModelLoadError(f"{choice.checkpoint or choice.unet}: {family.label} models are not supported yet")
        refused = _identify(choice.unet).refused if choice.unet is not None and not choice.unet.is_dir() else None
        if refused is not None:
            raise ModelLoadError(f"{choice.unet}: {refused}")
        sources: dict[Role, ComponentSource] = {}
        defaults: dict[Role, Path] = {}
        overrides = encoder_roles(choice, family, _identify)
        if overrides:
            choice = dataclasses.replace(choice, **{role.value: path for role, path in overrides.items()})
        for spec in family.description.roles:
            role = spec.role
            override = overrides.get(role, choice.override(role))
            if override is None and spec.optional and not _holds(choice.checkpoint, base, spec):
                continue  # an optional part (SD3's T5) the checkpoint does not hold and nobody chose: left out
            if override is None and base is not None and role in base.lacks and choice.checkpoint is not None:
                override = defaults[role] = self._default_part(family, role, choice.checkpoint)
            if override is not None:
                sources[role] = self._source_for(role, override, family)
            elif base is None or choice.checkpoint is None:
                raise ModelLoadError(f"{role.label}: no checkpoint to take it from; choose a {family.label} one", role)
            elif choice.checkpoint.is_dir():
                sources[role] = ComponentSource(choice.checkpoint)
            elif base.family is not family:
                raise ModelLoadError(
                    f"{choice.checkpoint}: its {base.family.label} {role.label} does not fit the "
                    f"{family.label} UNet {choice.unet}; choose a {family.label} {role.label} too",
                    Role.UNET,
                )
            else:
                sources[role] = ComponentSource(choice.checkpoint, checkpoint_prefix(family, role))
        return family, base, sources, defaults, choice

    def _default_part(self, family: Family, role: Role, checkpoint: Path) -> Path:
        """The file for a part the checkpoint lacks (a "no-VAE" upload), or a ModelLoadError saying where to put one."""
        found = self.default_part(family, role, checkpoint) if self.default_part is not None else None
        if found is not None:
            return found
        choose = f"--{role.value.replace('_', '-')}" if role is not Role.TEXT_ENCODER_2 else "a second --text-encoder"
        if role is Role.VAE:
            names = family.description.defaults.vae_names
            example = f" (e.g. {names[0]}.safetensors)" if names else ""
            folder = self.models_dir / "vae"
            fix = f"put a {family.label} VAE file{example} into {folder}/ (then it is used by default), or choose one"
        else:
            folder = self.models_dir / "text_encoders"
            fix = f"put a {family.label} {role.value} file into {folder}/ and choose it"
        raise ModelLoadError(
            f"{checkpoint.name} has no {role.value} inside and none was chosen: {fix} with {choose} or in the "
            "Components tab"
        )

    # -- loading ---------------------------------------------------------------------------------
    def load(self, choice: ModelChoice) -> LoadedModel:
        """Assemble the pipeline for `choice`; on any failure the previous model stays current."""
        with self._lock:
            loaded = self._load_pinned(choice, companion=False)
            self.cache.pin(loaded.keys.values())
            self.current = loaded
            return loaded

    def load_companion(self, choice: ModelChoice) -> LoadedModel:
        """A model used beside the current one within a request (the refiner): loaded and pinned with it, while
        the current model stays current. `release_companions()` unpins it again (it stays cached, LRU)."""
        with self._lock:
            return self._load_pinned(choice, companion=True)

    def _load_pinned(self, choice: ModelChoice, *, companion: bool) -> LoadedModel:
        """Plan and load `choice` with its parts and the current model's pinned (neither may be evicted for the
        other while loading); on failure only the current model's stay pinned. Called under the lock."""
        started = time.perf_counter()
        family, declared, sources, defaults, choice = self._plan(choice)
        dtype = self.dtype_for(family)
        denoiser = family.description.denoiser.role
        fp8 = self._wants_fp8(family, sources[denoiser])
        keys = {
            role: ComponentKey.of(
                s.path, s.prefix, role, family, FP8_STORAGE if fp8 and role is denoiser else dtype, self.home
            )
            for role, s in sources.items()
        }
        in_use = list(self.current.keys.values()) if self.current is not None else []
        self.cache.pin([*keys.values(), *in_use])
        try:
            loaded = self._load_planned(choice, family, declared, sources, keys, started, dtype, fp8, companion)
        except BaseException:
            self.cache.pin(in_use)
            raise
        loaded.defaults = defaults
        return loaded

    def release_companions(self) -> None:
        """Only the current model's components stay pinned."""
        with self._lock:
            self.cache.pin(list(self.current.keys.values()) if self.current is not None else [])

    def _load_planned(
        self,
        choice: ModelChoice,
        family: Family,
        declared: Identity | None,
        sources: dict[Role, ComponentSource],
        keys: dict[Role, ComponentKey],
        started: float,
        dtype: torch.dtype,
        fp8: bool = False,
        companion: bool = False,
    ) -> LoadedModel:
        modules: dict[Role, torch.nn.Module] = {}
        from_disk = [role for role, key in keys.items() if key not in self.cache]
        denoiser = family.description.denoiser.role
        for role, source in sources.items():
            in_fp8 = fp8 and role is denoiser
            try:
                item = self.cache.get_or_load(
                    keys[role], lambda s=source, r=role, f=in_fp8: self._load_one(s, r, family, dtype, f)
                )
            except ComponentLoadError as error:
                raise ModelLoadError(str(error), role if choice.override(role) is not None else None) from error
            modules[role] = item.module
        variant = check_fit(family, modules, sources, choice)
        description = family.description
        named = description.variant_of(dict.fromkeys(modules[description.denoiser.role].state_dict()))
        model_variant = named.name if named is not None else None
        denoiser_file = choice.unet or choice.checkpoint
        if model_variant is not None and denoiser_file is not None:  # a variant only its name tells (Large Turbo)
            model_variant = description.refined(model_variant, (denoiser_file.name,))
            identity = None if denoiser_file.is_dir() else _identify(denoiser_file)  # its metadata may tell too
            told = description.variant(identity.variant) if identity is not None else None
            if told is not None and told.refines == model_variant:
                model_variant = told.name
        pipeline, scheduler_config = self._assemble(
            family, declared, choice.checkpoint, modules, variant, model_variant, companion
        )
        return LoadedModel(
            choice=choice,
            family=family,
            pipeline=pipeline,
            scheduler_config=scheduler_config,
            keys=keys,
            sources=sources,
            device=self.device,
            dtype=dtype,
            load_seconds=time.perf_counter() - started,
            loaded_from_disk=from_disk,
            variant=variant,
            model_variant=model_variant,
        )

    def dtype_for(self, family: Family) -> torch.dtype:
        """The manager's dtype, with the family's half-precision type where the manager runs in half precision
        (FLUX.1 overflows in fp16, so it runs in bf16)."""
        half = family.description.half_dtype
        if self.dtype in (torch.float16, torch.bfloat16) and self.policy.precision == "auto" and half is not None:
            return getattr(torch, half)
        return self.dtype

    def _wants_fp8(self, family: Family, source: ComponentSource) -> bool:
        """fp8 storage for this family's denoiser under the policy (auto: by its bf16 size vs the VRAM budget)."""
        mode = self.policy.fp8_storage
        size = estimated_bytes(source.path, source.prefix) if mode == "auto" and self.device.type == "cuda" else 0
        return wants_fp8(mode, family, self.device, size, self.cache.budget("cuda"))

    def _load_one(
        self, source: ComponentSource, role: Role, family: Family, dtype: torch.dtype, fp8: bool = False
    ) -> torch.nn.Module:
        module = load_component(source, role, family, dtype)
        module = module.to(self.home)
        return store_in_fp8(module, dtype) if fp8 else module

    def _tokenizer(self, checkpoint: Path, subfolder: str, encoder: TextEncoderType) -> Any:
        """A diffusers folder's own tokenizer for that folder; else models/tokenizers/<kind>/ or the bundled one
        (the kind, pad token and length cap are the encoder architecture's: webui.families.encoders)."""
        spec = ENCODERS[encoder]
        own = checkpoint / subfolder
        key = (str(own) if own.is_dir() else str(self.models_dir), spec.tokenizer, spec.pad_token)
        if key not in self._tokenizers:
            # the pipeline passes each variant's sequence length; max_length is only the tokenizer's cap
            self._tokenizers[key] = load_tokenizer(
                TokenizerKind(spec.tokenizer),
                self.models_dir,
                own if own.is_dir() else None,
                pad_token=spec.pad_token,
                max_length=spec.max_length,
            )
        return self._tokenizers[key]

    def _assemble(
        self,
        family: Family,
        declared: Identity | None,
        checkpoint: Path | None,
        modules: dict[Role, torch.nn.Module],
        variant: UnetVariant | None = None,
        model_variant: str | None = None,
        companion: bool = False,
    ) -> tuple[Any, dict[str, Any]]:
        import diffusers

        description = family.description
        checkpoint = checkpoint or self.models_dir / "__no_checkpoint__"
        if checkpoint.is_dir() and (checkpoint / "scheduler" / "scheduler_config.json").is_file():
            scheduler_config = json.loads((checkpoint / "scheduler" / "scheduler_config.json").read_text())
        else:
            found = description.variant(model_variant)
            scheduler_config = bundled_config(family, found.scheduler if found is not None else "scheduler")
            if declared is not None and declared.prediction is not None:
                scheduler_config["prediction_type"] = declared.prediction.value
            if declared is not None and declared.zero_snr:
                # diffusers' zero-SNR recipe (Lin et al., "Common Diffusion Noise Schedules and Sample Steps are
                # Flawed"): betas rescaled to zero terminal SNR, timesteps spaced "trailing" to start there.
                scheduler_config |= {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}
                own_class = getattr(diffusers, scheduler_config["_class_name"])
                if "rescale_betas_zero_snr" not in inspect.signature(own_class).parameters:
                    scheduler_config["_class_name"] = "EulerDiscreteScheduler"  # SD1's PNDM cannot rescale its betas
        scheduler = getattr(diffusers, scheduler_config["_class_name"]).from_config(scheduler_config)
        components: dict[str, Any] = {role.value: module for role, module in modules.items()}
        components["scheduler"] = scheduler
        for spec in description.text_encoders:
            if spec.tokenizer is not None and spec.role in modules:
                components[spec.tokenizer] = self._tokenizer(checkpoint, spec.tokenizer, spec.encoder)
            elif spec.optional:  # an optional encoder left out (SD3 without T5): the pipeline takes None
                components[spec.role.value] = None
                if spec.tokenizer is not None:
                    components[spec.tokenizer] = None
        spec = variant.pipeline if variant is not None else description.pipeline
        if spec is None:
            raise ModelLoadError(f"{family.label}: its description names no diffusers pipeline yet")
        pipeline = spec.create(components)
        pipeline.set_progress_bar_config(disable=True)
        if self.current is not None and self.offload and not companion:
            self.current.pipeline.remove_all_hooks()  # the cached modules carry the old pipeline's hooks
        if self.offload:
            pipeline.enable_model_cpu_offload(device=self.device)
        if self.group_offload:  # once per cached module: the hooks stay with it
            fresh = [m for m in modules.values() if m not in self._group_offloaded]
            apply_group_offload(fresh, self.device)
            self._group_offloaded.update(fresh)
        if self.policy.wants_slicing(self.device):
            pipeline.enable_attention_slicing()
        return pipeline, scheduler_config

    def status(self) -> dict[str, Any]:
        """What is loaded and what it costs in memory (for the model bar)."""
        current = self.current
        return {
            "current": None if current is None else current.choice.name,
            "family": None if current is None else current.family.value,
            "variant": None if current is None or current.variant is None else current.variant.name,
            "defaults": {} if current is None else {r.value: p.name for r, p in current.defaults.items()},
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "cached": [vars(s) for s in self.cache.stats()],
            "cached_bytes": self.cache.total_bytes(),
            "vae_scaling": None if current is None else vae_scaling(current),
        }


def vae_scaling(loaded: LoadedModel) -> str | None:
    """The latent scaling the loaded model decodes with, as the model bar shows it: the family's, which a
    16-channel VAE file cannot show by its shapes (the SD3 VAE and FLUX's `ae` look alike)."""
    latent = loaded.family.description.latent
    if latent is None:
        return None
    shift = f", shift {latent.shift_factor:g}" if latent.shift_factor is not None else ""
    return f"VAE scaling {latent.scaling_factor:g}{shift} ({loaded.family.label})"
