"""The whole service over HTTP: train, register, activate, generate, emulate, cancel, resume."""

from __future__ import annotations

import asyncio
import io
import re
import subprocess
from typing import Any

import httpx
import pandas as pd
import pytest

from tests.integration.conftest import Service, sse_events, wait_for_state, wait_until
from tests.rows import ROW

PNG = b"\x89PNG\r\n\x1a\n"
TINY_DCGAN = {"batch_size": 4, "width": 8, "sample_count": 4, "heldout_fraction": 0.0}


def rows(n: int) -> list[dict[str, Any]]:
    return [{**ROW, "true_mag_r": 20.0 + 0.05 * i, "id": i} for i in range(n)]


@pytest.fixture(scope="module")
def balrog(service: Service, client: httpx.Client) -> dict[str, Any]:
    """A balrog dry run, followed over server-sent events to success, activated."""
    r = client.post(
        "/train",
        json={"preset": "balrog", "overrides": {"dry_run": True}, "activate": True},
        headers=service.auth,
    )
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    assert r.headers["location"] == f"/train/{job_id}"
    events = sse_events(client, f"/train/{job_id}/events")
    assert events[0]["event"] == "snapshot"
    assert events[-1]["event"] == "state" and events[-1]["state"] == "succeeded", events[-1]
    assert any(e["event"] == "progress" for e in events)
    return {"job_id": job_id, "events": events, "record": client.get(f"/train/{job_id}").json()}


@pytest.fixture(scope="module")
def dcgan(service: Service, client: httpx.Client) -> dict[str, Any]:
    """A tiny nebula-dcgan run on real files in the data root (not activated on its own)."""
    body = {
        "preset": "nebula-dcgan",
        "data": "tiny",
        "overrides": {**TINY_DCGAN, "max_steps": 3, "epochs": 1},
    }
    r = client.post("/train", json=body, headers=service.auth)
    assert r.status_code == 202, r.text
    rec = wait_for_state(client, r.json()["job_id"], {"succeeded", "failed"}, timeout=120)
    assert rec["state"] == "succeeded", rec
    return rec


def test_finished_jobs_report_every_epoch_completed(
    balrog: dict[str, Any], dcgan: dict[str, Any]
) -> None:
    # `epoch` counts epochs completed: a job that succeeded has completed all of them
    for rec in (balrog["record"], dcgan):
        assert rec["state"] == "succeeded" and rec["epoch"] == rec["epochs"] >= 1, rec
    progress = [e for e in balrog["events"] if e["event"] == "progress"]
    assert progress[-1]["kind"] == "done" and progress[-1]["epoch"] == progress[-1]["epochs"]
    assert dcgan["step"] == dcgan["total_steps"] == 3


def test_health_and_readiness(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["ready"] is True


def test_balrog_job_registered_and_active(client: httpx.Client, balrog: dict[str, Any]) -> None:
    rec = balrog["record"]
    job_id = balrog["job_id"]
    assert rec["state"] == "succeeded" and rec["model"] == f"balrog@{job_id}"
    assert rec["step"] == 2 and rec["finished_at"] >= rec["started_at"] >= rec["created_at"]
    assert rec["losses"] and rec["metrics"]
    models = client.get("/models").json()["models"]
    assert models["balrog"]["active"] == job_id
    (version,) = [v for v in models["balrog"]["versions"] if v["version"] == job_id]
    assert version["job_id"] == job_id and version["metrics"]
    listed = client.get("/train", params={"state": "succeeded"}).json()["jobs"]
    assert job_id in [j["job_id"] for j in listed]


def test_emulate_json_reproducible(client: httpx.Client, balrog: dict[str, Any]) -> None:
    body = {"rows": rows(5), "samples": 3, "seed": 11}
    a = client.post("/emulate", json=body)
    assert a.status_code == 200, a.text
    b = client.post("/emulate", json=body)
    c = client.post("/emulate", json={**body, "seed": 12})
    out = a.json()
    assert out["version"] == balrog["job_id"] and out["seed"] == 11 and out["samples"] == 3
    assert len(out["rows"]) == 15
    assert [r["id"] for r in out["rows"]] == [i for i in range(5) for _ in range(3)]
    assert [r["realization"] for r in out["rows"][:3]] == [0, 1, 2]
    for r in out["rows"]:
        assert isinstance(r["detected"], bool)
        assert (r["mag_r"] is None) == (not r["detected"])
    assert a.json()["rows"] == b.json()["rows"]
    assert a.json()["rows"] != c.json()["rows"]
    # no seed: the server picks one and says which, so the draw can be repeated
    d = client.post("/emulate", json={"rows": rows(2)})
    seed = int(d.headers["x-emulate-seed"])
    again = client.post("/emulate", json={"rows": rows(2), "seed": seed})
    assert d.json()["rows"] == again.json()["rows"]


def test_emulate_csv_and_parquet(client: httpx.Client, balrog: dict[str, Any]) -> None:
    df = pd.DataFrame(rows(4)).rename(columns={"true_mag_r": "BDF_MAG_DERED_CALIB_R"})
    csv_body = df.to_csv(index=False)
    r = client.post(
        "/emulate",
        content=csv_body,
        params={"seed": 3, "samples": 2},
        headers={"content-type": "text/csv", "accept": "text/csv"},
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    out = pd.read_csv(io.StringIO(r.text))
    assert len(out) == 8
    # names come back as they were sent (the DES alias too)
    emulated = ["mag_r", "mag_i", "mag_z", "magerr_r", "magerr_i", "magerr_z", "detected"]
    assert list(out.columns) == [*df.columns, "realization", *emulated, "out_of_domain"]
    # the same rows as JSON with the same seed give the same numbers
    as_json = client.post("/emulate", json={"rows": rows(4), "seed": 3, "samples": 2}).json()
    assert list(out["detected"]) == [x["detected"] for x in as_json["rows"]]
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    r = client.post(
        "/emulate",
        content=buf.getvalue(),
        params={"seed": 3, "samples": 2},
        headers={
            "content-type": "application/vnd.apache.parquet",
            "accept": "application/vnd.apache.parquet",
        },
    )
    assert r.status_code == 200, r.text
    pq = pd.read_parquet(io.BytesIO(r.content))
    pd.testing.assert_series_equal(pq["mag_r"], out["mag_r"], check_exact=False, rtol=1e-9)


def test_emulate_bad_inputs(client: httpx.Client, balrog: dict[str, Any]) -> None:
    bad = rows(3)
    bad[1]["psf_fwhm_i"] = "wide"
    r = client.post("/emulate", json={"rows": bad, "seed": 1})
    assert r.status_code == 422
    assert any(p["row"] == 1 and p["column"] == "psf_fwhm_i" for p in r.json()["problems"])
    assert "psf_fwhm_i" in r.json()["detail"]
    r = client.post("/emulate", json={"rows": rows(201)})  # over the schema's maxItems
    assert r.status_code == 422 and "200" in r.json()["detail"]
    r = client.post("/emulate", json={"rows": rows(2), "samples": 5})
    assert r.status_code == 422 and "samples" in r.json()["detail"]
    r = client.post("/emulate", json={"rows": []})
    assert r.status_code == 422 and "rows" in r.json()["detail"]
    r = client.post("/emulate", content=b"x", headers={"content-type": "text/plain"})
    assert r.status_code == 415
    r = client.post("/emulate", content=b"a,b\n1,2\n", headers={"content-type": "text/csv"})
    assert r.status_code == 422 and "missing columns" in r.json()["detail"]
    r = client.post("/emulate", json={"rows": rows(1)}, headers={"accept": "image/png"})
    assert r.status_code == 406
    r = client.post("/emulate", json={"rows": rows(1), "version": "nope"})
    assert r.status_code == 404 and "nope" in r.json()["detail"]
    r = client.post("/emulate", json={"rows": rows(1), "model": "nebula-dcgan"})
    assert r.status_code == 422


def test_generate_same_bytes_etag_and_activation(
    service: Service, client: httpx.Client, dcgan: dict[str, Any]
) -> None:
    job_id = dcgan["job_id"]
    assert dcgan["model"] == f"nebula-dcgan@{job_id}"
    models = client.get("/models").json()["models"]
    assert job_id in [v["version"] for v in models["nebula-dcgan"]["versions"]]
    # activation needs the key; then the active version serves requests without `version`
    r = client.post("/models/nebula-dcgan/activate", json={"version": job_id})
    assert r.status_code == 401
    r = client.post("/models/nebula-dcgan/activate", json={"version": job_id}, headers=service.auth)
    assert r.status_code == 200 and r.json()["active"] == job_id
    params = {"model": "nebula-dcgan", "seed": 7, "n": 4}
    a = client.get("/generate", params=params)
    assert a.status_code == 200, a.text
    assert a.headers["content-type"] == "image/png" and a.content.startswith(PNG)
    assert a.headers["x-model-version"] == f"nebula-dcgan@{job_id}"
    b = client.get("/generate", params=params)
    assert a.content == b.content and a.headers["etag"] == b.headers["etag"]
    r = client.get("/generate", params=params, headers={"if-none-match": a.headers["etag"]})
    assert r.status_code == 304 and not r.content
    other = client.get("/generate", params={**params, "seed": 8})
    assert other.content != a.content and other.headers["etag"] != a.headers["etag"]
    pinned = client.get("/generate", params={**params, "version": job_id})
    assert pinned.content == a.content and "immutable" in pinned.headers["cache-control"]
    # sample grids written during training are served
    rec = client.get(f"/train/{job_id}").json()
    assert rec["samples"], rec
    s = client.get(rec["samples"][-1])
    assert s.status_code == 200 and s.content.startswith(PNG)
    for name in ("nope.png", "config.json", "..%2F..%2Fconfig.json", ".hidden.png"):
        r = client.get(f"/train/{job_id}/samples/{name}")
        assert r.status_code == 404 and r.json()["detail"], name


def test_generate_bad_inputs(client: httpx.Client, dcgan: dict[str, Any]) -> None:
    cases = [
        ({"n": 0}, 422, "n"),
        ({"n": 17}, 422, "at most 16"),
        ({"seed": -1}, 422, "seed"),
        ({"model": "balrog"}, 422, "emulator"),
        ({"model": "nope"}, 404, "nope"),
        ({"model": "nebula-dcgan", "version": "nope"}, 404, "nope"),
        ({"model": "../etc"}, 422, "model"),
    ]
    for params, status, word in cases:
        r = client.get("/generate", params=params)
        assert r.status_code == status, (params, r.text)
        assert word in r.json()["detail"], (params, r.json())


def test_concurrent_requests_are_batched_and_batch_independent(
    service: Service, client: httpx.Client, dcgan: dict[str, Any]
) -> None:
    version = dcgan["job_id"]
    seeds = list(range(100, 112))
    alone = {
        s: client.get(
            "/generate", params={"model": "nebula-dcgan", "version": version, "seed": s, "n": 2}
        ).content
        for s in seeds
    }

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=service.base_url, timeout=60) as ac:
            return await asyncio.gather(
                *[
                    ac.get(
                        "/generate",
                        params={"model": "nebula-dcgan", "version": version, "seed": s, "n": 2},
                    )
                    for s in seeds
                ]
            )

    together = asyncio.run(burst())
    assert all(r.status_code == 200 for r in together)
    assert max(int(r.headers["x-batch-size"]) for r in together) > 1
    # a sample's pixels do not depend on which requests shared its batch
    assert {s: r.content for s, r in zip(seeds, together, strict=True)} == alone


def test_auth_on_mutating_routes(service: Service, client: httpx.Client) -> None:
    body = {"preset": "balrog", "overrides": {"dry_run": True}}
    assert client.post("/train", json=body).status_code == 401
    r = client.post("/train", json=body, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 403 and r.json()["detail"] == "invalid API key"
    assert client.delete(f"/train/{'0' * 32}").status_code == 401
    r = client.post(
        "/models/balrog/activate", json={"version": "x"}, headers={"Authorization": "x"}
    )
    assert r.status_code == 401
    assert client.get("/train").status_code == 200  # reads are open


def test_train_bad_inputs(service: Service, client: httpx.Client) -> None:
    h = service.auth
    cases = [
        ({"preset": "nope"}, 422, "unknown preset"),
        ({"preset": "balrog", "overrides": {"lr": 5}}, 422, "lr"),
        ({"preset": "balrog", "overrides": {"nonsense": 1}}, 422, "nonsense"),
        ({"preset": "balrog", "overrides": {"kind": "dcgan-64"}}, 422, "kind"),
        ({"preset": "nebula", "data": "../../etc"}, 422, "outside the data root"),
        ({"preset": "nebula", "data": "/etc/passwd"}, 422, "outside the data root"),
        ({"preset": "nebula", "data": "missing"}, 422, "not found"),
        ({"preset": "balrog"}, 422, "not found"),  # the default catalog is not built here
        ({"preset": "balrog", "resume": "xyz"}, 422, "resume"),
        ({"preset": "balrog", "resume": "f" * 32}, 404, "no training job"),
        ({"preset": "balrog", "extra": 1}, 422, "extra"),
    ]
    for body, status, word in cases:
        r = client.post("/train", json=body, headers=h)
        assert r.status_code == status, (body, r.text)
        assert word in r.json()["detail"], (body, r.json())
    assert client.get(f"/train/{'0' * 32}").status_code == 404
    assert client.get("/train/not-an-id").status_code == 422
    assert client.get(f"/train/{'0' * 32}/events").status_code == 404
    assert client.delete(f"/train/{'0' * 32}", headers=h).status_code == 404
    assert client.get("/train", params={"state": "bogus"}).status_code == 422
    r = client.post("/models/balrog/activate", json={"version": "nope"}, headers=h)
    assert r.status_code == 404 and "nope" in r.json()["detail"]


def test_cancel_and_resume(service: Service, client: httpx.Client, dcgan: dict[str, Any]) -> None:
    h = service.auth
    body = {
        "preset": "nebula-dcgan",
        "data": "tiny",
        "overrides": {**TINY_DCGAN, "max_steps": 100_000, "checkpoint_every": 2, "epochs": 100_000},
    }
    r = client.post("/train", json=body, headers=h)
    job_id = r.json()["job_id"]
    wait_until(lambda: client.get(f"/train/{job_id}").json()["step"] >= 4, timeout=90)
    r = client.delete(f"/train/{job_id}", headers=h)
    assert r.status_code == 202 and r.json()["cancel_requested"] is True
    rec = wait_for_state(client, job_id, {"cancelled", "failed", "succeeded"}, timeout=60)
    assert rec["state"] == "cancelled", rec
    stopped_at = rec["step"]
    assert 4 <= stopped_at < 100_000
    ckpt = service.home / "runs" / job_id / "checkpoints" / "last.pt"
    assert ckpt.is_file()
    # a finished job cannot be cancelled again, nor resumed under another preset
    assert client.delete(f"/train/{job_id}", headers=h).status_code == 409
    r = client.post("/train", json={"preset": "balrog", "resume": job_id}, headers=h)
    assert r.status_code == 422

    r = client.post("/train", json={"preset": "nebula-dcgan", "resume": job_id}, headers=h)
    assert r.status_code == 202 and r.json()["job_id"] == job_id
    # resuming a job that is queued/running again is a conflict
    again = client.post("/train", json={"preset": "nebula-dcgan", "resume": job_id}, headers=h)
    assert again.status_code == 409
    wait_until(lambda: client.get(f"/train/{job_id}").json()["step"] > stopped_at + 2, timeout=90)
    client.delete(f"/train/{job_id}", headers=h)
    events = sse_events(client, f"/train/{job_id}/events?last_event_id=0-0")
    assert events[-1]["state"] == "cancelled"
    # the resumed run continued from the checkpoint: its steps never went back to the start
    starts = [i for i, e in enumerate(events) if e.get("state") == "running"]
    assert len(starts) == 2, [e.get("state") for e in events]
    resumed = [e["step"] for e in events[starts[1] :] if e["event"] == "progress"]
    assert resumed and min(resumed) >= stopped_at - 2 > 0, (stopped_at, resumed[:5])
    assert client.get(f"/train/{job_id}").json()["attempts"] == 1


def test_metrics(client: httpx.Client, balrog: dict[str, Any], dcgan: dict[str, Any]) -> None:
    client.get("/generate", params={"model": "nebula-dcgan", "version": dcgan["job_id"]})
    text = client.get("/metrics").text
    assert re.search(r'cosmogan_training_jobs\{state="succeeded"\} [1-9]', text)
    assert re.search(r'cosmogan_inference_batch_size_count\{task="generate"\} [1-9]', text)
    assert re.search(r'cosmogan_inference_queue_wait_seconds_count\{task="emulate"\} [1-9]', text)
    assert 'route="/generate"' in text and "cosmogan_http_request_duration_seconds_bucket" in text


def test_worker_parent_never_loads_torch(service: Service, dcgan: dict[str, Any]) -> None:
    """The Celery parents route messages only; torch lives in their pool children."""
    ps = subprocess.run(["ps", "-eo", "pid=,ppid=,args="], capture_output=True, text=True)
    procs = [line.split(None, 2) for line in ps.stdout.splitlines()]
    parents = [service.procs[f"worker[{q}]"].pid for q in ("training", "inference")]
    assert sorted(int(p) for p, _, args in procs if "celery" in args and int(p) in parents) == (
        sorted(parents)
    )
    children = [int(p) for p, pp, _ in procs if int(pp) in parents]
    assert children

    def has_torch(pid: int) -> bool:
        return "libtorch" in open(f"/proc/{pid}/maps").read()

    assert not any(has_torch(p) for p in parents)
    assert any(has_torch(p) for p in children)  # the check can see torch where it is loaded


def test_a_version_that_fails_to_load_leaves_the_previous_one_serving(
    service: Service, client: httpx.Client, dcgan: dict[str, Any]
) -> None:
    from models.registry import Registry

    good = dcgan["job_id"]
    h = service.auth
    assert client.post(
        "/models/nebula-dcgan/activate", json={"version": good}, headers=h
    ).is_success
    broken = service.home / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    Registry(service.home / "registry").register("nebula-dcgan", "broken", broken)
    try:
        r = client.post("/models/nebula-dcgan/activate", json={"version": "broken"}, headers=h)
        assert r.status_code == 200
        r = client.get("/generate", params={"model": "nebula-dcgan", "seed": 1, "n": 2})
        assert r.status_code == 200 and r.headers["x-model-version"] == f"nebula-dcgan@{good}"
        ready = wait_until(lambda: (x := client.get("/readyz")).status_code == 200 and x.json())
        assert "nebula-dcgan@broken" in ready["failed"]
        assert ready["loaded"]["nebula-dcgan"] == good
        # asking for the broken version by name is an error with a message, not a crash
        r = client.get("/generate", params={"model": "nebula-dcgan", "version": "broken"})
        assert r.status_code == 503 and "could not be loaded" in r.json()["detail"]
    finally:
        client.post("/models/nebula-dcgan/activate", json={"version": good}, headers=h)
