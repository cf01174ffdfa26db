"""`kill -9` of one worker in the middle of a fanned-out job: a dataset build on the `data`
workers, an emulation job on the `inference` workers. The job still completes, with the rows
(bytes) of an undisturbed run, and no chunk counted twice."""

from __future__ import annotations

import io
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import redis

from launcher.service import Service, start_service
from models.columns import INPUTS
from tests.faults.conftest import API_KEY

PARQUET = "application/vnd.apache.parquet"


@pytest.fixture(scope="module")
def two_of_each(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A service with two single-process data workers and two inference workers; a killed
    worker is not restarted (`watch` off), so the survivor has to finish the job."""
    root = tmp_path_factory.mktemp("fanout")
    settings = {
        "COSMOGAN_API_KEY": API_KEY,
        "COSMOGAN_DEVICE": "cpu",
        "COSMOGAN_DATA_PROCESSES": "1",
        "PYTHONUNBUFFERED": "1",
    }
    with start_service(root / "home", settings=settings, log_dir=root / "logs") as svc:
        svc.add_worker("data")
        svc.add_worker("inference")
        svc.wait_ready()
        yield svc


def wait(client: httpx.Client, url: str, until, timeout: float) -> dict:
    deadline, rec = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        rec = client.get(url).json()
        if until(rec):
            return rec
        time.sleep(0.2)
    raise TimeoutError(f"{url}: condition not met in {timeout}s; last {rec}")


def chunk_events(svc: Service, job_id: str) -> list[int]:
    r = redis.Redis.from_url(svc.redis_url)
    try:
        entries = r.xrange(f"cosmogan:job:{job_id}:events")
    finally:
        r.close()
    events = [json.loads(fields[b"data"]) for _, fields in entries]
    return [e["chunk"] for e in events if e.get("event") == "chunk"]


def kill_worker(svc: Service, name: str) -> None:
    """`kill -9` of a worker and its pool processes (its process group)."""
    os.killpg(svc.procs[name].pid, signal.SIGKILL)


def test_a_build_survives_a_killed_data_worker(two_of_each: Service) -> None:
    svc = two_of_each
    spec = {"simulator": "galsim", "rows": 480, "seed": 2, "chunk_rows": 30}
    with svc.client(headers=svc.auth) as client:
        r = client.post("/datasets", json={"name": "hit", **spec})
        assert r.status_code == 202, r.text
        job = f"/datasets/jobs/{r.json()['job_id']}"
        wait(client, job, lambda j: j["state"] == "running" and j["rows_done"] >= 60, 120)
        kill_worker(svc, "worker[data]")
        hit = wait(client, job, lambda j: j["state"] not in ("queued", "running"), 240)
        assert hit["state"] == "succeeded", hit
        assert hit["rows_done"] == 480  # no chunk counted twice
        chunks = chunk_events(svc, hit["job_id"])
        assert sorted(chunks) == list(range(16))

        r = client.post("/datasets", json={"name": "calm", **spec})  # undisturbed
        assert r.status_code == 202, r.text
        wait(client, "/datasets/calm", lambda d: d["state"] == "ready", 240)
    data = svc.home / "data"
    hit_m = json.loads((data / "hit" / "_manifest.json").read_text())
    calm_m = json.loads((data / "calm" / "_manifest.json").read_text())
    assert hit_m["rows"] == calm_m["rows"] == 480
    assert [p["sha256"] for p in hit_m["parts"]] == [p["sha256"] for p in calm_m["parts"]]
    assert hit_m["sha256"] == calm_m["sha256"]
    pd.testing.assert_frame_equal(pd.read_parquet(data / "hit"), pd.read_parquet(data / "calm"))


def test_an_emulation_job_survives_a_killed_inference_worker(
    two_of_each: Service, tmp_path: Path
) -> None:
    svc = two_of_each
    rows = 10 * 32_768
    rng = np.random.default_rng(1)
    df = pd.DataFrame(
        {
            **{c: rng.uniform(20, 24, rows) for c in INPUTS[:3]},
            **{c: rng.uniform(4, 12, rows) for c in INPUTS[3:6]},
            **{c: rng.uniform(0.8, 1.2, rows) for c in INPUTS[6:]},
            "id": np.arange(rows),
        }
    )
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    body = buf.getvalue()
    with svc.client(headers=svc.auth) as client:

        def submit() -> str:
            r = client.post(
                "/emulate/jobs",
                content=body,
                params={"seed": 5, "model": "balrog-flow"},  # the exact flow: seconds a chunk
                headers={"content-type": PARQUET},
            )
            assert r.status_code == 202, r.text
            return r.headers["location"]

        url = submit()
        seen = wait(client, url, lambda j: j["state"] == "running" and j["chunks_done"] >= 1, 180)
        kill_worker(svc, "worker[inference]")
        assert seen["chunks_done"] < 10  # killed mid-job
        hit = wait(client, url, lambda j: j["state"] not in ("queued", "running"), 300)
        assert hit["state"] == "succeeded", hit
        assert hit["rows_done"] == hit["rows_total"] == rows and hit["chunks_done"] == 10
        assert sorted(chunk_events(svc, hit["job_id"])) == list(range(10))
        got = client.get(hit["result"]).content

        calm = wait(client, submit(), lambda j: j["state"] == "succeeded", 300)
        want = client.get(calm["result"]).content
    assert got == want  # byte-identical to an undisturbed run
    out = pd.read_parquet(io.BytesIO(got))
    assert len(out) == rows and list(out["id"][:5]) == [0, 1, 2, 3, 4]
