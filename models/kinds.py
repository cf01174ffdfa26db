"""Checkpoint kinds and the one rule that maps each to its model family (torch-free).

Every layer asks this module, never a preset name or a string comparison of its own, whether
a model turns seeds into images or catalog rows into observed magnitudes.
"""

from __future__ import annotations

from typing import Literal

Family = Literal["image", "emulator"]
IMAGE: Family = "image"
EMULATOR: Family = "emulator"

# checkpoint kind → family
FAMILY_OF_KIND: dict[str, Family] = {
    "wgan-gp-128": IMAGE,  # WGAN-GP generator, 128×128 RGB
    "dcgan-64": IMAGE,  # DCGAN generator, 64×64 RGB
    "cwgan-gp": EMULATOR,  # conditional WGAN-GP + detection classifier
    "cflow": EMULATOR,  # conditional normalizing flow + detection classifier
    "cflow-distilled": EMULATOR,  # one-pass student of a conditional flow + detection classifier
}
KINDS = tuple(FAMILY_OF_KIND)
IMAGE_KINDS = tuple(k for k, f in FAMILY_OF_KIND.items() if f == IMAGE)
EMULATOR_KINDS = tuple(k for k, f in FAMILY_OF_KIND.items() if f == EMULATOR)


def family_of(kind: str) -> Family:
    """The family of a checkpoint kind (ValueError for a kind this version does not know)."""
    try:
        return FAMILY_OF_KIND[kind]
    except KeyError:
        raise ValueError(f"unknown model kind {kind!r}; known: {list(KINDS)}") from None
