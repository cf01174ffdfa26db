"""Image-generator quality: Laplacian-pyramid SWD, power-spectrum and colour-histogram distances."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Sliced Wasserstein distance on Laplacian-pyramid patches (Karras et al. 2018, Appendix D):
# every image is split into a Laplacian pyramid from its full resolution down to 16×16; from
# each level, 7×7 neighbourhoods (7·7·3 = 147-dimensional descriptors) are taken at random
# places; each descriptor set is normalized per level and per colour channel to zero mean and
# unit variance; the distance between two descriptor sets is the sliced Wasserstein distance,
# the mean over random unit directions of the 1-D Wasserstein distance of the projections.

PATCH = 7
MIN_LEVEL = 16
_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def _blur(x: Tensor) -> Tensor:
    """Separable 5×5 binomial (Gaussian-like) blur, reflect-padded, per channel."""
    c = x.shape[1]
    k = _BINOMIAL.to(x)
    x = F.pad(x, (2, 2, 2, 2), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, 5).expand(c, 1, 1, 5), groups=c)
    return F.conv2d(x, k.view(1, 1, 5, 1).expand(c, 1, 5, 1), groups=c)


def laplacian_pyramid(x: Tensor, min_size: int = MIN_LEVEL) -> list[Tensor]:
    """Band-pass levels from full resolution down; the last entry is the low-pass residual."""
    levels = []
    while x.shape[-1] > min_size:
        low = _blur(x)[..., ::2, ::2]
        up = F.interpolate(low, size=x.shape[-2:], mode="bilinear", align_corners=False)
        levels.append(x - _blur(up))
        x = low
    levels.append(x)
    return levels


def _gen(seed: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1009 + stream)


def _patches(level: Tensor, per_image: int, g: torch.Generator) -> Tensor:
    """`per_image` random 7×7×3 neighbourhoods of every image, (N·per_image, 147)."""
    n, c, h, w = level.shape
    ys = torch.randint(0, h - PATCH + 1, (n, per_image), generator=g)
    xs = torch.randint(0, w - PATCH + 1, (n, per_image), generator=g)
    d = torch.arange(PATCH)
    rows = (ys[..., None] + d).view(n, per_image, PATCH, 1).expand(-1, -1, -1, PATCH)
    cols = (xs[..., None] + d).view(n, per_image, 1, PATCH).expand(-1, -1, PATCH, -1)
    img = torch.arange(n).view(n, 1, 1, 1).expand_as(rows)
    patches = level.permute(0, 2, 3, 1)[img, rows, cols]  # (N, P, 7, 7, C)
    return patches.reshape(n * per_image, PATCH * PATCH, c)


def _normalize(desc: Tensor) -> Tensor:
    """Zero mean, unit variance per colour channel over the whole descriptor set."""
    mean = desc.mean(dim=(0, 1), keepdim=True)
    std = desc.std(dim=(0, 1), keepdim=True).clamp_min(1e-8)
    return ((desc - mean) / std).flatten(1)


def _quantiles(x: Tensor, m: int) -> Tensor:
    """`m` evenly spaced quantiles of each column (so sets of different sizes compare)."""
    x = x.sort(dim=0).values
    if x.shape[0] == m:
        return x
    q = (torch.arange(m, dtype=x.dtype) + 0.5) / m
    return torch.quantile(x, q, dim=0)


def sliced_wasserstein(a: Tensor, b: Tensor, n_dirs: int, g: torch.Generator) -> float:
    """Mean 1-D Wasserstein distance of `a` and `b` (N, D) projected on random unit vectors."""
    dirs = torch.randn(a.shape[1], n_dirs, generator=g, dtype=a.dtype)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    m = min(a.shape[0], b.shape[0])
    pa, pb = _quantiles(a @ dirs, m), _quantiles(b @ dirs, m)
    return float((pa - pb).abs().mean())


def swd(
    x: Tensor, y: Tensor, *, patches_per_image: int = 128, n_dirs: int = 512, seed: int = 0
) -> dict[str, float]:
    """SWD (×10³, as Karras et al. report it) per pyramid level and averaged.

    `x`, `y`: image sets (N, 3, H, W) in [0, 1]. Same seed → same patches and directions;
    swapping the sets gives the same value when they hold equally many images.
    """
    out: dict[str, float] = {}
    pyramids = zip(laplacian_pyramid(x.double()), laplacian_pyramid(y.double()), strict=True)
    for i, (lx, ly) in enumerate(pyramids):
        # both sets draw positions from the same stream: swapping them swaps the patch sets
        dx = _normalize(_patches(lx, patches_per_image, _gen(seed, i)))
        dy = _normalize(_patches(ly, patches_per_image, _gen(seed, i)))
        out[f"swd_{lx.shape[-1]}"] = 1e3 * sliced_wasserstein(dx, dy, n_dirs, _gen(seed, 100 + i))
    out["swd_avg"] = sum(out.values()) / len(out)
    return out


# --------------------------------------------------------------------------------------------
# Radially averaged power spectrum: how much structure each spatial frequency carries.
def radial_power_spectrum(x: Tensor) -> Tensor:
    """Mean over images of the azimuthally averaged log10 power of the luminance, (H//2,)."""
    lum = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).double()  # (N, H, W)
    lum = lum - lum.mean(dim=(-2, -1), keepdim=True)
    h, w = lum.shape[-2:]
    power = torch.fft.fftshift(torch.fft.fft2(lum, norm="ortho"), dim=(-2, -1)).abs() ** 2
    yy, xx = torch.meshgrid(torch.arange(h) - h // 2, torch.arange(w) - w // 2, indexing="ij")
    r = torch.sqrt(yy.double() ** 2 + xx.double() ** 2).round().long().flatten()
    nbins = min(h, w) // 2
    keep = r < nbins
    sums = torch.zeros(power.shape[0], nbins, dtype=torch.float64)
    sums.index_add_(1, r[keep], power.flatten(1)[:, keep])
    counts = torch.bincount(r[keep], minlength=nbins).double()
    radial = sums / counts  # (N, nbins)
    return torch.log10(radial.mean(0) + 1e-12)


def psd_distance(x: Tensor, y: Tensor) -> float:
    """RMS difference (in dex) of the mean radial log-power spectra, DC bin excluded."""
    px, py = radial_power_spectrum(x), radial_power_spectrum(y)
    return float(((px[1:] - py[1:]) ** 2).mean().sqrt())


# --------------------------------------------------------------------------------------------
# Colour: per-channel intensity distributions.
def color_histogram_distance(x: Tensor, y: Tensor, bins: int = 64) -> float:
    """Mean over R, G, B of the 1-D Wasserstein distance between pixel-value histograms."""
    total = 0.0
    for c in range(3):
        hx = torch.histc(x[:, c].double(), bins=bins, min=0.0, max=1.0)
        hy = torch.histc(y[:, c].double(), bins=bins, min=0.0, max=1.0)
        cdf = torch.cumsum(hx / hx.sum(), 0) - torch.cumsum(hy / hy.sum(), 0)
        total += float(cdf.abs().sum()) / bins
    return total / 3


def image_distances(x: Tensor, y: Tensor, seed: int = 0) -> dict[str, float]:
    """All three figures between two image sets in [0, 1], (N, 3, H, W)."""
    return {
        **swd(x, y, seed=seed),
        "psd": psd_distance(x, y),
        "color": color_histogram_distance(x, y),
    }


RATIO_FIGURES = ("swd_avg", "psd", "color")


def figures_vs_floor(
    fake: Tensor, real_train: Tensor, real_heldout: Tensor, seed: int = 0
) -> dict[str, dict[str, float | None]]:
    """Generated vs held-out images, the real-vs-real floor, and their ratio (1 = the floor).

    `{"figures": {name: value}, "floor": {name: value}, "ratio": {name: value}}`; images in
    [0, 1], (N, 3, H, W). `fake` and `real_train` should hold equally many images: the floor
    is the distance of training images to the held-out ones.
    """
    figures = image_distances(fake, real_heldout, seed)
    floor = image_distances(real_train, real_heldout, seed)
    ratio = {k: (figures[k] / floor[k] if floor[k] > 0 else None) for k in RATIO_FIGURES}
    return {"figures": figures, "floor": floor, "ratio": ratio}


# --------------------------------------------------------------------------------------------
def _evaluation_sets(
    checkpoint: str | Path, data: str | Path | None, seed: int, device: str, max_images: int | None
) -> dict[str, Any]:
    """A generator's images and the real training and held-out images, all in [0, 1].

    The generator makes as many images as the training set used holds (its first
    `max_images` when given), so the model figure and the floor compare equally large sets
    against the same held-out images.
    """
    from models.checkpoint import load_checkpoint
    from models.image_sampler import ImageSampler
    from models.settings import get_settings
    from training.image.images import ImageFolder

    ckpt = load_checkpoint(checkpoint)
    sampler = ImageSampler.load(checkpoint, device=device)
    data = Path(data) if data is not None else get_settings().data_dir / "nebulae"
    size = int(ckpt.preprocessing["image_size"])
    stretch = ckpt.preprocessing.get("stretch", "asinh")
    fraction = float(ckpt.extra.get("heldout_fraction", 0.1))
    held = ImageFolder(data, size, split="heldout", heldout_fraction=fraction, stretch=stretch)
    train = ImageFolder(data, size, split="train", heldout_fraction=fraction, stretch=stretch)
    n = len(train) if max_images is None else min(len(train), max_images)
    to01 = lambda t: (t + 1) / 2  # noqa: E731 - [-1, 1] → [0, 1]
    return {
        "ckpt": ckpt,
        "data": data,
        "real_held": to01(held.center()),
        "real_train": to01(train.center(torch.arange(n))),
        "fake": sampler.images(sampler.latents(seed, n)).double() / 255.0,
    }


def evaluate_image_generator(
    checkpoint: str | Path, data: str | Path | None = None, seed: int = 0, device: str = "auto"
) -> dict[str, Any]:
    """Generated vs held-out real images, with the training-vs-held-out real floor."""
    sets = _evaluation_sets(checkpoint, data, seed, device, None)
    fake, real_train, real_held = sets["fake"], sets["real_train"], sets["real_held"]
    vs_floor = figures_vs_floor(fake, real_train, real_held, seed)
    vs_train = image_distances(fake, real_train, seed)
    log.info("evaluated %s on %d held-out images", checkpoint, len(real_held))
    return {
        "kind": sets["ckpt"].kind,
        "step": sets["ckpt"].step,
        "seed": seed,
        "data": str(sets["data"]),
        "heldout_images": len(real_held),
        "train_images": len(real_train),
        "generated_images": len(fake),
        "generated_vs_heldout": vs_floor["figures"],
        "real_vs_real_floor": vs_floor["floor"],  # training images vs held-out images
        "generated_vs_train": vs_train,
        "ratio_to_floor": vs_floor["ratio"],
    }


def run_figures(
    checkpoint: str | Path,
    data: str | Path,
    *,
    max_images: int,
    seed: int = 0,
    device: str = "auto",
) -> dict[str, Any]:
    """What a finished training run records: `figures_vs_floor` on at most `max_images`.

    Fewer images than `evaluate_image_generator` uses make it cheap enough for the end of
    every run; the figures are noisier, the ratio to a floor measured alike less so.
    """
    sets = _evaluation_sets(checkpoint, data, seed, device, max_images)
    out = figures_vs_floor(sets["fake"], sets["real_train"], sets["real_held"], seed)
    return {**out, "images": len(sets["fake"]), "heldout_images": len(sets["real_held"])}
