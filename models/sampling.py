"""Load any servable checkpoint once and get its sampler: seeds → images, rows → catalog rows."""

from __future__ import annotations

from pathlib import Path

import torch

from models.checkpoint import load_checkpoint
from models.emulator_sampler import EmulatorSampler
from models.image_sampler import ImageSampler, file_tag
from models.kinds import EMULATOR, IMAGE, family_of

Sampler = ImageSampler | EmulatorSampler


def load_sampler(path: str | Path, device: str | torch.device = "auto") -> Sampler:
    """The sampler for the checkpoint at `path`, chosen by its kind (read from disk once)."""
    ckpt = load_checkpoint(path, map_location="cpu")
    if family_of(ckpt.kind) == IMAGE:
        return ImageSampler.from_checkpoint(ckpt, file_tag(path), device, str(path))
    return EmulatorSampler.from_checkpoint(ckpt, device, str(path))


def sampler_family(sampler: Sampler) -> str:
    """`image` or `emulator`, the family of a loaded sampler."""
    return IMAGE if isinstance(sampler, ImageSampler) else EMULATOR
