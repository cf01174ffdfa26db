"""POST /emulate over HTTP with every table format, hostile bodies, and the query parameters."""

from __future__ import annotations

import io
from typing import Any

import httpx
import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.table import Table

from tests.rows import ROW

PARQUET = "application/vnd.apache.parquet"
FITS = "application/fits"


def frame(n: int) -> pd.DataFrame:
    return pd.DataFrame([{**ROW, "true_mag_r": 20.0 + 0.1 * i, "id": i} for i in range(n)])


def parquet_bytes(df: pd.DataFrame | pa.Table) -> bytes:
    table = df if isinstance(df, pa.Table) else pa.Table.from_pandas(df, preserve_index=False)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def post(client: httpx.Client, body: bytes, ctype: str, accept: str = "application/json",
         **params: Any) -> httpx.Response:  # fmt: skip
    headers = {"content-type": ctype, "accept": accept}
    return client.post("/emulate", content=body, headers=headers, params=params)


def test_query_parameters_win_over_the_json_body(client: httpx.Client) -> None:
    body = {"rows": frame(2).to_dict(orient="records"), "seed": 1}
    r = client.post("/emulate", json=body, params={"model": "ghost"})
    assert r.status_code == 404 and "ghost" in r.json()["detail"]
    r = client.post("/emulate", json={**body, "model": "ghost"}, params={"model": "balrog"})
    assert r.status_code == 200, r.text
    a = client.post("/emulate", json=body, params={"seed": 5}).json()
    b = client.post("/emulate", json={**body, "seed": 5}).json()
    assert a["seed"] == b["seed"] == 5 and a["rows"] == b["rows"]
    r = client.post("/emulate", json=body, params={"samples": 2})
    assert r.status_code == 200 and r.json()["samples"] == 2 and len(r.json()["rows"]) == 4


def test_fits_in_and_out_keeps_names_as_sent(client: httpx.Client) -> None:
    df = frame(5).rename(columns={"true_mag_r": "BDF_MAG_DERED_CALIB_R", "psf_fwhm_i": "FWHM_I"})
    buf = io.BytesIO()
    Table.from_pandas(df).write(buf, format="fits")
    r = post(client, buf.getvalue(), FITS, FITS, seed=4, samples=2)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == FITS
    out = Table.read(io.BytesIO(r.content), format="fits").to_pandas()
    assert len(out) == 10
    assert {"BDF_MAG_DERED_CALIB_R", "FWHM_I", "id", "realization", "mag_r", "detected"} <= set(
        out.columns
    )
    assert list(out["id"]) == [i for i in range(5) for _ in range(2)]
    # the same rows through Parquet give the same numbers
    p = post(client, parquet_bytes(df), PARQUET, PARQUET, seed=4, samples=2)
    assert p.status_code == 200, p.text
    via_parquet = pq.read_table(io.BytesIO(p.content)).to_pandas()
    assert list(via_parquet.columns) == list(out.columns)
    np.testing.assert_array_equal(via_parquet["detected"], out["detected"])
    np.testing.assert_allclose(via_parquet["mag_r"], out["mag_r"], equal_nan=True)


def test_errors_domain_flags_units_and_provenance_come_back(client: httpx.Client) -> None:
    rows = frame(3).to_dict(orient="records")
    rows[2]["psf_fwhm_r"] = 9.5  # seeing no survey night had: outside the training ranges
    r = client.post("/emulate", json={"rows": rows, "seed": 3})
    assert r.status_code == 200, r.text
    got = r.json()["rows"]
    assert [row["out_of_domain"] for row in got] == [False, False, True]
    for row in got:
        assert set(row) >= {"magerr_r", "magerr_i", "magerr_z", "detected"}
        if row["detected"]:
            assert all(0 < row[f"magerr_{b}"] < 5 for b in "riz")
    df = pd.DataFrame(rows)
    p = post(client, parquet_bytes(df), PARQUET, PARQUET, seed=3)
    table = pq.read_table(io.BytesIO(p.content))
    meta = orjson.loads(table.schema.metadata[b"cosmogan"])
    assert meta["model"] == "balrog" and meta["seed"] == 3 and meta["version"]
    assert table.schema.field("mag_r").metadata[b"unit"] == b"mag"
    assert table.schema.field("psf_fwhm_i").metadata[b"unit"] == b"arcsec"
    buf = io.BytesIO()
    Table.from_pandas(df).write(buf, format="fits")
    f = Table.read(io.BytesIO(post(client, buf.getvalue(), FITS, FITS, seed=3).content))
    assert f.meta["MODEL"] == "balrog" and f.meta["SEED"] == 3
    assert str(f["magerr_z"].unit) == "mag"
    np.testing.assert_allclose(f["mag_i"], table["mag_i"].to_numpy(), equal_nan=True)


def _hostile_bodies() -> list[tuple[str, bytes, str, str]]:
    good = frame(3)
    csv = good.to_csv(index=False).encode()
    pqt = parquet_bytes(good)
    rng = np.random.default_rng(0)
    dup = pa.table([pa.array([1.0]), pa.array([2.0])], names=["true_mag_r", "true_mag_r"])
    return [
        ("non-UTF-8 CSV", csv.replace(b"21.7", b"\xff\xfe"), "text/csv", "UTF-8"),
        ("ragged CSV", csv + b"1,2,3\n", "text/csv", "CSV"),
        ("unclosed quote", csv + b'"22.1,1,2,3,4,5,6,7,8,9\n', "text/csv", "CSV"),
        ("duplicate CSV names", b"a,a\n1,2\n", "text/csv", "duplicate"),
        ("truncated Parquet", pqt[: len(pqt) // 2], PARQUET, "Parquet"),
        ("corrupt Parquet", pqt[:200] + bytes(200) + pqt[400:], PARQUET, ""),
        ("random Parquet", rng.bytes(5000), PARQUET, "Parquet"),
        ("duplicate Parquet names", parquet_bytes(dup), PARQUET, "duplicate"),
        ("random FITS", b"SIMPLE  =" + rng.bytes(3000), FITS, "FITS"),
        ("a JSON array", b"[1, 2]", "application/json", "object"),
        ("broken JSON", b'{"rows": [', "application/json", "JSON"),
        ("rows of numbers", b'{"rows": [1, 2]}', "application/json", "rows"),
        ("empty rows", b'{"rows": [{}]}', "application/json", "missing columns"),
    ]


@pytest.mark.parametrize(("name", "body", "ctype", "word"), _hostile_bodies())
def test_malformed_bodies_are_4xx_and_the_connection_survives(
    client: httpx.Client, name: str, body: bytes, ctype: str, word: str
) -> None:
    r = post(client, body, ctype)
    assert 400 <= r.status_code < 500, (name, r.status_code, r.text)
    detail = r.json()["detail"]
    assert isinstance(detail, str) and word in detail, (name, detail)
    # the same keep-alive connection still serves a good request
    ok = client.post("/emulate", json={"rows": frame(1).to_dict(orient="records")})
    assert ok.status_code == 200, (name, ok.text)


def test_mixed_type_column_with_parquet_accept_is_422(client: httpx.Client) -> None:
    rows = frame(2).to_dict(orient="records")
    rows[0]["id"], rows[1]["id"] = 1, "two"
    r = client.post("/emulate", json={"rows": rows}, headers={"accept": PARQUET})
    assert r.status_code == 422 and "'id'" in r.json()["detail"]
    r = client.post("/emulate", json={"rows": rows})  # JSON passes any values through
    assert r.status_code == 200 and [x["id"] for x in r.json()["rows"]] == [1, "two"]


def test_parquet_bomb_is_refused_from_its_metadata(client: httpx.Client) -> None:
    # 2 million identical rows compress to a few kB; the row count is in the footer
    n = 2_000_000
    table = pa.table({k: pa.array(np.full(n, v)) for k, v in ROW.items()})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", row_group_size=n)
    body = buf.getvalue()
    assert len(body) < 200_000
    r = post(client, body, PARQUET)
    assert r.status_code == 413 and f"{n} rows" in r.json()["detail"]
