"""The FastAPI app: wires routers, error handlers, metrics; never imports torch."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
from fastapi import FastAPI

from app import errors, openapi
from app.metrics import REQUEST_LATENCY
from app.results import ResultWaiter
from app.routes import emulate, generate, health, models, train, ui
from worker.celery_app import app as celery_app
from worker.celery_app import redis_url
from worker.jobs import JobStore

log = logging.getLogger(__name__)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    url = redis_url()
    app.state.celery = celery_app
    app.state.jobs = JobStore.from_url(url)
    # XREAD blocks for 5 s at most (see the events route): reads may take a little longer
    app.state.aredis = aioredis.from_url(url, socket_connect_timeout=3, socket_timeout=30)
    # the result subscription idles for long stretches: no read timeout, periodic health checks
    pubsub_client = aioredis.from_url(url, socket_connect_timeout=3, health_check_interval=30)
    app.state.waiter = ResultWaiter(app.state.aredis, celery_app, pubsub_client)
    app.state.ready_lock = asyncio.Lock()
    app.state.ready_cache = None
    await app.state.waiter.start()
    try:
        yield
    finally:
        await app.state.waiter.stop()
        await pubsub_client.aclose()
        await app.state.aredis.aclose()
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
            REQUEST_LATENCY.labels(scope["method"], path, str(status["code"])).observe(
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
    for module in (train, generate, emulate, models, health):
        app.include_router(module.router)
    ui.install(app)
    openapi.install(app)
    app.add_middleware(LatencyMiddleware)
    return app


app = create_app()
