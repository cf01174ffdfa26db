"""`cosmogan serve` as a new user runs it: embedded Redis, workers, API; clean Ctrl-C.

Also: a training job interrupted by a shutdown is handed back to the queue and, after a
restart on the same home, resumes from its last checkpoint instead of starting over.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from launcher.supervisor import free_port
from tests.integration.conftest import make_images, sse_events, wait_until

TINY = {"batch_size": 4, "width": 8, "sample_count": 4, "heldout_fraction": 0.0}


def descendants(pid: int) -> set[int]:
    ps = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True)
    children: dict[int, list[int]] = {}
    for line in ps.stdout.splitlines():
        p, pp = map(int, line.split())
        children.setdefault(pp, []).append(p)
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def alive(pids: set[int]) -> list[str]:
    ps = subprocess.run(["ps", "-eo", "pid=,stat=,args="], capture_output=True, text=True)
    return [
        line.strip()
        for line in ps.stdout.splitlines()
        if int(line.split()[0]) in pids and not line.split()[1].startswith("Z")
    ]


def kill_family(proc: subprocess.Popen, known: set[int] = frozenset()) -> None:
    """After a failed check: SIGKILL `serve` and everything it started, so nothing outlives it.

    `known` are descendants seen earlier: once `serve` has exited they are no longer its
    children in `ps`.
    """
    if proc.poll() is None:
        known = {*known, *descendants(proc.pid), proc.pid}
    for pid in known - {os.getpid()}:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(10)


def alive_pids(pids: set[int]) -> list[int]:
    return [int(line.split()[0]) for line in alive(pids)]


def start_serve(home: Path, port: int, log: Path, **settings: str) -> subprocess.Popen:
    """`cosmogan serve` on `home`; `settings` are more COSMOGAN_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COSMOGAN_")}
    env.update(COSMOGAN_HOME=str(home), COSMOGAN_DEVICE="cpu", PYTHONUNBUFFERED="1", **settings)
    return subprocess.Popen(
        [sys.executable, "-m", "launcher", "serve", "--port", str(port)],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def wait_ready(client: httpx.Client, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise TimeoutError(log.read_text()[-3000:])


def stop_serve(proc: subprocess.Popen, log: Path) -> None:
    """Ctrl-C, then every process `serve` started must be gone."""
    family = descendants(proc.pid)
    assert len(family) >= 6, family  # redis, 2 celery parents + pool children, uvicorn
    proc.send_signal(signal.SIGINT)
    try:
        assert proc.wait(60) == 0, log.read_text()[-3000:]
        deadline = time.monotonic() + 10
        while alive(family) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive(family), alive(family)
    finally:
        kill_family(proc, set(alive_pids(family)))


def test_serve_ctrl_c_and_resume_after_restart(tmp_path: Path) -> None:
    home = tmp_path / "home"
    make_images(home / "data" / "tiny")
    port = free_port()
    log = tmp_path / "serve.log"
    auth = {"Authorization": "Bearer dev"}  # development mode without COSMOGAN_API_KEY
    body = {
        "preset": "nebula-dcgan",
        "data": "tiny",
        "overrides": {**TINY, "max_steps": 100_000, "checkpoint_every": 2, "epochs": 100_000},
    }
    proc = start_serve(home, port, log)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            wait_ready(client, proc, log)
            r = client.post("/train", json=body, headers=auth)
            assert r.status_code == 202, r.text
            job_id = r.json()["job_id"]
            wait_until(lambda: client.get(f"/train/{job_id}").json()["step"] >= 4, timeout=90)
        stop_serve(proc, log)
    finally:
        kill_family(proc)
    assert any((home / "redis").glob("appendonly*")), list((home / "redis").iterdir())
    checkpoint = home / "runs" / job_id / "checkpoints" / "last.pt"
    assert checkpoint.is_file()

    # Restart on the same home: Redis reloads its data, the job is delivered again.
    proc = start_serve(home, port, log)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            wait_ready(client, proc, log)
            rec = client.get(f"/train/{job_id}").json()
            assert rec["state"] in ("queued", "running"), rec
            stopped_at = rec["step"]
            resumed = wait_until(
                lambda: (
                    (r := client.get(f"/train/{job_id}").json())["state"] == "running"
                    and r["step"] > stopped_at
                    and r
                ),
                timeout=90,
            )
            assert resumed["attempts"] == 1  # the shutdown did not count as a failed attempt
            r = client.delete(f"/train/{job_id}", headers=auth)
            assert r.status_code == 202
            events = sse_events(client, f"/train/{job_id}/events?last_event_id=0-0")
            assert events[-1]["state"] == "cancelled"
            states = [e.get("state") for e in events if e["event"] == "state"]
            assert states == ["queued", "running", "queued", "running", "cancelled"], states
            # the second run went on from the checkpoint instead of starting over
            second = max(i for i, e in enumerate(events) if e.get("state") == "running")
            steps = [e["step"] for e in events[second:] if e["event"] == "progress"]
            assert steps and min(steps) >= 2, steps[:5]
        stop_serve(proc, log)
    finally:
        kill_family(proc)
    text = log.read_text()
    assert text.count(f"job {job_id}: worker shutting down") == 1, text[-3000:]
