"""Anonymous floods against a real service: event streams, made-up methods, big bodies."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.faults.conftest import SLOW_BALROG, FaultService, poll, running_service
from tests.integration.conftest import sse_events
from training.presets import build_config, config_to_dict
from worker.jobs import JobStore, new_job_id

TOTAL_STREAMS, PER_CLIENT = 6, 4


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultService]:
    limits = {
        "COSMOGAN_MAX_EVENT_STREAMS": str(TOTAL_STREAMS),
        "COSMOGAN_MAX_EVENT_STREAMS_PER_CLIENT": str(PER_CLIENT),
        "COSMOGAN_MAX_JSON_BYTES": "65536",
    }
    with running_service(tmp_path_factory.mktemp("floods"), **limits) as service:
        yield service


@pytest.fixture(scope="module")
def finished_job(svc: FaultService) -> str:
    with svc.client() as client:
        body = {"preset": "balrog", "overrides": {"dry_run": True}}
        r = client.post("/train", json=body, headers=svc.auth)
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        poll(client, job_id, lambda r: r["state"] == "succeeded", 60)
    return job_id


def test_event_streams_are_capped_per_client_and_in_all(svc: FaultService) -> None:
    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=svc.base_url, timeout=30) as client:
            body = {
                "preset": "balrog",
                "data": "mini.parquet",
                "overrides": {**SLOW_BALROG, "max_steps": 100_000},
            }
            r = await client.post("/train", json=body, headers=svc.auth)
            job_id = r.json()["job_id"]
            url = f"/train/{job_id}/events"
            async with contextlib.AsyncExitStack() as stack:
                for _ in range(PER_CLIENT):  # anonymous, one address
                    resp = await stack.enter_async_context(client.stream("GET", url))
                    assert resp.status_code == 200
                r = await client.get(url)
                assert r.status_code == 429 and "per client" in r.json()["detail"]
                assert r.headers["retry-after"]
                # a made-up bearer token is the same anonymous client
                r = await client.get(url, headers={"Authorization": "Bearer made-up"})
                assert r.status_code == 429
                for _ in range(TOTAL_STREAMS - PER_CLIENT):  # the key holder fills the rest
                    resp = await stack.enter_async_context(
                        client.stream("GET", url, headers=svc.auth)
                    )
                    assert resp.status_code == 200
                r = await client.get(url, headers=svc.auth)
                assert r.status_code == 429 and "already streams" in r.json()["detail"]
                # every stream open: the API still answers from its own Redis connections
                started = time.monotonic()
                assert (await client.get("/readyz")).status_code == 200
                assert (await client.get("/generate?seed=1&n=1")).status_code == 200
                assert (await client.get(f"/train/{job_id}")).status_code == 200
                assert time.monotonic() - started < 10

            # streams closed by their clients give their slots back
            async def one_more() -> int:
                async with client.stream("GET", url) as resp:
                    return resp.status_code

            await asyncio.sleep(6)  # the server notices a gone client within one XREAD block
            assert await one_more() == 200
            r = await client.delete(f"/train/{job_id}", headers=svc.auth)
            assert r.status_code == 202

    asyncio.run(scenario())


def test_a_finished_job_stream_ends_even_with_a_future_cursor(
    svc: FaultService, finished_job: str
) -> None:
    with svc.client() as client:
        url = f"/train/{finished_job}/events"
        started = time.monotonic()
        for params, headers in (
            ({"last_event_id": f"{int(time.time() * 1000) + 10**9}-0"}, {}),
            ({}, {"Last-Event-ID": "99999999999999-0"}),
            ({}, {}),
        ):
            with client.stream("GET", url, params=params, headers=headers) as resp:
                assert resp.status_code == 200
                resp.read()
        assert time.monotonic() - started < 20
        assert client.get(url, params={"last_event_id": "abc"}).status_code == 422
        r = client.get(url, headers={"Last-Event-ID": "abc"})
        assert r.status_code == 422 and "Last-Event-ID" in r.json()["detail"]


def test_metrics_labels_stay_bounded_under_made_up_methods(svc: FaultService) -> None:
    # methods the HTTP parser lets through (WebDAV and friends), and made-up ones (which
    # a lenient parser would let through too)
    exotic = ["PROPFIND", "MKCOL", "LOCK", "SEARCH", "PURGE", "REPORT", "MKCALENDAR", "TRACE"]
    with svc.client() as client:
        before = len(client.get("/metrics").content)
        for i in range(300):
            method = exotic[i % len(exotic)] if i % 2 else f"X{i}METHOD"
            with contextlib.suppress(httpx.TransportError):
                client.request(method, f"/nothing/{i}")
        text = client.get("/metrics").text
    methods = set(re.findall(r'method="([^"]+)"', text))
    assert "other" in methods and methods <= {"GET", "POST", "DELETE", "HEAD", "other"}, methods
    assert "/nothing/" not in text  # unmatched paths share one label
    assert len(text) < before + 20_000


def test_json_bodies_over_the_limit_are_refused_before_parsing(svc: FaultService) -> None:
    big = b'{"preset": "balrog", "junk": [' + b"1," * 40_000 + b"1]}"
    with svc.client() as client:
        r = client.post("/train", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413 and "65536" in r.json()["detail"]
        r = client.post("/models/balrog/activate", content=big, headers=svc.auth)  # no type
        assert r.status_code == 413

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            for i in range(0, len(big), 8192):
                yield big[i : i + 8192]

        r = client.post("/train", content=chunks(), headers=svc.auth)
        assert r.status_code == 413, r.text
        assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"data": "mini\x00.parquet"}, "NUL"),
        ({"data": "x" * 300}, "255"),
        ({"data": "."}, "not the root"),
        ({"data": "../../etc/passwd"}, "outside the data root"),
        ({"data": "missing.parquet"}, "not found"),
        ({"data": "tiny-dir"}, "catalog file"),
        ({"overrides": {"seed": 2**63}}, "seed"),
        ({"overrides": {"device": "cuda:7"}}, "no training worker has device"),
        ({"overrides": {"device": "tpu"}}, "auto, cpu, cuda or cuda:N"),
        ({"overrides": {"device": "cpu:1"}}, "auto, cpu, cuda or cuda:N"),
    ],
)
def test_jobs_that_could_only_fail_are_refused_at_the_door(
    svc: FaultService, body: dict, message: str
) -> None:
    (svc.home / "data" / "tiny-dir").mkdir(exist_ok=True)
    with svc.client() as client:
        # the training worker reports its devices when it starts (this host: no GPU)
        poll_devices = time.monotonic() + 30
        while not JobStore.from_url(svc.redis_url).devices():
            assert time.monotonic() < poll_devices
            time.sleep(0.2)
        r = client.post("/train", json={"preset": "balrog", **body}, headers=svc.auth)
        assert r.status_code == 422, r.text
        assert message in r.json()["detail"], r.json()


def test_the_worker_rechecks_the_data_path_it_reads_from_redis(svc: FaultService) -> None:
    """A record written straight into Redis (no API checks) pointing outside the data root:
    the reaper sends it (it has no message), the worker refuses it with a message."""
    store = JobStore.from_url(svc.redis_url)
    job_id = new_job_id()
    config = config_to_dict(build_config("balrog", {"max_steps": 1}))
    store.create(job_id, {"preset": "balrog", "data": "/etc/passwd", "config": config})
    store.r.close()
    with svc.client() as client, svc.client() as full:
        full.headers.update(svc.auth)
        rec = poll(full, job_id, lambda r: r["state"] not in ("queued", "running"), 60)
        assert rec["state"] == "failed" and "outside the data root" in rec["error"], rec
        # anonymous callers see neither server paths nor error texts
        anon = client.get(f"/train/{job_id}").json()
        assert anon["data"] == "passwd" and "outside" not in anon["error"], anon
        listed = client.get("/train", params={"state": "failed"}).json()["jobs"]
        assert all("/" not in (j["data"] or "") and "Error" not in j["error"] for j in listed)
        events = sse_events(client, f"/train/{job_id}/events?last_event_id=0-0")
        assert "outside" not in str(events) and "/etc" not in str(events)
        events = sse_events(full, f"/train/{job_id}/events")
        assert "outside the data root" in events[0]["error"]


def test_stream_slots_are_shared_by_api_processes_and_expire(svc: FaultService) -> None:
    """Two StreamSlots (as in two API processes) on one Redis share the caps; the slots of
    a process that died without releasing them expire."""
    import redis.asyncio as aioredis

    from app.limits import StreamSlots

    async def scenario() -> None:
        client = aioredis.from_url(svc.redis_url)
        a, b = StreamSlots(client, 3, 2), StreamSlots(client, 3, 2)
        a.SLOT_TTL_S = b.SLOT_TTL_S = 1.0
        try:
            assert await a.acquire("ip:x", "1") is None and await b.acquire("ip:x", "2") is None
            assert "per client" in await b.acquire("ip:x", "3")
            assert await b.acquire("ip:y", "4") is None
            assert "already streams" in await a.acquire("ip:z", "5")
            await a.release("ip:x", "1")
            assert await b.acquire("ip:z", "5") is None
            await asyncio.sleep(0.6)
            await b.refresh("ip:z", "5")
            await asyncio.sleep(0.6)  # "2" and "4" expired (their process "died"), "5" not
            assert await a.acquire("ip:x", "6") is None and await a.acquire("ip:y", "7") is None
            assert "already streams" in await a.acquire("ip:w", "8")
        finally:
            await client.delete("cosmogan:streams", *[f"cosmogan:streams:ip:{c}" for c in "xyzw"])
            await client.aclose()

    asyncio.run(scenario())
