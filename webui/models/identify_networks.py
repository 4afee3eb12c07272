"""Identify LoRAs (kohya, diffusers/PEFT, LyCORIS) and textual-inversion embeddings from their keys."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from webui.families import DESCRIPTIONS, Family, family_of
from webui.families.encoders import ENCODERS
from webui.models import family_tables
from webui.models.identity import (
    ENCODER_BY_WIDTH,
    Identity,
    Shapes,
    encoder_label,
    family_from_metadata,
    has_key_prefix,
)
from webui.models.kinds import Kind, Role, TextEncoderType

# A LoRA tensor key is "<module>.<factor>.weight" or "<module>.<LyCORIS part>"; the factor names the flavour.
_FACTORS = {
    "lora_down": "kohya",
    "lora_up": "kohya",
    "lora_mid": "kohya",
    "lora_A": "diffusers/PEFT",
    "lora_B": "diffusers/PEFT",
}
_LYCORIS = {"hada_": "LyCORIS LoHa", "lokr_": "LyCORIS LoKr", "oft_": "LyCORIS OFT"}
_LORA_MARKERS = (
    ".lora_down.",
    ".lora_up.",
    ".lora_A.",
    ".lora_B.",
    "lora.down.",
    "lora.up.",
    ".hada_w",
    ".lokr_w",
    ".oft_",
    "_lora1.down.",  # XLabs' FLUX LoRAs: processor.qkv_lora1 (image stream) / qkv_lora2 (text stream)
    "_lora2.down.",
)
# The module's target, from the start of its normalised name (dots and underscores alike).
_TARGETS: tuple[tuple[str, str], ...] = (
    ("lora_te2_", "te2"),
    ("text_encoder_2_", "te2"),
    ("lora_te3_", "te3"),
    ("text_encoder_3_", "te3"),
    ("lora_te1_", "te1"),
    ("lora_te_", "te"),
    ("text_encoder_", "te"),
    ("text_model_", "te"),
)
_TEXT_ENCODER_STARTS = tuple(prefix for prefix, _ in _TARGETS)
# kohya's numbered names, by position: what they patch when the family is unknown.
_TARGET_ENCODERS = {
    "te1": TextEncoderType.CLIP_L,
    "te2": TextEncoderType.OPEN_CLIP_G,
    "te3": TextEncoderType.T5,
}
_TARGET_ROLES = {
    "te": Role.TEXT_ENCODER,
    "te1": Role.TEXT_ENCODER,
    "te2": Role.TEXT_ENCODER_2,
    "te3": Role.TEXT_ENCODER_3,
}
_CROSS_ATTENTION = re.compile(r"attn2_(processor_)?to_[kv]$")
_TE_INPUT = re.compile(r"(self_attn_[qkv]_proj|self_attn_out_proj|mlp_fc1)$")
_EMBEDDING_MAX_KEYS = 16


@dataclass
class _Module:
    parts: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def in_features(self) -> int | None:
        """Input width of the patched layer, from the factor that multiplies the input."""
        for name in ("lora_down.weight", "lora_A.weight", "down.weight", "hada_w1_b"):
            if name in self.parts and len(self.parts[name]) >= 2:
                return self.parts[name][1]
        left = self.parts.get("lokr_w1") or self.parts.get("lokr_w1_b")
        right = self.parts.get("lokr_w2") or self.parts.get("lokr_w2_b")
        if left and right and len(left) >= 2 and len(right) >= 2:
            return left[1] * right[1]  # a Kronecker product's input width is the product of the factors'
        return None

    def rank(self) -> int | None:
        for name in ("lora_down.weight", "lora_A.weight", "down.weight", "hada_w1_b"):
            if len(self.parts.get(name, ())) >= 2:
                return self.parts[name][0]
        return None


def is_lora(shapes: Shapes) -> bool:
    blob = "\n".join(shapes)
    return any(marker in blob for marker in _LORA_MARKERS)


def _split_key(key: str) -> tuple[str, str, str] | None:
    """(module, part, flavour) of a LoRA tensor key, e.g. ("m.to_k", "down.weight", ...) for
    "m.to_k_lora.down.weight"; None for keys that are not LoRA factors (alpha, scales)."""
    module, _, last = key.rpartition(".")
    for prefix, flavour in _LYCORIS.items():
        if last.startswith(prefix):
            return module, last, flavour
    if last not in ("weight", "bias"):
        return None
    module, _, factor = module.rpartition(".")
    if factor in _FACTORS:
        return module, f"{factor}.{last}", _FACTORS[factor]
    if factor in ("down", "up") and module.endswith((".lora", "_lora")):
        flavour = "diffusers (old)" if module.endswith(".lora") else "diffusers (attention processors)"
        return module[:-5], f"{factor}.{last}", flavour
    if factor in ("down", "up") and module.endswith(("_lora1", "_lora2")):
        return module, f"{factor}.{last}", "XLabs"
    return None


def _normalise(module: str) -> str:
    name = module.replace(".", "_")
    for prefix in ("base_model_model_", "model_"):
        name = name.removeprefix(prefix)
    return name


def _target(name: str) -> str:
    if not name.startswith(_TEXT_ENCODER_STARTS):
        return "unet"
    return next(target for prefix, target in _TARGETS if name.startswith(prefix))


def identify_lora(shapes: Shapes, metadata: dict[str, str]) -> Identity:
    """Family a LoRA targets (cross-attention width, text-encoder widths, metadata) and what it patches."""
    modules: dict[str, _Module] = {}
    flavours: set[str] = set()
    for key, shape in shapes.items():
        split = _split_key(key)
        if split is None:
            continue
        module, part, flavour = split
        flavours.add(flavour)
        modules.setdefault(_normalise(module), _Module()).parts[part] = shape
    targets = {name: _target(name) for name in modules}
    touched = sorted(set(targets.values()) - {"unet"})
    context = next(
        (w for n, m in modules.items() if _CROSS_ATTENTION.search(n) and (w := m.in_features())), None
    )
    te_width = next(
        (
            w
            for n, m in modules.items()
            if targets[n] == "te" and _TE_INPUT.search(n) and (w := m.in_features())
        ),
        None,
    )
    family, reason = _lora_family(modules, targets, context, te_width, metadata)
    alike = _alike(family, list(modules))
    hinted = family_from_metadata(metadata)
    if hinted in alike and hinted is not family:  # FLUX.1 and Chroma LoRAs name their modules alike
        family, reason = hinted, f"{reason}, its metadata says {hinted.label}"
    encoders = _touched_encoders(touched, te_width, family)
    notes = [reason]
    if hinted is not None and family is not Family.UNKNOWN and hinted is not family:
        notes.append(f"its metadata says {hinted.label}")
    parts = ["UNet" if "unet" in targets.values() else None, encoder_label(encoders) if encoders else None]
    ranks = sorted({r for m in modules.values() if (r := m.rank())})
    rank = f", rank {ranks[0]}" if len(ranks) == 1 else (f", ranks {ranks[0]}-{ranks[-1]}" if ranks else "")
    detail = (
        f"LoRA ({', '.join(sorted(flavours))}) for {family.label}: patches "
        f"{' + '.join(p for p in parts if p) or 'nothing recognisable'}; {len(modules)} modules{rank}; "
        + "; ".join(notes)
    )
    return Identity(
        Kind.LORA,
        family,
        text_encoders=encoders,
        lora_touches_text_encoder=bool(touched),
        detail=detail,
        compatible=alike,
    )


def _alike(family: Family, names: list[str]) -> tuple[Family, ...]:
    """`family` and every family whose LoRAs name their modules alike: the blocks it matched on (FLUX.1's and
    Chroma's double/single blocks) or the same diffusers transformer width."""
    if family is Family.UNKNOWN:
        return ()
    recognition = family.description.recognition
    blocks = {b for b in recognition.lora_blocks if any(b in n for n in names)}
    widths = set(recognition.lora_transformer_widths)
    alike = [
        family_of(d)
        for d in DESCRIPTIONS
        if d.supported
        and (blocks & set(d.recognition.lora_blocks) or widths & set(d.recognition.lora_transformer_widths))
    ]
    return (family, *(f for f in alike if f is not family))


def _lora_family(
    modules: dict[str, _Module],
    targets: dict[str, str],
    context: int | None,
    te_width: int | None,
    metadata: dict[str, str],
) -> tuple[Family, str]:
    """The targeted family and the evidence for it, strongest evidence first."""
    names = list(modules)
    for description in DESCRIPTIONS:
        blocks = [block for block in description.recognition.lora_blocks if any(block in n for n in names)]
        if blocks:
            return family_of(description), f"{description.label} blocks ({'/'.join(blocks)})"
    dit = [m.in_features() for n, m in modules.items() if n.startswith("transformer_") and "attn_to_k" in n]
    if any(dit):
        width = next(w for w in dit if w)
        for description in DESCRIPTIONS:
            if width in description.recognition.lora_transformer_widths:
                return family_of(description), f"diffusers transformer of width {width}"
        return Family.UNKNOWN, f"diffusers transformer of width {width}, which no known family has"
    if context is not None:
        return family_tables.family_by_context_dim(context), f"cross-attention (attn2 to_k/to_v) input width {context}"
    present = set(targets.values()) - {"unet"}
    if present & {"te1", "te2", "te3"}:  # numbered names: a family with several text encoders
        roles = {_TARGET_ROLES[t] for t in present}
        for family, kohya_roles in family_tables.kohya_role_families():
            if len(kohya_roles) > 1 and roles <= kohya_roles:
                return family, f"patches {family.label}'s text encoders ({'/'.join(sorted(present))})"
    if te_width is not None:
        encoder = ENCODER_BY_WIDTH.get(te_width)
        for family, kohya_roles in family_tables.kohya_role_families():
            if kohya_roles == {Role.TEXT_ENCODER} and family.description.role(Role.TEXT_ENCODER).encoder is encoder:
                return family, f"text-encoder width {te_width}"
    hinted = family_from_metadata(metadata)
    if hinted is not None:
        return hinted, "from its training metadata (modelspec.architecture / ss_base_model_version)"
    for description in DESCRIPTIONS:
        if any(n.startswith(description.recognition.lora_weak) for n in names):
            return family_of(description), f"guessed from kohya's {description.label} module names"
    blocks = ", ".join(
        f"{d.label} ({'/'.join(d.recognition.lora_blocks)})" for d in DESCRIPTIONS if d.recognition.lora_blocks
    )
    return Family.UNKNOWN, (
        "target family not determined: no cross-attention (attn2 to_k/to_v) or text-encoder "
        f"(self_attn q/k/v/out_proj, mlp.fc1) modules, no {blocks} blocks, no ss_base_model_version metadata"
    )


def _touched_encoders(
    touched: list[str], te_width: int | None, family: Family
) -> tuple[TextEncoderType, ...]:
    encoders: list[TextEncoderType] = []
    description = family.description
    for target in touched:
        role = _TARGET_ROLES[target]
        if target == "te":
            own = description.role(role).encoder if description.has(role) else None
            encoder = ENCODER_BY_WIDTH.get(te_width or 0) or own
        elif description.has(role):
            encoder = description.role(role).encoder
        else:
            encoder = _TARGET_ENCODERS[target]
        if encoder is not None and encoder not in encoders:
            encoders.append(encoder)
    order = list(TextEncoderType)
    return tuple(sorted(encoders, key=order.index))


def _keyed_embedding(shapes: Shapes) -> tuple[Family, tuple[tuple[TextEncoderType, str], ...]] | None:
    """The family whose embeddings hold one named tensor per text encoder, if every such key is here."""
    for family, keys in family_tables.embedding_keys():
        if all(key in shapes for _, key in keys):
            return family, keys
    return None


def is_embedding(shapes: Shapes) -> bool:
    if "emb_params" in shapes or _keyed_embedding(shapes) is not None:
        return True
    if has_key_prefix(shapes, "string_to_param."):
        return True
    return 0 < len(shapes) <= _EMBEDDING_MAX_KEYS and all(
        "." not in key and 1 <= len(shape) <= 2 and shape[-1] in ENCODER_BY_WIDTH
        for key, shape in shapes.items()
    )  # diffusers' learned_embeds: {"<token>": [n, width]}


def identify_embedding(shapes: Shapes) -> Identity:
    """A textual-inversion embedding: its family from the width(s) of its vectors."""
    keyed = _keyed_embedding(shapes)
    if keyed is not None:
        family, keys = keyed
        first = shapes[keys[0][1]]
        vectors = first[0] if len(first) == 2 else 1
        encoders = tuple(encoder for encoder, _ in keys)
        return Identity(
            Kind.EMBEDDING,
            family,
            text_encoders=encoders,
            compatible=(family,),
            detail=f"textual-inversion embedding for {family.label}: {vectors} vector(s) for "
            f"{encoder_label(encoders)}",
        )
    vectors_of = {
        k: s for k, s in shapes.items() if (k == "emb_params" or k.startswith("string_to_param.")) and s
    }
    vectors_of = vectors_of or {
        k: s for k, s in shapes.items() if len(s) in (1, 2) and s and s[-1] in ENCODER_BY_WIDTH
    }
    if not vectors_of:
        return Identity(
            Kind.EMBEDDING, Family.UNKNOWN, detail="embedding without vectors (emb_params/string_to_param)"
        )
    shape = next(iter(vectors_of.values()))
    width, vectors = shape[-1], (shape[0] if len(shape) == 2 else 1)
    encoder = ENCODER_BY_WIDTH.get(width)
    if encoder is None:
        known = ", ".join(f"{spec.label} ({w})" for w, spec in ((s.width, s) for s in ENCODERS.values()) if w)
        return Identity(
            Kind.EMBEDDING,
            Family.UNKNOWN,
            detail=f"embedding of width {width}: not {known}",
        )
    family = family_tables.first_family_with_encoder(encoder)
    return Identity(
        Kind.EMBEDDING,
        family,
        text_encoders=(encoder,),
        compatible=(family,),
        detail=f"textual-inversion embedding for {family.label}: {vectors} vector(s) of width {width} "
        f"({ENCODERS[encoder].label})",
    )
