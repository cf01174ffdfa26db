"""Image sampling from a checkpoint: seeded latents, batch-independent pixels, stable PNG bytes."""

from __future__ import annotations

import hashlib
import io
import math
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor, nn
from torchvision.utils import make_grid

from models.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from models.device import resolve_device
from models.image import build_generator
from models.kinds import IMAGE_KINDS

# Every sample goes through the generator on its own (micro-batches of one). CPU convolution
# and GEMM kernels pick algorithms and blockings by tensor shape, so the same latent inside
# batches of different sizes can differ in the last float bits, and after rounding to uint8 a
# pixel can flip. One fixed shape per forward makes a sample's pixels independent of the other
# requests it was coalesced with; the cost is small for these generators.
MICRO_BATCH = 1


class ImageSampler:
    """An EMA generator loaded from a checkpoint, ready to turn seeds into PNG grids."""

    def __init__(self, generator: nn.Module, latent_dim: int, version_tag: str, device: str):
        self.generator = generator
        self.latent_dim = latent_dim
        self.version_tag = version_tag  # content hash of the checkpoint file
        self.device = torch.device(device)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> ImageSampler:
        """Load the EMA weights of an image checkpoint (CheckpointError if it is not one)."""
        return cls.from_checkpoint(load_checkpoint(path), file_tag(path), device, str(path))

    @classmethod
    def from_checkpoint(
        cls, ckpt: Checkpoint, tag: str, device: str | torch.device = "cpu", name: str = "model"
    ) -> ImageSampler:
        """Build from an already loaded checkpoint; `tag` identifies its weights (file hash)."""
        if ckpt.kind not in IMAGE_KINDS:
            raise CheckpointError(f"{name} holds a {ckpt.kind} model, not an image generator")
        dev = resolve_device(device)
        gen = build_generator(ckpt.kind, ckpt.config)
        try:
            gen.load_state_dict(ckpt.ema)
        except RuntimeError as exc:
            raise CheckpointError(f"{name}: EMA weights do not fit the config: {exc}") from exc
        gen.eval().requires_grad_(False).to(dev)
        return cls(gen, int(ckpt.config["latent_dim"]), tag, str(dev))

    def latents(self, seed: int, n: int) -> Tensor:
        """`n` latent vectors from a CPU generator seeded with `seed` (device-independent)."""
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        g = torch.Generator().manual_seed(int(seed))
        return torch.randn(n, self.latent_dim, generator=g)

    @torch.no_grad()
    def images(self, z: Tensor) -> Tensor:
        """Generated images as uint8 (N, 3, H, W); each row depends on its latent alone."""
        out = []
        for chunk in z.split(MICRO_BATCH):
            x = self.generator(chunk.to(self.device)).float().cpu()  # (m, 3, H, W) in [-1, 1]
            out.append(((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8))
        return torch.cat(out)

    @staticmethod
    def grid_png(images: Tensor, nrow: int | None = None) -> bytes:
        """A PNG of the images in a grid; fixed encoder settings and no metadata or timestamps."""
        nrow = nrow or max(1, math.ceil(math.sqrt(images.shape[0])))
        grid = make_grid(images, nrow=nrow, padding=2, pad_value=0)  # (3, H', W') uint8
        buf = io.BytesIO()
        Image.fromarray(grid.permute(1, 2, 0).contiguous().numpy(), mode="RGB").save(
            buf, format="PNG", compress_level=6, optimize=False
        )
        return buf.getvalue()

    def png(self, seed: int, n: int, nrow: int | None = None) -> bytes:
        return self.grid_png(self.images(self.latents(seed, n)), nrow)


def file_tag(path: str | Path) -> str:
    """A short content hash of a checkpoint file: changes whenever its weights do."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def generate_png(
    path: str | Path, seed: int, n: int, nrow: int | None = None, device: str = "cpu"
) -> bytes:
    """PNG bytes of an `n`-image grid from checkpoint `path`; same inputs give the same bytes."""
    if nrow is not None and nrow < 1:
        raise ValueError(f"nrow must be at least 1, got {nrow}")
    return ImageSampler.load(path, device=device).png(seed, n, nrow)
