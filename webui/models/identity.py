"""What identification says about a file (`Identity`), and the width and metadata tables it shares."""

from __future__ import annotations

from dataclasses import dataclass

from webui.families import DESCRIPTIONS, Family, family_of
from webui.families.encoders import ENCODER_BY_WIDTH, encoder_label
from webui.models.kinds import Kind, Prediction, Role, TextEncoderType

__all__ = [
    "ENCODER_BY_WIDTH",
    "MARKER_KEYS",
    "Identity",
    "Shapes",
    "declared_prediction",
    "encoder_label",
    "family_from_metadata",
    "has_key_prefix",
    "unknown",
]

Shapes = dict[str, tuple[int, ...]]
# Empty tensors outside every component that declare how a checkpoint was trained (read below); kept by pruning.
MARKER_KEYS = ("v_pred", "ztsnr")

_PREDICTION_WORDS = {
    "v": Prediction.V,
    "v_prediction": Prediction.V,
    "v-prediction": Prediction.V,
    "epsilon": Prediction.EPSILON,
    "eps": Prediction.EPSILON,
}


@dataclass(frozen=True)
class Identity:
    """What a file is. `family` is the one it belongs to; `compatible` lists every family it can serve
    (an SD VAE or a CLIP-L text encoder fits several). `prediction` is set only when the file declares it;
    `zero_snr` only when it carries the `ztsnr` marker. `lacks`: the family's roles a checkpoint does not hold
    (a "no-VAE" upload lacks its VAE)."""

    kind: Kind
    family: Family
    prediction: Prediction | None = None
    text_encoders: tuple[TextEncoderType, ...] = ()
    lora_touches_text_encoder: bool | None = None
    detail: str = ""
    compatible: tuple[Family, ...] = ()
    zero_snr: bool = False  # trained with zero terminal SNR (the `ztsnr` marker): sample with rescaled betas
    lacks: tuple[Role, ...] = ()
    variant: str | None = None  # the family's variant its denoiser's keys show (FLUX.1 dev / schnell)
    refused: str | None = None  # a format of the family this app cannot load, and what to use instead

    @property
    def supported(self) -> bool:
        if self.kind is Kind.UPSCALER:  # upscalers work on pixels: no family
            return True
        return self.kind is not Kind.UNKNOWN and self.family.supported and self.refused is None

    def fits(self, family: Family) -> bool:
        """Whether this file can be used with a model of `family`."""
        return family is self.family or family in self.compatible


def unknown(detail: str) -> Identity:
    return Identity(kind=Kind.UNKNOWN, family=Family.UNKNOWN, detail=detail)


def family_from_metadata(metadata: dict[str, str]) -> Family | None:
    """The family a file's training metadata names (kohya `ss_*`, Stability `modelspec.*`), if any.

    Each description lists substrings of `modelspec.architecture` / `ss_base_model_version`; the longest
    one found wins ("refiner" over "-xl" over "v1"), then flags such as kohya's `ss_v2`."""
    for key in ("modelspec.architecture", "ss_base_model_version"):
        value = metadata.get(key, "").lower()
        found = [
            (len(hint), -order, description)
            for order, description in enumerate(DESCRIPTIONS)
            for hint in description.recognition.metadata_hints
            if value and hint in value
        ]
        if found:  # the longest hint, then the first registered
            return family_of(max(found, key=lambda item: item[:2])[2])
    for description in DESCRIPTIONS:
        for flag, wanted in description.recognition.metadata_flags:
            if metadata.get(flag, "").lower() == wanted:
                return family_of(description)
    return None


def declared_prediction(shapes: Shapes, metadata: dict[str, str]) -> Prediction | None:
    """The prediction type a file declares: metadata, a diffusers scheduler config, or ComfyUI's markers."""
    for key in ("modelspec.prediction_type", "diffusers.prediction_type", "prediction_type"):
        word = metadata.get(key, "").strip().lower()
        if word in _PREDICTION_WORDS:
            return _PREDICTION_WORDS[word]
    if "v_pred" in shapes or has_key_prefix(shapes, "edm_vpred"):
        return Prediction.V
    return None


def declares_zero_snr(shapes: Shapes) -> bool:
    """Whether a checkpoint marks zero-terminal-SNR training with an (empty) `ztsnr` tensor, as NoobAI-style
    SDXL v-prediction fine-tunes do beside `v_pred`; ComfyUI (`supported_models.SDXL.model_type`) and Forge
    then sample with zero-SNR sigmas."""
    return "ztsnr" in shapes


def has_key_prefix(shapes: Shapes, *prefixes: str) -> bool:
    """Whether any key starts with one of `prefixes`: one C-level search, as headers have ~2500 keys."""
    blob = "\n" + "\n".join(shapes)
    return any(f"\n{prefix}" in blob for prefix in prefixes)

