"""`cosmogan api --workers 2`: ready like one process, and /metrics counts every process."""

from __future__ import annotations

import re
import subprocess
import sys

import httpx

from launcher.service import Service, wait_ready
from launcher.supervisor import Supervisor, free_port


def test_two_api_processes_share_their_metrics(service: Service) -> None:
    port = free_port()
    folder = service.home / "metrics" / f"api-{port}"
    folder.mkdir(parents=True)
    stale = folder / "counter_99999.db"
    stale.write_bytes(b"left by an earlier run")
    cmd = [sys.executable, "-m", "launcher", "api", "--port", str(port), "--workers", "2"]
    sup, log = Supervisor(), service.log_path("api-workers")
    out = log.open("ab")
    proc = sup.start("api", cmd, service.env, output=out).proc
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
            wait_ready(c, {"api": proc}, log)
            assert not stale.exists()
            children = subprocess.run(
                ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True
            ).stdout.split()
            assert len(children) >= 2, children  # uvicorn's workers (and its helper)
        for _ in range(20):  # a new connection each time: the kernel spreads them
            with httpx.Client(base_url=f"http://127.0.0.1:{port}") as c:
                assert c.get("/healthz").status_code == 200
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as c:
            r = c.get("/generate", params={"model": "nebula", "n": 1})
            assert r.status_code == 200, r.text
            text = c.get("/metrics").text
        count = re.search(
            r'cosmogan_http_request_duration_seconds_count\{method="GET",route="/healthz",'
            r'status="200"\} ([0-9.]+)',
            text,
        )
        assert count and float(count.group(1)) == 20, count
        assert re.search(r'cosmogan_inference_batch_size_count\{task="generate"\} [1-9]', text)
    finally:
        sup.stop_all()
        out.close()
