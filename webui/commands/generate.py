"""`python -m webui generate`: one txt2img (or img2img) request headless; also the request flags `compare` reuses."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webui.config import add_path_arguments
from webui.engine.limits import check_fields, check_lora_weights


def add_request_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags that describe a request. None means "not given": the infotext or the defaults decide."""
    parser.add_argument("--checkpoint", help="checkpoint name (as `models` lists it) or path")
    parser.add_argument(
        "--unet", help="UNet or transformer file (or checkpoint) to use instead of the checkpoint's, or alone"
    )
    parser.add_argument(
        "--text-encoder",
        action="append",
        help="text encoder file; repeat for a second and third one (e.g. CLIP-L and T5, or CLIP-L, CLIP-G and "
        "T5, in any order: each one's role is found from its weights)",
    )
    parser.add_argument("--vae", help="VAE file (or checkpoint) to use instead of the checkpoint's")
    parser.add_argument("--prompt")
    parser.add_argument("--negative")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--cfg", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--height", type=int)
    parser.add_argument(
        "--sampler", help="A1111 sampler name, e.g. 'Euler a'; default: the model family's (A1111's DPM++ 2M Karras)"
    )
    parser.add_argument("--schedule", help="Automatic, Karras, Exponential, Beta or SGM Uniform")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--batch-count", type=int)
    parser.add_argument("--clip-skip", type=int)
    parser.add_argument(
        "--guidance", type=float, help="distilled guidance of guidance-distilled models (Forge's Distilled CFG Scale)"
    )
    parser.add_argument(
        "--lora", action="append", metavar="NAME_OR_PATH:UNET_W[:TE_W]", help="add a LoRA to the stack (repeatable)"
    )
    parser.add_argument("--distilled", action="store_true", help="few-step preset for Turbo/LCM models")
    parser.add_argument("--infotext", metavar="TEXT_OR_PNG", help="reproduce an image: its PNG, or infotext")
    hires = parser.add_argument_group("Hires. fix (A1111's names)")
    hires.add_argument("--hires", dest="enable_hr", action="store_true", default=None, help="turn Hires. fix on")
    hires.add_argument("--hr-upscaler", help="Latent (bicubic), ..., None, Lanczos, Nearest, or an upscaler model")
    hires.add_argument("--hr-scale", type=float, help="upscale by (default 2)")
    hires.add_argument("--hr-resize-x", type=int, help="resize width to (0: from the scale)")
    hires.add_argument("--hr-resize-y", type=int, help="resize height to (0: from the scale)")
    hires.add_argument("--hr-steps", dest="hr_second_pass_steps", type=int, help="hires steps (0: as the first pass)")
    hires.add_argument("--denoising-strength", type=float, help="hires (or img2img) denoising strength, 0..1")
    hires.add_argument("--hr-sampler", dest="hr_sampler_name", help="hires sampler (default: the first pass's)")
    hires.add_argument("--hr-schedule", dest="hr_scheduler", help="hires schedule type (default: the first pass's)")
    hires.add_argument("--hr-prompt", help="hires prompt (default: the prompt)")
    hires.add_argument("--hr-negative", dest="hr_negative_prompt", help="hires negative prompt")
    hires.add_argument("--hr-cfg", type=float, help="hires CFG scale (default: the first pass's)")
    second = parser.add_argument_group("refiner and img2img")
    second.add_argument("--refiner", help="refiner checkpoint (name or path): finishes the denoising")
    second.add_argument("--refiner-switch-at", type=float, help="share of the steps before the refiner (0.8)")
    second.add_argument("--init-image", action="append", metavar="IMAGE", help="img2img input (repeat: one per image)")
    second.add_argument("--resize-mode", help="img2img: Just resize, Crop and resize, Resize and fill, or 0-3")



def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp16", "bf16", "fp32"])
    parser.add_argument("--attention-slicing", default="auto", choices=["auto", "on", "off"])
    parser.add_argument("--cpu-offload", action="store_true", help="keep models in RAM, move each to the GPU in turn")
    parser.add_argument(
        "--group-offload", action="store_true", help="keep models in RAM, move their layers to the GPU as they run"
    )
    parser.add_argument(
        "--fp8-storage",
        default="auto",
        choices=["auto", "on", "off"],
        help="store DiT transformer weights in fp8; auto: when bf16 would not fit the VRAM budget",
    )
    parser.add_argument("--ram-budget-gb", type=float, help="RAM for cached models (default: half the RAM)")
    parser.add_argument("--vram-budget-gb", type=float, help="VRAM for cached models (default: 80%% of the GPU)")


def engine_from_args(args: argparse.Namespace, library: Any) -> Any:
    from webui.engine.device import DevicePolicy
    from webui.wiring import build_engine

    policy = DevicePolicy(
        device=args.device,
        precision=args.precision,
        attention_slicing=args.attention_slicing,
        cpu_offload=args.cpu_offload,
        group_offload=args.group_offload,
        fp8_storage=args.fp8_storage,
    )
    budgets = {}
    if args.ram_budget_gb is not None:
        budgets["cpu"] = int(args.ram_budget_gb * 2**30)
    if args.vram_budget_gb is not None:
        budgets["cuda"] = int(args.vram_budget_gb * 2**30)
    return build_engine(library, args.outputs_dir, policy, budgets)


_ENCODER_FIELDS = ("text_encoder", "text_encoder_2", "text_encoder_3")  # --text-encoder, given 1-3 times
_FLAG_FIELDS = {
    "prompt": "prompt",
    "negative": "negative_prompt",
    "steps": "steps",
    "cfg": "cfg_scale",
    "seed": "seed",
    "width": "width",
    "height": "height",
    "sampler": "sampler",
    "schedule": "schedule",
    "batch_size": "batch_size",
    "batch_count": "batch_count",
    "clip_skip": "clip_skip",
    "guidance": "distilled_guidance",
}


def split_lora_flag(value: str) -> tuple[str, float, float]:
    """`NAME_OR_PATH[:UNET_W[:TE_W]]` -> (name, UNet weight, text-encoder weight); the TE weight defaults to the
    UNet's. Checked without the library (before torch loads); weights out of range name the flag."""
    parts = value.split(":")
    weights: list[float] = []
    while len(parts) > 1 and len(weights) < 2:
        try:
            weights.insert(0, float(parts[-1]))
        except ValueError:
            break
        parts.pop()
    unet_weight = weights[0] if weights else 1.0
    te_weight = weights[1] if len(weights) > 1 else unet_weight
    name = ":".join(parts)
    if not name:
        raise ValueError(f"--lora {value!r}: no LoRA named; use NAME_OR_PATH:UNET_W[:TE_W]")
    check_lora_weights(f"--lora {name}", unet_weight, te_weight)
    return name, unet_weight, te_weight


def check_request_flags(args: argparse.Namespace) -> None:
    """The request flags' values, checked before torch and diffusers are imported (ValueError names the flag)."""
    given = {name: getattr(args, flag) for flag, name in _FLAG_FIELDS.items() if getattr(args, flag, None) is not None}
    try:
        check_fields(given)
    except ValueError as error:
        field, _, rest = str(error).partition(":")
        flag = next((f for f, name in _FLAG_FIELDS.items() if name == field), field)
        raise ValueError(f"--{flag.replace('_', '-')}:{rest}") from None
    for value in getattr(args, "lora", None) or []:
        split_lora_flag(value)


@dataclass
class ResolvedRequest:
    """A request built from the flags, with what the user should hear about it: `notes` (which of several files
    a name picked) and `missing` (LoRAs named by --lora that the library does not have: not applied)."""

    request: Any
    notes: list[str] = dataclasses.field(default_factory=list)
    missing: list[Any] = dataclasses.field(default_factory=list)


def _resolve(library: Any, value: str | None, kind: Any, notes: list[str]) -> Path | None:
    """A path as given, or a name the library knows (file name without extension, or its relative path); a name
    several files hold picks the .safetensors one, and a note says which."""
    if value is None:
        return None
    path = Path(value)
    if path.exists():
        return path
    found = library.matches(value, kind)
    if len(found) > 1:
        names = ", ".join(entry.path.name for entry in found)
        notes.append(
            f"{value!r} names {len(found)} files ({names}); using {found[0].path.name} "
            "(give the file name with its extension to choose)"
        )
    return found[0].path


def parse_lora_flag(value: str, library: Any, notes: list[str] | None = None) -> Any:
    """The LoraSpec `--lora VALUE` names; ModelNotFoundError if the library has no such LoRA."""
    from webui.engine.lora import LoraSpec
    from webui.models.kinds import Kind

    name, unet_weight, te_weight = split_lora_flag(value)
    path = _resolve(library, name, Kind.LORA, notes if notes is not None else [])
    return LoraSpec(path, unet_weight=unet_weight, te_weight=te_weight)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")  # the formats this studio (and A1111) write infotext into


def _infotext_of(value: str) -> str:
    """--infotext's value: an image's infotext (PNG `parameters`, JPEG/WebP EXIF) or infotext text itself.
    ValueError naming the flag for an image path that is not there or carries none, so a mistyped path never
    becomes the prompt."""
    path = Path(value).expanduser()
    if "\n" in value or path.suffix.lower() not in IMAGE_SUFFIXES:
        return value
    if not path.is_file():
        raise ValueError(f"infotext: {value}: no such image file; give an image's path, or the infotext text itself")
    from webui.engine.image_metadata import read_image_metadata
    from webui.models.files import ModelFileError, open_regular

    try:
        with open_regular(path) as handle:
            text = read_image_metadata(handle).parameters
    except ModelFileError as error:
        raise ValueError(f"infotext: {error.problem}") from None
    except (OSError, SyntaxError, ValueError, EOFError):  # PIL's ways to say "broken"
        raise ValueError(f"infotext: {path} is not an image file PIL can read") from None
    if not text:
        raise ValueError(f"infotext: {path} has no A1111 'parameters' text")
    return text


def request_from_args(args: argparse.Namespace, library: Any) -> Any:
    """The GenerationRequest the flags describe (see `resolve_request`)."""
    return resolve_request(args, library).request


def _family_of(library: Any, path: Path | None) -> Any:
    try:
        return library.find(path).family if path is not None else None
    except LookupError:
        return None  # a file outside the library: the first family's defaults


def resolve_request(args: argparse.Namespace, library: Any) -> ResolvedRequest:
    """Defaults (the model family's sampler and schedule), then the infotext (if any), then the flags actually
    given, then the distilled preset. A --lora the library lacks is not applied and is reported, as a missing
    `<lora:…>` tag is."""
    from webui.engine.lora import LoraReport
    from webui.engine.pipelines import ModelChoice
    from webui.engine.reproduce import build_request, family_defaults, request_from_infotext
    from webui.engine.request import GenerationRequest
    from webui.engine.samplers import DISTILLED_PRESET, default_sampling
    from webui.engine.second_pass import RESIZE_MODES, SECOND_PASS_FIELDS, Img2Img
    from webui.models.kinds import Kind

    resolved = ResolvedRequest(None)
    notes = resolved.notes
    values: dict[str, Any] = {}
    model: dict[str, Any] = {}
    if args.infotext:
        reproduction = request_from_infotext(_infotext_of(args.infotext), library)
        if reproduction.missing and not args.checkpoint:
            raise ValueError(f"infotext: not in the library: {', '.join(reproduction.missing)}")
        fields = {f.name for f in dataclasses.fields(GenerationRequest)} | set(SECOND_PASS_FIELDS)
        values.update({k: v for k, v in reproduction.values.items() if k in fields})
        model = {k: reproduction.values.get(k) for k in ("checkpoint", "unet", "vae", *_ENCODER_FIELDS)}
    if args.distilled:
        values.update(DISTILLED_PRESET.request_fields())
    flags = {field: getattr(args, flag) for flag, field in _FLAG_FIELDS.items()}
    flags |= {name: getattr(args, name, None) for name in SECOND_PASS_FIELDS if name not in ("refiner_checkpoint",)}
    values.update({field: value for field, value in flags.items() if value is not None})
    if args.refiner:
        values["refiner_checkpoint"] = _resolve(library, args.refiner, Kind.CHECKPOINT, notes)
    te = [_resolve(library, v, Kind.TEXT_ENCODER, notes) for v in args.text_encoder or []]
    if len(te) > len(_ENCODER_FIELDS):
        raise ValueError(f"--text-encoder: given {len(te)} times; a model takes at most {len(_ENCODER_FIELDS)}")
    given = {
        "checkpoint": _resolve(library, args.checkpoint, Kind.CHECKPOINT, notes),
        "unet": _resolve(library, args.unet, None, notes),
        "vae": _resolve(library, args.vae, None, notes),
        **dict(zip(_ENCODER_FIELDS, te + [None] * len(_ENCODER_FIELDS), strict=False)),
    }
    model.update({k: v for k, v in given.items() if v is not None})
    loras = list(values.pop("loras", ()))
    for value in args.lora or []:
        try:
            loras.append(parse_lora_flag(value, library, notes))
        except LookupError as error:
            resolved.missing.append(LoraReport(split_lora_flag(value)[0], error=str(error)))
    choice = ModelChoice(**{k: model.get(k) for k in given})
    if not args.infotext:  # what the model's family starts from (FLUX.1: CFG 1, its steps), under the flags
        values = {**family_defaults(choice), **values}
    if "sampler" not in values:
        family = _family_of(library, model.get("unet") or model.get("checkpoint"))
        values["sampler"], default_schedule = default_sampling(family)
        values.setdefault("schedule", default_schedule)
    values["loras"] = tuple(loras)
    request = build_request(choice, values)
    if args.init_image:
        images = tuple(_open_image(path) for path in args.init_image)
        strength = 0.75 if args.denoising_strength is None else args.denoising_strength
        img2img = Img2Img(images, resize_mode=args.resize_mode or RESIZE_MODES[0], denoising_strength=strength)
        request = dataclasses.replace(request, img2img=img2img, hires=None)
    resolved.request = request
    return resolved


def _open_image(path: str) -> Any:
    """An --init-image file as RGB; ValueError naming the flag for anything PIL cannot read (a FIFO or device is
    refused without blocking, an image beyond PIL's decompression-bomb limit is refused before decoding)."""
    from PIL import Image, UnidentifiedImageError

    from webui.models.files import ModelFileError, open_regular

    try:
        with open_regular(path) as handle, Image.open(handle) as image:
            image.load()
            return image.convert("RGB")
    except ModelFileError as error:
        raise ValueError(f"--init-image {path}: {error.problem}") from None
    except Image.DecompressionBombError:
        raise ValueError(f"--init-image {path}: too many pixels for an input image; resize it first") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):  # PIL's ways to say "broken"
        raise ValueError(f"--init-image {path}: not an image file PIL can read") from None


def lora_problems(reports: Any) -> list[str]:
    """One line per LoRA that was not applied, or applied only in part (what the user must hear about)."""
    from webui.engine.lora import lora_warnings

    return lora_warnings(reports)


class StepBar:
    """The progress bar on stderr (tqdm): steps of every batch, with the time left; off when `enabled` is False."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bar: Any = None

    def __call__(self, progress: Any) -> None:
        if not self.enabled:
            return
        done = progress.batch * progress.steps + progress.step
        if self._bar is None:  # at the first step: loading the model is not a step (its time would skew the rate)
            from tqdm import tqdm

            total = progress.steps * progress.batches
            self._bar = tqdm(total=total, initial=done, desc="txt2img", unit="step", file=sys.stderr)
        self._bar.n = done
        if progress.batches > 1:
            self._bar.set_postfix_str(f"batch {progress.batch + 1}/{progress.batches}", refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def cmd_generate(args: argparse.Namespace) -> int:
    from webui.cli import quiet_libraries, require_models_dir

    check_request_flags(args)  # before the libraries load: a typo is answered at once
    require_models_dir(args.models_dir)
    from webui.models.library import open_library

    quiet_libraries()
    library = open_library(args.models_dir, args.extra_model_paths)
    library.scan()
    resolved = resolve_request(args, library)
    for note in resolved.notes:
        print(f"note: {note}", file=sys.stderr)
    engine = engine_from_args(args, library)
    bar = StepBar(enabled=not args.json)
    try:
        result = engine.generate(resolved.request, progress=bar)
    finally:
        bar.close()
    reports = (*resolved.missing, *result.loras)
    for problem in lora_problems(reports):
        print(f"warning: {problem}", file=sys.stderr)
    if args.json:
        data = result.to_json()
        data["loras"] = [report.to_json() for report in reports]
        json.dump(data, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for image in result.images:
            print(image.path)
        for report in reports:
            if not report.error:
                print(f"LoRA {report.name}: {report.applied} modules patched, {report.unapplied} matched nothing")
        print(f"{result.timings['total']:.2f} s")
    return 0


def register(sub: Any) -> None:
    parser = sub.add_parser("generate", help="run one txt2img (or img2img) request headless")
    add_path_arguments(parser)
    add_request_arguments(parser)
    add_device_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print paths, seeds, infotext and timings as JSON")
    parser.set_defaults(func=cmd_generate)
