"""Tiny random models written in every on-disk layout users have, plus a manifest of what was written."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from transformers.utils import logging as hf_logging

from webui.families import Family, FamilyDescription, family_of
from webui.families.encoders import ENCODERS
from webui.models.kinds import Kind, Prediction, TextEncoderType
from webui.models.ldm_writer import (
    UNET_PREFIX,
    component_to_ldm,
    pipeline_to_ldm,
    save_single_file,
    unet_to_ldm,
    vae_to_ldm,
)
from webui.models.tokenizer_bundle import CLIP_VOCAB_SIZE
from webui.testing import tiny_lora
from webui.testing.tiny_models import (
    TINY_FAMILIES,
    UNET_FAMILIES,
    assemble_pipeline,
    build_tiny_pipeline,
    build_tiny_vae,
    fixture_spec,
    pipeline_class,
    prediction_of,
    tiny_pipeline,
)
from webui.testing.tiny_tokenizer import write_tokenizer_files
from webui.testing.tiny_upscalers import write_tiny_upscalers

__all__ = [
    "ALT_VAE_SEED",
    "MANIFEST_NAME",
    "TINY_FAMILIES",
    "UNET_FAMILIES",
    "TOKENIZER_DIR",
    "VPRED_VARIANTS",
    "FixtureFile",
    "assemble_pipeline",
    "build_tiny_pipeline",
    "lora_seed",
    "read_manifest",
    "stem",
    "tiny_pipeline",
    "write_full_vocab_checkpoint",
    "write_tiny_models",
    "write_marked_checkpoints",
    "write_unet_family",
]

MANIFEST_NAME = "tiny_manifest.json"
TOKENIZER_DIR = "tokenizers/clip"
ALT_VAE_SEED = 1  # vae/<stem>-vae-alt.safetensors holds build_tiny_vae(family, ALT_VAE_SEED)
_FP16 = torch.float16


@dataclass(frozen=True)
class FixtureFile:
    """One written fixture: where it is and what the model library must say about it."""

    path: str  # POSIX path relative to the models dir; a folder for diffusers layouts
    kind: Kind
    family: Family
    layout: str  # e.g. "ldm-single-file", "pickle", "diffusers-folder", "unet-diffusers", "kohya", "peft"
    text_encoder: TextEncoderType | None = None
    prediction: Prediction | None = None  # only for files holding a UNet

    def to_json(self) -> dict[str, str | None]:
        return {k: getattr(v, "value", v) for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FixtureFile:
        encoder, prediction = data.get("text_encoder"), data.get("prediction")
        return cls(
            path=data["path"],
            kind=Kind(data["kind"]),
            family=Family(data["family"]),
            layout=data["layout"],
            text_encoder=TextEncoderType(encoder) if encoder else None,
            prediction=Prediction(prediction) if prediction else None,
        )


def stem(family: Family) -> str:
    """File-name stem of a family's fixtures, e.g. `tiny-sdxl` (`tiny-` and the id, `_` as `-`)."""
    fixture_spec(family)
    return "tiny-" + family.value.replace("_", "-")


def lora_seed(family: Family) -> int:
    """Seed of the LoRA / embedding weights written for `family` (distinct per family)."""
    return 1000 * (TINY_FAMILIES.index(family) + 1)


def _prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in state.items()}


def _with_text_model(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Hugging Face files carry `text_model.` (transformers 5's CLIPTextModel no longer has that level).
    return {k if k.startswith(("text_model.", "text_projection.")) else f"text_model.{k}": v for k, v in state.items()}


@contextmanager
def _quiet_transformers_progress() -> Iterator[None]:
    """transformers' save_pretrained draws a progress bar per text encoder; the CLI's output is ours."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


class _Writer:
    """Writes one family's files under `root` and records each as a FixtureFile."""

    def __init__(self, root: Path, family: Family, components: dict[str, Any]) -> None:
        self.root, self.family, self.c = root, family, components
        self.description = family.description
        self.spec = fixture_spec(family)
        self.stem = stem(family)
        self.files: list[FixtureFile] = []

    def add(self, relative: str, kind: Kind, layout: str, encoder: TextEncoderType | None = None) -> Path:
        unet_inside = kind in (Kind.CHECKPOINT, Kind.UNET)
        prediction = prediction_of(self.family) if unet_inside else None
        self.files.append(FixtureFile(relative, kind, self.family, layout, encoder, prediction))
        return self.root / relative

    def tensors(
        self,
        relative: str,
        kind: Kind,
        layout: str,
        state: dict[str, torch.Tensor],
        encoder: TextEncoderType | None = None,
        metadata: Mapping[str, str] | None = None,
        dtype: torch.dtype | None = _FP16,
    ) -> None:
        save_single_file(state, self.add(relative, kind, layout, encoder), metadata=metadata, dtype=dtype)

    def checkpoints(self) -> None:
        ldm = pipeline_to_ldm(self.c, self.family)
        single = {**ldm, **{marker: torch.tensor([]) for marker in self.spec.checkpoint_markers}}
        if self.spec.checkpoint_yaml is not None:
            (self.root / "checkpoints" / f"{self.stem}.yaml").write_text(self.spec.checkpoint_yaml)
        path = f"checkpoints/{self.stem}.safetensors"
        self.tensors(path, Kind.CHECKPOINT, "ldm-single-file", single, None, self.spec.checkpoint_metadata or None)
        if self.spec.pickle:
            half = {k: v.to(_FP16) if v.is_floating_point() else v for k, v in ldm.items()}
            torch.save(
                {"state_dict": half, "global_step": 1},
                self.add(f"checkpoints/{self.stem}.ckpt", Kind.CHECKPOINT, "pickle"),
            )
        folder = self.add(f"checkpoints/{self.stem}-diffusers", Kind.CHECKPOINT, "diffusers-folder")
        with _quiet_transformers_progress():
            assemble_pipeline(self.family, self.c).save_pretrained(folder, safe_serialization=True)
        for spec in self.description.text_encoders:
            weights = folder / spec.role.value / "model.safetensors"
            if weights.exists():  # rewrite with `text_model.` as the Hub's folders have it
                state = _with_text_model(self.c[spec.role.value].state_dict())
                save_single_file(state, weights, metadata={"format": "pt"})
            if (folder / spec.tokenizer).is_dir():
                write_tokenizer_files(folder / spec.tokenizer)

    def unet(self) -> None:
        unet = self.c["unet"]
        state = unet.state_dict()
        self.tensors(f"diffusion_models/{self.stem}-unet.safetensors", Kind.UNET, "unet-diffusers", state)
        ldm = _prefixed(UNET_PREFIX, unet_to_ldm(state, unet.config))
        self.tensors(f"diffusion_models/{self.stem}-unet-ldm.safetensors", Kind.UNET, "unet-ldm", ldm)

    def vae(self) -> None:
        # VAE files are fp32 in the wild (vae-ft-mse-840000, sdxl_vae); so are these.
        vae = self.c["vae"]
        ldm = vae_to_ldm(vae.state_dict(), vae.config)
        self.tensors(f"vae/{self.stem}-vae.safetensors", Kind.VAE, "vae-ldm", ldm, dtype=None)
        state = vae.state_dict()
        self.tensors(f"vae/{self.stem}-vae-diffusers.safetensors", Kind.VAE, "vae-diffusers", state, dtype=None)
        if self.spec.alt_vae:
            alt = build_tiny_vae(self.family, seed=ALT_VAE_SEED)
            ldm = vae_to_ldm(alt.state_dict(), alt.config)
            self.tensors(f"vae/{self.stem}-vae-alt.safetensors", Kind.VAE, "vae-ldm", ldm, dtype=None)

    def text_encoders(self) -> None:
        """Each (role, layout) of the spec as its own file: "hf" (`text_model.*`, as files made with
        transformers 4), "hf5" (transformers 5 names), "ldm" (the checkpoint's prefix and layout)."""
        for role, layout in self.spec.text_encoder_files:
            role_spec = self.description.role(role)
            module, encoder = self.c[role.value], role_spec.encoder
            name = f"text_encoders/{self.stem}-{ENCODERS[encoder].slug}"
            if layout == "ldm":
                ldm = _prefixed(role_spec.checkpoint_prefix, component_to_ldm(module, role_spec.checkpoint_layout))
                self.tensors(f"{name}-ldm.safetensors", Kind.TEXT_ENCODER, "text-encoder-ldm", ldm, encoder)
            else:
                state = _with_text_model(module.state_dict()) if layout == "hf" else module.state_dict()
                self.tensors(f"{name}.safetensors", Kind.TEXT_ENCODER, "text-encoder-hf", state, encoder)

    def loras_and_embeddings(self) -> None:
        if not self.spec.loras:
            return
        seed, s = lora_seed(self.family), self.stem
        kohya = tiny_lora.kohya_lora(self.c, self.family, seed + 4)
        meta = tiny_lora.kohya_metadata(self.family, f"{s}-kohya")
        self.tensors(f"loras/{s}-kohya.safetensors", Kind.LORA, "kohya", kohya, metadata=meta, dtype=None)
        if self.spec.unet_only_lora:
            unet_only = tiny_lora.kohya_lora(self.c, self.family, seed + 5, unet_only=True)
            meta = tiny_lora.kohya_metadata(self.family, f"{s}-kohya-unet-only", unet_only=True)
            path = f"loras/{s}-kohya-unet-only.safetensors"
            self.tensors(path, Kind.LORA, "kohya", unet_only, metadata=meta, dtype=None)
        peft_path = self.add(f"loras/{s}-peft.safetensors", Kind.LORA, "peft")
        layers = tiny_lora.peft_lora(self.c, self.family, seed + 6)
        pipeline_class(self.family).save_lora_weights(peft_path.parent, weight_name=peft_path.name, **layers)
        emb = tiny_lora.embedding(self.family, seed + 7)
        self.tensors(f"embeddings/{s}-emb.safetensors", Kind.EMBEDDING, "embedding", emb, dtype=None)


def write_unet_family(root: Path, description: FamilyDescription) -> list[FixtureFile]:
    """The fixture writer of UNet + CLIP families: every layout of one family's tiny model under `root`."""
    family = family_of(description)
    writer = _Writer(root, family, build_tiny_pipeline(family))
    writer.checkpoints()
    writer.unet()
    writer.vae()
    writer.text_encoders()
    writer.loras_and_embeddings()
    return writer.files


def write_tiny_models(models_dir: Path) -> list[FixtureFile]:
    """Write every family's tiny models in every layout under `models_dir`; return (and save) the manifest."""
    root = Path(models_dir)
    for folder in ("checkpoints", "diffusion_models", "text_encoders", "vae", "loras", "embeddings"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    write_tokenizer_files(root / TOKENIZER_DIR)
    files = [f for family in TINY_FAMILIES for f in fixture_spec(family).write(root, family.description)]
    files += [FixtureFile(*written) for written in write_tiny_upscalers(root)]
    manifest = {"version": 1, "files": [f.to_json() for f in files]}
    (root / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return files


# Single-file marker variants (suffix -> empty marker tensors): NoobAI-style SDXL v-prediction fine-tunes
# carry `v_pred`, and `ztsnr` when trained with zero terminal SNR.
VPRED_VARIANTS = MappingProxyType({"vpred": ("v_pred",), "vpred-ztsnr": ("v_pred", "ztsnr")})


def write_marked_checkpoints(
    models_dir: Path, family: Family, variants: Mapping[str, tuple[str, ...]] = VPRED_VARIANTS
) -> list[FixtureFile]:
    """The family's tiny single-file checkpoint once per variant, `checkpoints/<stem>-<suffix>.safetensors`
    with the variant's (empty) marker tensors added, plus the tiny tokenizer. Kept out of `write_tiny_models`
    (an SDXL copy is 50 MB, for every session); the tests that need them call this."""
    root = Path(models_dir)
    (root / "checkpoints").mkdir(parents=True, exist_ok=True)
    write_tokenizer_files(root / TOKENIZER_DIR)
    ldm = pipeline_to_ldm(build_tiny_pipeline(family), family)
    files = []
    for suffix, markers in variants.items():
        relative = f"checkpoints/{stem(family)}-{suffix}.safetensors"
        save_single_file({**ldm, **{m: torch.tensor([]) for m in markers}}, root / relative, dtype=_FP16)
        prediction = Prediction.V if "v_pred" in markers else prediction_of(family)
        files.append(FixtureFile(relative, Kind.CHECKPOINT, family, "ldm-single-file", None, prediction))
    return files


def write_full_vocab_checkpoint(path: Path, family: Family) -> Path:
    """A tiny single-file (LDM layout, fp16) checkpoint of `family` whose text encoders have CLIP's full
    49,408-token embedding, as a downloaded checkpoint has: the bundled tokenizer's ids fit it. Nothing
    else is written (no tokenizer folder), as when a user drops one file into `models/checkpoints/`."""
    components = build_tiny_pipeline(family, vocab_size=CLIP_VOCAB_SIZE)
    return save_single_file(pipeline_to_ldm(components, family), Path(path), dtype=_FP16)


def read_manifest(models_dir: Path) -> list[FixtureFile]:
    """The manifest `write_tiny_models` saved in `models_dir`."""
    path = Path(models_dir) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no tiny-model manifest here; run `python -m webui make-tiny-models DIR`")
    return [FixtureFile.from_json(item) for item in json.loads(path.read_text())["files"]]
