"""`cosmogan serve` restarts its embedded Redis (same port, same data, its password) and its
workers."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import redis

from launcher.supervisor import free_port
from tests.faults.conftest import SLOW_BALROG, poll, write_catalog
from tests.integration.test_serve import (
    descendants,
    kill_family,
    start_serve,
    stop_serve,
    wait_ready,
)

REDIS_PASSWORD = 'p@ss:w/rd "quoted" 0123456789'


def child_pid(proc: subprocess.Popen, needle: str) -> int:
    ps = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True)
    family = descendants(proc.pid)
    found = []
    for line in ps.stdout.splitlines():
        pid, args = line.strip().split(None, 1)
        if int(pid) in family and needle in args:
            found.append(int(pid))
    if not found:
        raise LookupError(f"{needle!r} in {ps.stdout}")
    return min(found)  # the leader, not its pool processes


def test_serve_restarts_a_killed_redis_and_worker(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_catalog(home / "data" / "mini.parquet")
    port = free_port()
    log = tmp_path / "serve.log"
    auth = {"Authorization": "Bearer dev"}
    body = {"preset": "balrog", "data": "mini.parquet", "overrides": SLOW_BALROG}
    proc = start_serve(home, port, log, COSMOGAN_REDIS_PASSWORD=REDIS_PASSWORD)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            wait_ready(client, proc, log)
            r = client.post("/train", json=body, headers=auth)
            assert r.status_code == 202, r.text
            job_id = r.json()["job_id"]
            rec = poll(client, job_id, lambda r: r["state"] == "running" and r["step"] >= 25, 60)
            redis_pid = child_pid(proc, "redis-server")
            # the password is required, and is on no command line (redis-server's title
            # shows its address)
            title = Path(f"/proc/{redis_pid}/cmdline").read_bytes().split(b"\0")[0]
            assert b"p@ss" not in title
            with pytest.raises(redis.exceptions.AuthenticationError):
                redis.Redis(port=int(title.rsplit(b":", 1)[1])).ping()
            os.kill(redis_pid, signal.SIGKILL)
            killed = time.monotonic()
            # the supervisor restarts it: same port, the job record reloaded from the AOF
            rec = poll(
                client, job_id, lambda r: r["state"] == "running" and r["step"] > rec["step"], 60
            )
            took = time.monotonic() - killed
            assert proc.poll() is None and child_pid(proc, "redis-server") != redis_pid
            assert rec["attempts"] == 1
            # a killed inference worker comes back too
            os.killpg(os.getpgid(child_pid(proc, "inference")), signal.SIGKILL)
            wait_ready(client, proc, log)
            assert client.get("/generate?seed=1&n=1").status_code == 200
            assert client.delete(f"/train/{job_id}", headers=auth).status_code == 202
            rec = poll(client, job_id, lambda r: r["state"] == "cancelled", 60)
        stop_serve(proc, log)
    finally:
        kill_family(proc)
    text = log.read_text()
    assert "restarting redis" in text and "restarting worker[inference]" in text, text[-3000:]
    assert "p@ss" not in text  # nor in the logs
    print(f"embedded Redis kill -9: job progressing again {took:.1f}s later")
