"""GAN objectives: WGAN-GP critic/generator losses, the per-sample gradient penalty, BCE."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def gradient_penalty(
    critic: Callable[..., Tensor],
    real: Tensor,
    fake: Tensor,
    *cond: Tensor,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Gulrajani et al. (2017) penalty `E[(‖∇D(x̂)‖₂ − 1)²]`, one norm per sample.

    `x̂` interpolates real and fake with one mixing weight per sample; the conditions `cond`
    (if any) are passed to the critic unchanged, so only the generated quantity is
    interpolated. The gradient is flattened and its norm taken over every non-batch
    dimension, and `create_graph=True` lets the penalty itself be back-propagated.

    The mixing weights come from `generator` (a CPU generator: the same draws on any device,
    saved and restored with the run), else from the default generator of `real`'s device.
    """
    b = real.shape[0]
    shape = (b,) + (1,) * (real.dim() - 1)
    if generator is not None:
        alpha = torch.rand(shape, generator=generator).to(real.device, real.dtype)
    else:
        alpha = torch.rand(shape, device=real.device, dtype=real.dtype)
    mixed = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    scores = critic(mixed, *cond)
    if scores.shape != (b,):
        raise ValueError(
            f"critic must return one score per sample, got shape {tuple(scores.shape)}"
        )
    (grad,) = torch.autograd.grad(scores.sum(), mixed, create_graph=True)
    norms = grad.reshape(b, -1).norm(2, dim=1)  # (B,)
    return ((norms - 1) ** 2).mean()


def wgan_critic_loss(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    """Critic minimizes `D(fake) − D(real)` (the negative Wasserstein estimate)."""
    return fake_scores.mean() - real_scores.mean()


def wgan_generator_loss(fake_scores: Tensor) -> Tensor:
    return -fake_scores.mean()


def bce_discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """DCGAN discriminator loss on logits (numerically stable BCE)."""
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return real + fake


def bce_generator_loss(fake_logits: Tensor) -> Tensor:
    """Non-saturating generator loss: `−log D(G(z))`."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
