"""Tiny FLUX.1 LoRAs in each format trainers write (see flux_lora.py), with the module counts each must patch.

Every file patches the same BFL modules of the tiny transformer where its format allows, with random
rank-4 factors; `PATCHED` says how many diffusers modules each patches and how many of its modules must be
reported as not applied (T5, DoRA).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from webui.families import Family
from webui.models.kinds import Kind

RANK = 4
ALPHA = 2.0
# BFL module -> diffusers modules it becomes (qkv: 3; linear1: q, k, v and the MLP input)
MODULES = {
    "double_blocks.0.img_attn.qkv": 3,
    "double_blocks.0.txt_mlp.0": 1,
    "single_blocks.1.linear1": 4,
    "single_blocks.0.linear2": 1,
    "final_layer.adaLN_modulation.1": 1,
}
CLIP_MODULE = "text_model.encoder.layers.0.self_attn.q_proj"
T5_MODULE = "encoder_block_0_layer_0_SelfAttention_q"
XLABS_MODULES = {"qkv_lora1": 3, "qkv_lora2": 3, "proj_lora1": 1, "proj_lora2": 1}
PEFT_MODULES = (
    "transformer_blocks.0.attn.to_q",
    "transformer_blocks.0.attn.add_k_proj",
    "single_transformer_blocks.1.proj_mlp",
)
TRANSFORMER_PATCHES = sum(MODULES.values())
# layout -> (modules patched, modules reported as not applied)
PATCHED = {
    "kohya": (TRANSFORMER_PATCHES + 1, 1),  # + CLIP-L q_proj; the T5 module is not applied
    "comfyui": (TRANSFORMER_PATCHES, 0),
    "bfl-peft": (TRANSFORMER_PATCHES, 0),
    "xlabs": (sum(XLABS_MODULES.values()), 0),
    "peft": (len(PEFT_MODULES), 0),
    "dora": (TRANSFORMER_PATCHES - 3, 1),  # the DoRA module (a qkv: 3 diffusers modules) is not applied
}


def _shape(state: dict[str, torch.Tensor], module: str) -> tuple[int, int]:
    weight = state[f"{module}.weight"]
    return weight.shape[0], weight.shape[1]


def _pair(generator: torch.Generator, rows: int, columns: int) -> tuple[torch.Tensor, torch.Tensor]:
    down = torch.randn(RANK, columns, generator=generator) * columns**-0.5
    up = torch.randn(rows, RANK, generator=generator) * 0.5
    return down, up


def lora_states(transformer: torch.nn.Module, clip: torch.nn.Module, seed: int) -> dict[str, dict[str, Any]]:
    """layout -> LoRA state dict, as each trainer writes them."""
    from webui.families.flux_keys import diffusers_to_bfl

    bfl = diffusers_to_bfl(transformer.state_dict())
    diffusers_state = transformer.state_dict()
    generator = torch.Generator().manual_seed(seed)
    pairs = {module: _pair(generator, *_shape(bfl, module)) for module in MODULES}
    alpha = torch.tensor(ALPHA)
    kohya, comfy, bfl_peft = {}, {}, {}
    for module, (down, up) in pairs.items():
        name = "lora_unet_" + module.replace(".", "_")
        kohya |= {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up, f"{name}.alpha": alpha}
        comfy |= {
            f"diffusion_model.{module}.lora_down.weight": down,
            f"diffusion_model.{module}.lora_up.weight": up,
            f"diffusion_model.{module}.alpha": alpha,
        }
        bfl_peft |= {f"diffusion_model.{module}.lora_A.weight": down, f"diffusion_model.{module}.lora_B.weight": up}
    clip_state = {f"text_model.{k}": v for k, v in clip.state_dict().items()}
    down, up = _pair(generator, *_shape(clip_state, CLIP_MODULE))
    clip_name = "lora_te1_" + CLIP_MODULE.replace(".", "_")
    kohya |= {f"{clip_name}.lora_down.weight": down, f"{clip_name}.lora_up.weight": up, f"{clip_name}.alpha": alpha}
    t5_down, t5_up = _pair(generator, 128, 4096)
    kohya |= {f"lora_te2_{T5_MODULE}.lora_down.weight": t5_down, f"lora_te2_{T5_MODULE}.lora_up.weight": t5_up}
    dora = dict(comfy)
    first = next(iter(MODULES))
    dora[f"diffusion_model.{first}.dora_scale"] = torch.ones(_shape(bfl, first)[0], 1)
    xlabs = {}
    for name in XLABS_MODULES:
        stream = "img" if name.endswith("1") else "txt"
        module = f"double_blocks.0.{stream}_attn.{'qkv' if name.startswith('qkv') else 'proj'}"
        down, up = _pair(generator, *_shape(bfl, module))
        xlabs |= {
            f"double_blocks.0.processor.{name}.down.weight": down,
            f"double_blocks.0.processor.{name}.up.weight": up,
        }
    peft = {}
    for module in PEFT_MODULES:
        down, up = _pair(generator, *_shape(diffusers_state, module))
        peft |= {f"transformer.{module}.lora_A.weight": down, f"transformer.{module}.lora_B.weight": up}
    return {"kohya": kohya, "comfyui": comfy, "bfl-peft": bfl_peft, "xlabs": xlabs, "peft": peft, "dora": dora}


def write_loras(root: Path, family: Family, transformer: torch.nn.Module, clip: torch.nn.Module) -> list[Any]:
    from webui.models.ldm_writer import save_single_file
    from webui.testing.tiny import FixtureFile, lora_seed, stem

    files = []
    metadata = {"kohya": {"ss_base_model_version": "flux1", "ss_network_module": "networks.lora_flux"}}
    for layout, state in lora_states(transformer, clip, lora_seed(family)).items():
        relative = f"loras/{stem(family)}-{layout}.safetensors"
        state = {k: v.clone().contiguous() for k, v in state.items()}  # one shared alpha would be refused
        save_single_file(state, root / relative, metadata=metadata.get(layout))
        files.append(FixtureFile(relative, Kind.LORA, family, layout))
    return files
