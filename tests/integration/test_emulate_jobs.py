"""POST /emulate/jobs: a catalog larger than one request, emulated in the background."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pandas as pd
import pytest

from tests.integration.conftest import Service, wait_until
from tests.rows import ROW

PARQUET = "application/vnd.apache.parquet"


@pytest.fixture(scope="module")
def client_headers(service: Service) -> dict[str, str]:
    return service.auth  # starting a job needs the API key


def catalog(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(4)
    df = pd.DataFrame([ROW] * n)
    df["true_mag_r"] = rng.uniform(19, 24, n)
    df["id"] = np.arange(n)
    return df


def finished(client: httpx.Client, url: str) -> dict:
    def done() -> dict | None:
        rec = client.get(url).json()
        return rec if rec["state"] in ("succeeded", "failed") else None

    return wait_until(done, timeout=120, every=0.3)


def test_a_large_catalog_becomes_a_file_with_progress(client: httpx.Client) -> None:
    df = catalog(5000)  # 25× the per-request limit of this service
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    r = client.post(
        "/emulate/jobs",
        content=buf.getvalue(),
        params={"seed": 9, "output": "csv"},
        headers={"content-type": PARQUET},
    )
    assert r.status_code == 202, r.text
    url = r.headers["location"]
    assert r.json()["state"] in ("queued", "running", "succeeded") and r.json()["url"] == url
    rec = finished(client, url)
    assert rec["state"] == "succeeded", rec
    assert rec["rows_done"] == rec["rows_total"] == 5000 and rec["progress"] == 1.0
    assert rec["result"] == f"{url}/result" and not rec["stalled"]
    got = client.get(rec["result"])
    assert got.status_code == 200 and got.headers["content-type"].startswith("text/csv")
    out = pd.read_csv(io.BytesIO(got.content))
    assert len(out) == 5000 and list(out["id"]) == list(range(5000))
    # a row's draws depend on the seed and its position only: the first rows match /emulate
    head = client.post(
        "/emulate", json={"rows": df.iloc[:200].to_dict(orient="records"), "seed": 9}
    ).json()["rows"]
    np.testing.assert_array_equal(out["detected"][:200], [h["detected"] for h in head])
    mags = np.array([np.nan if h["mag_r"] is None else h["mag_r"] for h in head])
    np.testing.assert_allclose(out["mag_r"][:200], mags, rtol=1e-12, equal_nan=True)


def test_a_bad_catalog_fails_with_a_message(client: httpx.Client) -> None:
    r = client.post("/emulate/jobs", content=b"a,b\n1,2\n", headers={"content-type": "text/csv"})
    assert r.status_code == 202, r.text
    rec = finished(client, r.headers["location"])
    assert rec["state"] == "failed" and "missing columns" in rec["error"]
    res = client.get(f"{r.headers['location']}/result")
    assert res.status_code == 409 and "failed" in res.json()["detail"]


def test_job_request_errors(client: httpx.Client, service: Service) -> None:
    with service.client() as anonymous:
        r = anonymous.post("/emulate/jobs", content=b"x", headers={"content-type": "text/csv"})
        assert r.status_code == 401
    r = client.post("/emulate/jobs", json={"rows": [ROW]})
    assert r.status_code == 415 and "POST /emulate" in r.json()["detail"]
    r = client.post("/emulate/jobs", content=b"x", headers={"content-type": "text/csv"},
                    params={"model": "ghost"})  # fmt: skip
    assert r.status_code == 404
    assert client.get(f"/emulate/jobs/{'0' * 32}").status_code == 404
    assert client.get("/emulate/jobs/nope").status_code == 422
