"""Balrog emulator networks: the conditional WGAN-GP generator/critic and the detection model.

The generator and critic follow the Seed 004 cWGAN-GP (DESIGN.md): one small MLP branch per
input group (noise or observed magnitudes / observing conditions / true magnitudes), the three
64-wide embeddings concatenated, then a shared trunk. Two deliberate departures from the seed:
the trunk has LeakyReLU activations between its linear layers (the seed's trunk was a chain of
linears, i.e. one linear map), and nothing is normalized with BatchNorm, so every row is
processed independently of the others in its batch (a WGAN critic must not mix samples, and
the inference service coalesces many requests into one forward pass).

The detection model is a separate MLP classifier `P(detected | true mags, conditions)`, whose
logit is recalibrated with Platt scaling (`a · logit + b`, fitted on the validation split).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class EmulatorConfig:
    """Shapes of the emulator networks (stored in every checkpoint as a plain dict)."""

    noise_dim: int = 8  # latent noise per object
    cond_dim: int = 6  # sky sigma and PSF FWHM in r, i, z
    mag_dim: int = 3  # true (and observed) magnitudes in r, i, z
    hidden: int = 128  # width of the first branch layer and of the trunk
    embed: int = 64  # width of each branch's output; the trunk sees 3 × embed
    slope: float = 0.2  # LeakyReLU negative slope
    det_hidden: int = 128  # width of the detection classifier's two hidden layers

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EmulatorConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class EmulatorScalers:
    """Standardization fitted on the train split, kept in the checkpoint as plain lists.

    Inputs are z-scored per column. The generator's target is the observed − true magnitude
    offset per band, z-scored with the offsets' train-split mean and standard deviation.
    """

    true_mean: tuple[float, ...]
    true_std: tuple[float, ...]
    cond_mean: tuple[float, ...]
    cond_std: tuple[float, ...]
    delta_mean: tuple[float, ...]
    delta_std: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {k: [float(v) for v in getattr(self, k)] for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EmulatorScalers:
        return cls(**{k: tuple(float(v) for v in data[k]) for k in cls.__dataclass_fields__})

    def split_inputs(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Raw inputs (B, 9) in `columns.INPUTS` order → standardized (cond (B, 6), true (B, 3))."""
        true = (x[:, :3] - _t(self.true_mean, x)) / _t(self.true_std, x)  # (B, 3)
        cond = (x[:, 3:] - _t(self.cond_mean, x)) / _t(self.cond_std, x)  # (B, 6)
        return cond, true

    def target(self, observed: Tensor, true_raw: Tensor) -> Tensor:
        """Observed magnitudes (B, 3) → the generator's standardized offsets (B, 3)."""
        return (observed - true_raw - _t(self.delta_mean, observed)) / _t(self.delta_std, observed)

    def observed(self, target: Tensor, true_raw: Tensor) -> Tensor:
        """Inverse of `target`: standardized offsets (B, 3) → observed magnitudes (B, 3)."""
        return true_raw + target * _t(self.delta_std, target) + _t(self.delta_mean, target)


def _t(values: tuple[float, ...], like: Tensor) -> Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device)


# --------------------------------------------------------------------------------------------
# building blocks


class Branch(nn.Module):
    """`Linear(in, hidden) → LeakyReLU → Linear(hidden, embed) → LeakyReLU` (one input group)."""

    def __init__(self, in_dim: int, hidden: int, embed: int, slope: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.LeakyReLU(slope),
            nn.Linear(hidden, embed),
            nn.LeakyReLU(slope),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)  # (B, embed)


class Trunk(nn.Module):
    """`Linear(3·embed, h) → LeakyReLU → Linear(h, h) → LeakyReLU → Linear(h, out)`."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, slope: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.LeakyReLU(slope),
            nn.Linear(hidden, hidden),
            nn.LeakyReLU(slope),
            nn.Linear(hidden, out_dim),
        )

    def forward(self, h: Tensor) -> Tensor:
        return self.net(h)  # (B, out_dim)


# --------------------------------------------------------------------------------------------
# networks


class Generator(nn.Module):
    """`G(z, conditions, true mags)` → standardized observed − true magnitude offsets (B, 3)."""

    def __init__(self, cfg: EmulatorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.noise = Branch(cfg.noise_dim, cfg.hidden, cfg.embed, cfg.slope)
        self.cond = Branch(cfg.cond_dim, cfg.hidden, cfg.embed, cfg.slope)
        self.true = Branch(cfg.mag_dim, cfg.hidden, cfg.embed, cfg.slope)
        self.trunk = Trunk(3 * cfg.embed, cfg.hidden, cfg.mag_dim, cfg.slope)

    def forward(self, z: Tensor, cond: Tensor, true: Tensor) -> Tensor:
        # z (B, 8), cond (B, 6), true (B, 3)
        h = torch.cat([self.noise(z), self.cond(cond), self.true(true)], dim=1)  # (B, 192)
        return self.trunk(h)  # (B, 3)


class Critic(nn.Module):
    """`D(observed, conditions, true mags)` → one Wasserstein score per object, shape (B,)."""

    def __init__(self, cfg: EmulatorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.obs = Branch(cfg.mag_dim, cfg.hidden, cfg.embed, cfg.slope)
        self.cond = Branch(cfg.cond_dim, cfg.hidden, cfg.embed, cfg.slope)
        self.true = Branch(cfg.mag_dim, cfg.hidden, cfg.embed, cfg.slope)
        self.trunk = Trunk(3 * cfg.embed, cfg.hidden, 1, cfg.slope)

    def forward(self, obs: Tensor, cond: Tensor, true: Tensor) -> Tensor:
        # obs (B, 3), cond (B, 6), true (B, 3)
        h = torch.cat([self.obs(obs), self.cond(cond), self.true(true)], dim=1)  # (B, 192)
        return self.trunk(h).squeeze(1)  # (B,)


class Detector(nn.Module):
    """Detection classifier: logit of `P(detected | true mags, conditions)`, shape (B,).

    A plain MLP on the 9 standardized inputs, trained with binary cross-entropy on every
    training row; `calibrated_prob` applies the Platt scaling fitted on the validation split.
    """

    def __init__(self, cfg: EmulatorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.net = nn.Sequential(
            nn.Linear(cfg.mag_dim + cfg.cond_dim, cfg.det_hidden),
            nn.LeakyReLU(cfg.slope),
            nn.Linear(cfg.det_hidden, cfg.det_hidden),
            nn.LeakyReLU(cfg.slope),
            nn.Linear(cfg.det_hidden, 1),
        )
        # Platt scaling of the logit; identity until calibrated. Buffers travel with the weights.
        self.register_buffer("platt_a", torch.tensor(1.0))
        self.register_buffer("platt_b", torch.tensor(0.0))

    def forward(self, cond: Tensor, true: Tensor) -> Tensor:
        # cond (B, 6), true (B, 3)
        return self.net(torch.cat([true, cond], dim=1)).squeeze(1)  # (B,) raw logit

    def calibrated_prob(self, cond: Tensor, true: Tensor) -> Tensor:
        return torch.sigmoid(self.platt_a * self(cond, true) + self.platt_b)  # (B,)


__all__ = [
    "Branch",
    "Critic",
    "Detector",
    "EmulatorConfig",
    "EmulatorScalers",
    "Generator",
    "Trunk",
]
