"""Catalog tables over HTTP without a service: parsing, limits from metadata, encoding."""

from __future__ import annotations

import io

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from app import tables
from models import columns
from models.columns import INPUTS, resolve_names

ROW = dict(zip(INPUTS, [22.1, 21.7, 21.5, 5.0, 6.0, 8.0, 1.0, 0.9, 0.95], strict=True))


def parquet(table: pa.Table, **kw) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, **kw)
    return buf.getvalue()


def test_rows_with_different_keys_become_columns_with_nulls() -> None:
    cat = tables.from_rows([{**ROW, "id": 1}, {"note": "x", **ROW}], max_rows=10)
    assert list(cat.columns) == [*INPUTS, "id", "note"]
    assert cat.columns["id"] == [1, None] and cat.columns["note"] == [None, "x"]
    x = cat.inputs()
    assert x.dtype == np.float64 and x.shape == (2, 9)
    np.testing.assert_allclose(x[0], np.float32(list(ROW.values())))


def test_plain_numbers_give_the_numbers_of_the_full_validation() -> None:
    import pandas as pd

    from models.columns import validate_inputs

    rng = np.random.default_rng(3)
    rows = [{k: v * rng.uniform(0.95, 1.05) for k, v in ROW.items()} for _ in range(50)]
    rows[7]["true_mag_z"] = 24  # an int among floats
    full = validate_inputs(pd.DataFrame(rows)).astype(np.float64)
    for cat in (
        tables.from_rows(rows, 100),
        tables.from_arrow(pa.Table.from_pylist(rows), 100),
    ):
        assert cat._numeric_inputs() is not None  # the fast path was taken
        np.testing.assert_array_equal(cat.inputs(), full)
    out_of_range = tables.from_rows([*rows, {**ROW, "psf_fwhm_r": 11.0}], 100)
    assert out_of_range._numeric_inputs() is None
    with pytest.raises(tables.TableError, match="PSF FWHM outside"):
        out_of_range.inputs()


def test_aliases_validate_and_keep_their_names() -> None:
    row = {("BDF_MAG_DERED_CALIB_R" if k == "true_mag_r" else k): v for k, v in ROW.items()}
    row["SKYVAR_WMEAN_Z"] = 64.0  # a variance: its square root is the sky sigma
    del row["sky_sigma_z"]
    cat = tables.from_rows([row], max_rows=10)
    np.testing.assert_allclose(cat.inputs()[0][[0, 5]], [22.1, 8.0], rtol=1e-6)
    out = tables.emulated_columns(
        cat, columns.emulated(np.full((1, 3), np.nan), np.zeros(1, bool)), 1
    )
    assert "BDF_MAG_DERED_CALIB_R" in out and "SKYVAR_WMEAN_Z" in out


def test_bad_values_are_422_with_problems() -> None:
    cat = tables.from_rows([ROW, {**ROW, "psf_fwhm_i": "wide"}], max_rows=10)
    with pytest.raises(tables.TableError) as err:
        cat.inputs()
    assert err.value.status == 422 and err.value.problems[0]["row"] == 1


def test_parquet_limits_come_from_the_footer(monkeypatch: pytest.MonkeyPatch) -> None:
    table = pa.table({k: np.full(5000, v) for k, v in ROW.items()})
    body = parquet(table, compression="zstd")
    with pytest.raises(tables.TableError) as err:
        tables.read_table(body, "parquet", max_rows=4999)
    assert err.value.status == 413 and "5000 rows" in err.value.message
    assert tables.read_table(body, "parquet", max_rows=10_000).rows == 5000
    monkeypatch.setattr(tables, "MAX_DECODED_BYTES", 100_000)  # 5000 × 9 × 8 bytes is more
    with pytest.raises(tables.TableError) as err:
        tables.read_table(body, "parquet", max_rows=10_000)
    assert err.value.status == 413 and "decodes to" in err.value.message


def test_a_dictionary_string_bomb_is_refused_before_decoding() -> None:
    # one 1 MiB string on 1,000 rows: a few kB on the wire, 1 GiB decoded
    long = "x" * 2**20
    table = pa.table({**{k: np.full(1000, v) for k, v in ROW.items()}, "note": [long] * 1000})
    body = parquet(table, compression="zstd")
    assert len(body) < 100_000
    with pytest.raises(tables.TableError) as err:
        tables.read_table(body, "parquet", max_rows=10_000)
    assert err.value.status == 413 and "decodes to" in err.value.message
    small = parquet(table.slice(0, 3), compression="zstd")
    cat = tables.read_table(small, "parquet", max_rows=10_000)
    assert cat.columns["note"].type == pa.string() and cat.columns["note"][2].as_py() == long


@pytest.mark.parametrize("media", [tables.JSON, tables.CSV, tables.PARQUET, tables.FITS])
def test_encoded_responses_read_back(media: str) -> None:
    cat = tables.from_rows([{**ROW, "id": i, "name": f"g{i}"} for i in range(3)], 10)
    mags = np.array([[20.0, 21.0, 22.0], [np.nan] * 3, [1.0, 2.0, 3.0]]).repeat(2, axis=0)
    det = np.array([1, 0, 1]).repeat(2).astype(bool)
    body = tables.encode(
        tables.emulated_columns(cat, columns.emulated(mags, det), 2), media, {"seed": 1}
    )
    if media == tables.JSON:
        doc = orjson.loads(body)
        assert doc["seed"] == 1 and len(doc["rows"]) == 6
        assert doc["rows"][2]["mag_r"] is None and doc["rows"][3]["realization"] == 1
        assert doc["rows"][5]["name"] == "g2" and doc["rows"][0]["detected"] is True
        return
    if media == tables.FITS:
        from astropy.table import Table

        back = Table.read(io.BytesIO(body), format="fits").to_pandas()
    else:
        back = tables.read_table(body, media.split("/")[-1].split(".")[-1], 10)
        back = pa.table(back.columns).to_pandas()
    assert list(back["id"]) == [0, 0, 1, 1, 2, 2] and list(back["realization"]) == [0, 1] * 3
    np.testing.assert_allclose(back["mag_z"], mags[:, 2], equal_nan=True)
    assert list(back["detected"]) == list(det)


@pytest.mark.parametrize("samples", [1, 3])
def test_json_rows_built_on_the_request_rows_match_the_columnar_encoding(samples: int) -> None:
    sent = [{**ROW, "id": i, "mag_r": -1.0, "meta": {"a": [i]}} for i in range(4)]
    rng = np.random.default_rng(2)
    mags = rng.uniform(18, 25, (4 * samples, 3))
    mags[1] = np.nan
    det = ~np.isnan(mags[:, 0])
    cat = tables.from_rows(orjson.loads(orjson.dumps(sent)), 10)
    columnar = tables.encode(
        tables.emulated_columns(cat, columns.emulated(mags, det), samples), tables.JSON, {}
    )
    fast = tables.encode_json(
        tables.emulated_records(cat, columns.emulated(mags, det), samples), {}
    )
    assert fast == columnar
    assert orjson.loads(fast)["rows"][0]["meta"] == {"a": [0]}
    uneven = tables.from_rows([ROW, {**ROW, "id": 1}], 10)
    assert tables.emulated_records(uneven, columns.emulated(mags[:2], det[:2]), 1) is None


def test_json_columns_of_nested_values_are_a_clear_error() -> None:
    """Lists or objects inside an input column (JSON bodies allow them) are named, never a 500."""
    rows = [
        dict(ROW),
        {**ROW, "psf_fwhm_i": [{}, True, [1.0, {"a": 2}]]},
        {**ROW, "sky_sigma_r": 10**400},
    ]
    with pytest.raises(tables.TableError) as err:
        tables.from_rows(rows, 100).inputs()
    assert err.value.status == 422 and "psf_fwhm_i" in str(err.value)


def test_json_rows_and_bodies() -> None:
    rows = [{"BDF_MAG_DERED_CALIB_R": 22.0, "true_mag_i": 21.5, "TRUE_MAG_Z": 21.2}]
    chosen = resolve_names(tables.from_rows(rows, 100).columns)
    assert {"true_mag_r", "true_mag_i", "true_mag_z"} <= set(chosen)
    with pytest.raises(tables.TableError, match="non-empty list"):
        tables.from_rows([], 100)
    with pytest.raises(tables.TableError, match="must be an object"):
        tables.from_rows([1, 2], 100)
    body = pd.DataFrame([ROW] * 4).to_csv(index=False).encode()
    assert tables.read_table(body, "csv", 100).rows == 4
    with pytest.raises(tables.TableError, match="PARQUET"):
        tables.read_table(b"garbage", "parquet", 100)
