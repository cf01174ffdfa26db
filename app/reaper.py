"""The reaper: re-sends jobs whose run died or whose message was lost (every kind of job).

Redis keeps a message a worker took but never acknowledged in its `unacked` set until the
broker's visibility timeout (days, so that no running job is handed out twice); a Redis
restart, a killed worker or a message lost in flight would leave the job waiting that long.
Instead, every REAP_EVERY_S one API process (elected through a short Redis key) looks at the
queued and running jobs:

- `running` without a lease for REAP_GRACE_S (no live run renews it: the process died, or a
  run cut off from Redis did not take it back within a couple of heartbeats) → `queued` again
  and re-sent; the next delivery resumes from the last checkpoint;
- `queued` with no message in the training queue for REAP_GRACE_S → re-sent.

A re-sent job can meet an old copy of its message later; the lease and the state checks in
`worker.training_job` make every extra copy a no-op, so delivery is at least once and each
job has one run at a time.

Fanned-out jobs (emulation, dataset builds: `worker.fanout`) have no one run but a run per
chunk; their runs redo each other's lost chunks as long as one is alive. The reaper steps in
when none is: a job `queued` with no message in its queue, or `running` with neither a chunk
nor the job leased (every run gone: planning, chunks or the finish), for REAP_GRACE_S gets a
new message. Extra messages are harmless: a run that finds nothing to claim ends.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Callable

import redis
from kombu.exceptions import OperationalError

from worker.jobs import DATASET, EMULATE, HEARTBEAT_S, QUEUED, RUNNING, JobStore
from worker.policy import KIND_QUEUES, TRAINING_QUEUE

log = logging.getLogger(__name__)

REAP_EVERY_S = 5.0
REAP_GRACE_S = 2 * HEARTBEAT_S + 2.0  # a live run takes its lease back within a heartbeat
ELECTION_KEY = "cosmogan:reaper"


class Reaper:
    """One pass at a time (`run_once`); remembers since when each job has looked orphaned."""

    def __init__(
        self,
        store: JobStore,
        send: Callable[[str], None],
        send_run: Callable[[str, str], None] | None = None,
    ) -> None:
        """`send(job_id)` re-sends a training job; `send_run(kind, job_id)` sends one more
        run of a fanned-out job (None: leave those alone)."""
        self.store, self.send, self.send_run = store, send, send_run
        self.token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.suspect: dict[str, float] = {}

    def _elected(self) -> bool:
        ttl = int(REAP_EVERY_S * 2000)
        r = self.store.r
        if r.set(ELECTION_KEY, self.token, nx=True, px=ttl):
            return True
        if r.get(ELECTION_KEY) == self.token.encode():
            r.pexpire(ELECTION_KEY, ttl)
            return True
        return False

    def run_once(self, now: float | None = None) -> list[str]:
        """One pass; returns the ids of the jobs re-sent."""
        now = time.monotonic() if now is None else now
        if not self._elected():
            self.suspect.clear()
            return []
        active = self.store.active()
        queued_blob = b"\n".join(self.store.r.lrange(TRAINING_QUEUE, 0, -1))
        orphaned = {
            job_id
            for job_id, state, leased in active
            if (state == RUNNING and not leased)
            or (state == QUEUED and job_id.encode() not in queued_blob)
        }
        fanned = {k: v for k, v in self.suspect.items() if ":" in k}
        self.suspect = {j: self.suspect.get(j, now) for j in orphaned} | fanned
        sent = []
        for job_id, state, _ in active:
            since = self.suspect.get(job_id)
            if since is None or now - since < REAP_GRACE_S:
                continue
            if state == RUNNING:
                if not self.store.requeue_orphan(job_id, "lease expired"):
                    continue
                log.warning("job %s: its run holds no lease; re-queued", job_id)
            else:
                log.warning("job %s: queued without a message; re-sent", job_id)
            self.send(job_id)
            del self.suspect[job_id]
            sent.append(job_id)
        if self.send_run is not None:
            for kind in (EMULATE, DATASET):
                sent += self._reap_fanned_out(kind, now)
        return sent

    def _reap_fanned_out(self, kind: str, now: float) -> list[str]:
        active = self.store.active(kind=kind)
        if not active:
            return []
        blob = b"\n".join(self.store.r.lrange(KIND_QUEUES[kind], 0, -1))
        sent = []
        for job_id, state, leased in active:
            key = f"{kind}:{job_id}"
            if state == QUEUED:
                orphan = job_id.encode() not in blob
            else:
                orphan = not leased and not self._chunk_leased(job_id)
            if not orphan:
                self.suspect.pop(key, None)
                continue
            since = self.suspect.setdefault(key, now)
            if now - since < REAP_GRACE_S:
                continue
            log.warning("%s job %s: no live run; sent again", kind, job_id)
            assert self.send_run is not None
            self.send_run(kind, job_id)
            del self.suspect[key]
            sent.append(job_id)
        return sent

    def _chunk_leased(self, job_id: str) -> bool:
        total = self.store.field(job_id, "chunks_total")
        if not total:
            return False
        done = self.store.done_chunks(job_id)
        todo = [k for k in range(int(total)) if k not in done]
        return any(self.store.chunks_leased(job_id, todo))


async def reap_forever(reaper: Reaper) -> None:
    """The API's background loop; Redis or broker errors only delay the next pass."""
    while True:
        await asyncio.sleep(REAP_EVERY_S)
        try:
            await asyncio.to_thread(reaper.run_once)
        except (redis.exceptions.RedisError, OperationalError, OSError) as exc:
            log.info("reaper: Redis unavailable (%s); next pass in %.0fs", exc, REAP_EVERY_S)
        except Exception:
            log.exception("reaper pass failed")
