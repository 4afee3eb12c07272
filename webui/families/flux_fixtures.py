"""Tiny random FLUX.1 models (TINY_SPEC.md) written in every layout people keep, for tests and the tiny bench.

Interface widths stay real: 16 latent channels packed 2×2 into `img_in` (64), CLIP-L 768 into `vector_in`,
T5 4096 into `txt_in`, 128-wide attention heads with rope axes (16, 56, 56). Everything else is tiny: two
heads (width 256), one double and two single blocks, a one-layer T5 with two heads and a 32-wide gated MLP,
a four-level (8x) 16-channel VAE without quant convs (as the `ae`). Transformer and T5 weights are rounded to
fp8-e4m3fn-exact values, so the bf16, fp16, fp8 and scaled-fp8 files (scales are powers of two) hold the
same numbers and give the same pixels; GGUF Q8_0 files are compared with their own dequantised weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from webui.families import Family, FamilyDescription, family_of
from webui.families.flux_keys import ROPE_AXES, diffusers_to_bfl
from webui.models.kinds import Kind, Role, TextEncoderType

FP8 = torch.float8_e4m3fn
HEADS = 2
DOUBLE_BLOCKS, SINGLE_BLOCKS = 1, 2
SCALED_FP8_SCALE = 2.0**-3  # a power of two: weight / scale is exact in fp8
VAE_CHANNELS = (32, 32, 64, 64)  # four levels: the real ae's 8x latent factor
T5_DIMS = {"num_layers": 1, "num_heads": 2, "d_kv": 64, "d_ff": 32}
T5_TOKENIZER_DIR = "tokenizers/t5"
VARIANTS = ("dev", "schnell")


def _round_fp8(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(param.to(FP8).to(torch.float32))


def build_transformer(variant: str, seed: int = 0) -> torch.nn.Module:
    """The tiny FLUX.1 transformer; `variant` "dev" has the guidance embedder, "schnell" not."""
    from diffusers import FluxTransformer2DModel

    from webui.testing.tiny_models import _build, _component_seed

    def make() -> torch.nn.Module:
        return FluxTransformer2DModel(
            patch_size=1,
            in_channels=64,
            num_layers=DOUBLE_BLOCKS,
            num_single_layers=SINGLE_BLOCKS,
            attention_head_dim=128,
            num_attention_heads=HEADS,
            joint_attention_dim=4096,
            pooled_projection_dim=768,
            guidance_embeds=variant == "dev",
            axes_dims_rope=ROPE_AXES,
        )

    model = _build(make, _component_seed(Family.FLUX, seed, f"transformer-{variant}"))
    _round_fp8(model)
    return model


def build_t5(seed: int = 0) -> torch.nn.Module:
    from transformers import T5Config, T5EncoderModel

    from webui.testing.tiny_models import _build, _component_seed
    from webui.testing.tiny_t5_tokenizer import tiny_t5_vocab_size

    config = T5Config(
        vocab_size=tiny_t5_vocab_size(),
        d_model=4096,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
        use_cache=False,
        **T5_DIMS,
    )
    model = _build(lambda: T5EncoderModel(config), _component_seed(Family.FLUX, seed, "t5"))
    _round_fp8(model)
    return model


def build_vae(seed: int = 0) -> torch.nn.Module:
    from diffusers import AutoencoderKL

    from webui.testing.tiny_models import _build, _component_seed

    latent = Family.FLUX.description.latent
    return _build(
        lambda: AutoencoderKL(
            latent_channels=16,
            down_block_types=("DownEncoderBlock2D",) * len(VAE_CHANNELS),
            up_block_types=("UpDecoderBlock2D",) * len(VAE_CHANNELS),
            block_out_channels=VAE_CHANNELS,
            layers_per_block=1,
            norm_num_groups=32,
            sample_size=32,
            scaling_factor=latent.scaling_factor,
            shift_factor=latent.shift_factor,
            use_quant_conv=False,
            use_post_quant_conv=False,
        ),
        _component_seed(Family.FLUX, seed, "vae"),
    )


def build_components(variant: str = "dev", seed: int = 0) -> dict[str, Any]:
    """FluxPipeline components (diffusers' names); the files `write_flux_family` writes hold seed 0's."""
    import diffusers
    from transformers import CLIPTextModel

    from webui.families.encoders import ENCODERS
    from webui.models.derive import bundled_config
    from webui.testing.tiny_models import _build, _component_seed, text_encoder_config
    from webui.testing.tiny_t5_tokenizer import build_tiny_t5_tokenizer
    from webui.testing.tiny_tokenizer import build_tiny_tokenizer

    scheduler_name = Family.FLUX.description.variant(variant).scheduler
    config = bundled_config(Family.FLUX, scheduler_name)
    scheduler = getattr(diffusers, config.pop("_class_name")).from_config(config)
    clip_config = text_encoder_config(TextEncoderType.CLIP_L)
    return {
        "transformer": build_transformer(variant, seed),
        "vae": build_vae(seed),
        "text_encoder": _build(lambda: CLIPTextModel(clip_config), _component_seed(Family.FLUX, seed, "clip")),
        "tokenizer": build_tiny_tokenizer(ENCODERS[TextEncoderType.CLIP_L].pad_token),
        "text_encoder_2": build_t5(seed),
        "tokenizer_2": build_tiny_t5_tokenizer(),
        "scheduler": scheduler,
    }


def pipeline(components: dict[str, Any]) -> Any:
    """Plain diffusers FluxPipeline over `components` (the reference the engine is compared with)."""
    pipe = Family.FLUX.description.pipeline.create(components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --- layouts --------------------------------------------------------------------------------------


def clip_file_state(clip: torch.nn.Module) -> dict[str, torch.Tensor]:
    """ComfyUI's clip_l.safetensors: Hugging Face names under `text_model.`."""
    return {k if k.startswith("text_projection") else f"text_model.{k}": v for k, v in clip.state_dict().items()}


def t5_file_state(t5: torch.nn.Module) -> dict[str, torch.Tensor]:
    """t5xxl_fp16.safetensors: transformers' names, the tied `encoder.embed_tokens.weight` left out."""
    return {k: v for k, v in t5.state_dict().items() if k != "encoder.embed_tokens.weight"}


def all_in_one_state(components: dict[str, Any]) -> dict[str, torch.Tensor]:
    """ComfyUI's all-in-one file of `components`: bf16 transformer (BFL names) and T5, fp16 CLIP, fp32 VAE, each
    at its checkpoint prefix (the text encoders under `transformer.`, as ComfyUI keeps them)."""
    from webui.models.ldm_writer import vae_to_ldm

    description = Family.FLUX.description
    vae = components["vae"]
    parts = (
        (Role.TRANSFORMER, "", diffusers_to_bfl(components["transformer"].state_dict()), torch.bfloat16),
        (Role.TEXT_ENCODER, "transformer.", clip_file_state(components["text_encoder"]), torch.float16),
        (Role.TEXT_ENCODER_2, "transformer.", t5_file_state(components["text_encoder_2"]), torch.bfloat16),
        (Role.VAE, "", vae_to_ldm(vae.state_dict(), vae.config), torch.float32),
    )
    out = {}
    for role, inner, state, dtype in parts:
        prefix = description.role(role).checkpoint_prefix + inner
        out |= {prefix + key: value.to(dtype) for key, value in state.items()}
    return out


def scaled_fp8(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ComfyUI's scaled fp8: every matrix stored as fp8(weight / scale) with its `scale_weight`, plus the marker."""
    out: dict[str, torch.Tensor] = {"scaled_fp8": torch.empty(0, dtype=FP8)}
    for key, value in state.items():
        if value.ndim == 2 and key.endswith(".weight"):
            out[key] = (value.float() / SCALED_FP8_SCALE).to(FP8)
            out[key.removesuffix(".weight") + ".scale_weight"] = torch.tensor(SCALED_FP8_SCALE)
        else:
            out[key] = value.to(torch.bfloat16)
    return out


def gguf_quantizable(name: str, shape: tuple[int, ...]) -> bool:
    """What city96's converter quantises: matrices whose rows split into 32-value blocks (not norms, biases)."""
    return len(shape) == 2 and shape[1] % 32 == 0 and name.endswith(".weight")


def write_gguf(path: Path, state: dict[str, torch.Tensor], arch: str) -> None:
    """A GGUF file (gguf package) with matrices in Q8_0 and the rest in F32, names as given."""
    import gguf

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), arch=arch)
    for name, tensor in state.items():
        data = tensor.detach().float().numpy()
        if gguf_quantizable(name, tuple(tensor.shape)):
            quantised = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(name, quantised, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, np.ascontiguousarray(data, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


T5_GGUF_NAMES = {
    "layer.0.SelfAttention.q": "attn_q",
    "layer.0.SelfAttention.k": "attn_k",
    "layer.0.SelfAttention.v": "attn_v",
    "layer.0.SelfAttention.o": "attn_o",
    "layer.0.SelfAttention.relative_attention_bias": "attn_rel_b",
    "layer.0.layer_norm": "attn_norm",
    "layer.1.DenseReluDense.wi_0": "ffn_gate",
    "layer.1.DenseReluDense.wi_1": "ffn_up",
    "layer.1.DenseReluDense.wo": "ffn_down",
    "layer.1.layer_norm": "ffn_norm",
}


def t5_gguf_state(t5: torch.nn.Module) -> dict[str, torch.Tensor]:
    """T5 in llama.cpp's names, as city96's t5 GGUF files have them."""
    out = {}
    for key, value in t5_file_state(t5).items():
        if key == "shared.weight":
            out["token_embd.weight"] = value
        elif key == "encoder.final_layer_norm.weight":
            out["enc.output_norm.weight"] = value
        else:
            _, _, index, rest = key.split(".", 3)
            out[f"enc.blk.{index}.{T5_GGUF_NAMES[rest.removesuffix('.weight')]}.weight"] = value
    return out


def write_flux_family(root: Path, description: FamilyDescription) -> list[Any]:
    """Every FLUX.1 layout of the tiny models under `root` (see the module docstring); returns FixtureFiles."""
    from webui.models.family_tables import first_family_with_encoder
    from webui.models.ldm_writer import save_single_file, vae_to_ldm
    from webui.testing.tiny import FixtureFile, stem
    from webui.testing.tiny_t5_tokenizer import write_t5_tokenizer

    family = family_of(description)
    name = stem(family)
    files: list[FixtureFile] = []

    def add(relative: str, kind: Kind, layout: str, encoder: TextEncoderType | None = None) -> Path:
        # a lone CLIP-L is listed as the first family that takes it (FLUX.1 among its compatible ones)
        owner = first_family_with_encoder(encoder) if encoder is TextEncoderType.CLIP_L else family
        files.append(FixtureFile(relative, kind, owner, layout, encoder))
        return root / relative

    def tensors(relative: str, kind: Kind, layout: str, state: dict, dtype: Any, **kw: Any) -> None:
        save_single_file(state, add(relative, kind, layout, kw.get("encoder")), dtype=dtype)

    write_t5_tokenizer(root / T5_TOKENIZER_DIR)
    dev = build_components("dev")
    transformer_bfl = diffusers_to_bfl(dev["transformer"].state_dict())
    dm = "diffusion_models"
    tensors(f"{dm}/{name}-dev.safetensors", Kind.UNET, "transformer-bfl", transformer_bfl, torch.bfloat16)
    prefixed = {f"model.diffusion_model.{k}": v for k, v in transformer_bfl.items()}
    tensors(f"{dm}/{name}-dev-prefixed.safetensors", Kind.UNET, "transformer-bfl-prefixed", prefixed, torch.float16)
    diffusers_names = dev["transformer"].state_dict()
    tensors(
        f"{dm}/{name}-dev-diffusers.safetensors", Kind.UNET, "transformer-diffusers", diffusers_names, torch.bfloat16
    )
    tensors(f"{dm}/{name}-dev-fp8-e4m3fn.safetensors", Kind.UNET, "transformer-fp8", transformer_bfl, FP8)
    scaled = scaled_fp8(transformer_bfl)
    tensors(f"{dm}/{name}-dev-fp8-scaled.safetensors", Kind.UNET, "transformer-scaled-fp8", scaled, None)
    write_gguf(add(f"{dm}/{name}-dev-Q8_0.gguf", Kind.UNET, "transformer-gguf"), transformer_bfl, "flux")
    schnell = build_transformer("schnell")
    tensors(
        f"{dm}/{name}-schnell.safetensors",
        Kind.UNET,
        "transformer-bfl",
        diffusers_to_bfl(schnell.state_dict()),
        torch.bfloat16,
    )

    clip = clip_file_state(dev["text_encoder"])
    t5 = t5_file_state(dev["text_encoder_2"])
    te, clip_l, t5xxl = "text_encoders", TextEncoderType.CLIP_L, TextEncoderType.T5
    tensors(f"{te}/{name}-clip-l.safetensors", Kind.TEXT_ENCODER, "clip-l", clip, torch.float16, encoder=clip_l)
    tensors(f"{te}/{name}-t5xxl-fp16.safetensors", Kind.TEXT_ENCODER, "t5-fp16", t5, torch.float16, encoder=t5xxl)
    tensors(
        f"{te}/{name}-t5xxl-fp8-e4m3fn-scaled.safetensors",
        Kind.TEXT_ENCODER,
        "t5-scaled-fp8",
        scaled_fp8(t5),
        None,
        encoder=t5xxl,
    )
    write_gguf(
        add(f"{te}/{name}-t5xxl-Q8_0.gguf", Kind.TEXT_ENCODER, "t5-gguf", t5xxl),
        t5_gguf_state(dev["text_encoder_2"]),
        "t5encoder",
    )
    vae = dev["vae"]
    ae = vae_to_ldm(vae.state_dict(), vae.config)
    tensors(f"vae/{name}-ae.safetensors", Kind.VAE, "vae-ldm", ae, None)

    aio = all_in_one_state(dev)
    tensors(f"checkpoints/{name}-dev-aio.safetensors", Kind.CHECKPOINT, "all-in-one", aio, None)
    folder = add(f"checkpoints/{name}-dev-diffusers", Kind.CHECKPOINT, "diffusers-folder")
    pipeline(dev).save_pretrained(folder, safe_serialization=True)
    if description.fixtures is not None and description.fixtures.loras:
        from webui.families.flux_lora_fixtures import write_loras

        files += write_loras(root, family, dev["transformer"], dev["text_encoder"])
    return files
