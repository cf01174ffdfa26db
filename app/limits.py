"""Bounds on what anonymous callers can hold: stream slots, request rates, metric labels."""

from __future__ import annotations

import hmac
import math
import time
from collections import OrderedDict
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request

from models.settings import get_settings

# Methods the API answers; anything else is one "other" label in the metrics.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else "other"


def holds_api_key(request: Request, api_key: str | None) -> bool:
    """Whether `Authorization: Bearer` carries `api_key` (constant-time comparison)."""
    auth = request.headers.get("authorization", "")
    sent = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
    return bool(sent) and hmac.compare_digest(sent.encode(), (api_key or "").encode())


def client_key(request: Request) -> str:
    """Who is asking: the API key holder if the valid key is sent, else the peer address
    (a made-up bearer token does not buy a caller a fresh quota)."""
    if holds_api_key(request, get_settings().api_key):
        return "key"
    return "ip:" + (request.client.host if request.client else "unknown")


# Take a stream slot: KEYS[1] all streams, KEYS[2] this client's (sorted sets of tokens
# scored by expiry). ARGV: now, expiry, token, total cap, per-client cap, key TTL (ms).
# Returns 0 taken, 1 all slots in use, 2 this client's in use. Expired slots (a crashed API
# process never released them) are dropped first.
_TAKE_SLOT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 1 end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[5]) then return 2 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
return 0
"""
SLOTS_KEY = "cosmogan:streams"


class StreamSlots:
    """Concurrent server-sent-event streams, capped per client and in all, across every API
    process (the slots live in Redis). A slot expires SLOT_TTL_S after its last refresh, so
    the streams of a process that died free their slots by themselves."""

    SLOT_TTL_S = 30.0

    def __init__(self, client: Any, total: int, per_client: int) -> None:
        self.r, self.total, self.per_client = client, total, per_client
        self._take = client.register_script(_TAKE_SLOT)

    def _keys(self, who: str) -> list[str]:
        return [SLOTS_KEY, f"{SLOTS_KEY}:{who[:200]}"]

    async def acquire(self, who: str, token: str) -> str | None:
        """None when a slot was taken, else why not."""
        now = time.time()
        ttl_ms = int(self.SLOT_TTL_S * 2000)
        args = [now, now + self.SLOT_TTL_S, token, self.total, self.per_client, ttl_ms]
        refused = int(await self._take(keys=self._keys(who), args=args))
        if refused == 1:
            return f"the server already streams {self.total} event streams; retry later"
        if refused == 2:
            return f"at most {self.per_client} concurrent event streams per client"
        return None

    async def refresh(self, who: str, token: str) -> None:
        expiry = time.time() + self.SLOT_TTL_S
        pipe = self.r.pipeline(transaction=False)
        for key in self._keys(who):
            pipe.zadd(key, {token: expiry}, xx=True)
        await pipe.execute()

    async def release(self, who: str, token: str) -> None:
        pipe = self.r.pipeline(transaction=False)
        for key in self._keys(who):
            pipe.zrem(key, token)
        await pipe.execute()


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


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the JSON body exceeds {limit} bytes")


class JsonBodyLimitMiddleware:
    """413 for JSON bodies over `limit` bytes (by Content-Length, or counted as they arrive
    when chunked), before FastAPI parses them: the parse runs on the event loop, so a big
    body would stall every other request. The routes in `exempt` read and bound their
    bodies themselves (POST /emulate: JSON, CSV or Parquet catalogs)."""

    def __init__(self, app: Any, limit: int, exempt: tuple[str, ...] = ("/emulate",)) -> None:
        self.app, self.limit, self.exempt = app, limit, exempt

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") in self.exempt or not _is_json(scope):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            from fastapi.responses import JSONResponse

            response = JSONResponse({"detail": BodyTooLarge(self.limit).detail}, 413)
            await response(scope, receive, send)
            return
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise BodyTooLarge(self.limit)  # answered by the HTTPException handler
            return message

        await self.app(scope, counted, send)


def _is_json(scope: dict) -> bool:
    """FastAPI parses a body as JSON when its type says JSON or when it has no type."""
    if scope.get("method") in ("GET", "HEAD", "OPTIONS"):
        return False
    ctype = dict(scope.get("headers") or ()).get(b"content-type", b"").split(b";")[0].strip()
    return not ctype or ctype.endswith(b"/json") or ctype.endswith(b"+json")
