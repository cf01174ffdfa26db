"""Scaling over workers: a GalSim catalog build over one and then two `data` worker processes,
and a fanned-out emulation job over one and then two `inference` workers (one torch thread
each), both pairs measured in one run on one real service (Redis, Celery workers, the API).

Each figure is the wall time from the request to the finished result as a client sees it
(polling every 0.1 s), so it includes queueing, planning and assembling. The second worker
joins the running service (`Service.add_worker`), as another machine on the same Redis and
home would; the two runs of each pair must give the same bytes.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from bench.common import Table

API_KEY = "bench-scaling-key-0123456789"
PARQUET = "application/vnd.apache.parquet"
GOALS = {"build": 1.8, "emulate": 1.7}
# The exact flow, 30 network passes per detected object: a job whose cost is the model's, as
# a survey-size catalog's is. The default distilled student is ~20× cheaper, and a job of
# this size on it is mostly reading, planning and writing Parquet.
EMULATE_MODEL = "balrog-flow"


def _wait(client: httpx.Client, url: str, done: Any, timeout: float = 1800) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rec = client.get(url).json()
        if rec.get("state") in ("failed", "cancelled"):
            raise RuntimeError(f"{url}: {rec}")
        if done(rec):
            return rec
        time.sleep(0.1)
    raise TimeoutError(f"{url} not done in {timeout}s")


def _build(client: httpx.Client, name: str, rows: int, chunk_rows: int) -> float:
    spec = {"name": name, "simulator": "galsim", "rows": rows, "seed": 11, "chunk_rows": chunk_rows}
    t0 = time.perf_counter()
    r = client.post("/datasets", json=spec)
    r.raise_for_status()
    _wait(client, f"/datasets/{name}", lambda d: d.get("state") == "ready")
    return time.perf_counter() - t0


def _emulate(client: httpx.Client, body: bytes) -> tuple[float, bytes]:
    t0 = time.perf_counter()
    r = client.post(
        "/emulate/jobs",
        content=body,
        params={"seed": 3, "model": EMULATE_MODEL},
        headers={"content-type": PARQUET},
    )
    r.raise_for_status()
    rec = _wait(client, r.headers["location"], lambda j: j["state"] == "succeeded")
    seconds = time.perf_counter() - t0
    return seconds, client.get(rec["result"]).content


def _catalog(rows: int) -> bytes:
    rng = np.random.default_rng(0)
    cols = {f"true_mag_{b}": rng.uniform(19, 25, rows) for b in "riz"}
    cols |= {f"sky_sigma_{b}": rng.uniform(3, 15, rows) for b in "riz"}
    cols |= {f"psf_fwhm_{b}": rng.uniform(0.7, 1.4, rows) for b in "riz"}
    buf = io.BytesIO()
    pd.DataFrame(cols).to_parquet(buf, index=False)
    return buf.getvalue()


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) before the run"


def run(quick: bool, command: str) -> tuple[list[Table], dict[str, Any]]:
    from launcher.service import start_service

    build_rows, chunk_rows = (300, 25) if quick else (6000, 100)
    emulate_rows = 2 * 32_768 if quick else 8 * 32_768
    body = _catalog(emulate_rows)
    raw: dict[str, Any] = {"load": _load(), "build_rows": build_rows}
    raw["emulate_rows"] = emulate_rows
    settings = {
        "COSMOGAN_API_KEY": API_KEY,
        "COSMOGAN_DEVICE": "cpu",
        "COSMOGAN_DATA_PROCESSES": "1",
    }
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        home = Path(tmp) / "home"
        with start_service(home, settings=settings, log_dir=Path(tmp) / "logs") as svc:
            svc.wait_ready()
            headers = {"Authorization": f"Bearer {API_KEY}"}
            with httpx.Client(base_url=svc.base_url, headers=headers, timeout=120) as client:
                # each second worker joins once the first has measured alone, and is warm
                # (imports done, GalSim's tables or the model loaded) before its pair is timed
                _build(client, "warm", 20, 10)
                raw["build_1"] = _build(client, "one", build_rows, chunk_rows)
                svc.wait_worker(svc.add_worker("data"))
                _build(client, "warm-2", 100, 10)
                raw["build_2"] = _build(client, "two", build_rows, chunk_rows)

                _emulate(client, _catalog(1000))
                raw["emulate_1"], first = _emulate(client, body)
                svc.wait_worker(svc.add_worker("inference"))
                _emulate(client, _catalog(4 * 32_768))
                raw["emulate_2"], second = _emulate(client, body)
            data = home / "data"
            m1 = json.loads((data / "one" / "_manifest.json").read_text())
            m2 = json.loads((data / "two" / "_manifest.json").read_text())
    raw["same_build"] = m1["sha256"] == m2["sha256"]
    raw["same_emulation"] = first == second
    if not (raw["same_build"] and raw["same_emulation"]):
        raise RuntimeError(f"two workers gave other bytes than one: {raw}")
    raw["build_ratio"] = raw["build_1"] / raw["build_2"]
    raw["emulate_ratio"] = raw["emulate_1"] / raw["emulate_2"]

    table = Table(
        "Fanned-out jobs: one worker vs two on this machine (wall time, request to result)",
        command,
        ["job", "size", "1 worker s", "2 workers s", "speed-up", "goal", "same bytes"],
        [
            [
                "GalSim catalog build (data workers, 1 process each)",
                f"{build_rows} objects",
                raw["build_1"],
                raw["build_2"],
                raw["build_ratio"],
                GOALS["build"],
                "yes",
            ],
            [
                f"emulation job, {EMULATE_MODEL} (inference workers, 1 torch thread each)",
                f"{emulate_rows:,} rows",
                raw["emulate_1"],
                raw["emulate_2"],
                raw["emulate_ratio"],
                GOALS["emulate"],
                "yes",
            ],
        ],
        notes=[
            f"{os.cpu_count()} cores; {raw['load']}.",
            f"objects/s: {build_rows / raw['build_1']:.0f} → {build_rows / raw['build_2']:.0f};"
            f" rows/s: {emulate_rows / raw['emulate_1']:,.0f} → "
            f"{emulate_rows / raw['emulate_2']:,.0f}.",
        ],
    )
    return [table], raw
