"""Files "from the wild" (issue 13) rebuilt from the tiny fixtures, and the maths each file itself defines.

Every builder writes the smallest file that shows one case users hit with downloads; the `*_delta` / `*_weight`
functions compute what a layer must become from the file's tensors alone, as the formats define it (LyCORIS'
`lycoris/modules/*.py`, A1111's `extensions-builtin/Lora/network_*.py`), independently of webui's loader.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from webui.families import Family
from webui.models.ldm_writer import unet_ldm_key_map

# What kohya's networks.lora wraps in a UNet's attention blocks, and in CLIP.
_ATTENTION_LEAVES = ("proj_in", "proj_out", "to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2")
_TE_LEAVES = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
_LOCON_LEAVES = ("conv1", "conv2")  # LoCon adds the resnets' 3x3 convolutions


@dataclass(frozen=True)
class Layer:
    """A layer a file patches: its kohya module name, and where it is in the pipeline."""

    name: str
    component: str
    path: str
    weight: torch.Tensor  # the base weight (a copy)


def kohya_layers(components: dict, family: Family, locon: bool = False) -> list[Layer]:
    """The layers kohya names in a tiny pipeline: attention (and, with `locon`, resnet convs) and CLIP layers."""
    description = family.description
    unet = components["unet"]
    leaves = _ATTENTION_LEAVES + (_LOCON_LEAVES if locon else ())
    found = [
        (path, module)
        for path, module in unet.named_modules()
        if isinstance(module, torch.nn.Linear | torch.nn.Conv2d)
        and path.endswith(leaves)
        and ("attentions." in path or (locon and "resnets." in path))
    ]
    names = {path: path for path, _ in found}
    if description.lora.kohya_unet_names == "ldm":
        mapping = unet_ldm_key_map(unet.config, [f"{path}.weight" for path, _ in found])
        names = {path: mapping[f"{path}.weight"].removesuffix(".weight") for path, _ in found}
    layers = [
        Layer("lora_unet_" + names[path].replace(".", "_"), "unet", path, module.weight.detach().clone())
        for path, module in found
    ]
    for role, prefix in description.lora.kohya_text_encoders:
        encoder = components[role.value]
        for path, module in encoder.named_modules():
            if isinstance(module, torch.nn.Linear) and path.endswith(_TE_LEAVES):
                named = path if path.startswith("text_model.") else f"text_model.{path}"
                weight = module.weight.detach().clone()
                layers.append(Layer(prefix + named.replace(".", "_"), role.value, path, weight))
    return layers


def _randn(generator: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(shape, generator=generator)


def _fp16(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.to(torch.float16) for key, value in state.items()}


def _strength(delta: torch.Tensor, weight: torch.Tensor, relative: float = 0.5) -> float:
    """The factor that makes a ΔW `relative` times as large as the weight it patches (so the image changes)."""
    return float(relative * weight.float().std() / delta.float().std().clamp_min(1e-12))


# -- the maths each format defines -------------------------------------------------------------------------


def _scale(parts: dict[str, torch.Tensor], rank: int | None) -> float:
    alpha = parts.get("alpha")
    return float(alpha) / rank if alpha is not None and rank else 1.0


def lora_delta(parts: dict[str, torch.Tensor], shape: torch.Size) -> torch.Tensor:
    """kohya LoRA / LoCon: up · down · alpha / rank."""
    down, up = parts["lora_down.weight"].float(), parts["lora_up.weight"].float()
    product = up.reshape(up.shape[0], -1) @ down.reshape(down.shape[0], -1)
    return (product * _scale(parts, down.shape[0])).reshape(shape)


def loha_delta(parts: dict[str, torch.Tensor], shape: torch.Size) -> torch.Tensor:
    """LyCORIS LoHa: (w1_a · w1_b) ⊙ (w2_a · w2_b) · alpha / rank."""
    w1 = parts["hada_w1_a"].float() @ parts["hada_w1_b"].float()
    w2 = parts["hada_w2_a"].float() @ parts["hada_w2_b"].float()
    return (w1 * w2 * _scale(parts, parts["hada_w1_b"].shape[0])).reshape(shape)


def lokr_delta(parts: dict[str, torch.Tensor], shape: torch.Size) -> torch.Tensor:
    """LyCORIS LoKr: w1 ⊗ w2 · alpha / rank, each factor whole or a product; no rank (both whole) means scale 1."""

    def factor(which: str) -> torch.Tensor:
        if f"lokr_{which}" in parts:
            return parts[f"lokr_{which}"].float()
        return parts[f"lokr_{which}_a"].float() @ parts[f"lokr_{which}_b"].float()

    rank = next((parts[p].shape[0] for p in ("lokr_w1_b", "lokr_w2_b") if p in parts), None)
    return (torch.kron(factor("w1"), factor("w2")) * _scale(parts, rank)).reshape(shape)


def dora_weight(parts: dict[str, torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
    """DoRA (LyCORIS `apply_weight_decompose`, `wd_on_out`): dora_scale · (W + ΔW) / ‖W + ΔW‖ per output channel."""
    merged = weight.float() + lora_delta(parts, weight.shape)
    norm = merged.reshape(merged.shape[0], -1).norm(dim=1).reshape(-1, *[1] * (merged.dim() - 1))
    return parts["dora_scale"].float().reshape(norm.shape) * merged / norm


# Which maths a module follows, by a part only that algorithm has.
_MATHS = {"lora_down.weight": lora_delta, "hada_w1_a": loha_delta, "lokr_w2": lokr_delta, "lokr_w2_a": lokr_delta}


def patched_weights(path: Path, layers: list[Layer]) -> dict[tuple[str, str], torch.Tensor]:
    """What each layer's weight must become under the file at `path`, computed from the file's own tensors."""
    state = load_file(path)
    out = {}
    for layer in layers:
        parts = {key[len(layer.name) + 1 :]: value for key, value in state.items() if key.startswith(layer.name + ".")}
        if not parts:
            continue
        if "dora_scale" in parts:
            out[(layer.component, layer.path)] = dora_weight(parts, layer.weight)
            continue
        maths = next(function for part, function in _MATHS.items() if part in parts)
        out[(layer.component, layer.path)] = layer.weight.float() + maths(parts, layer.weight.shape)
    return out


# -- builders ----------------------------------------------------------------------------------------------


def kohya_lora(layers: list[Layer], seed: int, rank: int = 4, alpha: float | None = 2.0) -> dict[str, torch.Tensor]:
    """A kohya LoRA over `layers` (LoCon on convolutions), fp16; no `alpha` keys when alpha is None."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for layer in layers:
        out, fan_in = layer.weight.shape[0], layer.weight[0].numel()
        down = _randn(generator, rank, fan_in) * fan_in**-0.5
        up = _randn(generator, out, rank)
        up *= _strength(up @ down * ((alpha or rank) / rank), layer.weight)
        state[f"{layer.name}.lora_down.weight"] = down.reshape(rank, *layer.weight.shape[1:])
        state[f"{layer.name}.lora_up.weight"] = up.reshape(out, rank, *[1] * (layer.weight.dim() - 2))
        if alpha is not None:
            state[f"{layer.name}.alpha"] = torch.tensor(alpha)
    return _fp16(state)


def loha(layers: list[Layer], seed: int, rank: int = 4, alpha: float = 2.0) -> dict[str, torch.Tensor]:
    """A LyCORIS LoHa (kohya names, `hada_w1_a`...`hada_w2_b` + alpha), fp16."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for layer in layers:
        out, fan_in = layer.weight.shape[0], layer.weight[0].numel()
        w1a, w1b = _randn(generator, out, rank), _randn(generator, rank, fan_in)
        w2a, w2b = _randn(generator, out, rank), _randn(generator, rank, fan_in)
        root = _strength((w1a @ w1b) * (w2a @ w2b) * alpha / rank, layer.weight) ** 0.5
        parts = {"hada_w1_a": w1a * root, "hada_w1_b": w1b, "hada_w2_a": w2a * root, "hada_w2_b": w2b}
        state.update({f"{layer.name}.{part}": value for part, value in parts.items()})
        state[f"{layer.name}.alpha"] = torch.tensor(alpha)
    return _fp16(state)


def _split(width: int) -> tuple[int, int]:
    """LyCORIS' `factorization` with factor 4 where it divides: (4, width / 4), else (1, width)."""
    return (4, width // 4) if width % 4 == 0 else (1, width)


def lokr(layers: list[Layer], seed: int, rank: int = 2, alpha: float = 4.0) -> dict[str, torch.Tensor]:
    """A LyCORIS LoKr over linear layers and 1x1 convs: every other module has w2 as a rank-`rank` product (scaled
    by alpha / rank), the others both factors whole (alpha written but, having no rank, not applied), fp16."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for number, layer in enumerate(layers):
        (a, b), (c, d) = _split(layer.weight.shape[0]), _split(layer.weight.shape[1])
        w1 = _randn(generator, a, c)
        if number % 2:
            w2a, w2b = _randn(generator, b, rank), _randn(generator, rank, d)
            w1 *= _strength(torch.kron(w1, w2a @ w2b) * alpha / rank, layer.weight)
            parts = {"lokr_w1": w1, "lokr_w2_a": w2a, "lokr_w2_b": w2b}
        else:
            w2 = _randn(generator, b, d)
            w1 *= _strength(torch.kron(w1, w2), layer.weight)
            parts = {"lokr_w1": w1, "lokr_w2": w2}
        state.update({f"{layer.name}.{part}": value for part, value in parts.items()})
        state[f"{layer.name}.alpha"] = torch.tensor(alpha)
    return _fp16(state)


def with_dora(lora: dict[str, torch.Tensor], layers: list[Layer], seed: int, on_output: bool = True) -> dict:
    """The LoRA plus a DoRA magnitude per module: ‖W + ΔW‖ per output channel (out, 1, ...) times noise, as LyCORIS
    writes it; `on_output=False` writes the older per-input-channel form (1, in, ...)."""
    generator = torch.Generator().manual_seed(seed)
    state = dict(lora)
    for layer in layers:
        parts = {k[len(layer.name) + 1 :]: v for k, v in lora.items() if k.startswith(layer.name + ".")}
        merged = layer.weight.float() + lora_delta(parts, layer.weight.shape)
        tail = [1] * (merged.dim() - 2)
        if on_output:
            norm = merged.reshape(merged.shape[0], -1).norm(dim=1).reshape(-1, 1, *tail)
        else:
            norm = merged.transpose(0, 1).reshape(merged.shape[1], -1).norm(dim=1).reshape(1, -1, *tail)
        state[f"{layer.name}.dora_scale"] = (norm * (1 + 0.3 * torch.randn(norm.shape, generator=generator))).half()
    return state


def padded_ranks(lora: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """kohya `resize_lora --dynamic_method` output: every other module padded from its rank to twice that rank
    with zeros, its alpha doubled, so alpha / rank and the image stay the same."""
    modules = sorted({key.rsplit(".lora_down.weight", 1)[0] for key in lora if key.endswith(".lora_down.weight")})
    state = dict(lora)
    for module in modules[1::2]:
        down, up = lora[f"{module}.lora_down.weight"], lora[f"{module}.lora_up.weight"]
        state[f"{module}.lora_down.weight"] = torch.cat([down, torch.zeros_like(down)], dim=0)
        state[f"{module}.lora_up.weight"] = torch.cat([up, torch.zeros_like(up)], dim=1)
        state[f"{module}.alpha"] = lora[f"{module}.alpha"] * 2
    return state


def save(state: dict[str, torch.Tensor], path: Path, family: Family | None = None) -> Path:
    """Write a LoRA the way sd-scripts does (safetensors with `ss_base_model_version` when a family is given)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"ss_base_model_version": family.description.lora.base_model_version} if family else None
    save_file({k: v.contiguous() for k, v in state.items()}, path, metadata=metadata)
    return path



def linked_models(root: Path, tiny_models_dir: Path, files: tuple[str, ...]) -> Path:
    """A models dir of its own holding links to some tiny fixtures (and the tokenizer), for files to add beside."""
    for relative in (*files, "tokenizers/clip"):
        link = root / relative
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(tiny_models_dir / relative, target_is_directory=(tiny_models_dir / relative).is_dir())
    for folder in ("checkpoints", "vae", "loras", "embeddings"):
        (root / folder).mkdir(exist_ok=True)
    return root


def variant_unet(components: dict, in_channels: int, seed: int) -> torch.nn.Module:
    """The tiny UNet grown to `in_channels` inputs as inpainting / instruct-pix2pix fine-tunes are: the base weights,
    and random weights for the extra input channels of conv_in (so what they are fed shows in the image)."""
    from diffusers import UNet2DConditionModel

    base = components["unet"]
    unet = UNet2DConditionModel.from_config({**base.config, "in_channels": in_channels}).eval()
    state = base.state_dict()
    weight = state["conv_in.weight"]
    extra = torch.randn((weight.shape[0], in_channels - weight.shape[1], *weight.shape[2:]),
                        generator=torch.Generator().manual_seed(seed)) * weight.std()  # fmt: skip
    state["conv_in.weight"] = torch.cat([weight, extra], dim=1)
    unet.load_state_dict(state)
    return unet


def write_checkpoint(
    path: Path,
    components: dict,
    family: Family,
    drop: tuple[str, ...] = (),
    dtype: torch.dtype | None = torch.float16,
) -> dict[str, torch.Tensor]:
    """A single-file checkpoint of `components` in the family's LDM layout, without the keys under `drop`."""
    from webui.models.ldm_writer import pipeline_to_ldm, save_single_file

    state = {k: v for k, v in pipeline_to_ldm(components, family).items() if not k.startswith(drop)}
    save_single_file(state, path, dtype=dtype)
    return state
