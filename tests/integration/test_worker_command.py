"""`cosmogan worker` alone: its Celery worker joins the service, and SIGTERM stops all of it."""

from __future__ import annotations

import signal
import subprocess
import sys

from launcher.service import Service, _alive, _family
from launcher.supervisor import Supervisor
from tests.integration.conftest import wait_until


def test_worker_command_serves_its_queue_and_stops_whole(service: Service) -> None:
    cmd = [sys.executable, "-m", "launcher", "worker", "--queues", "inference"]
    sup, log = Supervisor(), service.log_path("worker-command")
    with log.open("ab") as out:
        proc = sup.start("worker", cmd, service.env, output=out).proc
        try:
            wait_until(lambda: " ready." in log.read_text(errors="replace"), timeout=90)
            family = _family({proc.pid})
            ps = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True)
            args = [line.split(None, 1) for line in ps.stdout.splitlines()]
            assert any(int(p) in family and "-Q inference" in a for p, a in args), family
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0, log.read_text(errors="replace")[-3000:]
            wait_until(lambda: not _alive(family), timeout=15)
        finally:
            sup.stop_all()
