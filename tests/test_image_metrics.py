"""Image quality metrics: SWD on Laplacian-pyramid patches, power spectrum, colour."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from training.image.gan import train_image_gan
from training.image.metrics import (
    color_histogram_distance,
    evaluate_image_generator,
    laplacian_pyramid,
    psd_distance,
    swd,
)
from training.presets import build_config


def smooth(n: int, seed: int, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g)
    return F.interpolate(coarse, size=(size, size), mode="bicubic").clamp(0, 1)


def noise(n: int, seed: int, size: int = 32) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_laplacian_pyramid_levels_and_reconstruction_energy():
    x = smooth(2, 0, 64)
    levels = laplacian_pyramid(x)
    assert [lv.shape[-1] for lv in levels] == [64, 32, 16]
    # band-pass levels of a smooth image carry little energy compared with the low-pass
    assert levels[0].abs().mean() < 0.1 * levels[-1].abs().mean()


def test_identical_sets_are_zero():
    x = smooth(6, 1)
    assert swd(x, x, n_dirs=64)["swd_avg"] == pytest.approx(0.0, abs=1e-9)
    assert psd_distance(x, x) == pytest.approx(0.0, abs=1e-12)
    assert color_histogram_distance(x, x) == pytest.approx(0.0, abs=1e-12)


def test_different_sets_are_farther_than_two_samples_of_one_distribution():
    a, b, n = smooth(32, 1, 64), smooth(32, 2, 64), noise(32, 3, 64)
    same = swd(a, b, n_dirs=128)
    diff = swd(a, n, n_dirs=128)
    assert diff["swd_avg"] > 2 * same["swd_avg"]
    assert diff["swd_64"] > 4 * same["swd_64"]  # the finest level sees the noise most
    assert psd_distance(a, n) > 5 * psd_distance(a, b)


def test_colour_shift_is_seen_by_the_colour_distance():
    a, b = smooth(8, 1), smooth(8, 2)
    shifted = a.clone()
    shifted[:, 0] = (shifted[:, 0] * 0.3).clamp(0, 1)  # much less red
    assert color_histogram_distance(a, shifted) > 3 * color_histogram_distance(a, b)


def test_distances_are_symmetric():
    a, n = smooth(5, 1), noise(5, 2)
    assert swd(a, n, n_dirs=32) == pytest.approx(swd(n, a, n_dirs=32))
    assert psd_distance(a, n) == pytest.approx(psd_distance(n, a))
    assert color_histogram_distance(a, n) == pytest.approx(color_histogram_distance(n, a))


def test_swd_is_seeded():
    a, n = smooth(4, 1), noise(4, 2)
    assert swd(a, n, n_dirs=32, seed=1) == swd(a, n, n_dirs=32, seed=1)
    assert swd(a, n, n_dirs=32, seed=1) != swd(a, n, n_dirs=32, seed=2)


def test_evaluate_image_generator(tmp_path):
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    data = tmp_path / "images"
    data.mkdir()
    for i in range(16):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(data / f"{i}.png")
    config = build_config(
        "nebula",
        {"width": 4, "batch_size": 4, "sample_count": 4, "dry_run": True, "heldout_fraction": 0.3},
    )
    model = train_image_gan(config, None, tmp_path / "run")["model"]
    report = evaluate_image_generator(model, data=data, seed=3, device="cpu")
    json.dumps(report)
    assert report["seed"] == 3 and report["step"] == 2
    assert report["heldout_images"] + report["train_images"] == 16
    assert report["heldout_images"] >= 1 and report["generated_images"] == report["train_images"]
    for block in ("generated_vs_heldout", "real_vs_real_floor", "generated_vs_train"):
        assert set(report[block]) >= {"swd_avg", "psd", "color", "swd_128", "swd_16"}
    # an untrained generator is far from real noise images; the real-vs-real floor is not
    assert report["ratio_to_floor"]["psd"] > 2
    assert report["generated_vs_heldout"]["color"] > report["real_vs_real_floor"]["color"]
