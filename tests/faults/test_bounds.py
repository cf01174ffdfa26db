"""Bounded work per request, answers instead of time-outs, and readiness that tells the truth,
against a real service: wide and heavy bodies, bursts, a small Redis pool, damaged registry
files, event-stream cursors, spoofed proxy headers and the page's security headers."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pandas as pd
import pytest

from models.columns import INPUTS
from tests.faults.conftest import SLOW_BALROG, FaultService, poll, running_service

ROW = dict(zip(INPUTS, [22.1, 21.7, 21.5, 5.0, 6.0, 8.0, 1.0, 0.9, 0.95], strict=True))
PARQUET = {"content-type": "application/vnd.apache.parquet"}
MB = 2**20
MEMORY_BOUND = 512 * MB  # what one request within the limits may add to a process's RSS
REDIS_CONNECTIONS = 16  # the API's pool, far below the concurrency of the bursts below


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultService]:
    settings = {"COSMOGAN_REDIS_MAX_CONNECTIONS": str(REDIS_CONNECTIONS)}
    with running_service(tmp_path_factory.mktemp("bounds"), **settings) as service:
        yield service


# -- memory of the API and the inference process -----------------------------------------------


def rss(pid: int) -> int:
    """Resident bytes of process `pid` (from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise LookupError(pid)


def inference_pid(svc: FaultService) -> int:
    """The inference worker's pool process (where the models run)."""
    parent = svc.procs["worker[inference]"].pid
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


class PeakRss:
    """Samples the RSS of the API and the inference process every 50 ms while active."""

    def __init__(self, svc: FaultService) -> None:
        self.pids = {"api": svc.procs["api"].pid, "inference": inference_pid(svc)}
        self.start = {name: rss(pid) for name, pid in self.pids.items()}
        self.peak = dict(self.start)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            for name, pid in self.pids.items():
                with contextlib.suppress(OSError, LookupError):
                    self.peak[name] = max(self.peak[name], rss(pid))

    def now(self) -> dict[str, int]:
        return {name: rss(pid) for name, pid in self.pids.items()}

    def grown(self) -> dict[str, int]:
        """MB each process's peak rose above its start."""
        return {n: (self.peak[n] - self.start[n]) // MB for n in self.pids}

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def settle(probe: PeakRss, seconds: float = 4.0) -> dict[str, int]:
    """RSS of each process (MB above its start) once a burst is over and trims have run."""
    time.sleep(seconds)
    return {n: (v - probe.start[n]) // MB for n, v in probe.now().items()}


# -- bodies -----------------------------------------------------------------------------------


def wide_csv(extra: int, rows: int = 2) -> bytes:
    """The issue's 1 MB CSV: the nine inputs and `extra` columns of zeros."""
    head = ",".join([*INPUTS, *(f"c{i}" for i in range(extra))])
    row = ",".join([*(str(v) for v in ROW.values()), *("0" * extra)])
    return (head + "\n" + (row + "\n") * rows).encode()


def parquet(rows: int, extra: int) -> bytes:
    cols = {k: np.full(rows, v) for k, v in ROW.items()}
    cols.update({f"c{i}": np.zeros(rows) for i in range(extra)})
    buf = io.BytesIO()
    pd.DataFrame(cols).to_parquet(buf)
    return buf.getvalue()


def json_rows(rows: int, samples: int = 1, **extra: Any) -> bytes:
    return orjson.dumps({"rows": [{**ROW, **extra}] * rows, "samples": samples})


async def burst(
    svc: FaultService, n: int, send: Callable[[httpx.AsyncClient], Any]
) -> list[tuple[int, float, httpx.Response]]:
    """`n` concurrent requests: (status, seconds to the answer, response) each."""
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=svc.base_url, timeout=180, limits=limits) as client:

        async def one() -> tuple[int, float, httpx.Response]:
            t0 = time.monotonic()
            r = await send(client)
            return r.status_code, time.monotonic() - t0, r

        return await asyncio.gather(*(one() for _ in range(n)))


def counts(results: list[tuple[int, float, httpx.Response]]) -> dict[int, int]:
    out: dict[int, int] = {}
    for status, _, _ in results:
        out[status] = out.get(status, 0) + 1
    return out


# -- 1, 2: columns and cells are capped before the work ---------------------------------------


def test_wide_bodies_are_refused_before_they_are_parsed(svc: FaultService) -> None:
    csv = {"content-type": "text/csv"}
    with svc.client() as client, PeakRss(svc) as probe:
        body = wide_csv(100_000)
        assert len(body) > 1_000_000
        for query in ("?samples=16", ""):
            t0 = time.monotonic()
            r = client.post("/emulate" + query, content=body, headers=csv)
            assert r.status_code == 413, r.text
            assert "100009 columns" in r.json()["detail"]
            assert "COSMOGAN_MAX_EMULATE_COLUMNS" in r.json()["detail"]
            assert time.monotonic() - t0 < 5
        # asking for FITS changes nothing: refused before any work (it never answered before)
        r = client.post("/emulate", content=body, headers={**csv, "accept": "application/fits"})
        assert r.status_code == 413
        # JSON: the keys of the first row, before any column is built
        wide_row = {f"c{i}": 0 for i in range(1_500)}
        r = client.post("/emulate", content=json_rows(2, **wide_row))
        assert r.status_code == 413 and "1509 columns" in r.json()["detail"]
        # Parquet: from the footer; 1,000 columns × 2,000 rows × 16 samples is 32 M cells
        r = client.post("/emulate?samples=16", content=parquet(2000, 991), headers=PARQUET)
        assert r.status_code == 413, r.text
        assert "32,288,000 cells" in r.json()["detail"]
        assert "COSMOGAN_MAX_EMULATE_CELLS" in r.json()["detail"]
        # FITS holds 999 columns: a wider response is refused before inference, not spun on
        fits = {**PARQUET, "accept": "application/fits"}
        t0 = time.monotonic()
        r = client.post("/emulate", content=parquet(100, 991), headers=fits)
        assert r.status_code == 406 and "at most 999 columns" in r.json()["detail"]
        assert time.monotonic() - t0 < 5
        # a JSON body is parsed whole: its own, smaller size limit
        r = client.post("/emulate", content=b'{"rows": [' + b"0," * 5_000_000 + b"0]}")
        assert r.status_code == 413 and "MiB" in r.json()["detail"]
    assert probe.grown()["api"] < 100, probe.grown()


def test_the_largest_admitted_requests_stay_within_the_memory_bound(svc: FaultService) -> None:
    """Widest at one sample (4,000 rows × 989 columns, each output format), and most
    realizations: none raises the API or the inference process by more than 512 MB."""
    fits_ok = parquet(4000, 980)  # 989 columns in, 997 out: the widest FITS response
    with svc.client(timeout=120) as client, PeakRss(svc) as probe:
        for accept in ("application/json", "text/csv", "application/fits"):
            r = client.post("/emulate", content=fits_ok, headers={**PARQUET, "accept": accept})
            assert r.status_code == 200, r.text
        r = client.post("/emulate", content=json_rows(4000, samples=16))
        assert r.status_code == 200, r.text
        assert len(r.json()["rows"]) == 64_000
    grown = probe.grown()
    print("largest requests: peak RSS growth (MB)", grown)
    assert all(mb * MB < MEMORY_BOUND for mb in grown.values()), grown


# -- 3, 4: bursts are answered at once, Redis connections wait ---------------------------------


def test_a_burst_beyond_what_can_finish_in_time_is_refused_at_once(svc: FaultService) -> None:
    """30 concurrent 10,000-row requests: those the queue cannot serve before their deadline
    get 503 + Retry-After at once; no 504; memory returns after the burst."""
    with PeakRss(svc) as probe:
        body = json_rows(10_000)
        results = asyncio.run(burst(svc, 30, lambda c: c.post("/emulate", content=body)))
        after = settle(probe)
    seen = counts(results)
    print("30 × 10k rows:", seen, "peak growth", probe.grown(), "after", after)
    assert set(seen) <= {200, 503} and seen.get(200), seen
    refused = [(s, r) for st, s, r in results if st == 503]
    for seconds, r in refused:
        assert int(r.headers["retry-after"]) >= 1
        assert "cannot serve this request in time" in r.json()["detail"]
        assert seconds < 30, seconds  # not a minute-long wait for a 504
    assert all(mb * MB < MEMORY_BOUND for mb in probe.grown().values())
    # the inference process gives back what the burst took (glibc keeps it otherwise)
    assert after["inference"] * MB < MEMORY_BOUND / 2, after
    with svc.client() as client:  # and it is free again: readiness and a small request
        assert client.get("/readyz").status_code == 200
        assert client.post("/emulate", content=json_rows(10)).status_code == 200


def test_work_is_abandoned_when_its_client_is_gone(svc: FaultService) -> None:
    """A client that gives up on 160,000 rows emulated by the exact flow (about a minute of
    work here): the inference process stops between passes, and the next request is served
    at once."""
    log = svc.log_path("worker[inference]")
    before = log.read_text(errors="replace").count("abandoned")
    with svc.client(timeout=3) as client, pytest.raises(httpx.TimeoutException):
        client.post(
            "/emulate", params={"model": "balrog-flow"}, content=json_rows(10_000, samples=16)
        )
    t0 = time.monotonic()
    while log.read_text(errors="replace").count("abandoned") == before:
        assert time.monotonic() - t0 < 20, "the work of a client that left went on"
        time.sleep(0.2)
    with svc.client() as client:
        t0 = time.monotonic()
        assert client.post("/emulate", content=json_rows(10)).status_code == 200
        assert time.monotonic() - t0 < 10


def test_a_burst_wider_than_the_redis_pool_waits_for_connections(svc: FaultService) -> None:
    """300 concurrent /generate through a 16-connection Redis pool: every one answered by
    the model or by the queue's admission, none with 'Redis is unreachable'."""
    results = asyncio.run(burst(svc, 300, lambda c: c.get("/generate?n=1&seed=3")))
    seen = counts(results)
    print("300 × /generate:", seen)
    assert set(seen) <= {200, 503}, seen
    for status, _, r in results:
        if status == 503:
            assert "inference queue" in r.json()["detail"], r.text
    assert seen.get(200, 0) >= 100, seen


# -- 5, 6: damaged registry files --------------------------------------------------------------


def test_a_damaged_registry_breaks_only_what_is_damaged(svc: FaultService) -> None:
    reg = svc.home / "registry"
    home_path = str(svc.home)
    spare = reg / "nebula" / "versions" / "spare"
    shutil.copytree(reg / "nebula" / "versions" / "default", spare)
    meta = spare / "meta.json"
    meta.write_text(meta.read_text()[:20])  # truncated
    active = reg / "balrog" / "active.json"
    weights = reg / "balrog" / "versions" / "default" / "model.pt"
    good_active, good_weights = active.read_bytes(), weights.read_bytes()
    try:
        with svc.client() as client:  # one keep-alive connection throughout
            # one damaged version: listed as damaged, everything else as before
            r = client.get("/models")
            assert r.status_code == 200, r.text
            nebula = r.json()["models"]["nebula"]
            assert nebula["damaged"] == ["versions/spare/meta.json"]
            assert [v["version"] for v in nebula["versions"]] == ["default"]
            assert client.get("/generate?n=1").status_code == 200
            r = client.get("/generate?n=1&version=spare")
            assert r.status_code == 503 and "damaged" in r.json()["detail"]
            assert client.get("/healthz").status_code == 200  # the connection still works

            # a truncated active.json: that model answers 503, the others serve
            active.write_bytes(good_active[:5])
            r = client.post("/emulate", content=json_rows(3))
            assert r.status_code == 503 and "active.json" in r.json()["detail"], r.text
            assert client.get("/generate?n=1").status_code == 200
            listed = client.get("/models").json()["models"]["balrog"]
            assert listed["active"] is None and listed["damaged"] == ["active.json"]
            ready = wait_for(client, lambda b: b.get("status") == "degraded")
            assert "balrog" in ready["unavailable"] and ready["ready"] is False
            assert client.get("/readyz?strict=true").status_code == 503
            active.write_bytes(good_active)
            wait_for(client, lambda b: b.get("status") == "ready")

            # half a model.pt and a restarted inference process: its routes 503, readiness
            # degraded (not "ready"), the image model serves; the restored file serves again
            weights.write_bytes(good_weights[: len(good_weights) // 2])
            restart_inference(svc)
            ready = wait_for(client, lambda b: "balrog" in (b.get("unavailable") or {}))
            assert ready["status"] == "degraded" and ready["loaded"].get("nebula") == "default"
            r = client.post("/emulate", content=json_rows(3))
            assert r.status_code == 503, r.text
            assert "balrog" in r.json()["detail"] and "cannot be read" in r.json()["detail"]
            assert client.get("/generate?n=1").status_code == 200
            bodies = [r.text, client.get("/readyz").text]
            weights.write_bytes(good_weights)
            t0 = time.monotonic()
            while client.post("/emulate", content=json_rows(3)).status_code != 200:
                assert time.monotonic() - t0 < 10, "the restored model does not serve"
                time.sleep(0.25)
            print(f"restored model.pt serves again after {time.monotonic() - t0:.1f}s")
            wait_for(client, lambda b: b.get("status") == "ready")
        for body in bodies:  # no server path, no exception text
            assert home_path not in body and "Error:" not in body and "/" not in detail(body)
    finally:
        active.write_bytes(good_active)
        weights.write_bytes(good_weights)
        shutil.rmtree(spare, ignore_errors=True)


def detail(body: str) -> str:
    data = orjson.loads(body)
    texts = [data.get("detail") or ""]
    texts += [str(v) for v in (data.get("failed") or {}).values()]
    texts += [str(v) for v in (data.get("unavailable") or {}).values()]
    return " ".join(texts)


def wait_for(client: httpx.Client, until: Callable[[dict], bool], timeout: float = 30) -> dict:
    """GET /readyz until `until(body)`; the last body."""
    deadline = time.monotonic() + timeout
    body: dict = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError, ValueError):
            body = client.get("/readyz").json()
            if until(body):
                return body
        time.sleep(0.5)
    raise TimeoutError(f"/readyz never matched; last {body}")


def restart_inference(svc: FaultService) -> None:
    """kill -9 of the inference pool process; Celery's prefork parent starts a fresh one."""
    import os
    import signal

    old = inference_pid(svc)
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(AssertionError, OSError):
            if inference_pid(svc) != old:
                return
        time.sleep(0.2)
    raise TimeoutError("no new inference process")


def test_a_failed_emulate_job_names_no_server_path(svc: FaultService) -> None:
    with svc.client() as client:
        r = client.post(
            "/emulate/jobs", content=b"PAR1 not really parquet", headers={**PARQUET, **svc.auth}
        )
        assert r.status_code == 202, r.text
        job = r.json()["job_id"]
        deadline = time.monotonic() + 60
        while (rec := client.get(f"/emulate/jobs/{job}").json())["state"] != "failed":
            assert time.monotonic() < deadline, rec
            time.sleep(0.3)
        assert rec["error"] and str(svc.home) not in rec["error"], rec
        r = client.get(f"/emulate/jobs/{job}/result")
        assert r.status_code == 409 and str(svc.home) not in r.text


# -- 7, 8, 9: stream cursors, proxy headers, security headers ----------------------------------


def test_event_cursors_beyond_64_bits_are_refused(svc: FaultService) -> None:
    tracebacks = svc.log_path("api").read_text().count("Traceback")
    with svc.client() as client:
        body = {"preset": "balrog", "overrides": {"dry_run": True}}
        job = client.post("/train", json=body, headers=svc.auth).json()["job_id"]
        poll(client, job, lambda r: r["state"] == "succeeded", 60)
        url = f"/train/{job}/events"
        for cursor in ("99999999999999999999-0", "0-18446744073709551616", "18446744073709551616"):
            r = client.get(url, params={"last_event_id": cursor})
            assert r.status_code == 422 and "from 0 to 18446744073709551615" in r.text, r.text
            r = client.get(url, headers={"Last-Event-ID": cursor})
            assert r.status_code == 422, r.text
        r = client.get(url, params={"last_event_id": "18446744073709551615-18446744073709551615"})
        assert r.status_code == 200  # the largest id is valid: a finished job's stream ends
    assert svc.log_path("api").read_text().count("Traceback") == tracebacks


def test_forwarded_for_from_an_untrusted_peer_buys_no_fresh_quota(svc: FaultService) -> None:
    """Without COSMOGAN_TRUSTED_PROXIES, X-Forwarded-For is ignored: every spoofed address
    is the same client, held to its 4 streams."""

    async def scenario() -> list[int]:
        async with httpx.AsyncClient(base_url=svc.base_url, timeout=30) as client:
            body = {"preset": "balrog", "data": "mini.parquet", "overrides": SLOW_BALROG}
            job = (await client.post("/train", json=body, headers=svc.auth)).json()["job_id"]
            url = f"/train/{job}/events"
            statuses = []
            try:
                async with contextlib.AsyncExitStack() as stack:
                    for i in range(8):
                        spoof = {"X-Forwarded-For": f"203.0.113.{i}"}
                        r = await stack.enter_async_context(
                            client.stream("GET", url, headers=spoof)
                        )
                        statuses.append(r.status_code)
            finally:
                await client.delete(f"/train/{job}", headers=svc.auth)
            return statuses

    assert asyncio.run(scenario()) == [200] * 4 + [429] * 4


def test_the_page_and_the_api_send_security_headers(svc: FaultService) -> None:
    with svc.client() as client:
        for path in ("/", "/docs", "/redoc", "/models", "/openapi.json", "/static/app.js"):
            r = client.get(path)
            assert r.status_code == 200, path
            assert r.headers["x-frame-options"] == "DENY"
            assert r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["referrer-policy"] == "no-referrer"
            assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        page = client.get("/").headers["content-security-policy"]
        assert "script-src 'self';" in page and "unsafe" not in page
        assert (
            client.get("/models")
            .headers["content-security-policy"]
            .startswith("default-src 'none'")
        )
        # Swagger UI runs one inline start-up script, allowed by its hash alone (ReDoc none)
        for path, inline in (("/docs", 1), ("/redoc", 0)):
            r = client.get(path)
            policy = r.headers["content-security-policy"]
            scripts = re.findall(r"<script>(.*?)</script>", r.text, re.DOTALL)
            assert len(scripts) == inline, path
            assert "'unsafe-inline'" not in policy.split("script-src")[1].split(";")[0]
            for s in scripts:
                digest = base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()
                assert f"'sha256-{digest}'" in policy
