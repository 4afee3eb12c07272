"""Tiny random ESRGAN upscalers in the layouts users download: Real-ESRGAN's RRDBNet `.pth` and an old-style
ESRGAN `.safetensors`.

`tiny-4x-realesrgan.pth` is what BasicSR / Real-ESRGAN save: `torch.save({"params_ema": state_dict})`, keys
`conv_first`, `body.N.rdbK.convM`, `conv_body`, `conv_up1`, `conv_up2`, `conv_hr`, `conv_last` (RRDBNet of
xinntao/Real-ESRGAN, basicsr/archs/rrdbnet_arch.py: 4× by two nearest-neighbour ×2 steps). `tiny-2x-esrgan.safetensors`
holds the original ESRGAN key layout (`model.0`, `model.1.sub.N.RDBK.convM.0`, ...) at 2×. Widths are tiny (8
features, one block; the growth channels stay 32 as in every ESRGAN) and weights small, so outputs stay finite;
spandrel recognises both.
"""

from __future__ import annotations

from pathlib import Path

import torch

from webui.families import Family
from webui.models.kinds import Kind

FEATURES = 8
GROWTH = 32  # ESRGAN's growth channels are fixed at 32 (spandrel reads them as such)
REALESRGAN_4X = "upscalers/tiny-4x-realesrgan.pth"
ESRGAN_2X = "upscalers/tiny-2x-esrgan.safetensors"


def _conv(state: dict[str, torch.Tensor], name: str, inputs: int, outputs: int, generator: torch.Generator) -> None:
    state[f"{name}.weight"] = torch.randn(outputs, inputs, 3, 3, generator=generator) * 0.05
    state[f"{name}.bias"] = torch.zeros(outputs)


def realesrgan_state_dict(seed: int = 0, blocks: int = 1) -> dict[str, torch.Tensor]:
    """A 4× RRDBNet state dict in Real-ESRGAN's key names (3 channels in and out)."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    _conv(state, "conv_first", 3, FEATURES, generator)
    for block in range(blocks):
        for rdb in (1, 2, 3):
            for conv in range(1, 6):
                inputs = FEATURES + (conv - 1) * GROWTH
                outputs = FEATURES if conv == 5 else GROWTH
                _conv(state, f"body.{block}.rdb{rdb}.conv{conv}", inputs, outputs, generator)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        _conv(state, name, FEATURES, FEATURES, generator)
    _conv(state, "conv_last", FEATURES, 3, generator)
    return state


def esrgan_2x_state_dict(seed: int = 1) -> dict[str, torch.Tensor]:
    """A 2× ESRGAN state dict in the original layout, built by spandrel's own ESRGAN module and scaled down."""
    from webui.models.upscaler_files import import_spandrel

    import_spandrel()
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(seed)
    model = ESRGAN(in_nc=3, out_nc=3, num_filters=FEATURES, num_blocks=1, scale=2)
    return {key: (value * 0.1).contiguous() for key, value in model.state_dict().items()}


def write_tiny_upscalers(root: Path) -> list[tuple[str, Kind, Family, str]]:
    """Write both files under `root`; (relative path, kind, family, layout) for the manifest."""
    from safetensors.torch import save_file

    folder = Path(root) / "upscalers"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"params_ema": realesrgan_state_dict()}, Path(root) / REALESRGAN_4X)
    save_file(esrgan_2x_state_dict(), str(Path(root) / ESRGAN_2X))
    return [
        (REALESRGAN_4X, Kind.UPSCALER, Family.UNKNOWN, "realesrgan-pth"),
        (ESRGAN_2X, Kind.UPSCALER, Family.UNKNOWN, "esrgan-safetensors"),
    ]
