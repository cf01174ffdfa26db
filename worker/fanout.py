"""Jobs fanned out in chunks over every worker of a queue: claim a chunk, run it, count it once.

A fanned-out job (an emulation job, a dataset build) is `chunks_total` chunks, each fixed by
its index, so running one twice writes the same bytes. The job is sent as one message per
chunk (up to `policy.FANOUT_MESSAGES`), but a message does not carry a chunk: each run claims
the first chunk that is neither done nor leased, runs it, and claims the next, until none is
left. So every idle worker pulls work as long as there is any, whichever messages the
broker prefetched to whom, and a fast worker takes more chunks than a slow one.

A claimed chunk is owned through a short lease renewed by a heartbeat thread; a chunk whose
worker died loses its lease within CHUNK_LEASE_TTL_S and the next claim (of a run still
going, or of one the reaper sends) redoes it. A chunk is counted once (`JobStore.chunk_done`),
however many times it ran. The run that finds every chunk done finishes the job under the
job's lease, so one run finishes it; the reaper sends a new run if that one died.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from worker.jobs import (
    CANCELLED,
    CHUNK_HEARTBEAT_S,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    JobStateError,
    JobStore,
)

log = logging.getLogger(__name__)


class ChunkCancelled(Exception):
    """The job left `running` while a chunk ran (cancelled or failed elsewhere)."""


def running(store: JobStore, job_id: str) -> bool:
    return store.field(job_id, "state") == RUNNING


def start(store: JobStore, job_id: str) -> bool:
    """queued → running (the first run to arrive); True while the job is running."""
    try:
        store.transition(job_id, RUNNING, (QUEUED,))
    except JobStateError:
        return running(store, job_id)
    store.update(job_id, started_at=time.time(), heartbeat_at=time.time())
    store.event(job_id, {"event": "state", "state": RUNNING})
    return True


def fail(store: JobStore, job_id: str, error: str) -> None:
    try:
        store.transition(job_id, FAILED, (QUEUED, RUNNING))
    except JobStateError:
        return
    store.update(job_id, error=error[:2000], finished_at=time.time())
    store.event(job_id, {"event": "state", "state": FAILED, "error": error[:2000]})


def succeed(store: JobStore, job_id: str, **fields: Any) -> None:
    try:
        store.transition(job_id, SUCCEEDED, (RUNNING,))
    except JobStateError:
        return  # cancelled meanwhile, or finished by another run
    store.update(job_id, finished_at=time.time(), **fields)
    store.event(job_id, {"event": "state", "state": SUCCEEDED})


@contextmanager
def _heartbeat(store: JobStore, job_id: str, chunk: int, token: str) -> Iterator[None]:
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(CHUNK_HEARTBEAT_S):
            try:
                store.renew_chunk(job_id, chunk, token)
            except Exception:  # Redis away: the lease may lapse and the chunk be redone
                log.debug("could not renew chunk %d of %s", chunk, job_id, exc_info=True)

    thread = threading.Thread(target=beat, name=f"chunk-{chunk}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _claim(store: JobStore, job_id: str, total: int, token: str) -> int | None:
    done = store.done_chunks(job_id)
    todo = [k for k in range(total) if k not in done]
    for k, held in zip(todo, store.chunks_leased(job_id, todo), strict=True):
        if not held and store.claim_chunk(job_id, k, token):
            if k in store.done_chunks(job_id):  # finished between our two looks
                store.release_chunk(job_id, k, token)
                continue
            return k
    return None


def run_chunks(
    store: JobStore,
    job_id: str,
    chunk: Callable[[int], int],
    finish: Callable[[], dict[str, Any]],
) -> None:
    """Claim and run chunks of `job_id` until none is left, then finish the job if every
    chunk is done. `chunk(k)` writes chunk k (idempotently) and returns its rows; `finish()`
    assembles the result and returns the fields the succeeded record gets."""
    if not start(store, job_id):
        return  # cancelled, failed or finished: nothing to do
    total = int(store.field(job_id, "chunks_total"))
    token = uuid.uuid4().hex
    while running(store, job_id):
        k = _claim(store, job_id, total, token)
        if k is None:
            # done, or the rest is leased by live runs: this worker is free for other work.
            # A chunk whose run dies is redone by a run still claiming, else by the one the
            # reaper sends once no lease is left (`app.reaper`).
            break
        try:
            with _heartbeat(store, job_id, k, token):
                rows = chunk(k)
            log.info("job %s: chunk %d done (%d rows)", job_id, k, rows)
            if running(store, job_id):
                store.chunk_done(job_id, k, rows)
                store.event(job_id, {"event": "chunk", "chunk": k, "rows": rows})
        finally:
            store.release_chunk(job_id, k, token)
    if len(store.done_chunks(job_id)) < total or not running(store, job_id):
        return  # others are still at work, or the job ended
    if not store.acquire_lease(job_id, token):
        return  # another run is finishing it
    try:
        if running(store, job_id):
            fields = finish()
            started = store.field(job_id, "started_at") or time.time()
            succeed(store, job_id, seconds=round(time.time() - started, 3), **fields)
    finally:
        store.release_lease(job_id, token)


def cancelled_state(store: JobStore, job_id: str) -> bool:
    return store.field(job_id, "state") == CANCELLED
