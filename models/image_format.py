"""How generated pixels become bytes: the fixed forward shape per device and the PNG encoder.

Torch-free, so the API can name the byte format in its ETags without loading torch.

A sample's uint8 pixels are independent of its batch-mates only while every forward has the
same shape: CPU and GPU kernels pick algorithms and blockings by tensor shape, so the same
latent inside batches of different sizes can differ in the last float bits and, after
rounding, flip a pixel. The image path therefore runs fixed-shape micro-batches (padded with
zero latents), one size per device type; coalesced requests share a forward, and the bytes of
(seed, n, nrow, version) do not depend on the batch they were computed in.

The PNG writer is fixed and minimal: 8-bit RGB, the "Up" filter on every row, zlib level 1,
no ancillary chunks. Measured on 16-image 128² grids (bench/README.md), it encodes about 7×
faster than Pillow's default (adaptive filters, level 6) for about 30 % more bytes. zlib
releases the GIL, so grids encode in parallel threads.
"""

from __future__ import annotations

import math
import struct
import zlib

import numpy as np

BYTES_VERSION = "2"  # bump whenever the bytes of a (seed, n, nrow, version) change
MICRO_BATCH = {"cpu": 4, "cuda": 64, "mps": 16}  # generator forward shape per device type
DEFAULT_MICRO_BATCH = 16
PNG_LEVEL = 1  # zlib level: 1 costs 1/7 of the time of 6 for ~1.3× the bytes on these images
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GRID_PADDING = 2


def micro_batch(device_type: str) -> int:
    """Samples per generator forward on a device type ('cpu', 'cuda', ...)."""
    return MICRO_BATCH.get(device_type, DEFAULT_MICRO_BATCH)


def grid(images: np.ndarray, nrow: int | None = None) -> np.ndarray:
    """uint8 images (N, 3, H, W) tiled into one (H', W', 3) grid, `nrow` per row.

    The layout of torchvision's `make_grid` (2-pixel black padding, default nrow ⌈√N⌉).
    """
    n, c, h, w = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    cols = min(nrow, n)
    rows = math.ceil(n / cols)
    p = GRID_PADDING
    out = np.zeros((rows * (h + p) + p, cols * (w + p) + p, c), dtype=np.uint8)
    for k in range(n):
        y, x = divmod(k, cols)
        out[y * (h + p) + p : (y + 1) * (h + p), x * (w + p) + p : (x + 1) * (w + p)] = images[
            k
        ].transpose(1, 2, 0)
    return out


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(rgb: np.ndarray) -> bytes:
    """An (H, W, 3) uint8 image as PNG bytes; the same pixels always give the same bytes."""
    h, w, c = rgb.shape
    if c != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    rows = rgb.reshape(h, w * 3)
    raw = np.empty((h, w * 3 + 1), dtype=np.uint8)
    raw[:, 0] = 2  # filter type "Up": each byte minus the byte above it (mod 256)
    raw[0, 0] = 0  # the first row has nothing above: no filter
    raw[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=raw[1:, 1:])
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    idat = zlib.compress(raw.tobytes(), PNG_LEVEL)
    return PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def grid_png(images: np.ndarray, nrow: int | None = None) -> bytes:
    """PNG bytes of uint8 images (N, 3, H, W) in a grid."""
    return encode_png(grid(images, nrow))
