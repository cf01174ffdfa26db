"""The API without a broker: validation, auth and lookups that never reach a worker."""

from __future__ import annotations

import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from app.routes.generate import etag_matches, make_etag
from app.tables import negotiate
from tests.conftest import API_KEY as KEY
from tests.conftest import AUTH
from tests.rows import ROW


def test_api_process_never_imports_torch() -> None:
    code = "import sys, app.main; print('torch' in sys.modules, 'celery' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]


@pytest.fixture
def app_env() -> dict[str, str]:
    return {"COSMOGAN_MAX_EMULATE_ROWS": "10"}


def test_health_is_open(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_is_503_without_redis(client: TestClient) -> None:
    r = client.get("/readyz")
    assert r.status_code == 503 and "Redis" in r.json()["detail"]


@pytest.mark.parametrize(
    ("headers", "status", "detail"),
    [
        ({}, 401, "missing API key"),
        ({"Authorization": "Bearer nope"}, 403, "invalid API key"),
        ({"Authorization": f"Basic {KEY}"}, 401, "missing API key"),
    ],
)
def test_mutating_routes_need_the_key(client: TestClient, headers, status, detail) -> None:
    for method, url, body in [
        ("POST", "/train", {"preset": "balrog"}),
        ("DELETE", f"/train/{'a' * 32}", None),
        ("POST", "/models/balrog/activate", {"version": "v1"}),
    ]:
        r = client.request(method, url, json=body, headers=headers)
        assert r.status_code == status, (method, url, r.text)
        assert r.json()["detail"].startswith(detail)
    assert client.post("/train", json={}, headers=headers).status_code == status


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({}, "preset: Field required"),
        ({"preset": "nope"}, "unknown preset 'nope'"),
        ({"preset": "balrog", "overrides": {"epochs": 0}}, "'epochs' must be between"),
        ({"preset": "balrog", "overrides": {"dry_run": "yes"}}, "true or false"),
        ({"preset": "nebula", "overrides": {"image_size": 64}}, "fixed by preset"),
        ({"preset": "nebula", "data": "../secrets"}, "outside the data root"),
        ({"preset": "nebula", "data": "/etc"}, "outside the data root"),
        ({"preset": "nebula", "data": "absent"}, "dataset not found"),
        ({"preset": "balrog", "resume": "../x"}, "resume"),
        ({"preset": "balrog", "activate": "maybe"}, "activate"),
        ({"preset": "balrog-fast", "overrides": {"teacher": "/etc/x.pt"}}, "registered model"),
        ({"preset": "balrog-fast", "overrides": {"teacher": "nope@v1"}}, "has no"),
        ({"preset": "balrog-fast", "overrides": {"teacher": "balrog"}}, "only a flow"),
        ({"preset": "balrog-fast", "overrides": {"teacher": 3}}, "'teacher' must be"),
        ({"preset": "balrog-fast", "overrides": {"distill_rows": 10**9}}, "'distill_rows'"),
    ],
)
def test_train_rejects_bad_bodies_with_a_message(client: TestClient, body, fragment) -> None:
    r = client.post("/train", json=body, headers=AUTH)
    assert r.status_code == 422, r.text
    assert fragment in r.json()["detail"]


def test_train_rejects_non_json(client: TestClient) -> None:
    r = client.post("/train", content=b"{not json", headers={**AUTH, "content-type": "text/json"})
    assert r.status_code == 422 and isinstance(r.json()["detail"], str)


@pytest.mark.parametrize(
    ("params", "status", "fragment"),
    [
        ({"n": 0}, 422, "n: Input should be greater than or equal to 1"),
        ({"n": 65}, 422, "n must be at most 64"),
        ({"seed": "abc"}, 422, "seed"),
        ({"nrow": 0}, 422, "nrow"),
        ({"model": "balrog"}, 422, "is an emulator"),
        ({"model": "ghost"}, 404, "ghost"),
        ({"model": "nebula", "version": "bad/version"}, 422, "version"),
    ],
)
def test_generate_input_errors(client: TestClient, params, status, fragment) -> None:
    r = client.get("/generate", params=params)
    assert r.status_code == status, r.text
    assert fragment in r.json()["detail"]


def test_emulate_errors_before_any_worker(client: TestClient) -> None:
    bad = [dict(ROW), {**ROW, "sky_sigma_z": -3.0}, {**ROW, "true_mag_i": None}]
    r = client.post("/emulate", json={"rows": bad})
    assert r.status_code == 422
    problems = r.json()["problems"]
    assert {(p["row"], p["column"]) for p in problems} >= {(1, "sky_sigma_z"), (2, "true_mag_i")}
    r = client.post("/emulate", json={"rows": [ROW] * 11})
    assert r.status_code == 422 and "10 allowed" in r.json()["detail"]
    r = client.post("/emulate", json={"rows": [ROW], "samples": 0})
    assert r.status_code == 422 and "samples" in r.json()["detail"]
    r = client.post("/emulate", json={"rows": [ROW], "surprise": 1})
    assert r.status_code == 422 and "surprise" in r.json()["detail"]
    r = client.post("/emulate", content=b"", headers={"content-type": "text/csv"})
    assert r.status_code == 422 and "empty" in r.json()["detail"]
    r = client.post("/emulate", content=b"\x00garbage", headers={"content-type": "text/csv"})
    assert r.status_code == 422
    r = client.post("/emulate", content=b"x", headers={"content-type": "image/png"})
    assert r.status_code == 415
    r = client.post("/emulate", json={"rows": [ROW]}, headers={"accept": "text/html"})
    assert r.status_code == 406


def test_unknown_things_are_404(client: TestClient) -> None:
    r = client.post("/models/ghost/activate", json={"version": "v1"}, headers=AUTH)
    assert r.status_code == 404 and "ghost" in r.json()["detail"]
    assert client.get("/models").json() == {"models": {}}
    assert client.get("/train/not-a-job-id").status_code == 422


def test_metrics_answer_without_redis(client: TestClient) -> None:
    r = client.get("/metrics")
    assert r.status_code == 200 and "cosmogan_http_request_duration_seconds" in r.text


def test_etag_depends_on_every_input() -> None:
    base = make_etag("nebula", "v1", 1.0, 1, 16, None)
    assert base == make_etag("nebula", "v1", 1.0, 1, 16, None)
    variants = [
        make_etag("nebula-dcgan", "v1", 1.0, 1, 16, None),
        make_etag("nebula", "v2", 1.0, 1, 16, None),
        make_etag("nebula", "v1", 2.0, 1, 16, None),
        make_etag("nebula", "v1", 1.0, 2, 16, None),
        make_etag("nebula", "v1", 1.0, 1, 15, None),
        make_etag("nebula", "v1", 1.0, 1, 16, 4),
        make_etag("nebula", "v1", 1.0, 1, 16, None, fmt="1"),  # bytes of an older encoder
    ]
    assert base not in variants and len(set(variants)) == len(variants)
    assert etag_matches(f'"x", W/{base}', base) and etag_matches("*", base)
    assert not etag_matches('"other"', base) and not etag_matches(None, base)


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, "application/json"),
        ("*/*", "application/json"),
        ("text/csv", "text/csv"),
        ("application/json;q=0.5, text/csv", "text/csv"),
        ("application/vnd.apache.parquet", "application/vnd.apache.parquet"),
        ("text/html, */*;q=0.1", "application/json"),
    ],
)
def test_content_negotiation(accept, expected) -> None:
    assert negotiate(accept) == expected
