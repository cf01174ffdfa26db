"""Fault injection against a real service (`launcher.service.start_service`): Redis that can
be `kill -9`ed and restarted on the same port with its data, real workers and a real API."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from launcher.service import Service, start_service
from models.columns import DETECTED, INPUTS, OBSERVED, SPLIT

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


# The fault tests' service: `kill_redis()` / `start_redis()` restart its Redis on the same
# port and data folder.
FaultService = Service


@pytest.fixture(scope="module")
def fault_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultService]:
    with running_service(tmp_path_factory.mktemp("faults")) as svc:
        yield svc


@contextlib.contextmanager
def running_service(root: Path, **settings: str) -> Iterator[Service]:
    """Redis, the workers and the API in `root`; `settings` are COSMOGAN_* vars."""
    home = root / "home"
    write_catalog(home / "data" / "mini.parquet")
    settings = {"COSMOGAN_API_KEY": API_KEY, "COSMOGAN_DEVICE": "cpu", **settings}
    settings.setdefault("PYTHONUNBUFFERED", "1")
    with start_service(home, settings=settings, log_dir=root / "logs", watch=True) as svc:
        svc.wait_ready()
        yield svc


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
