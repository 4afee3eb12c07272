"""Model families are descriptions: the registry, what is derived from it, and no family named elsewhere."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import webui
from webui.families import DESCRIPTIONS, Family, describe, registered
from webui.families.base import CheckpointLayout, Part
from webui.models import family_tables
from webui.models.identity import family_from_metadata
from webui.models.kinds import Role

WEBUI = Path(webui.__file__).parent
FAMILIES_PACKAGE = WEBUI / "families"


# --- no module outside webui/families names a family ------------------------------------------------


def _family_words() -> re.Pattern[str]:
    """Every registered family's id, enum member name and label, as a whole word in any case."""
    words = {w for d in DESCRIPTIONS for w in (d.id, d.member, d.label)}
    alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    return re.compile(rf"(?<![A-Za-z0-9])({alternatives})(?![A-Za-z0-9])", re.IGNORECASE)


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings (module, class, function)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def family_mentions(source: str, path: str, pattern: re.Pattern[str]) -> list[str]:
    """`path:line: text` for each name or string in code (not comments, not docstrings) naming a family."""
    tree = ast.parse(source)
    docstrings = _docstrings(tree)
    hits = []
    for node in ast.walk(tree):
        texts: list[str] = []
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            texts.append(node.value)
        elif isinstance(node, ast.Name):
            texts.append(node.id)
        elif isinstance(node, ast.Attribute):
            texts.append(node.attr)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            texts.append(node.name)
        elif isinstance(node, ast.arg):
            texts.append(node.arg)
        elif isinstance(node, ast.alias):
            texts.extend(filter(None, (node.name, node.asname)))
        for text in texts:
            # identifiers use `_` between words (`_SDXL_KEYS`): look at the words
            match = pattern.search(text.replace("_", " ") if text.isidentifier() else text) or pattern.search(text)
            if match:
                line = source.splitlines()[node.lineno - 1].strip()
                hits.append(f"{path}:{node.lineno}: {match.group(0)!r} in {line}")
    return hits


def test_no_module_outside_the_families_package_names_a_family():
    pattern = _family_words()
    offending = []
    for path in sorted(WEBUI.rglob("*.py")):
        if FAMILIES_PACKAGE in path.parents:
            continue
        offending += family_mentions(path.read_text(), str(path.relative_to(WEBUI.parent)), pattern)
    assert not offending, "family named outside webui/families (ask its description):\n" + "\n".join(offending)


@pytest.mark.parametrize(
    "code",
    [
        "if family is Family.SDXL:\n    pass\n",
        "SIZES = {'sd1': (512, 512)}\n",
        "_SDXL_KEYS = {768: 'clip_l'}\n",
        "def f():\n    raise ValueError(f'needs an SDXL refiner, got {x}')\n",
        "name = 'tiny-sd2'\n",
        "label = 'FLUX.1'\n",
    ],
)
def test_the_scan_catches_family_names_in_code(code):
    assert family_mentions(code, "x.py", _family_words())


@pytest.mark.parametrize(
    "code",
    [
        '"""Docstrings may say SDXL."""\n',
        "x = 1  # comments may say SD1\n",
        "vae = options['sd_vae']\nname = 'sd15_model'\nrepo = 'influx'\n",
        "if family is Family.UNKNOWN:\n    pass\n",
    ],
)
def test_the_scan_leaves_docstrings_comments_and_other_words_alone(code):
    assert family_mentions(code, "x.py", _family_words()) == []


# --- the registry and the enum built from it ------------------------------------------------------


def test_every_description_is_a_family_member_with_its_id_and_label():
    for description in DESCRIPTIONS:
        family = Family(description.id)
        assert family.name == description.member and family.value == description.id
        assert describe(family) is description and family.description is description
        assert (family.label, family.supported) == (description.label, description.supported)
    assert registered() == tuple(Family(d.id) for d in DESCRIPTIONS)
    assert Family.UNKNOWN not in registered() and not Family.UNKNOWN.supported


def test_json_values_stay_the_strings_files_and_infotext_carry():
    assert [f.value for f in registered()] == [
        "sd1", "sd2", "sdxl", "sdxl_refiner", "flux", "sd3", "flux_fill", "flux_control", "chroma", "flux2",
        "zimage",
    ]
    supported = ["sd1", "sd2", "sdxl", "sdxl_refiner", "flux", "sd3", "chroma", "zimage"]
    assert [f.value for f in registered() if f.supported] == supported


def test_importing_the_families_package_imports_no_torch_or_diffusers():
    code = (
        "import sys, webui.families, webui.families.encoders\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("description", [d for d in DESCRIPTIONS if d.supported], ids=lambda d: d.id)
def test_a_supported_description_is_complete(description):
    parts = [spec.part for spec in description.roles]
    assert parts.count(Part.DENOISER) == 1 and parts.count(Part.VAE) == 1 and Part.TEXT_ENCODER in parts
    assert description.pipeline is not None and description.latent is not None
    assert description.conditioning is not None
    assert (description.unet is not None) != (description.denoiser_loader is not None)  # a UNet or a transformer
    for spec in description.roles:
        assert spec.checkpoint_prefix, spec
        if description.unet is not None:  # the LDM writer writes UNet families' single files
            assert spec.checkpoint_layout is not CheckpointLayout.NONE, spec
        if spec.part is Part.TEXT_ENCODER:
            assert spec.encoder is not None and spec.tokenizer is not None, spec
    assert len(description.latent.rgb_factors) == description.latent.channels
    assert description.defaults.sizes


# --- what is derived from the descriptions --------------------------------------------------------


def test_component_prefixes_name_a_family_only_where_one_family_puts_a_text_encoder():
    prefixes = dict(family_tables.component_prefixes())
    assert prefixes["cond_stage_model.transformer."] is Family.SD1
    assert prefixes["conditioner.embedders.0.model."] is Family.SDXL_REFINER
    assert prefixes["text_encoders.clip_l."] is None  # FLUX.1 and SD3 both put CLIP-L there
    assert prefixes["model.diffusion_model."] is None and prefixes["transformer/"] is None
    keys = [prefix for prefix, _ in family_tables.component_prefixes()]
    assert keys == sorted(keys, key=len, reverse=True)


@pytest.mark.parametrize(
    ("value", "family"),
    [
        ("stable-diffusion-xl-v1-refiner", Family.SDXL_REFINER),
        ("stable-diffusion-xl-v1-base/lora", Family.SDXL),
        ("sdxl_base_v1-0", Family.SDXL),
        ("stable-diffusion-v1", Family.SD1),
        ("sd_v2", Family.SD2),
        ("flux-1-dev/lora", Family.FLUX),
        ("stable-diffusion-3-medium", Family.SD3),
    ],
)
def test_metadata_hints_the_longest_match_wins(value, family):
    assert family_from_metadata({"modelspec.architecture": value}) is family


def test_lone_shared_parts_belong_to_the_first_registered_family_and_fit_all():
    assert family_tables.families_with_latent_channels(4)[0] is Family.SD1
    assert family_tables.families_with_latent_channels(16) == (Family.FLUX, Family.SD3, Family.CHROMA, Family.ZIMAGE)
    from webui.models.kinds import TextEncoderType as T

    assert family_tables.encoder_set_families(frozenset({T.OPEN_CLIP_G}))[0] is Family.SDXL
    assert Family.SDXL_REFINER in family_tables.encoder_set_families(frozenset({T.OPEN_CLIP_G}))
    assert family_tables.encoder_set_families(frozenset({T.CLIP_L, T.T5})) == (Family.FLUX, Family.SD3)


def test_a_roles_tokenizer_and_prefix_come_from_the_description():
    from webui.models.loading import checkpoint_prefix

    assert checkpoint_prefix(Family.SDXL, Role.TEXT_ENCODER_2) == "conditioner.embedders.1.model."
    assert checkpoint_prefix(Family.SD2, Role.TEXT_ENCODER) == "cond_stage_model.model."
    assert Family.SDXL_REFINER.description.role(Role.TEXT_ENCODER_2).tokenizer == "tokenizer_2"
    assert not Family.SDXL_REFINER.description.has(Role.TEXT_ENCODER)


# --- a family's LoRA key conversion runs before diffusers' loader ---------------------------------


def _unet_keys_only(state_dict: dict) -> dict:
    """A stand-in key conversion (named by a test description): keeps the UNet's kohya keys only."""
    return {key: value for key, value in state_dict.items() if key.startswith("lora_unet_")}


def test_a_described_lora_key_conversion_runs_before_diffusers_loads(monkeypatch, tiny_models_dir):
    import dataclasses
    from types import MappingProxyType

    from safetensors.torch import load_file

    from webui.engine.lora import LoraSpec, LoraStackApplier, count_lora_modules
    from webui.families import registry
    from webui.testing.tiny_models import tiny_pipeline

    sd1 = Family.SD1.description
    lora_facts = dataclasses.replace(sd1.lora, convert=f"{__name__}:_unet_keys_only")
    monkeypatch.setattr(
        registry, "_BY_ID", MappingProxyType({**registry._BY_ID, "sd1": dataclasses.replace(sd1, lora=lora_facts)})
    )
    lora = tiny_models_dir / "loras/tiny-sd1-kohya.safetensors"
    state = load_file(lora)
    report = LoraStackApplier().apply(tiny_pipeline(Family.SD1), Family.SD1, [LoraSpec(lora)])[0]
    unet_modules = count_lora_modules(_unet_keys_only(state))
    assert 0 < unet_modules < count_lora_modules(state)
    assert (report.error, report.applied) == (None, unet_modules)
    assert report.unapplied == count_lora_modules(state) - unet_modules  # what the conversion dropped is reported


# --- per-block merge names ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "blocks"),
    [(Family.SD1, 12), (Family.SD2, 12), (Family.SDXL, 9), (Family.SDXL_REFINER, 12)],
    ids=lambda v: getattr(v, "value", str(v)),
)
def test_every_real_unet_key_falls_in_an_a1111_merge_block_or_base(family, blocks):
    from stripped_headers import ldm_checkpoint

    description = family.description
    named = {description.block_of(key) for key in ldm_checkpoint(family)} - {None}
    expected = {f"IN{i:02d}" for i in range(blocks)} | {"M00"} | {f"OUT{i:02d}" for i in range(blocks)}
    assert named == expected
    assert description.block_of("model.diffusion_model.time_embed.0.weight") is None  # BASE
    assert description.block_of("first_stage_model.decoder.conv_in.weight") is None  # not the denoiser
