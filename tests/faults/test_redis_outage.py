"""A Redis `kill -9` under a running job, and a `kill -9` of the training process."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from tests.faults.conftest import SLOW_BALROG, FaultService, poll
from tests.integration.conftest import sse_events

TERMINAL = {"succeeded", "failed", "cancelled"}


def start_job(svc: FaultService, client, max_steps: int) -> str:
    body = {
        "preset": "balrog",
        "data": "mini.parquet",
        "overrides": {**SLOW_BALROG, "max_steps": max_steps},
    }
    r = client.post("/train", json=body, headers=svc.auth)
    assert r.status_code == 202, r.text
    return r.json()["job_id"]


def outage(svc: FaultService, client, job_id: str, seconds: float) -> tuple[dict, float]:
    """Once the job runs: `kill -9` Redis, restart it `seconds` later; (record, back time)."""
    rec = poll(client, job_id, lambda r: r["state"] == "running" and r["step"] >= 25, 60)
    svc.kill_redis()
    time.sleep(seconds)
    svc.start_redis()
    return rec, time.monotonic()


def cancel(svc: FaultService, client, job_id: str) -> dict:
    """DELETE the job; it must end `cancelled` (not succeeded or failed) within a minute."""
    assert client.delete(f"/train/{job_id}", headers=svc.auth).status_code == 202
    rec = poll(client, job_id, lambda r: r["state"] in TERMINAL, 60)
    assert rec["state"] == "cancelled", rec
    return rec


def state_events(client, job_id: str) -> list[dict]:
    events = sse_events(client, f"/train/{job_id}/events?last_event_id=0-0", timeout=30)
    return [e for e in events if e["event"] == "state"]


def test_redis_killed_mid_job_the_run_goes_on(fault_service: FaultService) -> None:
    svc = fault_service
    with svc.client() as client:
        job_id = start_job(svc, client, max_steps=100_000)
        # 10 s: about what compose takes to restart a crashed Redis
        before, back = outage(svc, client, job_id, 10)
        # the run trained on meanwhile and reports again; its lease held (or was taken back)
        rec = poll(
            client,
            job_id,
            lambda r: r["state"] == "running" and r["step"] > before["step"] + 100,
            60,
        )
        took = time.monotonic() - back
        assert rec["attempts"] == 1 and not rec["stalled"], rec
        poll(client, job_id, lambda r: time.time() - r["heartbeat_at"] < 6, 15)
        cancel(svc, client, job_id)
        states = [e["state"] for e in state_events(client, job_id)]
    assert states == ["queued", "running", "cancelled"], states  # one run, never re-queued
    print(f"redis kill -9 at step {before['step']}: progress again {took:.1f}s after restart")


def test_a_job_that_ends_during_the_outage_records_it_when_redis_is_back(
    fault_service: FaultService,
) -> None:
    svc = fault_service
    with svc.client() as client:
        job_id = start_job(svc, client, max_steps=400)
        _, back = outage(svc, client, job_id, 10)
        rec = poll(client, job_id, lambda r: r["state"] in TERMINAL, 60)
        took = time.monotonic() - back
        assert rec["state"] == "succeeded", rec
        assert rec["step"] == 400 and rec["model"] == f"balrog@{job_id}"
        states = [e["state"] for e in state_events(client, job_id)]
    # the run outlived the outage, or died and was resumed once: never two at a time
    assert states in (
        ["queued", "running", "succeeded"],
        ["queued", "running", "queued", "running", "succeeded"],
    ), states
    print(f"job ended during a Redis outage: recorded {took:.1f}s after Redis was back")


def test_requests_during_an_outage_get_503_and_cancel_works_after_it(
    fault_service: FaultService,
) -> None:
    svc = fault_service
    with svc.client() as client:
        job_id = start_job(svc, client, max_steps=100_000)
        poll(client, job_id, lambda r: r["state"] == "running" and r["step"] >= 25, 60)
        svc.kill_redis()
        r = client.delete(f"/train/{job_id}", headers=svc.auth)
        assert r.status_code == 503 and r.headers["retry-after"], r.text
        r = client.post(
            "/train", json={"preset": "balrog", "overrides": {"dry_run": True}}, headers=svc.auth
        )
        assert r.status_code == 503, r.text
        time.sleep(5)
        svc.start_redis()
        back = time.monotonic()
        r = client.delete(f"/train/{job_id}", headers=svc.auth)
        assert r.status_code == 202, r.text
        rec = poll(client, job_id, lambda r: r["state"] in TERMINAL, 60)
        assert rec["state"] == "cancelled", rec
        took = time.monotonic() - back
        # and it resumes from its checkpoint
        stopped_at = rec["step"]
        r = client.post("/train", json={"preset": "balrog", "resume": job_id}, headers=svc.auth)
        assert r.status_code == 202, r.text
        rec = poll(client, job_id, lambda r: r["state"] == "running" and r["step"] > stopped_at, 60)
        cancel(svc, client, job_id)
    print(f"cancel after the outage took effect in {took:.1f}s")


def training_pid(svc: FaultService, job_id: str) -> int:
    import json

    import redis

    r = redis.Redis.from_url(svc.redis_url)
    lease = json.loads(r.hget(f"cosmogan:job:{job_id}", "lease"))
    r.close()
    return int(lease["pid"])


def test_training_process_killed_resumes_from_its_checkpoint(fault_service: FaultService) -> None:
    svc = fault_service
    with svc.client() as client:
        job_id = start_job(svc, client, max_steps=100_000)
        rec = poll(client, job_id, lambda r: r["state"] == "running" and r["step"] >= 60, 60)
        pid = training_pid(svc, job_id)
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        killed_at = rec["step"]
        rec = poll(
            client,
            job_id,
            lambda r: r["state"] == "running" and r["attempts"] == 2 and r["step"] > killed_at,
            60,
        )
        took = time.monotonic() - killed
        assert not rec["stalled"]
        assert training_pid(svc, job_id) != pid
        cancel(svc, client, job_id)
        events = sse_events(client, f"/train/{job_id}/events?last_event_id=0-0", timeout=30)
    second = max(i for i, e in enumerate(events) if e.get("state") == "running")
    steps = [e["step"] for e in events[second:] if e["event"] == "progress" and "step" in e]
    assert steps and min(steps) >= 25, steps[:5]  # resumed from a checkpoint, not from 0
    assert subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode != 0
    print(f"training process kill -9 at step {killed_at}: running again after {took:.1f}s")


def test_stalled_turns_true_when_the_run_stops_moving(fault_service: FaultService) -> None:
    svc = fault_service
    with svc.client() as client:
        job_id = start_job(svc, client, max_steps=100_000)
        poll(client, job_id, lambda r: r["state"] == "running" and r["step"] >= 25, 60)
        pid = training_pid(svc, job_id)
        os.kill(pid, signal.SIGSTOP)  # a hung process: no progress, no heartbeat
        try:
            stopped = time.monotonic()
            rec = poll(client, job_id, lambda r: r["stalled"], 40)
            took = time.monotonic() - stopped
            assert rec["state"] == "running"
        finally:
            os.kill(pid, signal.SIGCONT)
        poll(client, job_id, lambda r: not r["stalled"], 30)
        cancel(svc, client, job_id)
    print(f"stalled reported {took:.1f}s after the run stopped")


def test_training_worker_killed_whole_the_reaper_resends_the_job(
    fault_service: FaultService,
) -> None:
    """kill -9 of the Celery training worker and its pool: the message stays in Redis's
    unacknowledged set; the worker supervisor restarts the worker, the reaper re-sends."""
    svc = fault_service
    with svc.client() as client:
        job_id = start_job(svc, client, max_steps=100_000)
        rec = poll(client, job_id, lambda r: r["state"] == "running" and r["step"] >= 25, 60)
        pid = training_pid(svc, job_id)
        os.killpg(os.getpgid(pid), signal.SIGKILL)
        killed, killed_at = time.monotonic(), rec["step"]
        rec = poll(
            client,
            job_id,
            lambda r: r["state"] == "running" and r["attempts"] == 2 and r["step"] > killed_at,
            75,
        )
        took = time.monotonic() - killed
        cancel(svc, client, job_id)
        states = [e["state"] for e in state_events(client, job_id)]
    assert states == ["queued", "running", "queued", "running", "cancelled"], states
    print(f"training worker kill -9 at step {killed_at}: running again after {took:.1f}s")
