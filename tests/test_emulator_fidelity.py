"""The cWGAN-GP's robust defaults: per-object error scale, best validation epoch, enough steps;
and the verdict every emulator job states against the Gaussian baseline."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from scipy import stats

from models.checkpoint import load_checkpoint
from models.emulator import MIN_FLUX_RATIO, EmulatorConfig, EmulatorScalers, Generator
from training.emulator.data import fit_scalers, load_emulator_catalog
from training.emulator.detector import detection_figures
from training.emulator.evaluate import verdict
from training.emulator.gan import train_emulator_gan
from training.emulator.metrics import Bins
from training.presets import PresetError, build_config

torch.set_num_threads(1)


def _train_split(catalog):
    return load_emulator_catalog(catalog)["train"]


def _detected_rows(catalog):
    """The train split, and its detected rows' inputs (float64 array and tensor), observed
    magnitudes and errors (tensors)."""
    train = _train_split(catalog)
    det = train.only_detected()
    x64 = det.x.astype(np.float64)
    obs, err = (torch.from_numpy(a).double() for a in (det.observed, det.magerr))
    return train, x64, torch.from_numpy(x64), obs, err


def test_error_scale_round_trips_and_evens_out_the_target(catalog):
    train = _train_split(catalog)
    det = train.only_detected()
    x = torch.from_numpy(det.x).double()
    obs = torch.from_numpy(det.observed).double()
    err = torch.from_numpy(det.magerr).double()
    plain = fit_scalers(train, error_scale=False)
    scaled = fit_scalers(train, error_scale=True)
    assert not plain.scale_coef and len(scaled.scale_coef) == 30

    target = scaled.target(obs, x, err)
    back = scaled.observed(target, x)
    torch.testing.assert_close(back, torch.cat([obs, err], dim=1), rtol=0, atol=1e-9)
    numpy_back = scaled.observed_numpy(target.numpy(), det.x.astype(np.float64))
    np.testing.assert_allclose(numpy_back, back.numpy(), atol=1e-9)

    # bright objects' offsets: a sliver of the target's spread without the scale, not with it
    bright = det.x[:, 1] < np.quantile(det.x[:, 1], 0.2)
    for scalers, lo, hi in ((plain, 0.0, 0.25), (scaled, 0.4, 2.5)):
        t = scalers.target(obs, x, err).numpy()
        ratio = t[bright, :3].std(axis=0) / t[:, :3].std(axis=0)
        assert ((ratio > lo) & (ratio < hi)).all(), ratio


def test_flux_errors_tie_each_magnitude_error_to_its_own_offset(catalog):
    """With `flux_errors` the generated error columns are ln(σ_F / F_true): a draw's magnitude
    error is its flux error over its own measured flux, so moving only the offset column
    scales the error by 10^(0.4 Δoffset), and the catalog's rows round-trip exactly."""
    train, x64, x, obs, err = _detected_rows(catalog)
    for error_scale in (False, True):
        scalers = fit_scalers(train, error_scale=error_scale, flux_errors=True)
        assert scalers.flux_errors
        target = scalers.target(obs, x, err)
        back = scalers.observed(target, x)
        torch.testing.assert_close(back, torch.cat([obs, err], dim=1), rtol=0, atol=1e-9)
        np.testing.assert_allclose(scalers.observed_numpy(target.numpy(), x64), back.numpy())

        draws = torch.randn(len(x64), 6, generator=torch.Generator().manual_seed(1))
        moved = draws.clone()
        moved[:, :3] += 0.5
        a, b = (scalers.observed_numpy(t.numpy(), x64) for t in (draws, moved))
        delta = b[:, :3] - a[:, :3]
        assert (delta > 0).all()
        np.testing.assert_allclose(b[:, 3:] / a[:, 3:], 10 ** (0.4 * delta), rtol=1e-9)
        # the flux error a draw carries: σ_F / F_true = magerr · 10^(-0.4 · offset) / 1.086
        flux_err = a[:, 3:] * 10 ** (-0.4 * (a[:, :3] - x64[:, :3]))
        flux_err_b = b[:, 3:] * 10 ** (-0.4 * (b[:, :3] - x64[:, :3]))
        np.testing.assert_allclose(flux_err, flux_err_b, rtol=1e-9)

    # without the flag the error column stays where it was drawn whatever the offset
    plain = fit_scalers(train, error_scale=True)
    assert not plain.flux_errors
    a, b = (plain.observed_numpy(t.numpy(), x64) for t in (draws, moved))
    np.testing.assert_allclose(a[:, 3:], b[:, 3:])
    # a catalog without errors has no error columns to tie
    no_err = fit_scalers(train, with_errors=False, error_scale=True, flux_errors=True)
    assert not no_err.flux_errors and no_err.out_dim == 3


def test_error_components_hold_the_bands_errors_to_their_common_line(catalog):
    """With `error_basis` the error columns are drawn as their principal components, the thin
    ones widened: the catalog round-trips, and a generator's miss of the same size in every
    generated column moves the bands' errors apart far less than drawn column by column."""
    train, x64, x, obs, err = _detected_rows(catalog)
    columns = fit_scalers(train, error_scale=True, flux_errors=True)
    comps = fit_scalers(train, error_scale=True, flux_errors=True, error_basis=True)
    assert columns.error_basis == () and len(comps.error_basis) == 9

    target = comps.target(obs, x, err)
    torch.testing.assert_close(
        comps.observed(target, x), torch.cat([obs, err], dim=1), rtol=0, atol=1e-9
    )
    # uncorrelated, of standard deviation λ^¼ for their directions' variances λ
    cov = np.cov(target[:, 3:].numpy(), rowvar=False)
    var = np.linalg.eigvalsh(np.cov(columns.target(obs, x, err)[:, 3:].numpy(), rowvar=False))
    np.testing.assert_allclose(cov, np.diag(np.sqrt(var[::-1])), atol=1e-9)
    # the analytic catalog's errors lie close to one line: all but 3 % of the variance in one
    assert var[:2].sum() < 0.03 * var.sum(), var

    def band_miss(scalers) -> float:
        """How far ln(err_r / err_i) moves, sd over the objects, when every generated error
        column misses by 0.1 of its unit spread."""
        t = scalers.target(obs, x, err).numpy()
        moved = t.copy()
        moved[:, 3:] += 0.1 * np.random.default_rng(3).standard_normal((len(t), 3))
        e, f = (scalers.observed_numpy(a, x64)[:, 3:] for a in (t, moved))
        return float(np.std(np.log(f[:, 0] / f[:, 1]) - np.log(e[:, 0] / e[:, 1])))

    assert band_miss(comps) < 0.5 * band_miss(columns), (band_miss(comps), band_miss(columns))


def test_flux_offsets_are_unit_normal_where_the_noise_is_the_whole_scatter(catalog):
    """With `flux_offsets` each offset is the flux's deviation in units of the object's own
    flux error: on the analytic catalog (Gaussian flux noise, sizes that differ) it has no
    excess kurtosis, where offset / s, a scale mixture over the sizes, has ~1. The catalog
    round-trips, and a draw whose flux would fall to nothing is kept at 1 % of the truth."""
    train, x64, x, obs, err = _detected_rows(catalog)
    scale = fit_scalers(train, error_scale=True, flux_errors=True)
    flux = fit_scalers(train, error_scale=True, flux_errors=True, flux_offsets=True)
    assert flux.flux_offsets and not scale.flux_offsets

    target = flux.target(obs, x, err)
    back = flux.observed(target, x)
    torch.testing.assert_close(back, torch.cat([obs, err], dim=1), rtol=0, atol=1e-9)
    np.testing.assert_allclose(flux.observed_numpy(target.numpy(), x64), back.numpy(), atol=1e-9)

    k_scale = stats.kurtosis(scale.target(obs, x, err)[:, :3].numpy())
    k_flux = stats.kurtosis(target[:, :3].numpy())
    assert (k_scale > 0.6).all() and (np.abs(k_flux) < 0.3).all(), (k_scale, k_flux)

    far = target.clone()
    far[:, :3] = 1e3  # far beyond the flux's own error: the flux would be negative
    kept = x64[:, :3] + flux.shift_numpy(x64) - 2.5 * np.log10(MIN_FLUX_RATIO)  # 5 mag faint
    for out in (flux.observed(far, x).numpy(), flux.observed_numpy(far.numpy(), x64)):
        np.testing.assert_allclose(out[:, :3], kept)
        assert np.isfinite(out).all()

    # it needs the flux errors and the scale; without them the flag is not set
    assert not fit_scalers(train, error_scale=True, flux_offsets=True).flux_offsets
    assert not fit_scalers(train, flux_errors=True, flux_offsets=True).flux_offsets


def test_a_biased_scattered_measurement_keeps_the_target_even(catalog):
    """Offsets biased by 0.1 mag and scattered by 0.03 mag beyond their noise (as GalSim's
    Gaussian-weighted fluxes are): the shift and the floor keep every magnitude's share of
    the target's spread near one, where dividing by the noise alone made the bright objects'
    offsets tens of units wide."""
    from dataclasses import replace

    from training.emulator.data import Split

    train = _train_split(catalog)
    rng = np.random.default_rng(0)
    extra = 0.1 + 0.03 * rng.standard_normal(train.observed.shape)
    biased = replace(train, observed=(train.observed + extra).astype(np.float32))
    assert isinstance(biased, Split)
    det = biased.only_detected()
    x = torch.from_numpy(det.x).double()
    obs = torch.from_numpy(det.observed).double()
    err = torch.from_numpy(det.magerr).double()
    scalers = fit_scalers(biased, error_scale=True)
    assert len(scalers.shift_coef) == 30 and len(scalers.scale_floor) == 3
    floor = np.asarray(scalers.scale_floor)
    assert ((floor > 0.015) & (floor < 0.06)).all(), floor  # the 0.03 mag scatter
    # the same catalog without the extra scatter has (almost) no floor
    assert max(fit_scalers(train, error_scale=True).scale_floor) < 0.01

    target = scalers.target(obs, x, err)
    back = scalers.observed(target, x)
    torch.testing.assert_close(back, torch.cat([obs, err], dim=1), rtol=0, atol=1e-9)
    np.testing.assert_allclose(
        scalers.observed_numpy(target.numpy(), det.x.astype(np.float64)), back.numpy(), atol=1e-9
    )
    t = target.numpy()[:, :3]
    edges = np.quantile(det.x[:, 1], [0, 0.2, 0.4, 0.6, 0.8, 1])
    for lo, hi in itertools.pairwise(edges):
        m = (det.x[:, 1] >= lo) & (det.x[:, 1] <= hi)
        assert (np.abs(t[m].mean(axis=0)) < 0.5).all() and (t[m].std(axis=0) < 2).all()


def test_the_noise_skip_is_on_where_the_noise_is_the_whole_scatter(catalog):
    """`noise_skip="auto"`: on for the analytic catalog, whose offsets are their noise; off
    once the offsets scatter by 0.03 mag more (a galaxy's shape and size, as in GalSim)."""
    from dataclasses import replace

    from training.emulator.data import noise_share
    from training.emulator.gan import NOISE_SKIP_SHARE, use_noise_skip

    train = _train_split(catalog)
    rng = np.random.default_rng(0)
    extra = 0.03 * rng.standard_normal(train.observed.shape)
    scattered = replace(train, observed=(train.observed + extra).astype(np.float32))
    config = build_config("balrog")
    assert config.noise_skip == "auto"
    for split, on in ((train, True), (scattered, False)):
        scalers = fit_scalers(split, error_scale=True)
        share = noise_share(scalers, split)
        assert (share >= NOISE_SKIP_SHARE).all() == on, share
        assert use_noise_skip(config, scalers, split) is on
        # an explicit setting is kept whatever the catalog
        for forced in (True, False):
            assert use_noise_skip(replace(config, noise_skip=forced), scalers, split) is forced
    assert (noise_share(fit_scalers(train, error_scale=False), train) == 0).all()
    for bad in ("sometimes", 1):
        with pytest.raises(PresetError, match=r"noise_skip.*true, false or auto"):
            build_config("balrog", {"noise_skip": bad})


@pytest.mark.parametrize("key", ["flux_offsets", "detection_input"])
def test_auto_settings_follow_the_noise_skip_unless_set(key):
    from dataclasses import replace

    from training.emulator import gan

    decide = {"flux_offsets": gan.use_flux_offsets, "detection_input": gan.use_detection_input}
    config = build_config("balrog")
    assert getattr(config, key) == "auto"
    for skip in (True, False):
        assert decide[key](config, skip) is skip
        for forced in (True, False):
            assert decide[key](replace(config, **{key: forced}), skip) is forced
    assert getattr(build_config("balrog", {key: True}), key) is True
    for bad in ("sometimes", 1):
        with pytest.raises(PresetError, match=rf"{key}.*true, false or auto"):
            build_config("balrog", {key: bad})


def test_auto_members_are_three_with_the_noise_skip_and_one_without():
    from training.emulator.gan import AUTO_MEMBERS, use_members

    config = build_config("balrog")
    assert config.members == "auto" and AUTO_MEMBERS == 3
    assert use_members(config, True) == 3 and use_members(config, False) == 1
    for asked in (1, 2, 8):  # an explicit count is kept whatever the catalog
        assert use_members(build_config("balrog", {"members": asked}), False) == asked
    assert build_config("balrog", {"members": 2.0}).members == 2
    for bad, why in ((0, "between 1 and 8"), (9, "between 1 and 8"), (2.5, "whole number")):
        with pytest.raises(PresetError, match=rf"members.*{why}"):
            build_config("balrog", {"members": bad})
    with pytest.raises(PresetError, match=r"members.*a number"):
        build_config("balrog", {"members": "many"})


def test_flux_offsets_forced_on_need_the_flux_error():
    # forced on, it needs the flux error it divides by; "auto" just stays off without it
    with pytest.raises(PresetError, match=r"flux_offsets.* needs error_scale, flux_errors true"):
        build_config("balrog", {"flux_offsets": True, "flux_errors": False, "error_scale": False})
    assert build_config("balrog", {"flux_errors": False}).flux_offsets == "auto"


def test_match_spread_gives_the_served_generator_the_targets_median_and_width(catalog):
    from training.emulator.data import target_tensors
    from training.emulator.gan import match_spread

    train = _train_split(catalog)
    scalers = fit_scalers(train, error_scale=True)
    cpu = torch.device("cpu")
    cond, true, target = target_tensors(scalers, train.only_detected(), cpu)
    q = torch.tensor([0.16, 0.5, 0.84], dtype=target.dtype)

    def quantiles(g):
        z = torch.randn(len(target), 8, generator=torch.Generator().manual_seed(5))
        with torch.no_grad():
            return torch.quantile(g(z, cond, true), q, dim=0)

    torch.manual_seed(0)
    g = Generator(EmulatorConfig(out_dim=6, noise_skip=True, noise_mix=True))
    with torch.no_grad():  # a generator 10 % too narrow and 0.2 off in its offsets
        g.mix.bias.mul_(0.9)
        g.trunk.net[-1].bias[:3] += 0.2
    matched = match_spread(g, scalers, train, cpu, seed=0)
    assert matched is not None
    assert all(1.0 < f < 1.25 for f in matched["spread_factor"][:3]), matched  # widened
    want, have = torch.quantile(target, q, dim=0), quantiles(g)  # other noise than the fit's
    torch.testing.assert_close(have[1, :3], want[1, :3], rtol=0, atol=0.05)
    width = (have[2] - have[0]) / (want[2] - want[0])
    assert ((width[:3] > 0.95) & (width[:3] < 1.05)).all(), width
    # matched once, the second match changes (almost) nothing
    again = match_spread(g, scalers, train, cpu, seed=0)
    assert again is not None and all(abs(f - 1) < 1e-3 for f in again["spread_factor"][:3])
    # only with the mixed skip (the unmixed skip's noise bypasses every layer)
    for cfg in (EmulatorConfig(out_dim=6, noise_skip=True), EmulatorConfig(out_dim=6)):
        assert match_spread(Generator(cfg), scalers, train, cpu, seed=0) is None


def test_checkpoints_without_a_scale_load_as_before(catalog):
    scaled = fit_scalers(_train_split(catalog), error_scale=True)
    new_keys = ("scale_coef", "shift_coef", "scale_floor", "flux_errors", "error_basis")
    old = {k: v for k, v in scaled.to_dict().items() if k not in new_keys}
    loaded = EmulatorScalers.from_dict(old)
    assert not loaded.flux_errors and loaded.error_basis == ()
    assert loaded.scale_coef == () and loaded.ln_scale_numpy(np.ones((2, 9))) is None
    assert loaded.shift_coef == () and loaded.shift_numpy(np.ones((2, 9))) is None
    target = np.zeros((2, 6))
    x = np.full((2, 9), 1.0)
    x[:, :3] = 22.0
    out = loaded.observed_numpy(target, x)
    mean = np.asarray(loaded.delta_mean)  # the old rule: offset and ln magerr de-standardized
    expected = np.tile(np.concatenate([22.0 + mean[:3], np.exp(mean[3:])]), (2, 1))
    np.testing.assert_allclose(out, expected)


def test_min_steps_runs_more_epochs_on_a_small_catalog(tmp_path, catalog):
    base = {"detector_epochs": 1, "epochs": 1, "device": "cpu", "checkpoint_every": 100}
    short = train_emulator_gan(
        build_config("balrog", {**base, "min_steps": 0}), catalog, tmp_path / "a"
    )
    longer = train_emulator_gan(
        build_config("balrog", {**base, "min_steps": 4}), catalog, tmp_path / "b"
    )
    assert short["step"] < 4 <= longer["step"]


def test_the_best_validation_epoch_of_the_second_half_is_served(tmp_path, catalog):
    base = {"detector_epochs": 1, "device": "cpu", "max_steps": 5, "batch_size": 1000}
    # unmatched: the spread match changes the served weights of the last epoch too
    config = build_config("balrog", {**base, "match_spread": False})
    result = train_emulator_gan(config, catalog, tmp_path / "run")
    lines = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").open()]
    full = load_checkpoint(result["checkpoint"])
    served = load_checkpoint(result["model"]).ema
    members = full.training_state["members"]  # the preset's three generators, each its own
    bests = []
    for j, state in enumerate(members):
        key = f"val_score_{j}"
        scores = {line["epoch"]: line[key] for line in lines if key in line}
        assert len(scores) >= 3
        # its best of the second half (ties go to the later epoch); the first is a burn-in
        second_half = [e for e in scores if e > max(scores) // 2]
        best = min(second_half, key=lambda e: (scores[e], -e))
        assert state["best_epoch"] == best
        bests.append(best)
        # served: that epoch's EMA, which is the last one exactly when the best is the last
        last = state["ema"]
        same = all(torch.equal(served[f"members.{j}.{k}"], last[k]) for k in last)
        assert same == (best == max(scores))
    assert len({tuple(m["ema"]["trunk.net.0.bias"].tolist()) for m in members}) == 3
    assert result["metrics"]["best_epoch"] == max(bests)
    # the job's result says what the served model achieved, against the Gaussian
    metrics = result["metrics"]
    counts = metrics["vs_baseline"]
    detected = metrics["evaluated_on"]["detected"]
    assert detected > 0 and metrics["verdict"] == verdict(counts, detected)
    assert sum(counts.values()) >= 14
    assert metrics["us_per_object"] > 0
    assert 0 <= metrics["detection"]["completeness_error_max"] <= 1


def test_verdict_says_when_a_model_loses_to_the_gaussian():
    assert verdict({"better": 12, "tie": 1, "worse": 1}) == (
        "better than the Gaussian baseline on 12 of 14 figures (tied on 1, worse on 1)"
    )
    assert verdict({"better": 2, "tie": 3, "worse": 9}) == (
        "worse than the Gaussian baseline on 9 of 14 figures: do not use it for science"
    )
    assert verdict({"better": 5, "tie": 5, "worse": 4}).startswith("no clear gain")
    # without a majority, the ties are named with the test objects whose noise they are within
    unclear = verdict({"better": 9, "tie": 11, "worse": 0}, detected=1650)
    assert unclear.startswith("no clear gain") and "1,650 detected test objects" in unclear
    assert "detected" not in verdict({"better": 12, "tie": 1, "worse": 1}, detected=1650)
    assert verdict({}).startswith("not compared")


def test_detection_figures_see_a_miscalibrated_detector():
    rng = np.random.default_rng(0)
    n = 40_000
    x = np.ones((n, 9))
    x[:, :3] = rng.uniform(20.0, 25.0, (n, 1)) + rng.normal(0, 0.1, (n, 3))
    x[:, 3:] = rng.lognormal(0.0, 0.2, (n, 6))
    p = 1.0 / (1.0 + np.exp(2.0 * (x[:, 1] - 23.5)))
    detected = rng.random(n) < p
    bins = Bins.from_inputs(x)
    good = detection_figures(x, p, detected, bins)
    bad = detection_figures(x, np.clip(p + 0.05, 0, 1), detected, bins)
    assert good["completeness_error_max"] < 0.03 < bad["completeness_error_max"]
    assert good["ece_mag_bins_max"] < 0.03 < bad["ece_mag_bins_max"]
    assert len(good["ece_mag_bins"]) == len(good["ece_mag_bin_edges_i"]) - 1


def test_epochs_asked_for_are_the_epochs_that_run():
    assert build_config("balrog", {"epochs": 5}).min_steps == 0
    assert build_config("balrog", {"epochs": 5, "min_steps": 7}).min_steps == 7
    assert build_config("balrog").min_steps == build_config("balrog", {"lr": 1e-4}).min_steps > 0


def test_the_error_scale_works_on_a_catalog_without_errors(tmp_path):
    from tests.faults.conftest import write_catalog

    path = tmp_path / "no_errors.parquet"
    write_catalog(path, rows=1200)
    cfg = {"detector_epochs": 1, "device": "cpu", "max_steps": 3, "batch_size": 64}
    result = train_emulator_gan(build_config("balrog", cfg), path, tmp_path / "run")
    ckpt = load_checkpoint(result["model"])
    scalers = EmulatorScalers.from_dict(ckpt.preprocessing)
    assert scalers.scale_coef and scalers.out_dim == 3
    x = torch.tensor([[22.0, 21.5, 21.2, 5.0, 6.0, 8.0, 1.0, 0.9, 0.95]])
    observed = torch.tensor([[22.1, 21.4, 21.3]])
    back = scalers.observed(scalers.target(observed, x), x)
    torch.testing.assert_close(back, observed, rtol=0, atol=1e-4)
