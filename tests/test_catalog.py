"""Catalog I/O: round trips, DES aliases, validation messages, atomic writing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from astropy.table import Table

from models import columns
from models.columns import CatalogError, normalize_columns, validate_inputs
from training.emulator.catalog import CatalogWriter, iter_catalog, read_catalog


def _frame(n: int = 10, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            **{c: rng.uniform(20, 25, n) for c in columns.TRUE_MAG},
            **{c: rng.uniform(3, 15, n) for c in columns.SKY_SIGMA},
            **{c: rng.uniform(0.7, 1.3, n) for c in columns.PSF_FWHM},
        }
    )
    df["mag_r"] = np.where(np.arange(n) % 3 == 0, np.nan, df["true_mag_r"] + 0.1)
    df[columns.DETECTED] = np.arange(n) % 3 != 0
    df["name"] = [f"gal{k}" for k in range(n)]
    return df


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".fits"])
def test_round_trip_in_chunks(tmp_path, suffix):
    df = _frame(25)
    path = tmp_path / f"cat{suffix}"
    with CatalogWriter(path) as writer:
        for start in range(0, 25, 10):
            writer.write(df.iloc[start : start + 10])
    assert writer.rows == 25
    chunks = list(iter_catalog(path, chunk_rows=7))
    assert [len(c) for c in chunks] == [7, 7, 7, 4]
    back = pd.concat(chunks, ignore_index=True)
    for c in df.columns:
        if c == "name":
            assert back[c].tolist() == df[c].tolist()
        elif c == columns.DETECTED:
            assert back[c].astype(bool).tolist() == df[c].tolist()
        else:
            np.testing.assert_allclose(back[c].to_numpy(float), df[c].to_numpy(float))
    # FITS is big-endian on disk: what comes back must be native for pandas/torch
    assert all(back[c].dtype.byteorder in "=|" for c in columns.INPUTS)
    np.testing.assert_array_equal(validate_inputs(back), validate_inputs(df))


def test_fits_written_by_astropy_reads_with_native_values(tmp_path):
    df = _frame(12)
    Table.from_pandas(df).write(tmp_path / "c.fits")
    back = read_catalog(tmp_path / "c.fits")
    assert back["true_mag_i"].to_numpy().dtype == np.dtype("float64")
    np.testing.assert_allclose(back["sky_sigma_z"], df["sky_sigma_z"])


def test_des_aliases_case_insensitive(tmp_path):
    df = _frame(5)
    des = pd.DataFrame(
        {
            "BDF_MAG_DERED_CALIB_R": df["true_mag_r"],
            "bdf_mag_dered_calib_i": df["true_mag_i"],
            "True_Mag_Z": df["true_mag_z"],
            "SKYVAR_WMEAN_R": df["sky_sigma_r"] ** 2,  # a variance: the RMS is its root
            "sky_sigma_i": df["sky_sigma_i"],
            "SKY_SIGMA_Z": df["sky_sigma_z"],
            "FWHM_WMEAN_R": df["psf_fwhm_r"],
            "fwhm_i": df["psf_fwhm_i"],
            "PSF_FWHM_Z": df["psf_fwhm_z"],
            "unsheared/mag_r": df["mag_r"],
            "coadd_object_id": np.arange(5),
        }
    )
    path = tmp_path / "des.csv"
    des.to_csv(path, index=False)
    back = read_catalog(path)
    assert {*columns.INPUTS, "mag_r", "coadd_object_id"} <= set(back.columns)
    np.testing.assert_allclose(validate_inputs(back), validate_inputs(df), rtol=1e-6)
    np.testing.assert_allclose(back["mag_r"], df["mag_r"])


def test_canonical_name_wins_over_alias():
    df = pd.DataFrame({"fwhm_r": [2.0], "psf_fwhm_r": [1.0]})
    out = normalize_columns(df)
    assert out["psf_fwhm_r"].tolist() == [1.0] and out["fwhm_r"].tolist() == [2.0]


def test_missing_columns_are_named():
    df = _frame(3).drop(columns=["sky_sigma_i", "psf_fwhm_z"])
    with pytest.raises(CatalogError) as err:
        validate_inputs(df)
    assert "sky_sigma_i" in str(err.value) and "psf_fwhm_z" in str(err.value)
    assert {p["column"] for p in err.value.problems} == {"sky_sigma_i", "psf_fwhm_z"}


def test_bad_values_report_column_count_and_rows():
    df = _frame(10)
    df.loc[[2, 7], "true_mag_i"] = np.nan
    df.loc[4, "true_mag_z"] = np.inf
    df.loc[[1, 3, 5], "true_mag_r"] = 45.0
    df.loc[6, "sky_sigma_r"] = 0.0
    df.loc[8, "psf_fwhm_i"] = 12.0
    df.loc[9, "psf_fwhm_r"] = -1.0
    with pytest.raises(CatalogError) as err:
        validate_inputs(df, row_offset=100)
    msg = str(err.value)
    assert "true_mag_i: 2 rows NaN" in msg and "rows 102, 107" in msg
    assert "true_mag_z: 1 rows" in msg and "104" in msg
    assert "true_mag_r: 3 rows magnitude outside" in msg and "rows 101, 103, 105" in msg
    assert "sky_sigma_r" in msg and "psf_fwhm_i" in msg and "psf_fwhm_r" in msg
    by_row = {(p["row"], p["column"]) for p in err.value.problems}
    assert by_row == {
        (102, "true_mag_i"),
        (107, "true_mag_i"),
        (104, "true_mag_z"),
        (101, "true_mag_r"),
        (103, "true_mag_r"),
        (105, "true_mag_r"),
        (106, "sky_sigma_r"),
        (108, "psf_fwhm_i"),
        (109, "psf_fwhm_r"),
    }


def test_text_in_a_numeric_column():
    df = _frame(4).astype({"psf_fwhm_z": object})
    df.loc[2, "psf_fwhm_z"] = "bad"
    with pytest.raises(
        CatalogError, match=r"psf_fwhm_z: 1 rows not a number \(rows 2, counted from 0\)"
    ):
        validate_inputs(df)


def test_valid_inputs_come_back_float32_in_order():
    df = _frame(6)
    arr = validate_inputs(df.iloc[:, ::-1])  # column order in the file does not matter
    assert arr.dtype == np.float32 and arr.shape == (6, 9)
    np.testing.assert_allclose(arr[:, 4], df["sky_sigma_i"], rtol=1e-6)


def test_unknown_format_and_missing_file(tmp_path):
    with pytest.raises(CatalogError, match="unknown catalog format"):
        list(iter_catalog(tmp_path / "cat.xlsx"))
    with pytest.raises(CatalogError, match="no such file"):
        list(iter_catalog(tmp_path / "none.csv"))
    (tmp_path / "broken.parquet").write_bytes(b"not a parquet file")
    with pytest.raises(CatalogError, match="cannot read as parquet"):
        list(iter_catalog(tmp_path / "broken.parquet"))


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".fits"])
def test_writer_leaves_no_partial_file_on_error(tmp_path, suffix):
    path = tmp_path / f"out{suffix}"
    with pytest.raises(RuntimeError), CatalogWriter(path) as writer:
        writer.write(_frame(5))
        raise RuntimeError("failed halfway")
    assert list(tmp_path.iterdir()) == []
    # an existing catalog survives a failed rewrite untouched
    with CatalogWriter(path) as writer:
        writer.write(_frame(3))
    before = path.read_bytes()
    with pytest.raises(RuntimeError), CatalogWriter(path) as writer:
        writer.write(_frame(5))
        raise RuntimeError("failed halfway")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_parquet_chunks_with_other_columns_fail_clearly_and_leave_nothing(tmp_path):
    path = tmp_path / "out.parquet"
    with pytest.raises(CatalogError, match="do not match"), CatalogWriter(path) as writer:
        writer.write(_frame(3))
        writer.write(_frame(3).drop(columns=["true_mag_r"]))
    assert list(tmp_path.iterdir()) == []


def test_conditions_that_overflow_float32_are_refused_by_name() -> None:
    """Values the schema once allowed but the networks (float32, log conditions) cannot take."""
    base = {c: 1.0 for c in columns.CONDITIONS} | {c: 22.0 for c in columns.TRUE_MAG}
    for column, value in (("sky_sigma_r", 1e308), ("sky_sigma_i", 5e-324), ("psf_fwhm_z", 1e-30)):
        with pytest.raises(CatalogError, match=column):
            validate_inputs(pd.DataFrame([base | {column: value}]))
