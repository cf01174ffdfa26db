"""Conditional normalizing flow for the Balrog emulator's observed − true offsets (zuko NSF).

The flow models `p(target | true mags, conditions)` exactly (a density, trained by maximum
likelihood), where the target is the same standardized vector the cWGAN-GP generates: the
offsets in r, i, z and, with 6 columns, the log magnitude errors. It is a masked
autoregressive flow of monotonic rational-quadratic splines (Durkan et al. 2019) conditioned
on the 9 standardized inputs, as gaNdalF does for DES Balrog. Sampling maps a standard normal
draw `z` through the inverse transform, row by row, so a row's output depends only on its own
`z` and inputs: the emulator sampler feeds it the same counter-based noise as the generator.

Inverting a masked autoregressive flow takes one network pass per dimension and transform
(30 here). `FlowStudent` is a plain MLP distilled from a trained flow's sampling map
`(z, inputs) → flow⁻¹(z | inputs)` by regression (`training.emulator.distill`): one pass per
object, and for the same `z` it gives (nearly) the flow's own sample.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import zuko
from torch import Tensor, nn


@dataclass(frozen=True)
class FlowConfig:
    """Shapes of the flow and of its detection classifier (stored in every checkpoint)."""

    out_dim: int = 6  # 3 offsets + 3 ln(magerr), or 3 offsets
    cond_dim: int = 6  # sky sigma and PSF FWHM in r, i, z
    mag_dim: int = 3  # true magnitudes in r, i, z
    hidden: int = 128  # width of each autoregressive network's two hidden layers
    transforms: int = 5  # autoregressive spline layers
    bins: int = 8  # spline knots per dimension
    slope: float = 0.2  # the detection classifier's LeakyReLU slope
    det_hidden: int = 128  # width of the detection classifier's two hidden layers
    student_hidden: int = 256  # width of the distilled student's hidden layers
    student_depth: int = 3  # the distilled student's hidden layers

    @property
    def noise_dim(self) -> int:
        return self.out_dim  # one standard normal per generated column

    @property
    def draw_dim(self) -> int:
        """Noise columns drawn per row, as `EmulatorConfig.draw_dim`: the flow's own."""
        return self.noise_dim

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FlowConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class OffsetFlow(nn.Module):
    """`z (B, out_dim) ~ N(0, 1)`, conditions, true mags → standardized targets (B, out_dim).

    Called like the cWGAN-GP `Generator` (`flow(z, cond, true)`), so the sampler serves both.
    """

    def __init__(self, cfg: FlowConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.flow = zuko.flows.NSF(
            cfg.out_dim,
            context=cfg.mag_dim + cfg.cond_dim,
            bins=cfg.bins,
            transforms=cfg.transforms,
            hidden_features=(cfg.hidden, cfg.hidden),
            randperm=False,  # alternating orders: the architecture is fixed by the config
        )

    def log_prob(self, target: Tensor, cond: Tensor, true: Tensor) -> Tensor:
        """Log density of standardized targets (B, out_dim) given the inputs → (B,)."""
        return self.flow(torch.cat([true, cond], dim=1)).log_prob(target)

    def forward(self, z: Tensor, cond: Tensor, true: Tensor) -> Tensor:
        # z (B, out_dim), cond (B, 6), true (B, 3): the inverse transform of the base draw
        return self.flow(torch.cat([true, cond], dim=1)).transform.inv(z)


class FlowStudent(nn.Module):
    """`z (B, out_dim)`, conditions, true mags → standardized targets (B, out_dim) in one pass:
    an MLP trained to reproduce a flow's inverse transform (the flow's sample for the same z).

    Called like the flow and the cWGAN-GP `Generator`, so the sampler serves all three.
    """

    def __init__(self, cfg: FlowConfig) -> None:
        super().__init__()
        self.cfg = cfg
        width, layers = cfg.out_dim + cfg.cond_dim + cfg.mag_dim, []
        for _ in range(cfg.student_depth):
            layers += [nn.Linear(width, cfg.student_hidden), nn.SiLU()]
            width = cfg.student_hidden
        layers.append(nn.Linear(width, cfg.out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor, cond: Tensor, true: Tensor) -> Tensor:
        # z (B, out_dim), cond (B, 6), true (B, 3)
        return self.net(torch.cat([z, cond, true], dim=1))


__all__ = ["FlowConfig", "FlowStudent", "OffsetFlow"]
