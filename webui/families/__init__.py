"""Model families as declarative descriptions: everything a family means lives in its own module here.

`webui.families.<family>` holds one frozen `FamilyDescription` (see base.py for every field): how a file is
recognised (UNet widths, telltale keys, metadata hints, LoRA names), its roles (denoiser, VAE, text
encoders with their architecture, tokenizer and single-file prefix), latent format (channels, scaling,
shift, preview factors), scheduler kind and samplers, A1111-weighted CLIP conditioning, defaults (size
presets, CFG, distilled guidance, negative prompt), diffusers pipeline class and flags, LoRA facts,
second-pass rules, tiny fixtures and benchmark runs. `registry.py` lists the descriptions (one line each)
and builds the `Family` enum from them; text-encoder architectures shared by families are in encoders.py.
The library, engine, UI, API, LDM writer, fixtures and bench ask the description; no module outside this
package names a family (tests/test_families.py enforces it).

Deviations from a pure data table, and why: shared pieces (the SD VAE and latent space, the UNet and VAE
roles, the SD pipeline) are module constants of the family that introduced them (sd1.py, sdxl.py, flux.py)
and imported by the families that share them, rather than a separate "parts" module, so each fact has
one home. Generic building blocks that name no family (config derivation from shapes in
webui/models/derive.py, component loading in webui/models/loading.py, the LDM writer, the tiny fixture
writer in webui/testing/tiny.py) stay where they were and take the description's facts as arguments.

Adding a family:
1. Write `webui/families/<id>.py` with `DESCRIPTION = FamilyDescription(...)`: recognition first (it is
   listed, as "not supported yet", as soon as it is registered), then roles, latent format, scheduler,
   conditioning, pipeline, defaults, LoRA facts, second pass. Keep imports of torch/diffusers out of
   the module: classes are named as strings ("diffusers.FluxTransformer2DModel"), resolved when used.
2. Register it: one line in registry.py's DESCRIPTIONS (the `Family` member appears by itself).
3. Ship its diffusers configs under webui/models/configs/<id>/ (component folders, as a diffusers repo),
   with their licence notices.
4. Fixtures: a `FixtureSpec` whose `writer` names a function `(root, description) -> list[FixtureFile]`;
   the shared UNet-family writer (webui.testing.tiny:write_unet_family) reads the spec's data; a family
   with another architecture brings its own writer module in this package (it may name the family).
5. Tests: identification on stripped real-shape headers (tests/stripped_headers.py), every fixture
   layout identified and loaded, pixels equal to the plain diffusers pipeline on the same modules,
   LoRA formats, and the family in tests/test_families.py's expectations.
6. Set `supported=True` once it loads and generates; what it cannot do yet stays refused with a message.
"""

from webui.families.base import FamilyDescription
from webui.families.registry import DESCRIPTIONS, Family, describe, family_of, registered

__all__ = ["DESCRIPTIONS", "Family", "FamilyDescription", "describe", "family_of", "registered"]
