"""Text-encoder architectures: shared parts, not families (CLIP-L serves several families).

Each is named by what a header shows (the hidden width of a CLIP; T5 by its layout), and carries what
loading, tokenizing and the tiny fixtures need. Widths, head counts and activations are those of the
released models (openai/clip-vit-large-patch14, laion OpenCLIP ViT-H-14 and ViT-bigG-14, google T5 v1.1 XXL,
Qwen/Qwen3-4B).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

from webui.models.kinds import TextEncoderType

CLIP_EOS = "<|endoftext|>"
OPEN_CLIP_PAD = "!"  # OpenCLIP's tokenizer pads with id 0, which is "!" in the CLIP vocabulary


@dataclass(frozen=True)
class EncoderSpec:
    """One text-encoder architecture.

    `width`: hidden size that names a CLIP (None: recognised by layout, as T5). `pad_token` and
    `max_length`: its tokenizer's. `ldm_prefix`: the single-file prefix under which diffusers' own CLIP
    loader (`create_diffusers_clip_model_from_ldm`) recognises it, used when loading any layout.
    `heads`, `hidden_act`, `projection_dim`: the real model's, kept by the tiny fixtures. `slug`: its part
    of a file name (`tiny-sdxl-clip-g.safetensors`). `tokenizer`: the tokenizer kind (`models/tokenizers/<kind>/`,
    webui.models.tokenizers.TokenizerKind). `loader`: `module:function(state, bundled_config, dtype) -> model`
    for an encoder that is not a CLIP (None: the CLIP loader, through diffusers' single-file CLIP code).
    """

    type: TextEncoderType
    label: str
    slug: str
    width: int | None
    pad_token: str
    max_length: int = 77
    ldm_prefix: str = ""
    heads: int = 0
    hidden_act: str = "gelu"
    projection_dim: int = 0
    tokenizer: str = "clip"
    loader: str | None = None


ENCODERS: MappingProxyType[TextEncoderType, EncoderSpec] = MappingProxyType(
    {
        TextEncoderType.CLIP_L: EncoderSpec(
            TextEncoderType.CLIP_L,
            "CLIP-L",
            "clip-l",
            768,
            CLIP_EOS,
            ldm_prefix="cond_stage_model.transformer.",
            heads=12,
            hidden_act="quick_gelu",
            projection_dim=768,
        ),
        TextEncoderType.OPEN_CLIP_H: EncoderSpec(
            TextEncoderType.OPEN_CLIP_H,
            "OpenCLIP-H",
            "open-clip-h",
            1024,
            OPEN_CLIP_PAD,
            ldm_prefix="cond_stage_model.model.",
            heads=16,
            projection_dim=512,
        ),
        TextEncoderType.OPEN_CLIP_G: EncoderSpec(
            TextEncoderType.OPEN_CLIP_G,
            "OpenCLIP-bigG",
            "clip-g",
            1280,
            OPEN_CLIP_PAD,
            ldm_prefix="conditioner.embedders.1.model.",
            heads=20,
            projection_dim=1280,
        ),
        TextEncoderType.T5: EncoderSpec(
            TextEncoderType.T5,
            "T5",
            "t5xxl",
            None,
            "<pad>",
            max_length=512,
            tokenizer="t5",
            loader="webui.models.loading_t5:load_t5",
        ),
        TextEncoderType.QWEN3: EncoderSpec(
            TextEncoderType.QWEN3,
            "Qwen3",
            "qwen3",
            None,
            "<|endoftext|>",
            max_length=512,
            tokenizer="qwen3",
            loader="webui.models.loading_qwen3:load_qwen3",
        ),
    }
)
ENCODER_BY_WIDTH: MappingProxyType[int, TextEncoderType] = MappingProxyType(
    {spec.width: kind for kind, spec in ENCODERS.items() if spec.width is not None}
)


def encoder_spec(kind: TextEncoderType) -> EncoderSpec:
    return ENCODERS[kind]


def encoder_label(encoders: tuple[TextEncoderType, ...]) -> str:
    """`CLIP-L + OpenCLIP-bigG`, or "no text encoder"."""
    return " + ".join(ENCODERS[e].label for e in encoders) or "no text encoder"
