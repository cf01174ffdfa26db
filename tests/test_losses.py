"""The per-sample gradient penalty and the GAN losses."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from training.losses import (
    bce_discriminator_loss,
    bce_generator_loss,
    gradient_penalty,
    wgan_critic_loss,
    wgan_generator_loss,
)


class LinearCritic(nn.Module):
    """score(x) = <w, x>: its gradient is `w` for every sample."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1) * self.w.flatten()).sum(1)


def test_penalty_is_zero_for_unit_norm_linear_critic():
    torch.manual_seed(0)
    w = torch.randn(3, 8, 8)
    w = w / w.norm()
    real, fake = torch.randn(5, 3, 8, 8), torch.randn(5, 3, 8, 8)
    assert gradient_penalty(LinearCritic(w), real, fake).item() == pytest.approx(0.0, abs=1e-10)


def test_penalty_of_linear_critic_with_norm_two_is_one():
    w = torch.full((2, 4), 2.0 / (8**0.5))  # ‖w‖ = 2 → (2 − 1)² = 1
    real, fake = torch.randn(3, 2, 4), torch.randn(3, 2, 4)
    assert gradient_penalty(LinearCritic(w), real, fake).item() == pytest.approx(1.0, rel=1e-6)


def test_penalty_takes_one_norm_per_sample():
    # score = s_i · sum(x_i): sample i has gradient norm s_i · sqrt(D), with D = 4·4 = 16
    scales = torch.tensor([0.25, 1.0, 3.0])

    def critic(x: torch.Tensor) -> torch.Tensor:
        return scales * x.flatten(1).sum(1)

    real, fake = torch.randn(3, 4, 4), torch.randn(3, 4, 4)
    norms = scales * 4.0
    expected = ((norms - 1) ** 2).mean()
    # a batch-wide norm would give (‖all grads‖ − 1)², a different number
    batch_norm = (norms.pow(2).sum().sqrt() - 1) ** 2
    got = gradient_penalty(critic, real, fake)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    assert got.item() != pytest.approx(batch_norm.item(), rel=1e-2)


def test_penalty_is_differentiable_wrt_critic_parameters():
    critic = nn.Sequential(nn.Flatten(), nn.Linear(12, 1), nn.Flatten(0))
    gp = gradient_penalty(critic, torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2))
    gp.backward()
    assert critic[1].weight.grad is not None and critic[1].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("shape", [(4, 1), (4, 2, 2)])
def test_penalty_rejects_critic_without_one_score_per_sample(shape):
    def critic(x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, : int(torch.tensor(shape[1:]).prod())].reshape(shape)

    with pytest.raises(ValueError, match="one score per sample"):
        gradient_penalty(critic, torch.randn(4, 3, 4, 4), torch.randn(4, 3, 4, 4))


def test_conditions_are_passed_through_unchanged():
    seen = []

    def critic(x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        seen.append(cond)
        return (x * cond).sum(1)

    cond = torch.randn(6, 3)
    gradient_penalty(critic, torch.randn(6, 3), torch.randn(6, 3), cond)
    assert seen[0] is cond


def test_wgan_and_bce_losses():
    real, fake = torch.tensor([2.0, 4.0]), torch.tensor([-1.0, 1.0])
    assert wgan_critic_loss(real, fake).item() == pytest.approx(0.0 - 3.0)
    assert wgan_generator_loss(fake).item() == pytest.approx(0.0)
    confident = bce_discriminator_loss(torch.full((3,), 20.0), torch.full((3,), -20.0))
    fooled = bce_discriminator_loss(torch.full((3,), -20.0), torch.full((3,), 20.0))
    assert confident.item() < 1e-6 < 10 < fooled.item()
    assert bce_generator_loss(torch.full((3,), 20.0)).item() < 1e-6


def test_penalty_draws_its_mixing_weights_from_the_given_generator():
    def critic(x):  # non-linear: the penalty depends on where x̂ lies
        return (x**2).flatten(1).sum(1)

    real, fake = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)

    def gp(seed: int, global_seed: int) -> float:
        torch.manual_seed(global_seed)  # the default generator must not matter
        return gradient_penalty(critic, real, fake, generator=torch.Generator().manual_seed(seed))

    assert gp(3, 0) == gp(3, 1) != gp(4, 0)
    g = torch.Generator().manual_seed(3)
    gradient_penalty(critic, real, fake, generator=g)
    assert torch.equal(g.get_state(), _after_draws(3, 4))  # one weight per sample, no more


def _after_draws(seed: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    torch.rand(n, generator=g)
    return g.get_state()
