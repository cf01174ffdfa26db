"""Rate limits and metric labels, without a service."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.limits import RateLimiter, RateLimitMiddleware, method_label


def test_token_bucket_allows_bursts_then_the_rate() -> None:
    limiter = RateLimiter(per_minute=60, burst=3)
    assert [limiter.take("a", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a", now=0.0) == 1.0  # one token a second
    assert limiter.take("b", now=0.0) == 0.0  # another client has its own bucket
    assert limiter.take("a", now=1.5) == 0.0


def test_the_bucket_table_stays_bounded() -> None:
    limiter = RateLimiter(per_minute=60, burst=1, max_clients=100)
    for i in range(1000):
        limiter.take(f"ip:{i}", now=0.0)
    assert len(limiter.buckets) == 100


def test_unknown_methods_share_one_label() -> None:
    assert method_label("GET") == "GET" and method_label("FOO") == "other"


def test_rate_limit_middleware_answers_429_with_retry_after() -> None:
    app = FastAPI()

    @app.get("/x")
    def x() -> dict:
        return {}

    @app.get("/healthz")
    def healthz() -> dict:
        return {}

    app.add_middleware(RateLimitMiddleware, limiter=RateLimiter(per_minute=1, burst=2))
    with TestClient(app) as client:
        assert [client.get("/x").status_code for _ in range(3)] == [200, 200, 429]
        r = client.get("/x")
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert "too many requests" in r.json()["detail"]
        assert client.get("/healthz").status_code == 200  # probes are exempt
