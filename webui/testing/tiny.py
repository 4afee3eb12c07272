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

from webui.models.kinds import Family, Kind, Prediction, TextEncoderType
from webui.models.ldm_writer import (
    UNET_PREFIX,
    clip_l_to_ldm,
    open_clip_to_ldm,
    pipeline_to_ldm,
    save_single_file,
    unet_to_ldm,
    vae_to_ldm,
)
from webui.testing import tiny_lora
from webui.testing.tiny_models import (
    TINY_FAMILIES,
    assemble_pipeline,
    build_tiny_pipeline,
    build_tiny_vae,
    pipeline_class,
    prediction_of,
    tiny_pipeline,
)
from webui.testing.tiny_tokenizer import write_tokenizer_files

__all__ = [
    "ALT_VAE_SEED",
    "MANIFEST_NAME",
    "TINY_FAMILIES",
    "TOKENIZER_DIR",
    "FixtureFile",
    "assemble_pipeline",
    "build_tiny_pipeline",
    "lora_seed",
    "read_manifest",
    "stem",
    "tiny_pipeline",
    "write_tiny_models",
]

MANIFEST_NAME = "tiny_manifest.json"
TOKENIZER_DIR = "tokenizers/clip"
ALT_VAE_SEED = 1  # vae/tiny-sd1-vae-alt.safetensors holds build_tiny_vae(Family.SD1, ALT_VAE_SEED)
_FP16 = torch.float16
_STEMS = MappingProxyType(
    {
        Family.SD1: "tiny-sd1",
        Family.SD2: "tiny-sd2",
        Family.SDXL: "tiny-sdxl",
        Family.SDXL_REFINER: "tiny-sdxl-refiner",
    }
)
_PICKLE_FAMILIES = (Family.SD1, Family.SD2, Family.SDXL)
# SAI model-spec header, as Stability's own SD2 v-prediction files declare themselves.
_SD2_MODELSPEC = MappingProxyType(
    {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "stable-diffusion-v2-768-v",
        "modelspec.implementation": "https://github.com/Stability-AI/stablediffusion",
        "modelspec.title": "tiny-sd2",
        "modelspec.prediction_type": "v",
    }
)
# A1111 reads `<checkpoint stem>.yaml` beside a checkpoint; SD2-v files ship with one saying "v".
_SD2_YAML = """\
model:
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    parameterization: "v"
    linear_start: 0.00085
    linear_end: 0.0120
    timesteps: 1000
    first_stage_key: "jpg"
    cond_stage_key: "txt"
    image_size: 16
    channels: 4
    scale_factor: 0.18215
    use_ema: False
    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params:
        use_checkpoint: False
        image_size: 16
        in_channels: 4
        out_channels: 4
        model_channels: 32
        attention_resolutions: [1]
        num_res_blocks: 1
        channel_mult: [1, 2]
        num_head_channels: 64
        use_linear_in_transformer: True
        transformer_depth: 1
        context_dim: 1024
    first_stage_config:
      target: ldm.models.autoencoder.AutoencoderKL
      params:
        embed_dim: 4
        ddconfig:
          double_z: true
          z_channels: 4
          resolution: 32
          in_channels: 3
          out_ch: 3
          ch: 32
          ch_mult: [1, 2]
          num_res_blocks: 1
          attn_resolutions: []
          dropout: 0.0
    cond_stage_config:
      target: ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder
      params:
        freeze: True
        layer: "penultimate"
"""


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
    """File-name stem of a family's fixtures, e.g. `tiny-sdxl`."""
    if family not in _STEMS:
        raise ValueError(f"family: no tiny fixtures for {family.value!r}")
    return _STEMS[family]


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
        single, metadata = ldm, None
        if self.family is Family.SD2:
            single = {**ldm, "v_pred": torch.tensor([])}  # ComfyUI's marker key for v-prediction files
            metadata = _SD2_MODELSPEC
            (self.root / "checkpoints" / f"{self.stem}.yaml").write_text(_SD2_YAML)
        path = f"checkpoints/{self.stem}.safetensors"
        self.tensors(path, Kind.CHECKPOINT, "ldm-single-file", single, None, metadata)
        if self.family in _PICKLE_FAMILIES:
            half = {k: v.to(_FP16) if v.is_floating_point() else v for k, v in ldm.items()}
            torch.save(
                {"state_dict": half, "global_step": 1},
                self.add(f"checkpoints/{self.stem}.ckpt", Kind.CHECKPOINT, "pickle"),
            )
        folder = self.add(f"checkpoints/{self.stem}-diffusers", Kind.CHECKPOINT, "diffusers-folder")
        with _quiet_transformers_progress():
            assemble_pipeline(self.family, self.c).save_pretrained(folder, safe_serialization=True)
        for name in ("text_encoder", "text_encoder_2"):
            weights = folder / name / "model.safetensors"
            if weights.exists():  # rewrite with `text_model.` as the Hub's folders have it
                save_single_file(_with_text_model(self.c[name].state_dict()), weights, metadata={"format": "pt"})
        for name in ("tokenizer", "tokenizer_2"):
            if (folder / name).is_dir():
                write_tokenizer_files(folder / name)

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
        if self.family is Family.SD1:
            alt = build_tiny_vae(self.family, seed=ALT_VAE_SEED)
            ldm = vae_to_ldm(alt.state_dict(), alt.config)
            self.tensors(f"vae/{self.stem}-vae-alt.safetensors", Kind.VAE, "vae-ldm", ldm, dtype=None)

    def text_encoders(self) -> None:
        kind, s = Kind.TEXT_ENCODER, f"text_encoders/{self.stem}"
        enc, enc2 = self.c.get("text_encoder"), self.c.get("text_encoder_2")
        if self.family in (Family.SD1, Family.SDXL):
            clip_l = TextEncoderType.CLIP_L
            self.tensors(f"{s}-clip-l.safetensors", kind, "text-encoder-hf", _with_text_model(enc.state_dict()), clip_l)
            prefix = "cond_stage_model." if self.family is Family.SD1 else "conditioner.embedders.0."
            ldm = _prefixed(prefix, clip_l_to_ldm(enc.state_dict()))
            self.tensors(f"{s}-clip-l-ldm.safetensors", kind, "text-encoder-ldm", ldm, clip_l)
        if self.family is Family.SD2:
            h = TextEncoderType.OPEN_CLIP_H
            self.tensors(f"{s}-open-clip-h.safetensors", kind, "text-encoder-hf", _with_text_model(enc.state_dict()), h)
            ldm = _prefixed("cond_stage_model.", open_clip_to_ldm(enc.state_dict()))
            self.tensors(f"{s}-open-clip-h-ldm.safetensors", kind, "text-encoder-ldm", ldm, h)
        # bigG is the largest tensor set by far: one Hugging Face file (SDXL) and one LDM file (refiner).
        g = TextEncoderType.OPEN_CLIP_G
        if self.family is Family.SDXL:
            self.tensors(f"{s}-clip-g.safetensors", kind, "text-encoder-hf", enc2.state_dict(), g)
        if self.family is Family.SDXL_REFINER:
            ldm = _prefixed("conditioner.embedders.0.", open_clip_to_ldm(enc2.state_dict()))
            self.tensors(f"{s}-clip-g-ldm.safetensors", kind, "text-encoder-ldm", ldm, g)

    def loras_and_embeddings(self) -> None:
        if self.family not in tiny_lora.LORA_FAMILIES:
            return
        seed, s = lora_seed(self.family), self.stem
        kohya = tiny_lora.kohya_lora(self.c, self.family, seed + 4)
        meta = tiny_lora.kohya_metadata(self.family, f"{s}-kohya")
        self.tensors(f"loras/{s}-kohya.safetensors", Kind.LORA, "kohya", kohya, metadata=meta, dtype=None)
        if self.family is Family.SDXL:
            unet_only = tiny_lora.kohya_lora(self.c, self.family, seed + 5, unet_only=True)
            meta = tiny_lora.kohya_metadata(self.family, f"{s}-kohya-unet-only", unet_only=True)
            path = f"loras/{s}-kohya-unet-only.safetensors"
            self.tensors(path, Kind.LORA, "kohya", unet_only, metadata=meta, dtype=None)
        peft_path = self.add(f"loras/{s}-peft.safetensors", Kind.LORA, "peft")
        layers = tiny_lora.peft_lora(self.c, self.family, seed + 6)
        pipeline_class(self.family).save_lora_weights(peft_path.parent, weight_name=peft_path.name, **layers)
        emb = tiny_lora.embedding(self.family, seed + 7)
        self.tensors(f"embeddings/{s}-emb.safetensors", Kind.EMBEDDING, "embedding", emb, dtype=None)


def _write_family(root: Path, family: Family) -> list[FixtureFile]:
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
    files = [f for family in TINY_FAMILIES for f in _write_family(root, family)]
    manifest = {"version": 1, "files": [f.to_json() for f in files]}
    (root / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return files


def read_manifest(models_dir: Path) -> list[FixtureFile]:
    """The manifest `write_tiny_models` saved in `models_dir`."""
    path = Path(models_dir) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no tiny-model manifest here; run `python -m webui make-tiny-models DIR`")
    return [FixtureFile.from_json(item) for item in json.loads(path.read_text())["files"]]
