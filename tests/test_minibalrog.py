"""mini-Balrog: truth, observing conditions, both simulators and the resumable catalog build."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models import columns
from training.emulator import balrog, minibalrog

SIMULATORS = ("analytic", "galsim")
# enough objects for stable statistics, few enough for GalSim (~4 ms each) to stay fast
N_OBJ = {"analytic": 4000, "galsim": 250}


def _inputs(n: int, mag: float, sky_factor: float = 1.0, fwhm: float | None = None) -> np.ndarray:
    """`n` identical galaxies of magnitude `mag` in r, i, z under the given conditions."""
    arr = np.empty((n, 9))
    arr[:, 0:3] = mag
    arr[:, 3:6] = [sky_factor * balrog.sky_sigma_median(b) for b in columns.BANDS]
    arr[:, 6:9] = [balrog.PSF_FWHM_MEDIAN[b] for b in columns.BANDS] if fwhm is None else [fwhm] * 3
    return arr


def _stats(sim: str, arr: np.ndarray, seed: int = 3) -> tuple[float, float, float]:
    """(completeness, robust scatter of i-band obs − true among detected, median offset)."""
    out = minibalrog.simulate(arr, simulator=sim, seed=seed)
    det = out[columns.DETECTED].to_numpy()
    diff = out["mag_i"].to_numpy()[det] - arr[det, 1]
    q16, q50, q84 = np.percentile(diff, [16, 50, 84]) if det.any() else (np.nan,) * 3
    return float(det.mean()), float((q84 - q16) / 2), float(q50)


@pytest.mark.parametrize("sim", SIMULATORS)
def test_output_columns_and_nan_exactly_when_undetected(sim):
    arr = _inputs(60, 24.5)
    out = minibalrog.simulate(arr, simulator=sim, seed=1)
    assert list(out.columns) == [*columns.OBSERVED, *columns.MAGERR, columns.DETECTED]
    assert len(out) == 60 and out[columns.DETECTED].dtype == bool
    det = out[columns.DETECTED].to_numpy()
    assert 0 < det.sum() < 60  # near the limit: some of each
    for names in (columns.OBSERVED, columns.MAGERR):
        values = out[list(names)].to_numpy()
        assert np.isfinite(values[det]).all() and np.isnan(values[~det]).all()
    assert (out.loc[det, list(columns.MAGERR)].to_numpy() > 0).all()


@pytest.mark.parametrize("sim", SIMULATORS)
def test_magnitude_errors_describe_the_scatter(sim):
    # bright enough to be complete: the pulls (obs − true) / magerr have unit scatter
    n = N_OBJ[sim]
    arr = _inputs(n, 22.5)
    out = minibalrog.simulate(arr, simulator=sim, seed=4)
    det = out[columns.DETECTED].to_numpy()
    assert det.mean() > 0.95
    for j, b in enumerate(columns.BANDS):
        pull = (out[f"mag_{b}"].to_numpy() - arr[:, j])[det] / out[f"magerr_{b}"].to_numpy()[det]
        q16, q84 = np.percentile(pull, [16, 84])
        assert 0.75 < (q84 - q16) / 2 < 1.3, (b, (q84 - q16) / 2)
    # fainter objects have larger errors
    faint = minibalrog.simulate(_inputs(n, 23.5), simulator=sim, seed=4)
    assert np.nanmedian(faint["magerr_i"]) > 2 * np.nanmedian(out["magerr_i"])


@pytest.mark.parametrize("sim", SIMULATORS)
def test_reproducible_and_independent_of_chunking(sim):
    rng = np.random.default_rng(0)
    arr = _inputs(24, 23.0)
    arr[:, 0:3] += rng.uniform(-1.5, 1.5, size=(24, 1))
    whole = minibalrog.simulate(arr, simulator=sim, seed=7)
    pd.testing.assert_frame_equal(whole, minibalrog.simulate(arr, simulator=sim, seed=7))
    # the second half alone, with its row ids, gives the same rows
    half = minibalrog.simulate(arr[12:], simulator=sim, seed=7, row_ids=np.arange(12, 24))
    pd.testing.assert_frame_equal(whole.iloc[12:].reset_index(drop=True), half)
    other = minibalrog.simulate(arr, simulator=sim, seed=8)
    assert not whole.equals(other)


@pytest.mark.parametrize("sim", SIMULATORS)
def test_worse_conditions_mean_more_scatter_and_fewer_detections(sim):
    n = N_OBJ[sim]
    # scatter at a bright magnitude (complete, no selection), completeness near the limit
    base_scatter = _stats(sim, _inputs(n, 22.0))[1]
    base_complete = _stats(sim, _inputs(n, 24.3))[0]
    for worse in (dict(sky_factor=2.0), dict(fwhm=1.6)):
        assert _stats(sim, _inputs(n, 22.0, **worse))[1] > 1.2 * base_scatter, worse
        assert _stats(sim, _inputs(n, 24.3, **worse))[0] < base_complete - 0.1, worse


@pytest.mark.parametrize("sim", SIMULATORS)
def test_fainter_means_more_scatter_and_fewer_detections(sim):
    n = N_OBJ[sim]
    bright, mid, faint = (_stats(sim, _inputs(n, m)) for m in (20.5, 22.0, 24.8))
    assert mid[1] > 2 * bright[1]
    assert bright[0] == 1.0 and mid[0] > 0.95
    assert faint[0] < mid[0] - 0.3


def test_galsim_measurement_misses_light_analytic_does_not():
    # bright galaxies: noise is negligible, what is left is the measurement bias
    arr = _inputs(150, 20.0)
    assert _stats("galsim", arr)[2] > 0.03  # Gaussian-weighted flux misses the wings
    assert abs(_stats("analytic", arr)[2]) < 0.01


def test_conditions_are_des_like_and_correlated_between_bands():
    cond = balrog.draw_conditions(20_000, np.random.default_rng(0))
    assert list(cond.columns) == list(columns.CONDITIONS)
    for b in columns.BANDS:
        assert np.median(cond[f"psf_fwhm_{b}"]) == pytest.approx(balrog.PSF_FWHM_MEDIAN[b], 0.02)
        assert np.median(cond[f"sky_sigma_{b}"]) == pytest.approx(balrog.sky_sigma_median(b), 0.03)
        assert (cond[f"psf_fwhm_{b}"] > 0).all() and (cond[f"sky_sigma_{b}"] > 0).all()
    # z is shallower than i, which is shallower than r
    assert (
        balrog.sky_sigma_median("r") < balrog.sky_sigma_median("i") < balrog.sky_sigma_median("z")
    )
    corr = np.corrcoef(np.log(cond[["psf_fwhm_r", "psf_fwhm_z"]].to_numpy()).T)[0, 1]
    assert 0.6 < corr < 0.95


def test_truth_is_converted_once_to_parquet(home):
    path = balrog.truth_path()
    assert path == home / "data" / balrog.TRUTH_FILE and path.is_file()
    truth = balrog.load_truth()
    assert len(truth) == balrog.TRUTH_ROWS
    assert {*columns.TRUE_MAG} <= set(truth.columns)
    assert truth["true_mag_i"].between(15, 35).all()
    mtime = path.stat().st_mtime_ns
    balrog.truth_path()
    assert path.stat().st_mtime_ns == mtime


def test_build_catalog_columns_split_and_summary(home):
    out = home / "data" / "cat.parquet"
    summary = balrog.build_catalog(out, rows=500, simulator="analytic", seed=1, workers=1)
    cat = pd.read_parquet(out)
    assert len(cat) == 500 and summary["rows"] == 500
    for name in (*columns.INPUTS, *columns.OBSERVED, columns.DETECTED, columns.SPLIT):
        assert name in cat.columns
    assert cat[columns.SPLIT].value_counts().to_dict() == {"train": 400, "val": 50, "test": 50}
    assert summary["detected_fraction"] == pytest.approx(cat[columns.DETECTED].mean(), abs=1e-4)
    assert np.isnan(cat.loc[~cat[columns.DETECTED], "mag_r"]).all()
    assert not (out.parent / "cat.parquet.parts").exists()


def test_build_catalog_independent_of_chunks_and_workers(home):
    a = home / "a.parquet"
    b = home / "b.parquet"
    balrog.build_catalog(a, rows=14, simulator="galsim", seed=2, workers=1, chunk_rows=14)
    balrog.build_catalog(b, rows=14, simulator="galsim", seed=2, workers=2, chunk_rows=5)
    pd.testing.assert_frame_equal(pd.read_parquet(a), pd.read_parquet(b))


def test_build_catalog_resumes_finished_chunks(home):
    fresh = home / "fresh.parquet"
    balrog.build_catalog(fresh, rows=300, simulator="analytic", seed=4, workers=1, chunk_rows=100)
    # an interrupted build: one chunk on disk, the rest missing
    out = home / "resumed.parquet"
    parts = home / "resumed.parquet.parts"
    manifest = {"rows": 300, "simulator": "analytic", "seed": 4, "draw_seed": 4, "chunk_rows": 100}
    balrog._prepare_parts(parts, manifest)
    inputs = balrog.sample_inputs(300, 4)[list(columns.INPUTS)].to_numpy()
    balrog._simulate_chunk(
        "analytic", inputs[100:200], np.arange(100, 200), 4, str(parts / "chunk-00001.parquet")
    )
    summary = balrog.build_catalog(
        out, rows=300, simulator="analytic", seed=4, workers=1, chunk_rows=100
    )
    assert summary["chunks_reused"] == 1 and summary["simulated_rows"] == 200
    pd.testing.assert_frame_equal(pd.read_parquet(fresh), pd.read_parquet(out))


def test_two_draws_share_the_objects_not_the_noise(home):
    kw = dict(rows=400, simulator="analytic", seed=6, workers=1)
    a = pd.read_parquet(balrog.build_catalog(home / "a.parquet", **kw)["path"])
    b = pd.read_parquet(balrog.build_catalog(home / "b.parquet", draw_seed=7, **kw)["path"])
    same = [*columns.INPUTS, columns.SPLIT, "truth_id"]
    pd.testing.assert_frame_equal(a[same], b[same])
    both = a[columns.DETECTED] & b[columns.DETECTED]
    assert both.sum() > 20
    assert (a.loc[both, "mag_i"] != b.loc[both, "mag_i"]).all()
    assert a.loc[both, "mag_i"].corr(b.loc[both, "mag_i"]) > 0.9  # the same galaxies


def test_build_catalog_discards_chunks_of_another_build(home):
    out = home / "x.parquet"
    parts = home / "x.parquet.parts"
    balrog._prepare_parts(parts, {"rows": 1, "simulator": "galsim", "seed": 9, "chunk_rows": 1})
    (parts / "chunk-00000.parquet").write_bytes(b"not parquet")
    summary = balrog.build_catalog(out, rows=50, simulator="analytic", seed=0, workers=1)
    assert summary["chunks_reused"] == 0 and len(pd.read_parquet(out)) == 50


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        (dict(rows=10, simulator="photon"), "photon"),
        (dict(rows=0), "rows"),
        (dict(rows=10, chunk_rows=0), "chunk-rows"),
    ],
)
def test_build_catalog_rejects_bad_arguments(home, kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        balrog.build_catalog(home / "bad.parquet", **kwargs)
    assert not (home / "bad.parquet").exists()


def test_more_rows_than_truth_samples_with_replacement(home):
    inputs = balrog.sample_inputs(balrog.TRUTH_ROWS + 10, 0)
    assert len(inputs) == balrog.TRUTH_ROWS + 10
    assert inputs["truth_id"].duplicated().any()
