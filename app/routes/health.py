"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from app.deps import JobsDep, WaiterDep
from app.metrics import JOBS, exposition
from app.results import BrokerUnavailable, ResultTimeout, TaskFailed
from worker.policy import INFERENCE_QUEUE, PING_TASK

router = APIRouter(tags=["health"])

PING_TIMEOUT_S = 5.0
READY_CACHE_S = 2.0  # a positive answer is reused this long, so probes do not flood the queue


@router.get("/healthz", summary="Liveness: the API process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: an inference worker answers and the active models are loaded",
    responses={503: {"description": "Not ready; `detail` says why."}},
)
async def readyz(request: Request, waiter: WaiterDep) -> JSONResponse:
    state = request.app.state
    async with state.ready_lock:  # one ping in flight at a time
        cached = state.ready_cache
        if cached is not None and time.monotonic() - cached[0] < READY_CACHE_S:
            return JSONResponse(cached[1])
        status, body = await _check(request, waiter)
        if status == 200:
            state.ready_cache = (time.monotonic(), body)
    return JSONResponse(body, status_code=status)


async def _check(request: Request, waiter: WaiterDep) -> tuple[int, dict[str, Any]]:
    try:
        await request.app.state.aredis.ping()
    except Exception:
        return 503, {"detail": "Redis is unreachable"}
    try:
        status, _ = await waiter.call(
            PING_TASK, {}, timeout_s=PING_TIMEOUT_S, queue=INFERENCE_QUEUE, expires_s=10
        )
    except (ResultTimeout, BrokerUnavailable):
        return 503, {"detail": f"no inference worker answered within {PING_TIMEOUT_S:g}s"}
    except TaskFailed as exc:
        return 503, {"detail": f"the inference worker failed its check: {exc}"}
    if not status.get("ready"):
        missing = {n: v for n, v in status["active"].items() if status["loaded"].get(n) != v}
        return 503, {"detail": f"active models still loading: {missing}", **status}
    return 200, {"status": "ready", **status}


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(jobs: JobsDep) -> Response:
    try:
        counts = await asyncio.to_thread(jobs.count_by_state)
    except Exception:  # metrics stay scrapeable while Redis is down
        counts = {}
    for state, n in counts.items():
        JOBS.labels(state).set(n)
    return Response(exposition(), media_type=CONTENT_TYPE_LATEST)
