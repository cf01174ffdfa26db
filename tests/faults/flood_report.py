"""Flood figures for RELIABILITY.md: `python -m tests.faults.flood_report` (about a minute).

Starts the same real service as the fault tests (default limits) and measures what anonymous
floods cost: event streams, exotic HTTP methods, large JSON bodies.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from tests.faults.conftest import FaultService, running_service

EXOTIC = ["PROPFIND", "MKCOL", "LOCK", "SEARCH", "PURGE", "REPORT", "MKCALENDAR", "TRACE"]


async def probe(client: httpx.AsyncClient, path: str, stop: asyncio.Event) -> list[float]:
    """Latencies of `path`, one request every 50 ms until `stop`."""
    out = []
    while not stop.is_set():
        t = time.perf_counter()
        r = await client.get(path)
        out.append(time.perf_counter() - t)
        assert r.status_code == 200, r.text
        await asyncio.sleep(0.05)
    return out


async def streams(svc: FaultService, job_id: str) -> None:
    limits = httpx.Limits(max_connections=400)
    async with (
        httpx.AsyncClient(base_url=svc.base_url, timeout=30, limits=limits) as client,
        contextlib.AsyncExitStack() as stack,
    ):
        codes: dict[int, int] = {}
        for i in range(150):
            headers = svc.auth if i % 2 else {}
            future = f"{int(time.time() * 1000) + 10**9}-0"
            url = f"/train/{job_id}/events?last_event_id={future}"
            resp = await stack.enter_async_context(client.stream("GET", url, headers=headers))
            codes[resp.status_code] = codes.get(resp.status_code, 0) + 1
        t = time.perf_counter()
        ready = (await client.get("/readyz")).status_code
        gen = (await client.get("/generate?seed=1&n=1")).status_code
        took = time.perf_counter() - t
        print(f"150 event streams asked (75 anonymous, 75 with the key): {codes}")
        print(f"  with them open: /readyz {ready}, /generate {gen}, both in {took:.2f}s")


async def bodies(svc: FaultService) -> None:
    async with httpx.AsyncClient(base_url=svc.base_url, timeout=60) as client:
        for label, size in (("250 KB (under the limit)", 250_000), ("48 MB", 48_000_000)):
            # many small values: the slowest kind of JSON to parse per byte
            body = b'{"preset": "balrog", "junk": [' + b"1," * (size // 2) + b"1]}"
            stop = asyncio.Event()
            probing = asyncio.create_task(probe(client, "/healthz", stop))
            await asyncio.sleep(0.3)
            t = time.perf_counter()
            headers = {"content-type": "application/json", **svc.auth}
            r = await client.post("/train", content=body, headers=headers)
            took = time.perf_counter() - t
            await asyncio.sleep(0.3)
            stop.set()
            lat = await probing
            print(
                f"JSON body {label}: {r.status_code} in {took:.2f}s; /healthz meanwhile "
                f"median {statistics.median(lat) * 1000:.0f} ms, max {max(lat) * 1000:.0f} ms"
            )


def methods(svc: FaultService) -> None:
    with svc.client() as client:
        before = len(client.get("/metrics").content)
        rejected = 0
        for i in range(2500):
            method = EXOTIC[i % len(EXOTIC)] if i % 2 else f"X{i}"
            try:
                client.request(method, f"/nothing/{i}")
            except httpx.TransportError:
                rejected += 1
        after = len(client.get("/metrics").content)
    print(
        f"2,500 requests with exotic or made-up methods ({rejected} refused by the HTTP "
        f"parser): /metrics {before / 1000:.0f} KB -> {after / 1000:.0f} KB"
    )


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, running_service(Path(tmp)) as svc:
        with svc.client() as client:
            body = {"preset": "balrog", "overrides": {"dry_run": True}}
            job_id = client.post("/train", json=body, headers=svc.auth).json()["job_id"]
            while client.get(f"/train/{job_id}").json()["state"] != "succeeded":
                time.sleep(0.5)
        asyncio.run(streams(svc, job_id))
        methods(svc)
        asyncio.run(bodies(svc))


if __name__ == "__main__":
    main()
