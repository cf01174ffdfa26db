"""DiffAugment (Zhao et al. 2020): differentiable colour, translation and cutout for small data.

The same random transform family is applied to real and generated images before the critic,
and gradients flow through it to the generator, so the critic cannot memorize a ~150-image
set while the generator still learns un-augmented images. Random parameters are drawn on the
CPU from an optional `torch.Generator` (resumable, device-independent) and then moved.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

POLICY = ("color", "translation", "cutout")


def _rand(shape: tuple[int, ...], x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.rand(shape, generator=generator).to(device=x.device, dtype=x.dtype)


def rand_brightness(x: Tensor, g: torch.Generator | None = None) -> Tensor:
    return x + (_rand((x.shape[0], 1, 1, 1), x, g) - 0.5)


def rand_saturation(x: Tensor, g: torch.Generator | None = None) -> Tensor:
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * (_rand((x.shape[0], 1, 1, 1), x, g) * 2) + mean


def rand_contrast(x: Tensor, g: torch.Generator | None = None) -> Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_rand((x.shape[0], 1, 1, 1), x, g) + 0.5) + mean


def rand_translation(x: Tensor, g: torch.Generator | None = None, ratio: float = 0.125) -> Tensor:
    """Shift each image by up to `ratio` of its size, filling with zeros (pad-and-gather)."""
    b, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    tx = torch.randint(-sh, sh + 1, (b, 1, 1), generator=g).to(x.device)
    ty = torch.randint(-sw, sw + 1, (b, 1, 1), generator=g).to(x.device)
    gb, gx, gy = torch.meshgrid(
        torch.arange(b, device=x.device),
        torch.arange(h, device=x.device),
        torch.arange(w, device=x.device),
        indexing="ij",
    )
    gx = torch.clamp(gx + tx + 1, 0, h + 1)
    gy = torch.clamp(gy + ty + 1, 0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1, 0, 0, 0, 0])
    return padded.permute(0, 2, 3, 1).contiguous()[gb, gx, gy].permute(0, 3, 1, 2)


def rand_cutout(x: Tensor, g: torch.Generator | None = None, ratio: float = 0.5) -> Tensor:
    """Zero one square of `ratio` × the image size at a random place in each image."""
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ox = torch.randint(0, h + (1 - ch % 2), (b, 1, 1), generator=g).to(x.device)
    oy = torch.randint(0, w + (1 - cw % 2), (b, 1, 1), generator=g).to(x.device)
    gb, gx, gy = torch.meshgrid(
        torch.arange(b, device=x.device),
        torch.arange(ch, device=x.device),
        torch.arange(cw, device=x.device),
        indexing="ij",
    )
    gx = torch.clamp(gx + ox - ch // 2, 0, h - 1)
    gy = torch.clamp(gy + oy - cw // 2, 0, w - 1)
    mask = torch.ones(b, h, w, dtype=x.dtype, device=x.device)
    mask[gb, gx, gy] = 0
    return x * mask.unsqueeze(1)


def diff_augment(
    x: Tensor, policy: tuple[str, ...] = POLICY, generator: torch.Generator | None = None
) -> Tensor:
    """Apply the policy's transforms in order; every op is differentiable with respect to `x`."""
    for name in policy:
        if name == "color":
            x = rand_contrast(rand_saturation(rand_brightness(x, generator), generator), generator)
        elif name == "translation":
            x = rand_translation(x, generator)
        elif name == "cutout":
            x = rand_cutout(x, generator)
        else:
            raise ValueError(f"unknown DiffAugment op {name!r}; choose from {POLICY}")
    return x.contiguous()
