"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from app.deps import JobsDep, WaiterDep
from app.metrics import JOBS, exposition
from app.results import BrokerUnavailable, ResultTimeout, TaskFailed
from worker.policy import INFERENCE_QUEUE, PING_TASK

log = logging.getLogger(__name__)
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
async def readyz(
    request: Request,
    waiter: WaiterDep,
    strict: Annotated[bool, Query(description="Answer 503 when degraded too.")] = False,
) -> JSONResponse:
    state = request.app.state
    async with state.ready_lock:  # one ping in flight at a time
        cached = state.ready_cache
        if cached is not None and time.monotonic() - cached[0] < READY_CACHE_S:
            status, body = cached[1]
        else:
            status, body = await _check(request, waiter)
            if status == 200:
                state.ready_cache = (time.monotonic(), (status, body))
    if strict and body.get("status") == "degraded":
        status = 503
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
        log.error("readiness check failed: %s", exc)
        return 503, {"detail": "the inference worker failed its check (see its log)"}
    if not status.get("ready"):
        missing = {n: v for n, v in status["active"].items() if status["loaded"].get(n) != v}
        return 503, {"detail": f"active models still loading: {missing}", **status}
    unavailable = status.get("unavailable") or {}
    if not unavailable:
        return 200, {"status": "ready", **status}
    names = ", ".join(sorted(unavailable))
    if status["active"] and not status["loaded"]:  # nothing at all can be served
        return 503, {
            **status,
            "status": "failed",
            "ready": False,
            "detail": f"no model serves: {names}",
        }
    # still 200: the other models serve, and taking the API out of a load balancer would
    # stop them too; `ready` is false and `strict=true` makes it a 503
    body = {**status, "status": "degraded", "ready": False, "detail": f"unavailable: {names}"}
    return 200, body


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(jobs: JobsDep) -> Response:
    try:
        counts = await asyncio.to_thread(jobs.count_by_state)
    except Exception:  # metrics stay scrapeable while Redis is down
        counts = {}
    for state, n in counts.items():
        JOBS.labels(state).set(n)
    return Response(exposition(), media_type=CONTENT_TYPE_LATEST)
