"""The frozen dataclasses a model family is described by: the vocabulary every family module fills in.

Nothing here imports torch, diffusers or transformers at import time; the few behaviours a description
carries (building its diffusers pipeline, importing its fixture writer) import what they need when called.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Any

from webui.models.kinds import Prediction, Role, TextEncoderType


def frozen(mapping: Mapping[str, Any] | None = None, **values: Any) -> Mapping[str, Any]:
    """A read-only mapping, for the dict-shaped facts of a description (configs, metadata)."""
    return MappingProxyType({**(mapping or {}), **values})


def _resolve(reference: str) -> Any:
    """`package.module:attribute` or `package.attribute` -> the object, imported now."""
    module, _, attribute = reference.partition(":") if ":" in reference else reference.rpartition(".")
    return getattr(importlib.import_module(module), attribute)


class Part(str, Enum):
    """What a role is for, whatever its diffusers name."""

    DENOISER = "denoiser"  # a UNet or a DiT / MMDiT transformer
    VAE = "vae"
    TEXT_ENCODER = "text_encoder"


class CheckpointLayout(str, Enum):
    """How a role's keys are named inside the family's original single-file checkpoint."""

    LDM_UNET = "ldm_unet"  # input_blocks / middle_block / output_blocks
    LDM_VAE = "ldm_vae"  # encoder.down.N.block.M, attention as 1x1 convs
    HF_CLIP = "hf_clip"  # Hugging Face CLIP names under `text_model.`
    OPEN_CLIP = "open_clip"  # OpenCLIP names: transformer.resblocks.N, in_proj (q, k, v stacked)
    HF_TRANSFORMER = "hf_transformer"  # transformers' names under `transformer.` (ComfyUI's `text_encoders.*`)
    ORIGINAL_DIT = "original_dit"  # a transformer's original names (FLUX's BFL ones): DenoiserLoader.single_file_plan
    NONE = "none"  # not written by the LDM writer (yet)


@dataclass(frozen=True)
class RoleSpec:
    """One component of a family's pipeline.

    `role` is the diffusers component name (and subfolder); `component_class` the library class as
    `"diffusers.UNet2DConditionModel"` / `"transformers.CLIPTextModelWithProjection"`; `checkpoint_prefix`
    where the role's keys sit in the family's single file (read and written); `tokenizer` the pipeline's
    tokenizer component for a text encoder. `optional`: the pipeline runs without it (SD3's T5).
    `truncate_to_config_layers`: keep only the bundled config's layer count (diffusers drops OpenCLIP-H's
    last layer so that the last hidden state is the penultimate one the family was trained on).
    `component_prefix`: where the role's keys sit in a file holding that role alone, as such files are
    distributed (None: at `checkpoint_prefix`, as an LDM UNet file keeps `model.diffusion_model.`).
    """

    role: Role
    part: Part
    component_class: str
    checkpoint_prefix: str = ""
    checkpoint_layout: CheckpointLayout = CheckpointLayout.NONE
    encoder: TextEncoderType | None = None
    tokenizer: str | None = None
    optional: bool = False
    truncate_to_config_layers: bool = False
    component_prefix: str | None = None

    @property
    def lone_prefix(self) -> str:
        """The key prefix of a file holding this role alone (see `component_prefix`)."""
        return self.checkpoint_prefix if self.component_prefix is None else self.component_prefix

    def component_type(self) -> type:
        """The library class (imports diffusers or transformers now)."""
        return _resolve(self.component_class)


@dataclass(frozen=True)
class VaeArchitecture:
    """A VAE shared by several families: the header shows its latent channels, not which family trained it."""

    label: str  # what a lone VAE file is called, e.g. "SD-family VAE (SD1/SD2/SDXL)"
    latent_channels: int
    # A file that names its family (metadata) fits only the families with that family's latent scaling: the SD3
    # VAE and FLUX's `ae` share shapes but not weights or scaling, and the wrong pair washes images out. False
    # where users swap VAEs across families of one architecture (SD1/SD2/SDXL, as A1111 lets them).
    narrow_by_scaling: bool = False


@dataclass(frozen=True)
class LatentFormat:
    """The latent space: VAE architecture, scaling (and shift) into the denoiser's range, cheap RGB preview.

    `rgb_factors` is (channels × 3): latent channel → RGB, plus `rgb_bias`, as the peers' "approx cheap"
    previews (ComfyUI's latent_formats.py). `downscale`: pixels per latent pixel per side.
    """

    vae: VaeArchitecture
    scaling_factor: float
    rgb_factors: tuple[tuple[float, float, float], ...]
    rgb_bias: tuple[float, float, float] = (0.0, 0.0, 0.0)
    shift_factor: float | None = None
    downscale: int = 8

    @property
    def channels(self) -> int:
        return self.vae.latent_channels


class SchedulerKind(str, Enum):
    NOISE_PREDICTION = "noise_prediction"  # epsilon / v: the A1111 sampler list applies
    FLOW_MATCHING = "flow_matching"  # FLUX, SD3: flow-matching Euler with a (resolution-dependent) shift


@dataclass(frozen=True)
class SchedulerSpec:
    """The family's scheduler: its kind, and the sampler names that apply (None: every noise-prediction
    sampler in webui.engine.samplers). The config itself is bundled (`configs/<id>/scheduler/`).

    `default_sampler` / `default_schedule`: what a user of the family starts from, as A1111 (or, for families
    A1111 does not run, Forge/ComfyUI) names it; None: no default of its own (the model's own scheduler)."""

    kind: SchedulerKind = SchedulerKind.NOISE_PREDICTION
    samplers: tuple[str, ...] | None = None
    default_sampler: str | None = None
    default_schedule: str = "Automatic"
    # The "Align Your Steps" noise levels published for this family's models (NVIDIA's how-to page, 10 steps);
    # None: the ones for SD 1.5, which A1111 uses for every model it has no levels of its own for.
    align_your_steps: tuple[float, ...] | None = None


@dataclass(frozen=True)
class ClipChunks:
    """A1111-weighted CLIP conditioning: 75-token chunks, `(word:1.2)` weights, clip skip, over every
    text-encoder role of the family in order (their hidden states concatenated on the last axis).

    `clip_skip_offset`: which hidden layer clip skip 1 reads, counted from the last (0: the last, with the
    final layer norm; 1: the penultimate, raw, as SDXL). `pooled`: the last encoder's projected pooled output
    of the first chunk is passed too. `zero_empty_negative`: an empty negative prompt is all zeros when the
    pipeline's `force_zeros_for_empty_prompt` says so (diffusers' and A1111's SDXL default).
    """

    clip_skip_offset: int = 0
    pooled: bool = False
    zero_empty_negative: bool = False

    @property
    def final_norm(self) -> bool:
        return self.clip_skip_offset == 0


@dataclass(frozen=True)
class Defaults:
    """What a user of the family starts from. `sizes` are (width, height), native size first;
    `sizes_v_prediction` replaces them for v-prediction files (SD2-768-v). `cfg_scale` / `steps` None:
    the user's preference. `distilled_guidance`: the default of a guidance-distilled model (None: none).
    `negative_prompt`: whether a negative prompt means anything at the default settings."""

    sizes: tuple[tuple[int, int], ...]
    sizes_v_prediction: tuple[tuple[int, int], ...] | None = None
    steps: int | None = None
    cfg_scale: float | None = None
    distilled_guidance: float | None = None
    negative_prompt: bool = True
    vae_names: tuple[str, ...] = ()  # name fragments of the VAE a checkpoint without one gets, best first

    def size_presets(self, prediction: Prediction | None) -> tuple[tuple[int, int], ...]:
        if prediction is Prediction.V and self.sizes_v_prediction:
            return self.sizes_v_prediction
        return self.sizes


@dataclass(frozen=True)
class Variant:
    """A variant of one family told apart by its denoiser's keys (FLUX.1 dev has `guidance_in`, schnell not).

    `requires` / `absent`: denoiser keys (checkpoint prefix stripped, either naming: BFL or diffusers) that
    must be present / missing; the first variant that matches is the file's. `scheduler`: the bundled
    scheduler config folder of the variant (`configs/<id>/<scheduler>/scheduler_config.json`); `defaults`:
    what a user of the variant starts from; `max_sequence_length`: the T5 sequence length its pipeline takes
    (diffusers' FLUX docs: 512 for dev, 256 for schnell); `distilled_guidance`: the denoiser takes the
    guidance value as an input (guidance-distilled), rather than classifier-free guidance alone. `refines` /
    `name_hints`: a variant with the same weights' shapes as the variant `refines` (SD3.5 Large Turbo and Large),
    picked over it only when one of `name_hints` is in the file's name or `modelspec.architecture` / `.title`."""

    name: str
    label: str
    requires: tuple[str, ...] = ()
    absent: tuple[str, ...] = ()
    scheduler: str = "scheduler"
    defaults: Defaults | None = None
    max_sequence_length: int | None = None
    distilled_guidance: bool = False
    refines: str | None = None
    name_hints: tuple[str, ...] = ()

    def matches(self, keys: Mapping[str, Any]) -> bool:
        return all(any(k in keys for k in key.split("|")) for key in self.requires) and not any(
            k in keys for key in self.absent for k in key.split("|")
        )


@dataclass(frozen=True)
class DenoiserLoader:
    """How a transformer denoiser is built from a single file whose key names are not diffusers'.

    `convert`: `module:function(state) -> state` renaming the original (e.g. BFL) keys to diffusers' and
    splitting fused projections, with widths read from the tensors; `derive`: `module:function(shapes,
    bundled_config) -> config` giving the diffusers config from the converted shapes. Both get real files and
    the tiny fixtures alike. `fits`: (config attribute, text-encoder role) pairs whose widths must agree
    (FLUX's `joint_attention_dim` is T5's width), checked before a pipeline is assembled.
    `single_file_plan`: `module:function(shapes) -> webui.models.ldm_plan.Plan` giving every key of the
    denoiser's single-file layout (original names, checkpoint prefix stripped) from a file's keys in either
    naming, so the merger reads any layout one tensor at a time and writes the original one (None: not
    mergeable). Raises ValueError when the keys are not the family's."""

    convert: str
    derive: str
    fits: tuple[tuple[str, Role], ...] = ()
    single_file_plan: str | None = None

    def converter(self) -> Callable[[dict[str, Any]], dict[str, Any]]:
        return _resolve(self.convert)

    def deriver(self) -> Callable[..., dict[str, Any]]:
        return _resolve(self.derive)

    def planner(self) -> Callable[[Mapping[str, tuple[int, ...]]], dict[str, Any]] | None:
        return None if self.single_file_plan is None else _resolve(self.single_file_plan)


@dataclass(frozen=True)
class PipelineEncoding:
    """Conditioning by the pipeline's own `encode_prompt` (FLUX.1: T5 sequence plus CLIP pooled; SD3: CLIP-L +
    CLIP-G + T5; Chroma: T5 with its mask; Z-Image: Qwen3): no A1111 weights or 75-token chunks; the embeddings
    are cached per prompt so the encoders may leave the GPU.

    `encode`: `module:function(pipeline, prompt, device, max_length) -> {call argument: tensor}`, the family's
    adapter over its pipeline's `encode_prompt` (the negative prompt's go to `negative_<argument>`).
    `negative_needs_cfg`: a negative prompt is encoded and used only when CFG > 1 (FLUX's `true_cfg_scale`,
    the plain `guidance_scale` elsewhere), since without CFG the denoiser runs one pass per step.
    `max_sequence_length`: the text sequence length the pipeline takes when the variant names none."""

    encode: str
    negative_needs_cfg: bool = True
    max_sequence_length: int = 512

    def encoder(self) -> Callable[..., dict[str, Any]]:
        return _resolve(self.encode)


@dataclass(frozen=True)
class PipelineSpec:
    """The diffusers pipeline class and the init arguments its real repo's model_index.json sets.

    `absent`: components the class takes but the family does not have (passed as None);
    `flags`: other init arguments, e.g. `requires_aesthetics_score`."""

    class_name: str
    absent: tuple[str, ...] = ()
    flags: Mapping[str, Any] = field(default_factory=frozen)
    cfg_argument: str = "guidance_scale"  # the call argument that takes the CFG scale
    # What the pipeline's CFG argument counts from: Z-Image computes pos + g·(pos − neg), so A1111's CFG scale s
    # (neg + s·(pos − neg)) is passed as g = s − 1 (cfg_offset 1); 0 for pipelines that take s itself.
    cfg_offset: float = 0.0
    guidance_argument: str | None = None  # the call argument that takes distilled guidance (None: none)
    packed_latents: bool = False  # output_type="latent" returns packed 2x2 patches (FLUX): unpack to decode

    def pipeline_class(self) -> type:
        import diffusers

        return getattr(diffusers, self.class_name)

    def create(self, components: Mapping[str, Any]) -> Any:
        """The pipeline over `components` (diffusers names: unet, vae, text_encoder, tokenizer, scheduler, ...)."""
        kwargs = dict.fromkeys(self.absent)
        kwargs.update(self.flags)
        kwargs.update(components)
        return self.pipeline_class()(**kwargs)


class VariantInput(str, Enum):
    """What txt2img feeds a UNet variant's extra input channels."""

    FULL_MASK = "full_mask"  # an all-ones mask and the latents of an all-zero masked image (A1111's txt2img)


@dataclass(frozen=True)
class UnetVariant:
    """A UNet of the family whose `conv_in` takes extra channels: latents concatenated to the noisy ones.

    `name` is what users call it (A1111, diffusers model cards); `pipeline` the diffusers pipeline that feeds
    those channels; `txt2img` how txt2img runs it (None: it cannot, and `refusal` says why and what can).
    Inpainting UNets (9 = 4 latent + 1 mask + 4 masked-image latent channels) run txt2img as A1111 runs them:
    the whole image masked (`processing.txt2img_image_conditioning`), which diffusers' inpaint pipeline at
    strength 1 with an all-ones mask does; instruct-pix2pix UNets (8 = 4 + 4 latents of the image to edit)
    need an input image."""

    name: str
    in_channels: int
    pipeline: PipelineSpec
    txt2img: VariantInput | None = None
    refusal: str | None = None


@dataclass(frozen=True)
class UnetFacts:
    """What names a UNet family from its header, and what its config takes that weights cannot show.

    `context_dim`: the cross-attention (attn2.to_k) input width; `linear_proj`: transformer proj_in is a
    Linear rather than a 1x1 conv; `add_embedding_in`: the text_time add-embedding input (None: none).
    `head_channels`: attention heads are `channels // head_channels` wide per level (None: the bundled
    config's fixed head count is kept, as SD1's 8 heads)."""

    context_dim: int
    linear_proj: bool
    add_embedding_in: int | None
    head_channels: int | None

    def describe(self) -> str:
        proj = "linear" if self.linear_proj else "conv"
        return f"{self.context_dim}/{proj}/{self.add_embedding_in or 'none'}"


@dataclass(frozen=True)
class Telltale:
    """Keys that name a transformer denoiser: some key starts with one of `prefixes`, every key of
    `requires` is present, no key starts with one of `excludes`, and each `(key, axis, size)` of `shapes`
    holds (FLUX.1 Fill: `img_in.weight` takes 384 inputs). When several families' telltales match, the one
    with the most conditions wins (`specificity`), so FLUX.1 Fill beats FLUX.1 whatever the order."""

    prefixes: tuple[str, ...]
    note: str
    requires: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()
    shapes: tuple[tuple[str, int, int], ...] = ()

    @property
    def specificity(self) -> int:
        return len(self.requires) + len(self.excludes) + len(self.shapes)

    def shapes_hold(self, shapes: Mapping[str, tuple[int, ...]]) -> bool:
        for key, axis, size in self.shapes:
            shape = shapes.get(key)
            if shape is None or len(shape) <= axis or shape[axis] != size:
                return False
        return True


@dataclass(frozen=True)
class Recognition:
    """How a file is matched to the family beyond its UNet widths (see identify.py for the order).

    `denoiser`: telltales of a transformer denoiser. `metadata_hints`: substrings of
    `modelspec.architecture` / `ss_base_model_version`; the longest hint found over all families wins, so
    "refiner" beats "-xl" beats "v1". `metadata_flags`: (key, value) pairs that name the family (`ss_v2`).
    `lora_blocks`: module-name parts of the denoiser's blocks in a LoRA; `lora_transformer_widths`: the
    hidden width of a diffusers-named transformer LoRA; `lora_weak`: kohya module-name starts that only
    suggest the family when nothing else decides."""

    denoiser: tuple[Telltale, ...] = ()
    metadata_hints: tuple[str, ...] = ()
    metadata_flags: tuple[tuple[str, str], ...] = ()
    lora_blocks: tuple[str, ...] = ()
    lora_transformer_widths: tuple[int, ...] = ()
    lora_weak: tuple[str, ...] = ()
    refuse: tuple[tuple[str, str], ...] = ()  # (key suffix, problem): a file format the family cannot load


@dataclass(frozen=True)
class LoraConversion:
    """What a family's LoRA converter returns: the state dict diffusers' `load_lora_weights` takes, and the
    modules it could not convert, each with the reason (reported as not applied)."""

    state: dict[str, Any]
    skipped: tuple[str, ...] = ()


@dataclass(frozen=True)
class LoraFacts:
    """How the family's LoRAs are named and loaded.

    `kohya_text_encoders`: (role, kohya module prefix) per text encoder, e.g. (text_encoder, "lora_te1_").
    `kohya_unet_names`: "diffusers" or "ldm" (sd-scripts names SDXL's UNet modules by LDM keys).
    `base_model_version` / `metadata`: the `ss_*` fields sd-scripts writes for the family.
    `convert`: `module:function` turning a state dict into what diffusers' `load_lora_weights` takes
    (None: diffusers converts it itself, as for the SD families)."""

    kohya_text_encoders: tuple[tuple[Role, str], ...] = ()
    kohya_unet_names: str = "diffusers"
    base_model_version: str | None = None
    metadata: Mapping[str, str] = field(default_factory=frozen)
    convert: str | None = None

    def converter(self) -> Callable[[dict[str, Any]], dict[str, Any] | LoraConversion] | None:
        return None if self.convert is None else _resolve(self.convert)


@dataclass(frozen=True)
class EmbeddingFormat:
    """A textual-inversion file with one tensor per text encoder (SDXL: `clip_l`, `clip_g`)."""

    keys: tuple[tuple[Role, str], ...]


@dataclass(frozen=True)
class BlockGroup:
    """A run of the denoiser's blocks as per-block mergers name them: A1111's MBW `IN04`, `M00`, `OUT11`;
    supermerger's `D00`..`D18`, `S00`..`S37` for FLUX's double and single blocks.

    `key_prefix` is the single-file key start (or starts) under the denoiser's checkpoint prefix
    (`input_blocks.`); a numbered group takes the block index from the key, an unnumbered one is one block,
    named `name` + "00" (A1111's `M00`) unless `alone` names it (supermerger's FLUX `IN`, `OUT`)."""

    name: str
    key_prefix: str | tuple[str, ...]
    numbered: bool = True
    alone: str | None = None

    def block(self, rest: str) -> str | None:
        """The block name of a key whose part after the denoiser prefix is `rest` (None: not in this group)."""
        if not rest.startswith(self.key_prefix):
            return None
        if not self.numbered:
            return self.alone if self.alone is not None else f"{self.name}00"
        prefixes = (self.key_prefix,) if isinstance(self.key_prefix, str) else self.key_prefix
        start = next(p for p in prefixes if rest.startswith(p))
        index = rest[len(start) :].split(".", 1)[0]
        return f"{self.name}{int(index):02d}" if index.isdigit() else None


@dataclass(frozen=True)
class SecondPass:
    """How a second pass (hires fix, img2img, the refiner hand-off) runs on the family.

    `latent_upscale`: the latents survive resampling (A1111's "Latent" upscalers); False for flow/DiT families,
    whose latents do not, so only pixel-space upscalers are offered. `img2img`: the diffusers image-to-image
    pipeline over the same components (None: no img2img here yet). `handoff`: its pipelines take diffusers'
    `denoising_end` (txt2img) and `denoising_start` (img2img), so a model of the same latent space can finish
    what this one started at A1111's "Refiner switch at" (the SDXL pipelines do; SD1/SD2's do not).
    """

    latent_upscale: bool = True
    img2img: PipelineSpec | None = None
    handoff: bool = False

    def why_no_latent_upscale(self, label: str) -> str:
        return (
            f"{label} latents do not survive latent upscaling (a flow/DiT family): choose a pixel-space upscaler "
            "(None, Lanczos, Nearest or an upscaler model)"
        )


@dataclass(frozen=True)
class FixtureSpec:
    """Tiny random models of the family, for tests and the tiny benchmark.

    `writer`: `module:function(root, description) -> list[FixtureFile]`, imported when fixtures are written.
    The rest is data the shared UNet-family writer (webui.testing.tiny) reads: the tiny UNet config on top
    of the shared tiny base, the VAE's `force_upcast`, the prediction type the files hold, which text
    encoders are written as separate files and in which layout ("hf": `text_model.*`, "hf5": transformers 5
    names, "ldm": the checkpoint's own prefix and layout), extra markers and metadata in the single file,
    an A1111 `.yaml` beside it, a legacy `.ckpt` copy, a second VAE, LoRAs and embeddings.
    """

    writer: str
    unet: Mapping[str, Any] = field(default_factory=frozen)
    vae_force_upcast: bool = False
    prediction: Prediction = Prediction.EPSILON
    text_encoder_files: tuple[tuple[Role, str], ...] = ()
    checkpoint_markers: tuple[str, ...] = ()
    checkpoint_metadata: Mapping[str, str] = field(default_factory=frozen)
    checkpoint_yaml: str | None = None
    pickle: bool = False
    alt_vae: bool = False
    loras: bool = False
    unet_only_lora: bool = False

    def write(self, root: Any, description: FamilyDescription) -> list[Any]:
        return _resolve(self.writer)(root, description)


@dataclass(frozen=True)
class BenchSpec:
    """What `python -m webui bench` runs on the family: `tiny` (its fixtures), `small` (config overrides of a
    scaled-down model; None: not run), `full` (the real-size model from the bundled configs)."""

    tiny: bool = False
    small: Mapping[str, Mapping[str, Any]] | None = None
    full: bool = False


@dataclass(frozen=True)
class FamilyDescription:
    """Everything one model family means to the studio. `id` is the value written to JSON and infotext
    (`"sdxl"`), `member` the `Family` enum member's name, `label` what users read. The registry
    (webui.families.registry) holds one per family; the rest of the code asks it, never names a family."""

    id: str
    member: str
    label: str
    supported: bool
    roles: tuple[RoleSpec, ...] = ()
    latent: LatentFormat | None = None
    unet: UnetFacts | None = None
    recognition: Recognition = field(default_factory=Recognition)
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    conditioning: ClipChunks | PipelineEncoding | None = None
    defaults: Defaults = field(default_factory=lambda: Defaults(sizes=((512, 512),)))
    variants: tuple[Variant, ...] = ()
    denoiser_loader: DenoiserLoader | None = None
    half_dtype: str | None = None  # on CUDA/MPS in auto precision: "bfloat16" where fp16 overflows (FLUX.1)
    pipeline: PipelineSpec | None = None
    txt2img: bool = True  # False: the model refines an existing image (the SDXL refiner)
    lora: LoraFacts = field(default_factory=LoraFacts)
    embedding: EmbeddingFormat | None = None
    second_pass: SecondPass = field(default_factory=SecondPass)
    merge_blocks: tuple[BlockGroup, ...] = ()
    unet_variants: tuple[UnetVariant, ...] = ()
    fixtures: FixtureSpec | None = None
    bench: BenchSpec | None = None

    def variant(self, name: str | None) -> Variant | None:
        """The variant called `name` (None, or a family without variants: None)."""
        return next((v for v in self.variants if v.name == name), None)

    def variant_of(self, keys: Mapping[str, Any]) -> Variant | None:
        """The first variant whose key rules hold for the denoiser's `keys` (prefix stripped); variants that only
        names tell apart (`refines`) are left to `refined`."""
        return next((v for v in self.variants if v.refines is None and v.matches(keys)), None)

    def refined(self, variant: str | None, names: tuple[str, ...]) -> str | None:
        """`variant`, or the variant refining it whose name hints one of `names` holds (lower-cased substrings)."""
        lowered = [name.lower() for name in names if name]
        for candidate in self.variants:
            if candidate.refines == variant and any(h in n for h in candidate.name_hints for n in lowered):
                return candidate.name
        return variant

    def defaults_for(self, variant: str | None) -> Defaults:
        found = self.variant(variant)
        return found.defaults if found is not None and found.defaults is not None else self.defaults

    def role(self, role: Role) -> RoleSpec:
        for spec in self.roles:
            if spec.role is role:
                return spec
        raise KeyError(f"{self.label} has no {role.value}")

    def has(self, role: Role) -> bool:
        return any(spec.role is role for spec in self.roles)

    def unet_variant(self, in_channels: int) -> UnetVariant | None:
        """The variant whose UNet takes `in_channels` input channels (None: the plain UNet, or none known)."""
        return next((v for v in self.unet_variants if v.in_channels == in_channels), None)

    @property
    def role_names(self) -> tuple[Role, ...]:
        return tuple(spec.role for spec in self.roles)

    @property
    def denoiser(self) -> RoleSpec:
        return next(spec for spec in self.roles if spec.part is Part.DENOISER)

    @property
    def text_encoders(self) -> tuple[RoleSpec, ...]:
        return tuple(spec for spec in self.roles if spec.part is Part.TEXT_ENCODER)

    def block_of(self, key: str) -> str | None:
        """The merge block (`IN04`, `M00`, `OUT11`; FLUX's `D05`) a single-file key of the denoiser is in; None for
        keys outside every block (time and label embeddings, the final norm: A1111's BASE) or the denoiser."""
        prefix = self.denoiser.checkpoint_prefix if self.roles else ""
        if not prefix or not key.startswith(prefix):
            return None
        key = key[len(prefix) :]
        for group in self.merge_blocks:
            if key.startswith(group.key_prefix):
                return group.block(key)
        return None

    @property
    def encoder_types(self) -> tuple[TextEncoderType, ...]:
        """The text-encoder architectures, in role order (optional ones included)."""
        return tuple(spec.encoder for spec in self.text_encoders if spec.encoder is not None)
