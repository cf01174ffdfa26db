"""Fault injection against a real service: Redis that can be `kill -9`ed and restarted on
the same port with its data, a real `cosmogan worker` and a real `cosmogan api`."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from launcher.supervisor import free_port, redis_command, wait_for_redis
from models.columns import DETECTED, INPUTS, OBSERVED, SPLIT
from tests.integration.conftest import _spawn, _stop, session_pids, wait_ready
from worker.jobs import JobStore

API_KEY = "faults-key-0123456789"
# A balrog job of tiny networks that runs for some seconds on 2 cores and checkpoints often.
SLOW_BALROG = {
    "hidden": 16,
    "batch_size": 32,
    "n_critic": 1,
    "epochs": 100_000,
    "detector_epochs": 1,
    "checkpoint_every": 25,
    "log_every": 25,
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.faults)


def write_catalog(path: Path, rows: int = 4000, seed: int = 0) -> None:
    """An analytic emulator catalog (noise grows with magnitude; faint objects undetected)."""
    rng = np.random.default_rng(seed)
    true = rng.uniform(18.0, 25.0, (rows, 3))
    sky = rng.uniform(3.0, 15.0, (rows, 3))
    psf = rng.uniform(0.7, 1.3, (rows, 3))
    sigma = 0.02 * 10 ** (0.4 * (true - 20.0)) * psf
    observed = true + sigma * rng.standard_normal((rows, 3))
    detected = rng.random(rows) < 1.0 / (1.0 + np.exp(2.0 * (true[:, 1] - 24.0)))
    observed[~detected] = np.nan
    df = pd.DataFrame(np.concatenate([true, sky, psf], axis=1), columns=list(INPUTS))
    for i, col in enumerate(OBSERVED):
        df[col] = observed[:, i]
    df[DETECTED] = detected
    df[SPLIT] = rng.choice(["train", "val", "test"], size=rows, p=[0.8, 0.1, 0.1])
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(path)


@dataclass
class FaultService:
    home: Path
    logs: Path
    base_url: str
    redis_url: str
    redis_port: int
    env: dict[str, str]
    procs: dict[str, subprocess.Popen]

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {API_KEY}"}

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=30)

    def store(self) -> JobStore:
        return JobStore.from_url(self.redis_url)

    def kill_redis(self) -> None:
        """`kill -9` of the Redis server: no shutdown save, only what the AOF already has."""
        proc = self.procs["redis"]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def start_redis(self) -> None:
        cmd = redis_command(self.redis_port, self.home / "redis")
        self.procs["redis"] = _spawn(cmd, self.env, self.logs / "redis.log")
        wait_for_redis(self.redis_url, proc=self.procs["redis"])


@pytest.fixture(scope="module")
def fault_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultService]:
    with running_service(tmp_path_factory.mktemp("faults")) as svc:
        yield svc


@contextlib.contextmanager
def running_service(root: Path, **settings: str) -> Iterator[FaultService]:
    """Redis, `cosmogan worker` and `cosmogan api` in `root`; `settings` are COSMOGAN_* vars."""
    home, logs = root / "home", root / "logs"
    logs.mkdir()
    (home / "redis").mkdir(parents=True)
    write_catalog(home / "data" / "mini.parquet")
    rport, aport = free_port(), free_port()
    redis_url = f"redis://127.0.0.1:{rport}/0"
    env = {
        **os.environ,
        "COSMOGAN_HOME": str(home),
        "COSMOGAN_REDIS_URL": redis_url,
        "COSMOGAN_API_KEY": API_KEY,
        "COSMOGAN_DEVICE": "cpu",
        "PYTHONUNBUFFERED": "1",
        **settings,
    }
    svc = FaultService(home, logs, f"http://127.0.0.1:{aport}", redis_url, rport, env, {})
    cli = [sys.executable, "-m", "launcher"]
    try:
        svc.start_redis()
        svc.procs["worker"] = _spawn([*cli, "worker"], env, logs / "worker.log")
        svc.procs["api"] = _spawn([*cli, "api", "--port", str(aport)], env, logs / "api.log")
        with svc.client() as c:
            wait_ready(c, svc.procs, logs)
        yield svc
    finally:
        pgids = {p.pid for p in svc.procs.values()}
        ps = subprocess.run(["ps", "-eo", "pid=,ppid=,pgid="], capture_output=True, text=True)
        for line in ps.stdout.splitlines():
            _pid, ppid, pgid = map(int, line.split())
            if ppid in pgids:
                pgids.add(pgid)
        for name in ("api", "worker", "redis"):
            if name in svc.procs:
                _stop(svc.procs[name])
        deadline = time.monotonic() + 10
        while session_pids(pgids) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = session_pids(pgids)
        for pgid in pgids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        assert not left, f"processes left after shutdown: {left}"


def poll(client: httpx.Client, job_id: str, until: Any, timeout: float) -> dict[str, Any]:
    """GET the job until `until(record)`; 503s while Redis is down are expected."""
    deadline = time.monotonic() + timeout
    rec: dict[str, Any] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            r = client.get(f"/train/{job_id}")
            if r.status_code == 200:
                rec = r.json()
                if until(rec):
                    return rec
            else:
                assert r.status_code in (503, 504), r.text
        time.sleep(0.25)
    raise TimeoutError(f"job {job_id}: condition not met in {timeout}s; last {rec}")
