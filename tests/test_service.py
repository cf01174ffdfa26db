"""The service handle's stop: every process of its children goes, and a stray is reported."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from launcher.service import Service, _alive, _family
from launcher.supervisor import Supervisor


def handle(tmp_path: Path, script: str) -> Service:
    """A service whose one child is `sh -c script` (no Redis, no API needed to test stop)."""
    sup = Supervisor(stop_timeout_s=5)
    sup.start("worker[test]", ["sh", "-c", script], dict(os.environ))
    return Service(tmp_path, "http://127.0.0.1:9", "", {}, sup)


def family_of(service: Service, size: int, groups: int = 1) -> dict[int, int]:
    """The child and its descendants, once `size` of them run in `groups` process groups."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        family = _family({p.pid for p in service.procs.values()})
        if len(family) >= size and len(set(family.values())) >= groups:
            return family
        time.sleep(0.05)
    raise TimeoutError(f"only {family}")


def test_stop_ends_the_whole_process_group(tmp_path: Path) -> None:
    service = handle(tmp_path, "sleep 60 & sleep 61 & wait")
    family = family_of(service, 3)
    service.stop()
    assert not _alive(family)


def test_a_process_that_left_the_group_is_reported_and_killed(tmp_path: Path) -> None:
    escape = f"{sys.executable} -c 'import os, time; os.setsid(); time.sleep(62)'"
    service = handle(tmp_path, f"{escape} & wait")
    family = family_of(service, 2, groups=2)
    with pytest.raises(RuntimeError, match=r"os\.setsid"):
        service.stop(grace_s=0.5)
    deadline = time.monotonic() + 5
    while _alive(family) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(family)


def test_a_watched_child_that_dies_is_started_again(tmp_path: Path) -> None:
    service = handle(tmp_path, "exec sleep 63")
    first = service.procs["worker[test]"].pid
    service.watch()
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while service.procs["worker[test]"].pid == first and time.monotonic() < deadline:
        time.sleep(0.05)
    again = service.procs["worker[test]"]
    assert again.pid != first and again.poll() is None
    service.stop()
    assert again.poll() is not None
