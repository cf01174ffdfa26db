"""Image GANs: the WGAN-GP 128×128 generator/critic and the DCGAN 64×64 baseline."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

# --------------------------------------------------------------------------------------------
# WGAN-GP, 128×128 RGB


@dataclass(frozen=True)
class WGANConfig:
    """WGAN-GP 128² networks; `width=64` is the seed-000 notebook size (5.8 M + 2.8 M params)."""

    latent_dim: int = 128
    width: int = 64  # channels of the last generator block; earlier blocks use 2×, 4×, 8×
    image_size: int = 128  # fixed: four ×2 upsamplings from 8×8
    channels: int = 3


class UpBlock(nn.Module):
    """Nearest-neighbour ×2 upsample → Conv3×3 → BatchNorm → ReLU (no checkerboard artefacts)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class DownBlock(nn.Module):
    """Conv4×4 stride 2 → per-sample normalization → LeakyReLU(0.2).

    InstanceNorm normalizes each image on its own, so the critic's score for one sample never
    depends on the rest of the batch (BatchNorm would break the per-sample gradient penalty).
    """

    def __init__(self, c_in: int, c_out: int, norm: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1)]
        if norm:
            layers.append(nn.InstanceNorm2d(c_out, affine=True))
        layers.append(nn.LeakyReLU(0.2, inplace=True))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class WGANGenerator(nn.Module):
    """Seed-000 generator (after Gulrajani et al. 2017): latent → 8×8 → four upsample blocks.

    Linear(latent → 8w·8·8) → BatchNorm → blocks 8w→4w→2w→w (16², 32², 64², 128² after the
    last upsample) → Conv3×3 (w → 3) → Tanh. BatchNorm is fine here: only the critic must be
    free of batch coupling.
    """

    def __init__(self, config: WGANConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        self.fc = nn.Linear(config.latent_dim, 8 * w * 8 * 8)
        self.bn0 = nn.BatchNorm2d(8 * w)
        self.blocks = nn.Sequential(UpBlock(8 * w, 4 * w), UpBlock(4 * w, 2 * w), UpBlock(2 * w, w))
        self.to_rgb = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(w, config.channels, 3, padding=1),
            nn.Tanh(),
        )

    def forward(self, z: Tensor) -> Tensor:
        w = self.config.width
        x = self.fc(z).view(-1, 8 * w, 8, 8)  # (B, 8w, 8, 8)
        x = torch.relu(self.bn0(x))
        x = self.blocks(x)  # (B, w, 64, 64)
        return self.to_rgb(x)  # (B, 3, 128, 128) in [-1, 1]


class WGANCritic(nn.Module):
    """Seed-000 critic without BatchNorm and with one score per image (Gulrajani et al. 2017).

    Conv4×4 s2 (3→w, no norm) then w→2w→4w→8w with InstanceNorm: 128² → 8²; a linear layer
    on the flattened 8w·8·8 features gives the score, shape (B,).
    """

    def __init__(self, config: WGANConfig) -> None:
        super().__init__()
        w = config.width
        self.features = nn.Sequential(
            DownBlock(config.channels, w, norm=False),  # (B, w, 64, 64)
            DownBlock(w, 2 * w),  # (B, 2w, 32, 32)
            DownBlock(2 * w, 4 * w),  # (B, 4w, 16, 16)
            DownBlock(4 * w, 8 * w),  # (B, 8w, 8, 8)
        )
        self.score = nn.Linear(8 * w * 8 * 8, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.features(x).flatten(1)  # (B, 8w·64)
        return self.score(h).squeeze(1)  # (B,)


# --------------------------------------------------------------------------------------------
# DCGAN, 64×64 RGB


@dataclass(frozen=True)
class DCGANConfig:
    """DCGAN 64² networks (Radford et al. 2016); `width=64` is the paper's `ngf = ndf = 64`."""

    latent_dim: int = 100
    width: int = 64
    image_size: int = 64
    channels: int = 3


class DCGANGenerator(nn.Module):
    """Transposed convs + BatchNorm + ReLU: 1² → 4² → 8² → 16² → 32² → 64², Tanh out."""

    def __init__(self, config: DCGANConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width

        def up(c_in: int, c_out: int) -> list[nn.Module]:
            return [
                nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]

        self.net = nn.Sequential(
            nn.ConvTranspose2d(config.latent_dim, 8 * w, 4, 1, 0, bias=False),  # (B, 8w, 4, 4)
            nn.BatchNorm2d(8 * w),
            nn.ReLU(inplace=True),
            *up(8 * w, 4 * w),  # (B, 4w, 8, 8)
            *up(4 * w, 2 * w),  # (B, 2w, 16, 16)
            *up(2 * w, w),  # (B, w, 32, 32)
            nn.ConvTranspose2d(w, config.channels, 4, 2, 1),  # (B, 3, 64, 64)
            nn.Tanh(),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z.view(z.shape[0], -1, 1, 1))


class DCGANDiscriminator(nn.Module):
    """Strided convs + BatchNorm + LeakyReLU(0.2); returns logits (B,) for the BCE loss."""

    def __init__(self, config: DCGANConfig) -> None:
        super().__init__()
        w = config.width

        def down(c_in: int, c_out: int) -> list[nn.Module]:
            return [
                nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.LeakyReLU(0.2, inplace=True),
            ]

        self.net = nn.Sequential(
            nn.Conv2d(config.channels, w, 4, 2, 1),  # (B, w, 32, 32)
            nn.LeakyReLU(0.2, inplace=True),
            *down(w, 2 * w),  # (B, 2w, 16, 16)
            *down(2 * w, 4 * w),  # (B, 4w, 8, 8)
            *down(4 * w, 8 * w),  # (B, 8w, 4, 4)
            nn.Conv2d(8 * w, 1, 4, 1, 0),  # (B, 1, 1, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).flatten()  # (B,)


def init_dcgan_weights(module: nn.Module) -> None:
    """Radford et al.: conv weights N(0, 0.02), BatchNorm scale N(1, 0.02) and bias 0."""
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


# --------------------------------------------------------------------------------------------
# construction by checkpoint kind

_FAMILIES: dict[str, tuple[type, type, type]] = {
    "wgan-gp-128": (WGANConfig, WGANGenerator, WGANCritic),
    "dcgan-64": (DCGANConfig, DCGANGenerator, DCGANDiscriminator),
}


def network_config(kind: str, config: dict[str, Any] | None = None) -> WGANConfig | DCGANConfig:
    """The config dataclass of `kind` from a plain dict (unknown keys are an error)."""
    if kind not in _FAMILIES:
        raise ValueError(f"unknown image model kind {kind!r}; expected one of {sorted(_FAMILIES)}")
    cls = _FAMILIES[kind][0]
    config = dict(config or {})
    unknown = set(config) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"unknown {kind} config keys: {sorted(unknown)}")
    return cls(**config)


def build_generator(kind: str, config: dict[str, Any] | None = None) -> nn.Module:
    """The generator of `kind` ("wgan-gp-128" or "dcgan-64") from its config dict."""
    cfg = network_config(kind, config)
    net = _FAMILIES[kind][1](cfg)
    if kind == "dcgan-64":
        net.apply(init_dcgan_weights)
    return net


def build_critic(kind: str, config: dict[str, Any] | None = None) -> nn.Module:
    """The critic (WGAN-GP) or discriminator (DCGAN) of `kind`; both return shape (B,)."""
    cfg = network_config(kind, config)
    net = _FAMILIES[kind][2](cfg)
    if kind == "dcgan-64":
        net.apply(init_dcgan_weights)
    return net


def config_dict(config: WGANConfig | DCGANConfig) -> dict[str, Any]:
    return asdict(config)


__all__ = [
    "DCGANConfig",
    "DCGANDiscriminator",
    "DCGANGenerator",
    "WGANConfig",
    "WGANCritic",
    "WGANGenerator",
    "build_critic",
    "build_generator",
    "config_dict",
    "network_config",
]
