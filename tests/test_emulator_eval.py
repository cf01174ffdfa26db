"""Emulator evaluation: figures, the floor, the two-sample classifier, baselines, report, plots."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.conftest import cosmogan_home
from training.emulator import balrog
from training.emulator.baselines import GaussianBaseline
from training.emulator.c2st import auc, classifier_auc
from training.emulator.data import Split, load_emulator_catalog
from training.emulator.evaluate import evaluate_emulator, load_test
from training.emulator.flow import train_emulator_flow
from training.emulator.gan import train_emulator_gan
from training.emulator.metrics import Bins, Output, figures, ks_statistic
from training.emulator.plots import write_plots
from training.evaluate import evaluate
from training.presets import FlowTrainConfig, build_config

torch.set_num_threads(1)

ROWS = 6000


@pytest.fixture(scope="module")
def draws(tmp_path_factory):
    """Two analytic mini-Balrog draws of the same 6,000 objects (the second: the floor)."""
    with cosmogan_home(tmp_path_factory.mktemp("home")) as home:
        kw = dict(rows=ROWS, simulator="analytic", seed=3, workers=1)
        a = balrog.build_catalog(home / "a.parquet", **kw)["path"]
        b = balrog.build_catalog(home / "b.parquet", draw_seed=4, **kw)["path"]
        yield a, b


def _sim_output(s: Split) -> Output:
    return Output(s.observed.astype(np.float64), s.detected, s.magerr.astype(np.float64))


def test_ks_statistic_matches_scipy():
    from scipy import stats

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=500), rng.normal(0.1, 1.0, 700)
    assert ks_statistic(a, b) == pytest.approx(stats.ks_2samp(a, b).statistic)


def test_figures_are_zero_for_the_simulation_itself_and_see_shifts_and_missed_objects(draws):
    test, _ = load_test(draws[0], "all", 0, None)
    bins = Bins.from_inputs(test.x.astype(np.float64))
    same = figures(test, _sim_output(test), bins)
    assert same["ks_i"] == 0 and same["w1_i"] == 0 and same["completeness_mae"] == 0
    assert same["ks_magerr_i"] == 0 and same["ks_cond_bins_mean"] == 0
    shifted = _sim_output(test)
    shifted.mags = shifted.mags + 0.3
    f = figures(test, shifted, bins)
    assert f["w1_i"] == pytest.approx(0.3, abs=1e-4) and f["ks_mag_bins_mean"] > 0.1
    assert f["ks_r-i"] < 1e-9  # a common shift leaves the colours alone
    missed = _sim_output(test)
    missed.detected = test.detected & (np.arange(len(test)) % 2 == 0)
    assert figures(test, missed, bins)["completeness_mae"] > 0.05


def test_second_draw_is_near_the_floor_and_the_classifier_sees_a_joint_error(draws):
    test, floor = load_test(draws[0], "all", 0, draws[1])
    assert floor is not None
    bins = Bins.from_inputs(test.x.astype(np.float64))
    f = figures(test, floor, bins)
    n = test.detected.sum()
    assert 0 < f["ks_i"] < 3 * np.sqrt(2 / n)  # two draws: sampling noise only
    same = classifier_auc(test, floor, seed=0)
    assert abs(same["auc"] - 0.5) < 4 * same["auc_sd"] + 0.02
    # swap the r and i noise of every object: each band's distribution is nearly kept,
    # the r−i relation to the inputs is not
    swapped = _sim_output(test)
    off = swapped.mags - test.x[:, :3]
    swapped.mags = test.x[:, :3] + off[:, [1, 0, 2]]
    assert classifier_auc(test, swapped, seed=0)["auc"] > same["auc"] + 0.05


def test_floor_must_be_a_draw_of_the_same_objects(draws, tmp_path):
    import pandas as pd

    other = pd.read_parquet(draws[1])
    other.loc[0, "true_mag_i"] += 0.5
    path = tmp_path / "other.parquet"
    other.to_parquet(path)
    with pytest.raises(ValueError, match="not a draw of the objects"):
        load_test(draws[0], "all", 0, path)


def test_auc_by_ranks():
    assert auc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == 1.0
    assert auc(np.array([0.5, 0.5, 0.5, 0.5]), np.array([0, 1, 0, 1])) == 0.5


def test_gaussian_baseline_recovers_offset_scatter_completeness_and_errors():
    rng = np.random.default_rng(0)
    n = 40_000
    true = rng.uniform(20.0, 24.0, (n, 3))
    x = np.concatenate([true, np.ones((n, 6))], axis=1).astype(np.float32)
    sigma = 0.05 * (true - 19.0)  # scatter grows with magnitude
    observed = (true + 0.1 + sigma * rng.standard_normal((n, 3))).astype(np.float32)
    detected = rng.random(n) < np.where(true[:, 1] < 22.0, 0.9, 0.3)
    observed[~detected] = np.nan
    magerr = np.where(detected[:, None], sigma, np.nan).astype(np.float32)
    model = GaussianBaseline(Split(x, observed, detected, magerr))
    probe = np.repeat(np.array([[20.6, 20.6, 20.6] + [1.0] * 6, [23.6] * 3 + [1.0] * 6]), 20_000, 0)
    out = model.sample(probe, seed=1)
    mags, det = out.mags, out.detected
    bright, faint = slice(0, 20_000), slice(20_000, None)
    assert np.nanmean(mags[bright] - probe[bright, :3]) == pytest.approx(0.1, abs=0.01)
    assert np.nanstd(mags[faint, 0] - probe[faint, 0]) == pytest.approx(0.05 * 4.6, rel=0.1)
    assert det[bright].mean() == pytest.approx(0.9, abs=0.02)
    assert det[faint].mean() == pytest.approx(0.3, abs=0.02)
    assert np.isnan(mags[~det]).all()
    assert np.nanmedian(out.magerr[faint, 0]) == pytest.approx(0.05 * 4.6, rel=0.1)


def test_report_puts_every_model_beside_floor_and_noise_and_plots_never_lose_it(draws, tmp_path):
    cfg = {"max_steps": 20, "detector_epochs": 2, "device": "cpu", "checkpoint_every": 100}
    gan = train_emulator_gan(build_config("balrog", cfg), draws[0], tmp_path / "run")
    train_emulator_gan(
        build_config("balrog", {**cfg, "mse_weight": 1.0}), draws[0], tmp_path / "run-mse"
    )
    flow_cfg = {"epochs": 2, "hidden": 16, "transforms": 2, "detector_epochs": 2, "device": "cpu"}
    flow = train_emulator_flow(replace(FlowTrainConfig(), **flow_cfg), draws[0], tmp_path / "flow")
    report = evaluate_emulator(
        flow["model"],
        data=draws[0],
        floor_data=draws[1],
        train_data=draws[0],
        compare_checkpoints={"gan": gan["model"]},
        baseline_checkpoint=tmp_path / "run-mse" / "model.pt",
        out_dir=tmp_path / "plots",
        bootstrap=3,
        timing_rows=1000,
    )
    assert report["split"] == "all" and report["rows"] == ROWS
    assert set(report["models"]) == {"ours", "gan", "seed_mse", "gaussian", "floor"}
    assert report["kind"] == "cflow"
    assert report["noise"]["ours"]["ks_i"] > 0
    # the floor is its own yardstick
    assert "floor" not in report["vs_floor"]
    assert report["vs_floor"]["gaussian"]["ks_i"] == pytest.approx(
        report["figures"]["gaussian"]["ks_i"] / report["figures"]["floor"]["ks_i"]
    )
    assert "ks_magerr_i" in report["figures"]["ours"]
    assert "ks_magerr_i" in report["figures"]["gan"]  # both families draw the errors
    verdicts = report["vs_gaussian"]["ours"]
    assert {v["verdict"] for v in verdicts.values()} <= {"better", "worse", "tie"}
    # ours against each model shown beside it, paired: the same differences as the figures
    assert set(report["vs_compared"]) == {"gan", "seed_mse"}
    vs_gan = report["vs_compared"]["gan"]["ks_i"]
    assert vs_gan["diff"] == pytest.approx(
        report["figures"]["ours"]["ks_i"] - report["figures"]["gan"]["ks_i"]
    )
    assert vs_gan["verdict"] in {"better", "worse", "tie"} and vs_gan["sd"] >= 0
    assert set(report["goals"]["ours"]) >= {"better_than_gaussian", "within_floor_goal"}
    assert 0.4 < report["classifier_auc"]["floor"]["auc"] < 0.6
    on_disk = json.loads((tmp_path / "plots" / "report.json").read_text())
    assert on_disk["figures"]["floor"]["ks_i"] == report["figures"]["floor"]["ks_i"]
    for path in report["plots"].values():
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # `cosmogan evaluate` dispatches every emulator kind here; the test split by default
    assert report["floor_source"].endswith(str(draws[1])) and report["floor_missing"] is None
    # without --floor-data, a catalog the simulator built gets a second draw of its test rows
    again = evaluate(gan["model"], data=draws[0], device="cpu", bootstrap=0)
    assert again["split"] == "test" and "floor" in again["models"]
    assert again["floor_missing"] is None and "second analytic draw" in again["floor_source"]
    assert 0 < again["vs_floor"]["gaussian"]["ks_i"] < np.inf


def test_a_failing_plot_is_a_warning(draws, tmp_path, caplog):
    test = load_emulator_catalog(draws[0])["test"]
    bins = Bins.from_inputs(test.x.astype(np.float64))
    with caplog.at_level(logging.WARNING):
        written = write_plots(test, {"sim": _sim_output(test)}, bins, {}, tmp_path)
    assert "floor_ratios" not in written and "colour_colour" in written
    assert "plot floor_ratios failed" in caplog.text


def test_small_catalog_plots_do_not_crash(draws, tmp_path):
    # a few hundred objects give equal density quantiles: the contour levels must still work
    test = load_emulator_catalog(draws[0])["test"].head(300)
    bins = Bins.from_inputs(test.x.astype(np.float64))
    written = write_plots(test, {"sim": _sim_output(test)}, bins, {"vs_floor": {}}, tmp_path)
    assert "colour_colour" in written
