"""The inference queue is bounded: a full queue answers 503 at once, abandoned work is dropped."""

from __future__ import annotations

import asyncio
import re
import time

import httpx

from tests.integration.conftest import Service, wait_until

N = 16  # images per request: COSMOGAN_MAX_QUEUED_WORK=64 admits four such requests at a time


def burst(service: Service, count: int, timeout: float) -> list[httpx.Response | Exception]:
    async def run() -> list[httpx.Response | Exception]:
        async with httpx.AsyncClient(base_url=service.base_url, timeout=timeout) as ac:
            return await asyncio.gather(
                *[
                    ac.get("/generate", params={"model": "nebula", "seed": 900 + i, "n": N})
                    for i in range(count)
                ],
                return_exceptions=True,
            )

    return asyncio.run(run())


def test_a_full_queue_answers_503_with_retry_after(service: Service) -> None:
    answers = burst(service, 24, timeout=120)
    statuses = [r.status_code for r in answers if isinstance(r, httpx.Response)]
    assert len(statuses) == 24, answers
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(200) >= 4 and statuses.count(503) >= 1, statuses
    refused = next(r for r in answers if isinstance(r, httpx.Response) and r.status_code == 503)
    assert int(refused.headers["retry-after"]) > 0 and "queue is full" in refused.json()["detail"]
    with service.client() as c:
        # the queue drains: the next request is served
        assert c.get("/generate", params={"model": "nebula", "n": N}).status_code == 200
        text = c.get("/metrics").text
    assert re.search(r'cosmogan_inference_rejected_total\{task="generate"\} [1-9]', text)


def test_work_for_clients_that_left_is_dropped(service: Service) -> None:
    log = service.log_path("worker[inference]")
    before = log.read_text(errors="replace").count("nobody waits for")
    answers = burst(service, 4, timeout=0.02)  # every client gives up almost at once
    assert all(isinstance(r, httpx.TimeoutException) for r in answers), answers
    wait_until(
        lambda: log.read_text(errors="replace").count("nobody waits for") > before, timeout=30
    )
    time.sleep(0.5)
    with service.client() as c:  # and their slots in the queue were given back
        r = c.get("/generate", params={"model": "nebula", "seed": 1, "n": N})
        assert r.status_code == 200, r.text
