"""Emulator evaluation: the metrics, the Gaussian baseline and the full report with plots."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from training.emulator_eval import GaussianBaseline, evaluate_emulator, model_metrics
from training.emulator_gan import Split, load_emulator_catalog, train_emulator_gan
from training.evaluate import evaluate
from training.presets import build_config

from .test_emulator_gan import make_analytic_catalog

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    return make_analytic_catalog(tmp_path_factory.mktemp("ev") / "c.parquet", 8000, seed=2)


def _edges():
    return [np.arange(17.0, 29.0, 1.0)] * 3


def test_metrics_of_the_simulation_itself_are_zero_and_grow_with_a_shift(catalog):
    test = load_emulator_catalog(catalog)["test"]
    same = model_metrics(test, test.observed.astype(np.float64), test.detected, _edges())
    assert same["ks_mean"] == 0 and same["w1_mean"] == 0 and same["completeness_mae"] == 0
    shifted = model_metrics(test, test.observed + 0.3, test.detected, _edges())
    assert shifted["w1_mean"] == pytest.approx(0.3, abs=1e-4)
    assert shifted["ks_mean"] > 0.05 and shifted["ks_condition_bins_mean"] > 0.05
    assert shifted["ks_colour_mean"] < 1e-9  # a common shift leaves the colours alone
    missed = test.detected & (np.arange(len(test)) % 2 == 0)
    fewer = model_metrics(test, test.observed.astype(np.float64), missed, _edges())
    assert fewer["completeness_mae"] > 0.1
    i_band = fewer["completeness"]["i"]
    assert len(i_band["abs_error"]) == len(i_band["edges"]) - 1


def test_gaussian_baseline_recovers_offset_scatter_and_completeness():
    rng = np.random.default_rng(0)
    n = 40_000
    true = rng.uniform(20.0, 24.0, (n, 3))
    x = np.concatenate([true, np.ones((n, 6))], axis=1).astype(np.float32)
    sigma = 0.05 * (true - 19.0)  # scatter grows with magnitude
    observed = (true + 0.1 + sigma * rng.standard_normal((n, 3))).astype(np.float32)
    detected = rng.random(n) < np.where(true[:, 1] < 22.0, 0.9, 0.3)
    model = GaussianBaseline(Split(x, observed, detected))
    probe = np.repeat(np.array([[20.6, 20.6, 20.6] + [1.0] * 6, [23.6] * 3 + [1.0] * 6]), 20_000, 0)
    mags, det = model.sample(probe, seed=1)
    bright, faint = slice(0, 20_000), slice(20_000, None)
    assert np.nanmean(mags[bright] - probe[bright, :3]) == pytest.approx(0.1, abs=0.01)
    assert np.nanstd(mags[faint, 0] - probe[faint, 0]) == pytest.approx(0.05 * 4.6, rel=0.1)
    assert det[bright].mean() == pytest.approx(0.9, abs=0.02)
    assert det[faint].mean() == pytest.approx(0.3, abs=0.02)
    assert np.isnan(mags[~det]).all()


def test_report_scores_ours_and_both_baselines_and_draws_the_plots(catalog, tmp_path):
    cfg = {"max_steps": 20, "detector_epochs": 2, "device": "cpu", "checkpoint_every": 100}
    ours = train_emulator_gan(build_config("balrog", cfg), catalog, tmp_path / "run")
    seed_variant = train_emulator_gan(
        build_config("balrog", {**cfg, "mse_weight": 1.0}), catalog, tmp_path / "run-mse"
    )
    report = evaluate_emulator(
        ours["model"], data=catalog, out_dir=tmp_path / "plots", timing_rows=5000
    )
    assert report["baseline_seed_mse"]["available"]  # found in the sibling `<run>-mse/`
    assert report["baseline_seed_mse"]["checkpoint"] == str(
        (tmp_path / "run-mse" / "model.pt").resolve()
    )
    assert set(report["models"]) == {"ours", "seed_mse", "gaussian"}
    for key in ("ks_mean", "w1_mean", "completeness_mae", "ks_condition_bins_mean"):
        row = report["summary"][key]
        values = {k: v for k, v in row.items() if k != "winner"}
        assert set(values) == {"ours", "seed_mse", "gaussian"}
        best = min(values.values())
        assert row["winner"].split(" = ") == [k for k, v in values.items() if v == best]
    assert report["seconds_per_object"] > 0  # speed is measured by `python -m bench`
    # the detector beats the best constant guess (Brier = p(1 − p) ≈ 0.2 here)
    p = report["simulated_detected_fraction"]
    assert report["detector_test"]["brier"] < 0.5 * p * (1 - p)
    assert 0 < report["models"]["ours"]["ks_r"] <= 1
    assert report["rows"] == (pd.read_parquet(catalog)["split"] == "test").sum()
    for path in report["plots"].values():
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # `cosmogan evaluate` dispatches emulator checkpoints here; an explicit baseline works too
    again = evaluate(
        seed_variant["model"], data=catalog, seed=0, device="cpu"
    )  # no out_dir: no plots
    assert "plots" not in again and again["baseline_seed_mse"]["available"] is False
    explicit = evaluate_emulator(
        ours["model"],
        data=catalog,
        baseline_checkpoint=seed_variant["model"],
        device="cpu",
        timing_rows=100,
    )
    assert explicit["summary"]["ks_mean"]["seed_mse"] == pytest.approx(
        report["summary"]["ks_mean"]["seed_mse"]
    )
