"""Bounds on what anonymous callers can hold: stream slots, request rates, metric labels."""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from typing import Any

from starlette.requests import Request

# Methods the API answers; anything else is one "other" label in the metrics.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else "other"


def client_key(request: Request) -> str:
    """Who is asking: the API key if one is sent (so callers behind one proxy are told
    apart), else the peer address."""
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer ") and len(auth) > 7:
        return "key:" + auth[7:].strip()[:128]
    return "ip:" + (request.client.host if request.client else "unknown")


class StreamSlots:
    """Concurrent server-sent-event streams, capped per client and in all."""

    def __init__(self, total: int, per_client: int) -> None:
        self.total, self.per_client = total, per_client
        self.held: dict[str, int] = {}

    @property
    def open(self) -> int:
        return sum(self.held.values())

    def acquire(self, who: str) -> str | None:
        """None when a slot was taken, else why not."""
        if self.open >= self.total:
            return f"the server already streams {self.total} event streams; retry later"
        if self.held.get(who, 0) >= self.per_client:
            return f"at most {self.per_client} concurrent event streams per client"
        self.held[who] = self.held.get(who, 0) + 1
        return None

    def release(self, who: str) -> None:
        left = self.held.get(who, 0) - 1
        if left > 0:
            self.held[who] = left
        else:
            self.held.pop(who, None)


class RateLimiter:
    """Token buckets per client: `per_minute` requests a minute, bursts up to `burst`.

    Buckets of idle clients are dropped (oldest first) beyond `max_clients`, so the table
    stays bounded whatever the number of addresses.
    """

    def __init__(self, per_minute: int, burst: int, max_clients: int = 10_000) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.max_clients = max_clients
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, who: str, now: float | None = None) -> float:
        """0 when allowed, else seconds until the next request would be."""
        now = time.monotonic() if now is None else now
        tokens, last = self.buckets.pop(who, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self.buckets[who] = (tokens, now)
        while len(self.buckets) > self.max_clients:
            self.buckets.popitem(last=False)
        return wait


class RateLimitMiddleware:
    """429 with `Retry-After` once a client exceeds its rate; health probes are exempt."""

    EXEMPT = ("/healthz", "/readyz", "/metrics")

    def __init__(self, app: Any, limiter: RateLimiter) -> None:
        self.app, self.limiter = app, limiter

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") in self.EXEMPT:
            await self.app(scope, receive, send)
            return
        wait = self.limiter.take(client_key(Request(scope)))
        if not wait:
            await self.app(scope, receive, send)
            return
        from fastapi.responses import JSONResponse

        response = JSONResponse(
            {"detail": f"too many requests; retry in {math.ceil(wait)}s"},
            status_code=429,
            headers={"Retry-After": str(math.ceil(wait))},
        )
        await response(scope, receive, send)
