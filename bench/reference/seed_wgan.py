"""The seed notebook's WGAN-GP for 128² nebulae, re-created as written, flaws kept.

It is the baseline the training benchmark measures ours against: the same data and the same
wall-clock budget. What it does differently from `training.image.gan` (on purpose here):
  - the critic ends in a 4×4 patch map (16 scores per image) instead of one score;
  - its gradient penalty back-propagates `grad_outputs=ones` over all 16 patch scores, so the
    penalised norm is that of the sum of the patch gradients, not of a per-sample score;
  - all five critic steps of a generator step reuse one real batch;
  - no EMA of the generator, no augmentation (Resize → CenterCrop → Normalize only).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class SeedConfig:
    """The notebook's settings."""

    latent_dim: int = 128
    batch_size: int = 32
    lr: float = 1e-4
    betas: tuple[float, float] = (0.0, 0.9)
    gp_lambda: float = 10.0
    n_critic: int = 5  # critic steps per generator step, all on the same real batch


# --------------------------------------------------------------------------------------------
# Networks


def up(c_in: int, c_out: int) -> list[nn.Module]:
    """Nearest ×2 → Conv3×3 → BatchNorm → ReLU."""
    return [
        nn.Upsample(scale_factor=2, mode="nearest"),
        nn.Conv2d(c_in, c_out, 3, padding=1),
        nn.BatchNorm2d(c_out),
        nn.ReLU(True),
    ]


def down(c_in: int, c_out: int, norm: bool = True) -> list[nn.Module]:
    """Conv4×4 s2 → InstanceNorm(affine) → LeakyReLU(0.2)."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 4, 2, 1)]
    if norm:
        layers.append(nn.InstanceNorm2d(c_out, affine=True))
    return [*layers, nn.LeakyReLU(0.2, True)]


class SeedGenerator(nn.Module):
    """Linear(128 → 512·8·8) → BatchNorm → 3 upsample blocks → upsample → Conv3×3 → Tanh."""

    def __init__(self, latent_dim: int = 128) -> None:
        super().__init__()
        self.fc = nn.Linear(latent_dim, 512 * 8 * 8)
        self.net = nn.Sequential(
            nn.BatchNorm2d(512),
            *up(512, 256),  # (B, 256, 16, 16)
            *up(256, 128),  # (B, 128, 32, 32)
            *up(128, 64),  # (B, 64, 64, 64)
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(64, 3, 3, padding=1),  # (B, 3, 128, 128)
            nn.Tanh(),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(self.fc(z).view(-1, 512, 8, 8))


class SeedCritic(nn.Module):
    """Conv4×4 s2 3→64, then 64→128→256→512 with InstanceNorm, then Conv4×4 s2 → 4×4 map."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            *down(3, 64, norm=False),  # (B, 64, 64, 64)
            *down(64, 128),  # (B, 128, 32, 32)
            *down(128, 256),  # (B, 256, 16, 16)
            *down(256, 512),  # (B, 512, 8, 8)
            nn.Conv2d(512, 1, 4, 2, 1),  # (B, 1, 4, 4)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).view(x.shape[0], -1)  # (B, 16) patch scores


def seed_gradient_penalty(critic: nn.Module, real: Tensor, fake: Tensor) -> Tensor:
    """The notebook's penalty: ones over the 16 patch scores, norm of the summed gradient."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    scores = critic(mixed)  # (B, 16)
    (grad,) = torch.autograd.grad(
        outputs=scores,
        inputs=mixed,
        grad_outputs=torch.ones_like(scores),
        create_graph=True,
        retain_graph=True,
    )
    grad = grad.view(grad.shape[0], -1)
    return ((grad.norm(2, dim=1) - 1) ** 2).mean()


# --------------------------------------------------------------------------------------------
# Training loop


@dataclass
class SeedRun:
    generator: SeedGenerator
    steps: int
    seconds: float  # wall time of the training steps (the budget's clock)


def train_seed_wgan(
    images: Tensor,
    config: SeedConfig,
    *,
    max_steps: int | None = None,
    budget_s: float | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    on_step: Callable[[int], None] | None = None,
) -> SeedRun:
    """Train on `images` ((N, 3, 128, 128) in [-1, 1]) until `max_steps` or `budget_s` runs out.

    The clock starts at the first step, after the networks are built, as for ours.
    """
    if max_steps is None and budget_s is None:
        raise ValueError("give max_steps or budget_s")
    torch.manual_seed(seed)
    device = torch.device(device)
    gen, critic = SeedGenerator(config.latent_dim).to(device), SeedCritic().to(device)
    opt_g = torch.optim.Adam(gen.parameters(), lr=config.lr, betas=config.betas)
    opt_d = torch.optim.Adam(critic.parameters(), lr=config.lr, betas=config.betas)
    b, n = config.batch_size, len(images)
    perm, cursor, step = torch.randperm(n), 0, 0
    t0 = time.perf_counter()
    while True:
        if max_steps is not None and step >= max_steps:
            break
        if budget_s is not None and time.perf_counter() - t0 >= budget_s:
            break
        gen.train()
        critic.train()
        # the DataLoader's next shuffled batch (drop_last), reused by all critic steps
        if cursor + b > n:
            perm, cursor = torch.randperm(n), 0
        real = images[perm[cursor : cursor + b]].to(device)
        cursor += b
        for _ in range(config.n_critic):
            fake = gen(torch.randn(b, config.latent_dim, device=device))
            gp = seed_gradient_penalty(critic, real, fake.detach())
            d_loss = -(critic(real).mean() - critic(fake.detach()).mean())
            d_loss = d_loss + config.gp_lambda * gp
            opt_d.zero_grad()
            d_loss.backward()
            opt_d.step()
        fake = gen(torch.randn(b, config.latent_dim, device=device))
        g_loss = -critic(fake).mean()
        opt_g.zero_grad()
        g_loss.backward()
        opt_g.step()
        step += 1
        if on_step is not None:
            on_step(step)
    return SeedRun(gen.eval(), step, time.perf_counter() - t0)
