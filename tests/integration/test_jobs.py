"""Job records and the one-live-run lease against the real Redis of the test service."""

from __future__ import annotations

import pytest
from redis.lock import Lock

from tests.integration.conftest import Service
from worker.jobs import JobStateError, JobStore, Renewal, lease_key, new_job_id
from worker.training_job import LeaseHeld, run_job


@pytest.fixture
def store(service: Service) -> JobStore:
    return JobStore.from_url(service.redis_url)


def test_state_transitions_are_compare_and_set(store: JobStore) -> None:
    job_id = new_job_id()
    store.create(job_id, {"preset": "balrog", "config": {"preset": "balrog"}})
    assert store.get(job_id)["state"] == "queued"
    assert store.transition(job_id, "running", ("queued",)) == "queued"
    with pytest.raises(JobStateError, match="running, not queued"):
        store.transition(job_id, "running", ("queued",))
    # a running job with a live run (it holds the lease) is only flagged; the run ends it
    assert store.acquire_lease(job_id, "run-1")
    rec = store.request_cancel(job_id)
    assert rec["state"] == "running" and rec["cancel_requested"] is True
    with pytest.raises(JobStateError, match="running with a live run"):
        store.requeue_for_resume(job_id)
    store.transition(job_id, "cancelled", ("running",))
    assert store.release_lease(job_id, "run-1")
    with pytest.raises(JobStateError, match="already cancelled"):
        store.request_cancel(job_id)
    rec = store.requeue_for_resume(job_id)
    assert rec["state"] == "queued" and rec["cancel_requested"] is False


def test_a_running_job_without_a_lease_can_be_cancelled_and_resumed(store: JobStore) -> None:
    job_id = new_job_id()
    store.create(job_id, {"preset": "balrog", "config": {"preset": "balrog"}})
    store.transition(job_id, "running", ("queued",))  # its run died: no lease
    assert store.request_cancel(job_id)["state"] == "cancelled"
    store.update(job_id, state="running")
    assert store.requeue_for_resume(job_id)["state"] == "queued"


def test_the_lease_is_renewed_taken_back_or_lost(store: JobStore) -> None:
    job_id = new_job_id()
    store.create(job_id, {"preset": "balrog", "config": {"preset": "balrog"}})
    store.transition(job_id, "running", ("queued",))
    assert store.acquire_lease(job_id, "a") and not store.acquire_lease(job_id, "b")
    assert store.renew_lease(job_id, "a") == Renewal.RENEWED
    beat = store.field(job_id, "heartbeat_at")
    assert (
        store.renew_lease(job_id, "a", beat=False) == Renewal.RENEWED
    )  # a silent loop: lease only
    assert store.field(job_id, "heartbeat_at") == beat
    assert not store.release_lease(job_id, "b") and store.has_lease(job_id)
    store.r.delete(lease_key(job_id))  # expired while Redis was unreachable
    assert store.renew_lease(job_id, "a") == Renewal.TAKEN_BACK and store.has_lease(
        job_id
    )  # taken back
    store.r.set(lease_key(job_id), "b")  # another run took it
    assert store.renew_lease(job_id, "a") == Renewal.LOST
    store.r.delete(lease_key(job_id))
    store.transition(job_id, "queued", ("running",))  # re-queued meanwhile
    assert store.renew_lease(job_id, "a") == Renewal.LOST and not store.has_lease(job_id)


def test_the_reaper_resends_orphans_after_a_grace_period(store: JobStore) -> None:
    from app.reaper import REAP_GRACE_S, Reaper

    store.r.delete("cosmogan:reaper")
    lost, dead, live = new_job_id(), new_job_id(), new_job_id()
    for job_id in (lost, dead, live):
        store.create(job_id, {"preset": "balrog", "config": {"preset": "balrog"}})
    for job_id in (dead, live):
        store.transition(job_id, "running", ("queued",))
    assert store.acquire_lease(live, "x")
    sent: list[str] = []
    reaper = Reaper(store, sent.append)
    assert reaper.run_once(now=100.0) == []  # suspects only
    assert not Reaper(store, sent.append).run_once(now=200.0)  # another process: not elected
    got = reaper.run_once(now=100.0 + REAP_GRACE_S)  # (other tests' records may be there too)
    assert {lost, dead} <= set(got) and live not in got and sorted(sent) == sorted(got)
    assert store.get(dead)["state"] == "queued" and store.get(live)["state"] == "running"
    for job_id in (lost, dead, live):
        store.update(job_id, state="cancelled")
    store.release_lease(live, "x")


def test_a_second_delivery_does_not_start_a_second_run(store: JobStore) -> None:
    job_id = new_job_id()
    store.create(job_id, {"preset": "balrog", "config": {"preset": "balrog", "dry_run": True}})
    held = Lock(store.r, lease_key(job_id), timeout=30, blocking=False, thread_local=False)
    assert held.acquire()
    try:
        with pytest.raises(LeaseHeld):
            run_job(job_id, store)
        assert store.get(job_id)["state"] == "queued"  # untouched by the refused delivery
    finally:
        held.release()
        store.update(job_id, state="cancelled")


def test_a_finished_job_is_not_run_again(store: JobStore) -> None:
    job_id = new_job_id()
    store.create(job_id, {"preset": "balrog", "config": {"preset": "balrog", "dry_run": True}})
    store.update(job_id, state="succeeded", step=7)
    assert run_job(job_id, store) == {"job_id": job_id, "state": "succeeded"}
    assert store.get(job_id)["step"] == 7
