"""Fanned-out jobs on the one job store (real Redis): chunks claimed by several runs, each
counted once, a dead run's chunk redone, one finish, cancel, the reaper, one stalled rule."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from tests.integration.conftest import Service
from worker import fanout, jobs
from worker.jobs import DATASET, EMULATE, JobNotFound, JobStore, is_stalled, new_job_id


@pytest.fixture
def store(service: Service) -> Iterator[JobStore]:
    store = JobStore.from_url(service.redis_url)
    made.clear()
    yield store
    for job_id in made:  # no test record left for the service's reaper to send out
        store.update(job_id, state="cancelled")


made: list[str] = []


def fanned_out(store: JobStore, chunks: int, kind: str = DATASET) -> str:
    job_id = new_job_id()
    store.create(job_id, {"kind": kind, "name": "t", "chunks_total": chunks, "rows_done": 0})
    made.append(job_id)
    return job_id


def test_kinds_share_one_store_and_stay_apart(store: JobStore) -> None:
    job_id = fanned_out(store, 3, EMULATE)
    assert store.get(job_id, EMULATE)["kind"] == EMULATE
    assert store.get(job_id, None)["state"] == "queued"
    with pytest.raises(JobNotFound, match="no training job"):
        store.get(job_id)  # a training route does not see it
    assert job_id not in {r["job_id"] for r in store.list(limit=500)}
    assert job_id in {r["job_id"] for r in store.list(limit=500, kind=EMULATE)}


def test_a_chunk_is_counted_once(store: JobStore) -> None:
    job_id = fanned_out(store, 2)
    assert store.chunk_done(job_id, 0, 100) == 1
    assert store.chunk_done(job_id, 0, 100) == 1  # a duplicate run of chunk 0
    assert store.chunk_done(job_id, 1, 50) == 2
    rec = store.get(job_id, DATASET)
    assert rec["rows_done"] == 150 and rec["chunks_done"] == 2


def test_runs_share_the_chunks_and_one_finishes(store: JobStore) -> None:
    job_id = fanned_out(store, 12)
    ran: list[tuple[str, int]] = []
    finished: list[str] = []

    def run(who: str) -> None:
        def chunk(k: int) -> int:
            ran.append((who, k))
            time.sleep(0.05)
            return 10

        fanout.run_chunks(store, job_id, chunk, lambda: finished.append(who) or {"result": who})

    threads = [threading.Thread(target=run, args=(w,)) for w in ("a", "b", "c")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(k for _, k in ran) == list(range(12))  # each chunk ran once
    assert len({w for w, _ in ran}) > 1  # shared between the runs
    rec = store.get(job_id, DATASET)
    assert rec["state"] == "succeeded" and rec["rows_done"] == 120 and len(finished) == 1
    assert rec["result"] == finished[0]


def test_a_dead_runs_chunk_is_redone_by_the_next_run(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jobs, "CHUNK_LEASE_TTL_S", 1.0)
    job_id = fanned_out(store, 3)
    store.transition(job_id, "running", ("queued",))
    assert store.claim_chunk(job_id, 1, "dead-run")  # a run that died holding chunk 1
    ran: list[int] = []
    fanout.run_chunks(store, job_id, lambda k: ran.append(k) or 1, lambda: {})
    # the run does not wait on a lease another run holds: its worker is free for other work
    assert ran == [0, 2] and store.get(job_id, DATASET)["state"] == "running"
    time.sleep(1.2)  # the dead run's lease lapses
    fanout.run_chunks(store, job_id, lambda k: ran.append(k) or 1, lambda: {})  # the next run
    assert ran == [0, 2, 1]
    assert store.get(job_id, DATASET)["state"] == "succeeded"


def test_cancel_stops_every_chunk(store: JobStore) -> None:
    job_id = fanned_out(store, 50)
    ran: list[int] = []

    def chunk(k: int) -> int:
        ran.append(k)
        if k == 2:
            store.request_cancel(job_id, DATASET)
        return 1

    fanout.run_chunks(store, job_id, chunk, lambda: {})
    rec = store.get(job_id, DATASET)
    assert rec["state"] == "cancelled" and ran == [0, 1, 2]
    assert rec["chunks_done"] == 2  # the chunk that ran past the cancel is not counted


def test_the_reaper_sends_a_run_when_none_is_alive(store: JobStore) -> None:
    from app.reaper import REAP_GRACE_S, Reaper

    store.r.delete("cosmogan:reaper")
    orphan, live = fanned_out(store, 4), fanned_out(store, 4)
    for job_id in (orphan, live):
        store.transition(job_id, "running", ("queued",))
    assert store.claim_chunk(live, 0, "alive")
    sent: list[tuple[str, str]] = []
    reaper = Reaper(store, lambda _: None, lambda kind, j: sent.append((kind, j)))
    reaper.run_once(now=100.0)
    assert (DATASET, orphan) not in sent
    reaper.run_once(now=100.0 + REAP_GRACE_S)
    assert (DATASET, orphan) in sent and (DATASET, live) not in sent
    for job_id in (orphan, live):
        store.update(job_id, state="cancelled")


def test_one_stalled_rule() -> None:
    now = time.time()
    assert is_stalled({"state": "running", "heartbeat_at": now - 60}, now)
    assert not is_stalled({"state": "running", "heartbeat_at": now - 1}, now)
    assert not is_stalled({"state": "queued", "heartbeat_at": None}, now)


def test_emulation_chunks_hold_whole_sampler_blocks() -> None:
    from models.emulator_sampler import BLOCK_ROWS
    from worker.emulate_jobs import CHUNK_ROWS

    assert CHUNK_ROWS % BLOCK_ROWS == 0
