"""The registry of model families: one line per family, and the `Family` enum built from it.

Registration order decides ties: a lone part several families share (a 4-channel VAE, a CLIP-L or T5 text
encoder file) is reported as the first registered family that takes it, and lists every family that takes
it as compatible. Keep families that load before those only recognised.
"""

from __future__ import annotations

from enum import Enum
from types import MappingProxyType

from webui.families import chroma, flux, flux2, flux_tools, sd1, sd2, sd3, sdxl, sdxl_refiner, zimage
from webui.families.base import FamilyDescription

DESCRIPTIONS: tuple[FamilyDescription, ...] = (
    sd1.DESCRIPTION,
    sd2.DESCRIPTION,
    sdxl.DESCRIPTION,
    sdxl_refiner.DESCRIPTION,
    flux.DESCRIPTION,
    sd3.DESCRIPTION,
    flux_tools.FILL,
    flux_tools.CONTROL,
    chroma.DESCRIPTION,
    flux2.DESCRIPTION,
    zimage.DESCRIPTION,
)
UNKNOWN_DESCRIPTION = FamilyDescription(id="unknown", member="UNKNOWN", label="unknown", supported=False)
_BY_ID = MappingProxyType({d.id: d for d in (*DESCRIPTIONS, UNKNOWN_DESCRIPTION)})


class _FamilyMember(str, Enum):
    """A family as code passes it around: `.value` is its id (JSON, infotext), the rest its description."""

    @property
    def description(self) -> FamilyDescription:
        return _BY_ID[self.value]

    @property
    def label(self) -> str:
        return self.description.label

    @property
    def supported(self) -> bool:
        return self.description.supported


# One member per registered description (`Family.SD1`, ...) plus `Family.UNKNOWN`; built here so that
# registering a description is all it takes to add a member.
Family = _FamilyMember("Family", [(d.member, d.id) for d in _BY_ID.values()], module=__name__, qualname="Family")


def describe(family: Family) -> FamilyDescription:
    """The description of `family` (`Family.UNKNOWN` has an empty, unsupported one)."""
    return _BY_ID[Family(family).value]


def family_of(description: FamilyDescription) -> Family:
    return Family(description.id)


def registered() -> tuple[Family, ...]:
    """Every registered family (not UNKNOWN), in registration order."""
    return tuple(Family(d.id) for d in DESCRIPTIONS)
