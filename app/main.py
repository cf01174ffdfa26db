"""The FastAPI app: wires routers, error handlers, metrics; never imports torch."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis
import redis.asyncio as aioredis
from fastapi import FastAPI
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from app import errors, openapi
from app.headers import SecurityHeadersMiddleware, docs_csp, inline_script_hashes
from app.limits import (
    JsonBodyLimitMiddleware,
    RateLimiter,
    RateLimitMiddleware,
    StreamSlots,
    method_label,
)
from app.metrics import REQUEST_LATENCY
from app.reaper import Reaper, reap_forever
from app.results import ResultWaiter
from app.routes import datasets, emulate, generate, health, models, train, ui
from models.settings import get_settings
from worker.celery_app import app as celery_app
from worker.celery_app import send_run, send_training
from worker.jobs import JobStore
from worker.policy import redis_url

log = logging.getLogger(__name__)


# After a Redis restart every pooled connection is dead: a command that meets one reconnects
# and tries again instead of failing the request.
REDIS_OPTIONS: dict[str, Any] = {
    "socket_connect_timeout": 3,
    "socket_timeout": 30,
    "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
    "retry_on_error": [redis.exceptions.ConnectionError],
}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    url = redis_url()
    app.state.celery = celery_app
    app.state.jobs = JobStore.from_url(url)
    # XREAD blocks for 5 s at most (see the events route): reads may take a little longer
    # Sized for the API's concurrency, and blocking: a burst beyond the pool waits for a
    # connection (up to redis_pool_timeout_s) instead of failing with "Too many connections".
    settings = get_settings()
    app.state.aredis = aioredis.Redis(
        connection_pool=aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=settings.redis_max_connections,
            timeout=settings.redis_pool_timeout_s,
            **REDIS_OPTIONS,
        )
    )
    # Event streams block on XREAD: they get their own pool, one connection per allowed
    # stream, so open streams can never take the connections /readyz or /generate need.
    app.state.streams = StreamSlots(
        app.state.aredis, settings.max_event_streams, settings.max_event_streams_per_client
    )
    app.state.stream_redis = aioredis.Redis(
        connection_pool=aioredis.BlockingConnectionPool.from_url(
            url, max_connections=settings.max_event_streams + 1, timeout=5, **REDIS_OPTIONS
        )
    )
    # the result subscription idles for long stretches: no read timeout, periodic health checks
    pubsub_client = aioredis.from_url(url, socket_connect_timeout=3, health_check_interval=30)
    app.state.waiter = ResultWaiter(app.state.aredis, celery_app, pubsub_client)
    app.state.ready_lock = asyncio.Lock()
    app.state.ready_cache = None
    await app.state.waiter.start()
    reaper = Reaper(
        app.state.jobs,
        lambda job_id: send_training(job_id, celery_app),
        lambda kind, job_id: send_run(kind, job_id, celery_app),
    )
    reaping = asyncio.create_task(reap_forever(reaper))
    try:
        yield
    finally:
        reaping.cancel()
        await app.state.waiter.stop()
        await pubsub_client.aclose()
        await app.state.aredis.aclose()
        await app.state.stream_redis.aclose()
        app.state.jobs.r.close()


class LatencyMiddleware:
    """Request latency by route template (pure ASGI, so streamed responses pass through)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            method = method_label(scope["method"])
            REQUEST_LATENCY.labels(method, path, str(status["code"])).observe(
                time.perf_counter() - start
            )


def create_app() -> FastAPI:
    app = FastAPI(
        title="cosmogan",
        version="0.1.0",
        summary="Train and serve generative models for astronomy.",
        lifespan=lifespan,
        docs_url=None,  # served by app.routes.ui from local assets, so they work offline
        redoc_url=None,
    )
    errors.install(app)
    for module in (train, generate, emulate, models, health, datasets):
        app.include_router(module.router)
    ui.install(app)
    settings = get_settings()
    app.add_middleware(JsonBodyLimitMiddleware, limit=settings.max_json_bytes)
    if settings.rate_limit_per_minute:
        limiter = RateLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst)
        app.add_middleware(RateLimitMiddleware, limiter=limiter)
    app.add_middleware(LatencyMiddleware)
    docs = {path: docs_csp(inline_script_hashes(page().body.decode())) for path, page in
            (("/docs", ui.swagger_ui), ("/redoc", ui.redoc))}  # fmt: skip
    app.add_middleware(SecurityHeadersMiddleware, csp_by_path=docs)
    openapi.install(app)
    return app


app = create_app()
