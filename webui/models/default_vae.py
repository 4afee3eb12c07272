"""The VAE a checkpoint without one gets ("no-VAE" and pruned uploads), chosen from the library's VAE files.

The rule, as AUTOMATIC1111's "Automatic" VAE setting and Forge do it, then the family's usual VAE:
1. a VAE named after the checkpoint, `<checkpoint>.vae.safetensors` (`.vae.pt`, `.vae.ckpt`), beside it or
   in a VAE folder (A1111's `modules/sd_vae.py` looks for exactly these names);
2. a VAE whose file name holds one of the family's `Defaults.vae_names` (SD1/SD2: `vae-ft-mse-840000...`,
   SDXL: `sdxl_vae`), the earlier fragment first;
3. a VAE the file's own metadata ties to the family, then any VAE that fits the family by its latent channels;
ties broken by name, so the same files always give the same choice. None when no VAE fits.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from webui.families import Family
from webui.models.kinds import Kind


def _stem(path: Path) -> str:
    return path.name[: -len(path.suffix)].lower() if path.suffix else path.name.lower()


def default_vae(entries: Iterable, family: Family, checkpoint: Path):  # noqa: ANN001, ANN201 (ModelEntry)
    """The library entry (a usable VAE fitting `family`) a checkpoint without a VAE uses, or None."""
    fragments = [fragment.lower() for fragment in family.description.defaults.vae_names]
    own = f"{_stem(checkpoint)}.vae"

    def rank(entry) -> tuple[int, int, int, str]:  # noqa: ANN001
        stem = _stem(entry.path)
        named = next((i for i, fragment in enumerate(fragments) if fragment in stem), len(fragments))
        return (stem != own, named, entry.family is not family, entry.name.lower())

    fitting = [
        entry
        for entry in entries
        if entry.kind is Kind.VAE and entry.usable and entry.identity is not None and entry.identity.fits(family)
    ]
    return min(fitting, key=rank, default=None)
