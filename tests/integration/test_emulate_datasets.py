"""Emulation results as Parquet datasets, against a real service whose one-file limit
(COSMOGAN_EMULATE_MAX_FILE_ROWS) is small: asked for by name, automatic past the limit,
refused for CSV past it; parts served one by one; read back through the client."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

import cosmogan
from launcher.service import Service, start_service
from tests.integration.conftest import API_KEY, wait_until
from tests.rows import ROW

PARQUET = "application/vnd.apache.parquet"
LIMIT = 50_000  # output rows one file may hold on this service
ROWS = 40_000  # two chunks of the fixed 32,768


@pytest.fixture(scope="module")
def small_limit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("bigresult")
    settings = {
        "COSMOGAN_API_KEY": API_KEY,
        "COSMOGAN_DEVICE": "cpu",
        "COSMOGAN_MAX_EMULATE_ROWS": "200",
        "COSMOGAN_EMULATE_MAX_FILE_ROWS": str(LIMIT),
        "PYTHONUNBUFFERED": "1",
    }
    with start_service(root / "home", settings=settings, log_dir=root / "logs") as svc:
        svc.wait_ready()
        yield svc


@pytest.fixture(scope="module")
def client(small_limit: Service) -> Iterator[httpx.Client]:
    with small_limit.client(headers=small_limit.auth) as c:
        yield c


def catalog(n: int = ROWS) -> pd.DataFrame:
    rng = np.random.default_rng(8)
    df = pd.DataFrame([ROW] * n)
    df["true_mag_r"] = rng.uniform(19, 24.5, n)
    df["id"] = np.arange(n)
    return df


def parquet(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def submit(client: httpx.Client, body: bytes, **params: object) -> httpx.Response:
    return client.post(
        "/emulate/jobs", content=body, params=params, headers={"content-type": PARQUET}
    )


def finished(client: httpx.Client, url: str) -> dict:
    def done() -> dict | None:
        rec = client.get(url).json()
        return rec if rec["state"] in ("succeeded", "failed", "cancelled") else None

    return wait_until(done, timeout=180, every=0.3)


def test_a_named_dataset_result_is_the_one_file_result_in_parts(
    client: httpx.Client, small_limit: Service
) -> None:
    body = parquet(catalog())
    one = submit(client, body, seed=3, output="parquet")
    named = submit(client, body, seed=3, dataset="emu-named")
    assert one.status_code == 202 and named.status_code == 202, named.text
    assert named.json()["result_dataset"] == "emu-named" and named.json()["output_format"] == (
        "parquet"
    )
    # the name is taken from the moment the job is accepted: made by it, then existing
    again = submit(client, body, seed=3, dataset="emu-named")
    assert again.status_code == 409 and "emu-named" in again.json()["detail"]
    rec = finished(client, named.headers["location"])
    assert rec["state"] == "succeeded", rec
    assert rec["result"] == "/datasets/emu-named" and rec["result_dataset"] == "emu-named"
    assert submit(client, body, seed=3, dataset="emu-named").status_code == 409
    file_rec = finished(client, one.headers["location"])
    assert file_rec["state"] == "succeeded" and file_rec["result_dataset"] is None
    whole = pd.read_parquet(io.BytesIO(client.get(file_rec["result"]).content))

    assert "emu-named" in [d["name"] for d in client.get("/datasets").json()["datasets"]]
    desc = client.get("/datasets/emu-named", params={"parts": "true"}).json()
    assert desc["state"] == "ready" and desc["source"] == "emulation" and desc["rows"] == ROWS
    assert desc["job_id"] == rec["job_id"] and desc["seed"] == 3 and desc["samples"] == 1
    assert desc["model"] == f"{rec['model']}@{rec['version']}"
    assert [p["file"] for p in desc["parts"]] == ["part-00000.parquet", "part-00001.parquet"]
    assert [p["rows"] for p in desc["parts"]] == [32_768, ROWS - 32_768]
    assert client.get("/datasets/emu-named").json().get("parts") is None  # only when asked

    folder = small_limit.home / "data" / "emu-named"
    manifest = json.loads((folder / "_manifest.json").read_text())
    frames = []
    for part in desc["parts"]:
        on_disk = (folder / part["file"]).read_bytes()
        assert hashlib.sha256(on_disk).hexdigest() == part["sha256"]
        served = client.get(part["url"])
        assert served.status_code == 200 and served.headers["content-type"] == PARQUET
        assert served.content == on_disk
        frames.append(pd.read_parquet(io.BytesIO(served.content)))
    assert [p["sha256"] for p in manifest["parts"]] == [p["sha256"] for p in desc["parts"]]
    combined = "".join(f"{p['sha256']}\n" for p in desc["parts"]).encode()
    assert manifest["sha256"] == desc["sha256"] == hashlib.sha256(combined).hexdigest()
    pd.testing.assert_frame_equal(pd.concat(frames, ignore_index=True), whole)
    # the parts were moved out of the job's folder, not copied
    job_dir = small_limit.home / "emulate" / rec["job_id"]
    assert not (job_dir / "out").exists() and not (job_dir / "in").exists()

    result = client.get(f"{named.headers['location']}/result", follow_redirects=False)
    assert result.status_code == 303 and result.headers["location"].startswith(
        "/datasets/emu-named"
    )

    bad = client.get("/datasets/emu-named/parts/part-00009.parquet")
    assert bad.status_code == 404
    assert "part-00000.parquet" in bad.json()["detail"] and "2 parts" in bad.json()["detail"]
    for attempt in (
        "/datasets/emu-named/parts/_manifest.json",
        "/datasets/emu-named/parts/..%2F..%2Fregistry",
        "/datasets/emu-named/parts/%2E%2E",
        "/datasets/emu-named/parts/..%2Femu-named%2Fpart-00000.parquet",
        "/datasets/..%2Fregistry/parts/part-00000.parquet",
    ):
        r = client.get(attempt)
        assert 400 <= r.status_code < 500, (attempt, r.status_code)
    assert client.get("/datasets/ghost/parts/part-00000.parquet").status_code == 404

    assert client.delete("/datasets/emu-named").status_code == 204
    assert client.get("/datasets/emu-named").status_code == 404
    assert not folder.exists()


def test_requests_racing_for_one_name_make_it_once(
    client: httpx.Client, small_limit: Service
) -> None:
    body = parquet(catalog(2_000))
    jobs_dir = small_limit.home / "emulate"
    before = set(p.name for p in jobs_dir.iterdir()) if jobs_dir.is_dir() else set()

    async def race() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            base_url=small_limit.base_url, headers=small_limit.auth, timeout=60
        ) as c:
            return await asyncio.gather(
                *(
                    c.post(
                        "/emulate/jobs",
                        content=body,
                        params={"seed": k, "dataset": "emu-race"},
                        headers={"content-type": PARQUET},
                    )
                    for k in range(8)
                )
            )

    answers = asyncio.run(race())
    assert sorted(r.status_code for r in answers) == [202] + [409] * 7, [r.text for r in answers]
    assert all("emu-race" in r.json()["detail"] for r in answers if r.status_code == 409)
    (won,) = [r for r in answers if r.status_code == 202]
    # the refused requests leave neither a job nor their upload behind
    assert set(p.name for p in jobs_dir.iterdir()) - before == {won.json()["job_id"]}
    rec = finished(client, won.headers["location"])
    assert rec["state"] == "succeeded" and rec["result"] == "/datasets/emu-race", rec
    desc = client.get("/datasets/emu-race").json()
    assert desc["job_id"] == rec["job_id"] and desc["rows"] == 2_000
    assert client.delete("/datasets/emu-race").status_code == 204


def test_a_parquet_result_over_the_limit_becomes_a_dataset_by_itself(
    client: httpx.Client,
) -> None:
    r = submit(client, parquet(catalog()), seed=4, samples=2, output="parquet")
    assert r.status_code == 202 and r.json()["result_dataset"] is None
    rec = finished(client, r.headers["location"])
    name = f"emulated-{rec['job_id'][:12]}"
    assert rec["state"] == "succeeded" and rec["result_dataset"] == name, rec
    assert rec["result"] == f"/datasets/{name}" and rec["rows_done"] == ROWS
    desc = client.get(f"/datasets/{name}", params={"parts": "true"}).json()
    assert desc["rows"] == 2 * ROWS and desc["samples"] == 2 and len(desc["parts"]) == 2


def test_a_csv_result_over_the_limit_fails_at_planning_saying_what_to_ask(
    client: httpx.Client, small_limit: Service
) -> None:
    before = {d["name"] for d in client.get("/datasets").json()["datasets"]}
    r = submit(client, parquet(catalog()), seed=4, samples=2, output="csv")
    assert r.status_code == 202
    rec = finished(client, r.headers["location"])
    assert rec["state"] == "failed", rec
    assert "output=parquet" in rec["error"] and "dataset=NAME" in rec["error"]
    assert f"{LIMIT:,}" in rec["error"] and rec["result"] is None
    job_dir = small_limit.home / "emulate" / rec["job_id"]
    assert not (job_dir / "in").exists() and not (job_dir / "out").exists()
    assert not list(job_dir.glob("output*")) and not list(job_dir.glob(".*"))
    assert {d["name"] for d in client.get("/datasets").json()["datasets"]} == before
    # and a dataset result cannot be asked for in CSV
    r = submit(client, b"x", dataset="emu-csv", output="csv")
    assert r.status_code == 422 and "Parquet" in r.json()["detail"]
    assert submit(client, b"x", dataset="../x").status_code == 422


def test_the_client_reads_dataset_results(small_limit: Service, tmp_path: Path) -> None:
    df = catalog()
    with cosmogan.Client(small_limit.base_url, api_key=API_KEY, progress=False) as c:
        # over the one-file limit: read back part by part, as one frame
        out = c.emulate(df, seed=6, samples=2)
        assert len(out) == 2 * ROWS and list(out["realization"][:4]) == [0, 1, 0, 1]
        assert out.attrs["seed"] == 6 and list(out["id"][::2]) == list(range(ROWS))
        head = c.emulate(df.head(200), seed=6, samples=2)
        pd.testing.assert_frame_equal(out.head(400), head, check_index_type=False)

        desc = c.emulate(df, seed=6, dataset="client-emu")
        assert desc["name"] == "client-emu" and desc["state"] == "ready"
        assert desc["rows"] == ROWS and desc["source"] == "emulation"
        got = c.read_dataset("client-emu")
        one = c.emulate(df, seed=6, background=True)  # within the limit: one file
        pd.testing.assert_frame_equal(got, one.reset_index(drop=True))
        folder = c.download_dataset("client-emu", tmp_path / "dl")
        assert json.loads((folder / "_manifest.json").read_text())["job_id"] == desc["job_id"]
        pd.testing.assert_frame_equal(pd.read_parquet(folder), got)

        async def read() -> pd.DataFrame:
            async with cosmogan.AsyncClient(
                small_limit.base_url, api_key=API_KEY, progress=False
            ) as ac:
                return await ac.read_dataset("client-emu")

        pd.testing.assert_frame_equal(asyncio.run(read()), got)

        # an uploaded catalog is read the same way, part by part
        c.upload_dataset("client-up", df.head(500))
        pd.testing.assert_frame_equal(c.read_dataset("client-up"), df.head(500))
        with pytest.raises(cosmogan.ConflictError):
            c.emulate(df.head(300), seed=6, dataset="client-up")
