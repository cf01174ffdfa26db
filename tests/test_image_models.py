"""Image GAN networks: shapes, per-sample critics, no BatchNorm in the WGAN critic."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.image import (
    DCGANConfig,
    WGANConfig,
    WGANGenerator,
    build_critic,
    build_generator,
    network_config,
)


def _params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_wgan_shapes_and_range():
    torch.manual_seed(0)
    g, d = build_generator("wgan-gp-128", {"width": 4}), build_critic("wgan-gp-128", {"width": 4})
    x = g(torch.randn(3, 128))
    assert x.shape == (3, 3, 128, 128)
    assert x.min() >= -1 and x.max() <= 1
    assert d(x).shape == (3,)


def test_dcgan_shapes_and_logits():
    torch.manual_seed(0)
    g = build_generator("dcgan-64", {"width": 4})
    d = build_critic("dcgan-64", {"width": 4})
    x = g(torch.randn(5, 100))
    assert x.shape == (5, 3, 64, 64)
    logits = d(x)
    assert logits.shape == (5,)
    # logits, not probabilities: a sigmoid output would sit inside (0, 1)
    d.eval()
    big = d(torch.ones(2, 3, 64, 64) * 50)
    assert not ((big > 0) & (big < 1)).all()


def test_wgan_critic_has_no_batchnorm_and_scores_each_sample_alone():
    d = build_critic("wgan-gp-128", {"width": 4}).train()
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in d.modules())
    x = torch.randn(4, 3, 128, 128)
    together = d(x)
    alone = torch.cat([d(x[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


def test_width_64_matches_the_seed_generator_size():
    # the seed-000 notebook generator has 5.78 M parameters
    assert _params(WGANGenerator(WGANConfig(width=64))) == pytest.approx(5.78e6, rel=0.01)


def test_width_scales_cost():
    small = _params(build_generator("wgan-gp-128", {"width": 8}))
    large = _params(build_generator("wgan-gp-128", {"width": 16}))
    assert large > 1.5 * small


def test_config_dicts_and_errors():
    assert network_config("dcgan-64", {"width": 8}) == DCGANConfig(width=8)
    with pytest.raises(ValueError, match="unknown image model kind"):
        build_generator("vae", {})
    with pytest.raises(ValueError, match="unknown wgan-gp-128 config keys"):
        build_generator("wgan-gp-128", {"depth": 3})
