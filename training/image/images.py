"""Image-folder datasets: JPEG/PNG/FITS, preloaded, normalized to [-1, 1], with a held-out split."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
FITS_SUFFIXES = {".fits", ".fit", ".fts", ".fits.gz"}
Split = Literal["train", "heldout", "all"]
Stretch = Literal["none", "log", "asinh"]

# Images are decoded at this multiple of the training size, so random crops have room to move.
CROP_MARGIN = 1.125


class EmptyDatasetError(ValueError):
    """A folder that holds no readable image for the requested split."""


def is_heldout(name: str, fraction: float) -> bool:
    """Deterministic split by a hash of the file name: stable across runs and machines."""
    digest = hashlib.sha1(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def list_images(root: Path) -> list[Path]:
    """Every JPEG/PNG/FITS file under `root`, sorted by relative path."""
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    out = []
    for p in root.rglob("*"):
        name = p.name.lower()
        if p.is_file() and not name.startswith(".") and _suffix(name) is not None:
            out.append(p)
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


def _suffix(name: str) -> str | None:
    for s in (*FITS_SUFFIXES, *IMAGE_SUFFIXES):
        if name.endswith(s):
            return s
    return None


# --------------------------------------------------------------------------------------------
# decoding: every file becomes a float array (H, W, 3) in [0, 1]
def stretch_array(data: np.ndarray, stretch: Stretch) -> np.ndarray:
    """Map raw (high-dynamic-range) values to [0, 1]: clip to percentiles, then log/asinh.

    The black point is the 0.5th percentile and the white point the 99.5th, so a few hot
    pixels or a dark border do not set the scale; `log` and `asinh` then lift faint
    structure the way astronomers display FITS images (Lupton et al. 2004 for asinh).
    """
    data = np.nan_to_num(data.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = np.percentile(data, [0.5, 99.5])
    x = np.clip((data - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    if stretch == "log":
        a = 1000.0
        x = np.log1p(a * x) / np.log1p(a)
    elif stretch == "asinh":
        beta = 0.1  # softening: linear below ~beta, logarithmic above
        x = np.arcsinh(x / beta) / np.arcsinh(1.0 / beta)
    return x.astype(np.float32)


def read_fits(path: Path, stretch: Stretch) -> np.ndarray:
    """The first image HDU as (H, W, 3): mono planes are repeated, 3-plane cubes are RGB."""
    from astropy.io import fits

    with fits.open(path, memmap=False) as hdul:
        data = next((h.data for h in hdul if h.data is not None and h.data.ndim >= 2), None)
    if data is None:
        raise ValueError("no image data in any HDU")
    data = np.asarray(data)
    if data.ndim == 3 and data.shape[0] == 3:
        rgb = np.moveaxis(data, 0, -1)
    elif data.ndim == 2:
        rgb = np.repeat(data[..., None], 3, axis=-1)
    else:  # a cube: use its first plane
        plane = data.reshape(-1, *data.shape[-2:])[0]
        rgb = np.repeat(plane[..., None], 3, axis=-1)
    # FITS rows run bottom-up; flip so the image looks as in a viewer
    return stretch_array(rgb[::-1].copy(), stretch)


def read_picture(path: Path) -> np.ndarray:
    """A JPEG/PNG as (H, W, 3) in [0, 1]; transparency is composited onto black (the sky)."""
    with Image.open(path) as im:
        im.load()
        if im.mode in ("RGBA", "LA", "P", "PA"):
            im = im.convert("RGBA")
            bg = Image.new("RGBA", im.size, (0, 0, 0, 255))
            im = Image.alpha_composite(bg, im)
        im = im.convert("RGB")
        return np.asarray(im, dtype=np.float32) / 255.0


def load_image(path: Path, size: int, stretch: Stretch = "asinh") -> Tensor:
    """Decode → resize (shorter side to `size`, antialiased) → center-crop → [-1, 1], (3, S, S).

    The stretch applies to FITS only: JPEG/PNG photographs are already display-stretched.
    """
    arr = read_fits(path, stretch) if _suffix(path.name.lower()) in FITS_SUFFIXES else None
    if arr is None:
        arr = read_picture(path)
    x = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None]  # (1, 3, H, W)
    h, w = x.shape[-2:]
    if min(h, w) < 2:
        raise ValueError(f"image too small ({w}×{h})")
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    x = x[..., top : top + size, left : left + size].clamp(0, 1)
    return (x[0] - 0.5) / 0.5  # Normalize(mean=0.5, std=0.5) as in the seed


# --------------------------------------------------------------------------------------------
class ImageFolder:
    """Every readable image of a folder, decoded once into memory.

    `split="train"` leaves out the held-out images (`heldout_fraction` of the files, chosen by
    a hash of the relative path), `"heldout"` keeps only those, `"all"` keeps everything.
    Unreadable files are skipped with a warning; `skipped` lists them.
    """

    def __init__(
        self,
        root: str | Path,
        image_size: int,
        *,
        split: Split = "train",
        heldout_fraction: float = 0.1,
        stretch: Stretch = "asinh",
        augment: bool = False,
    ) -> None:
        self.root = Path(root)
        self.image_size = image_size
        self.augment = augment
        self.split = split
        # decode larger than the training size when random crops are wanted
        self.load_size = round(image_size * CROP_MARGIN) if augment else image_size
        self.files: list[Path] = []
        self.skipped: list[str] = []
        images: list[Tensor] = []
        for path in list_images(self.root):
            rel = path.relative_to(self.root).as_posix()
            held = is_heldout(rel, heldout_fraction)
            if (split == "train" and held) or (split == "heldout" and not held):
                continue
            try:
                images.append(load_image(path, self.load_size, stretch))
            except (OSError, ValueError, UnidentifiedImageError, SyntaxError) as exc:
                log.warning("skipping unreadable image %s: %s", path, exc)
                self.skipped.append(rel)
                continue
            self.files.append(path)
        if not images:
            raise EmptyDatasetError(
                f"no readable JPEG/PNG/FITS images for split {split!r} in {self.root}"
                + (f" ({len(self.skipped)} unreadable files skipped)" if self.skipped else "")
            )
        self.data = torch.stack(images)  # (N, 3, L, L) in [-1, 1]

    @property
    def skipped_count(self) -> int:
        return len(self.skipped)

    def __len__(self) -> int:
        return self.data.shape[0]

    def batch(self, indices: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Images at `indices`, (B, 3, S, S): center crops, or augmented views when enabled.

        Augmentation (random crop of the larger decoded image, horizontal/vertical flips and a
        90° rotation) draws from `generator`, so a resumed run repeats the same views.
        """
        x = self.data[indices]
        s = self.image_size
        if not self.augment:
            return x.clone()
        b, extra = x.shape[0], self.load_size - s
        r = torch.randint(0, extra + 1, (b, 2), generator=generator)
        flips = torch.rand(b, 2, generator=generator) < 0.5
        rots = torch.randint(0, 4, (b,), generator=generator)
        out = torch.empty(b, 3, s, s)
        for i in range(b):
            img = x[i, :, r[i, 0] : r[i, 0] + s, r[i, 1] : r[i, 1] + s]
            if flips[i, 0]:
                img = img.flip(-1)
            if flips[i, 1]:
                img = img.flip(-2)
            out[i] = torch.rot90(img, int(rots[i]), dims=(-2, -1))
        return out

    def center(self, indices: Tensor | None = None) -> Tensor:
        """Center crops at the training size (for evaluation), (N, 3, S, S)."""
        x = self.data if indices is None else self.data[indices]
        m = (self.load_size - self.image_size) // 2
        return x[..., m : m + self.image_size, m : m + self.image_size].clone()


__all__ = [
    "EmptyDatasetError",
    "ImageFolder",
    "is_heldout",
    "list_images",
    "load_image",
    "stretch_array",
]
