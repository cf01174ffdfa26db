"""Image sampling from a checkpoint: seeded latents, batch-independent pixels, stable PNG bytes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import Tensor, nn

from models import image_format
from models.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from models.device import resolve_device
from models.image import build_generator
from models.kinds import IMAGE_KINDS


class ImageSampler:
    """An EMA generator loaded from a checkpoint, ready to turn seeds into PNG grids."""

    def __init__(self, generator: nn.Module, latent_dim: int, version_tag: str, device: str):
        self.generator = generator
        self.latent_dim = latent_dim
        self.version_tag = version_tag  # content hash of the checkpoint file
        self.device = torch.device(device)
        # one forward shape per device (see models.image_format): pixels batch-independent
        self.micro_batch = image_format.micro_batch(self.device.type)

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
        """Generated images as uint8 (N, 3, H, W); each row depends on its latent alone.

        Every forward has the same shape, `micro_batch` latents, the last one padded with
        zeros, so that coalesced requests share forwards without changing a pixel.
        """
        m = self.micro_batch
        out = []
        for chunk in z.split(m):
            k = len(chunk)
            if k < m:
                chunk = torch.cat([chunk, chunk.new_zeros(m - k, chunk.shape[1])])
            x = self.generator(chunk.to(self.device))[:k].float()  # (k, 3, H, W) in [-1, 1]
            out.append(((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu())
        return torch.cat(out)

    @staticmethod
    def grid_png(images: Tensor, nrow: int | None = None) -> bytes:
        """A PNG of the images in a grid (fixed encoder, see `models.image_format`)."""
        return image_format.grid_png(images.numpy(), nrow)

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
