"""What identification says about a file (`Identity`), and the width and metadata tables it shares."""

from __future__ import annotations

from dataclasses import dataclass

from webui.models.kinds import Family, Kind, Prediction, TextEncoderType

Shapes = dict[str, tuple[int, ...]]

# Text encoders are named by their hidden width; tiny test models keep these widths.
ENCODER_BY_WIDTH: dict[int, TextEncoderType] = {
    768: TextEncoderType.CLIP_L,
    1024: TextEncoderType.OPEN_CLIP_H,
    1280: TextEncoderType.OPEN_CLIP_G,
}
ENCODER_LABELS: dict[TextEncoderType, str] = {
    TextEncoderType.CLIP_L: "CLIP-L",
    TextEncoderType.OPEN_CLIP_H: "OpenCLIP-H",
    TextEncoderType.OPEN_CLIP_G: "OpenCLIP-bigG",
    TextEncoderType.T5: "T5",
}
# The UNet's cross-attention width is the width of the text embedding it was trained on.
FAMILY_BY_CONTEXT_DIM: dict[int, Family] = {
    768: Family.SD1,
    1024: Family.SD2,
    2048: Family.SDXL,
    1280: Family.SDXL_REFINER,
}
FAMILY_TEXT_ENCODERS: dict[Family, tuple[TextEncoderType, ...]] = {
    Family.SD1: (TextEncoderType.CLIP_L,),
    Family.SD2: (TextEncoderType.OPEN_CLIP_H,),
    Family.SDXL: (TextEncoderType.CLIP_L, TextEncoderType.OPEN_CLIP_G),
    Family.SDXL_REFINER: (TextEncoderType.OPEN_CLIP_G,),
    Family.SD3: (TextEncoderType.CLIP_L, TextEncoderType.OPEN_CLIP_G, TextEncoderType.T5),
    Family.FLUX: (TextEncoderType.CLIP_L, TextEncoderType.T5),
}
# The SD VAE (KL-f8, 4 latent channels) is one architecture for SD1, SD2 and SDXL; only the
# weights differ, and the header cannot tell which family they were trained for.
SD_VAE_FAMILIES = (Family.SD1, Family.SD2, Family.SDXL, Family.SDXL_REFINER)

# Substrings of `modelspec.architecture` / `ss_base_model_version`, most specific first.
_METADATA_FAMILY_HINTS: tuple[tuple[str, Family], ...] = (
    ("refiner", Family.SDXL_REFINER),
    ("xl", Family.SDXL),
    ("flux", Family.FLUX),
    ("stable-diffusion-3", Family.SD3),
    ("sd3", Family.SD3),
    ("v2", Family.SD2),
    ("v1", Family.SD1),
)
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
    (an SD VAE or a CLIP-L text encoder fits several). `prediction` is set only when the file declares it."""

    kind: Kind
    family: Family
    prediction: Prediction | None = None
    text_encoders: tuple[TextEncoderType, ...] = ()
    lora_touches_text_encoder: bool | None = None
    detail: str = ""
    compatible: tuple[Family, ...] = ()

    @property
    def supported(self) -> bool:
        return self.kind is not Kind.UNKNOWN and self.family.supported

    def fits(self, family: Family) -> bool:
        """Whether this file can be used with a model of `family`."""
        return family is self.family or family in self.compatible


def unknown(detail: str) -> Identity:
    return Identity(kind=Kind.UNKNOWN, family=Family.UNKNOWN, detail=detail)


def family_from_metadata(metadata: dict[str, str]) -> Family | None:
    """The family a file's training metadata names (kohya `ss_*`, Stability `modelspec.*`), if any."""
    for key in ("modelspec.architecture", "ss_base_model_version"):
        value = metadata.get(key, "").lower()
        for needle, family in _METADATA_FAMILY_HINTS:
            if value and needle in value:
                return family
    if metadata.get("ss_v2", "").lower() == "true":
        return Family.SD2
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


def has_key_prefix(shapes: Shapes, *prefixes: str) -> bool:
    """Whether any key starts with one of `prefixes`: one C-level search, as headers have ~2500 keys."""
    blob = "\n" + "\n".join(shapes)
    return any(f"\n{prefix}" in blob for prefix in prefixes)


def encoder_label(encoders: tuple[TextEncoderType, ...]) -> str:
    return " + ".join(ENCODER_LABELS[e] for e in encoders) or "no text encoder"
