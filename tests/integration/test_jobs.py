"""Job records and the one-live-run lock against the real Redis of the test service."""

from __future__ import annotations

import pytest
from redis.lock import Lock

from tests.integration.conftest import Service
from worker.jobs import JobStateError, JobStore, lock_key, new_job_id
from worker.training_job import LockHeld, run_job


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
    # a running job is only flagged; the run itself ends it
    rec = store.request_cancel(job_id)
    assert rec["state"] == "running" and rec["cancel_requested"] is True
    store.transition(job_id, "cancelled", ("running",))
    with pytest.raises(JobStateError, match="already cancelled"):
        store.request_cancel(job_id)
    rec = store.requeue_for_resume(job_id)
    assert rec["state"] == "queued" and rec["cancel_requested"] is False


def test_a_second_delivery_does_not_start_a_second_run(store: JobStore) -> None:
    job_id = new_job_id()
    store.create(job_id, {"preset": "balrog", "config": {"preset": "balrog", "dry_run": True}})
    held = Lock(store.r, lock_key(job_id), timeout=30, blocking=False, thread_local=False)
    assert held.acquire()
    try:
        with pytest.raises(LockHeld):
            run_job(job_id, store)
        assert store.get(job_id)["state"] == "queued"  # untouched by the refused delivery
    finally:
        held.release()


def test_a_finished_job_is_not_run_again(store: JobStore) -> None:
    job_id = new_job_id()
    store.create(job_id, {"preset": "balrog", "config": {"preset": "balrog", "dry_run": True}})
    store.update(job_id, state="succeeded", step=7)
    assert run_job(job_id, store) == {"job_id": job_id, "state": "succeeded"}
    assert store.get(job_id)["step"] == 7
