"""The flow emulator: training, exact resume, serving with errors and the out-of-domain flag."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from models.checkpoint import load_checkpoint
from models.columns import INPUTS, MAGERR
from models.emulator_sampler import EmulatorSampler
from models.flow import FlowConfig, OffsetFlow
from models.kinds import EMULATOR, family_of
from training.emulator.files import emulate_file
from training.emulator.flow import train_emulator_flow
from training.presets import FlowTrainConfig

torch.set_num_threads(1)

SMALL = dict(hidden=32, transforms=2, detector_epochs=2, device="cpu", batch_size=256)


@pytest.fixture(scope="module")
def model(catalog, tmp_path_factory) -> Path:
    cfg = replace(FlowTrainConfig(), epochs=6, **SMALL)
    return Path(train_emulator_flow(cfg, catalog, tmp_path_factory.mktemp("run"))["model"])


def test_flow_maps_noise_row_by_row_and_inverts():
    flow = OffsetFlow(FlowConfig(hidden=16, transforms=2)).eval()
    z, cond, true = torch.randn(7, 6), torch.randn(7, 6), torch.randn(7, 3)
    with torch.no_grad():
        x = flow(z, cond, true)
        # row 3 alone gives the same output: rows never interact
        assert torch.allclose(flow(z[3:4], cond[3:4], true[3:4]), x[3:4], atol=1e-6)
        assert torch.isfinite(flow.log_prob(x, cond, true)).all()
    assert family_of("cflow") == EMULATOR


def test_trained_flow_is_a_weights_only_checkpoint_served_with_errors(model, catalog):
    ckpt = load_checkpoint(model)  # weights_only loading
    assert ckpt.kind == "cflow" and ckpt.training_state is None
    em = EmulatorSampler.load(model, device="cpu")
    assert em.emulates_errors and em.noise_dim == 6
    df = pd.read_parquet(catalog)
    x = df[list(INPUTS)].to_numpy(np.float32)[:3000]
    rows = em.emulate(x, 2, seed=3)
    det = rows.detected
    assert 0.4 < det.mean() < 0.95
    assert np.isfinite(rows.mags[det]).all() and np.isnan(rows.mags[~det]).all()
    assert (rows.magerr[det] > 0).all() and np.isnan(rows.magerr[~det]).all()
    # errors grow with magnitude, as in the simulation
    true_i = np.repeat(x[:, 1], 2)
    bright, faint = det & (true_i < 21.5), det & (true_i > 23.5)
    assert np.median(rows.magerr[faint, 1]) > 3 * np.median(rows.magerr[bright, 1])


def test_a_row_depends_only_on_seed_and_position(model, catalog):
    em = EmulatorSampler.load(model, device="cpu")
    x = pd.read_parquet(catalog)[list(INPUTS)].to_numpy(np.float32)[:2500]
    whole = em.emulate(x, 1, seed=9)
    noise, u = em.draws(500, 1, seed=9, start=1500)
    part = em.sample_outputs(x[1500:2000], noise, u)
    np.testing.assert_array_equal(part.mags, whole.mags[1500:2000])
    np.testing.assert_array_equal(part.magerr, whole.magerr[1500:2000])
    np.testing.assert_array_equal(part.detected, whole.detected[1500:2000])
    assert not np.array_equal(em.emulate(x, 1, seed=10).detected, whole.detected)


def test_inputs_outside_the_training_ranges_are_flagged(model, catalog, tmp_path):
    df = pd.read_parquet(catalog)[list(INPUTS)].head(50).copy()
    df.loc[3, "true_mag_i"] = 33.0  # far fainter than any training galaxy
    df.loc[7, "psf_fwhm_z"] = 4.0  # worse seeing than any training row
    out = emulate_file(model, _write(df, tmp_path / "in.csv"), tmp_path / "out.parquet", seed=1)
    written = pd.read_parquet(tmp_path / "out.parquet")
    assert out["out_of_domain_rows"] == 2
    assert np.flatnonzero(written["out_of_domain"].to_numpy()).tolist() == [3, 7]
    assert set(MAGERR) <= set(written.columns)


def test_cancel_and_resume_equals_an_uninterrupted_run(catalog, tmp_path):
    cfg = replace(FlowTrainConfig(), epochs=2, **SMALL)
    whole = train_emulator_flow(cfg, catalog, tmp_path / "whole")
    calls = {"n": 0}

    def stop_after_five() -> bool:
        calls["n"] += 1
        return calls["n"] == 5 + cfg.detector_epochs

    first = train_emulator_flow(cfg, catalog, tmp_path / "cut", should_stop=stop_after_five)
    assert first["status"] == "cancelled" and 0 < first["step"] < whole["step"]
    done = train_emulator_flow(cfg, catalog, tmp_path / "cut")
    assert done["status"] == "succeeded" and done["step"] == whole["step"]
    a, b = load_checkpoint(whole["model"]).ema, load_checkpoint(done["model"]).ema
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _write(df: pd.DataFrame, path: Path) -> Path:
    df.to_csv(path, index=False)
    return path


def test_job_result_has_the_figures_of_cosmogan_evaluate_on_a_des_like_catalog(catalog, tmp_path):
    from training.evaluate import evaluate

    # DES names, and detected rows with no magnitude in one band (non-positive flux)
    df = pd.read_parquet(catalog)
    gone = df.index[df["detected"]][::15]
    df.loc[gone, "mag_z"] = np.nan
    df = df.rename(columns={"true_mag_r": "BDF_MAG_DERED_CALIB_R", "psf_fwhm_i": "FWHM_WMEAN_I"})
    path = tmp_path / "des.parquet"
    df.to_parquet(path)
    cfg = replace(FlowTrainConfig(), epochs=1, **SMALL)
    result = train_emulator_flow(cfg, path, tmp_path / "run")
    report = evaluate(result["model"], data=path, device="cpu")
    figures = result["metrics"]["figures"]  # the metric schema of every training job
    for key in ("ks_i", "ks_z", "completeness_mae", "ks_cond_bins_mean"):
        assert figures[key] == report["figures"]["ours"][key]
    assert figures["c2st_auc"] == report["classifier_auc"]["ours"]["auc"]
    assert result["metrics"]["baseline"]["ks_i"] == report["figures"]["gaussian"]["ks_i"]
    assert (tmp_path / "run" / "evaluation.json").is_file()
