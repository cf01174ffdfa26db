"""Run one training job by id: one live run per job, progress into Redis, resumable.

A job may be delivered more than once (late acks: a worker that dies or shuts down hands
its message back). Each delivery takes a per-job Redis lock with a TTL that a heartbeat
thread renews; a delivery that finds the lock held retries later instead of starting a
second run, and every run resumes from the run folder's last checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import redis
from redis.lock import Lock

from models.registry import Registry, RegistryError
from models.settings import get_settings
from worker.jobs import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    TERMINAL,
    JobNotFound,
    JobStateError,
    JobStore,
    lock_key,
)

log = logging.getLogger(__name__)

LOCK_TTL_S = 60.0
HEARTBEAT_S = 10.0
STOP_CHECK_S = 1.0  # how often `should_stop` reads the cancel flag from Redis
PROGRESS_EVERY_S = 0.5  # step events are written at most this often
MAX_ATTEMPTS = 3  # deliveries that crash before a job is marked failed


class LockHeld(RuntimeError):
    """Another live run holds this job; the delivery should be retried later."""


class WorkerShutdown(BaseException):
    """The worker is shutting down: this run stops and the job goes back to the queue.

    A BaseException so that no `except Exception` in a training loop swallows it.
    """


# Set by SIGTERM. The handler only sets it: raising from a signal handler could interrupt a
# checkpoint mid-write (torch.save then fails with an unrelated error); instead the loop
# sees `should_stop()`, writes its checkpoint and returns, and the run is handed back.
_shutdown = threading.Event()


def _on_sigterm(_signum: int, _frame: object) -> None:
    _shutdown.set()


class _Heartbeat(threading.Thread):
    """Renews the job lock and the record's heartbeat; notices when the lock is lost."""

    def __init__(self, lock: Lock, store: JobStore, job_id: str) -> None:
        super().__init__(name=f"heartbeat-{job_id[:8]}", daemon=True)
        self.lock, self.store, self.job_id = lock, store, job_id
        self.stopped = threading.Event()
        self.lost = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(HEARTBEAT_S):
            try:
                self.lock.reacquire()
                self.store.update(self.job_id, heartbeat_at=time.time())
            except redis.exceptions.LockError:
                log.error("job %s: lost its lock; stopping this run", self.job_id)
                self.lost.set()
                return
            except redis.exceptions.RedisError as exc:  # transient: try again next beat
                log.warning("job %s: heartbeat failed: %s", self.job_id, exc)


def run_job(job_id: str, store: JobStore | None = None) -> dict[str, Any]:
    """Run (or resume) job `job_id`; returns its final record fields. Raises LockHeld."""
    settings = get_settings()
    if store is None:
        from worker.celery_app import redis_url

        store = JobStore.from_url(redis_url())
    try:
        rec = store.get(job_id)
    except JobNotFound:
        log.error("job %s: no record; dropping the message", job_id)
        return {"job_id": job_id, "state": "unknown"}
    if rec["state"] in TERMINAL:
        log.info("job %s already %s; nothing to do", job_id, rec["state"])
        return {"job_id": job_id, "state": rec["state"]}

    lock = Lock(store.r, lock_key(job_id), timeout=LOCK_TTL_S, blocking=False, thread_local=False)
    if not lock.acquire():
        raise LockHeld(f"job {job_id} is running elsewhere")
    heartbeat = _Heartbeat(lock, store, job_id)
    shutting_down = False
    try:
        try:
            store.transition(job_id, RUNNING, (QUEUED, RUNNING))
        except JobStateError as exc:  # cancelled between delivery and start
            log.info("%s", exc)
            return {"job_id": job_id, "state": store.field(job_id, "state")}
        attempts = int(rec.get("attempts") or 0) + 1
        now = time.time()
        store.update(
            job_id,
            attempts=attempts,
            started_at=rec.get("started_at") or now,
            heartbeat_at=now,
        )
        store.event(job_id, {"event": "state", "state": RUNNING, "attempt": attempts})
        if attempts > MAX_ATTEMPTS:
            return _finish(store, job_id, FAILED, error=f"gave up after {MAX_ATTEMPTS} attempts")
        heartbeat.start()
        # A cold worker shutdown terminates this pool process with SIGTERM and hands the
        # unacknowledged message back to the broker. Put the record back to `queued` and free
        # the lock first, so the next delivery resumes at once from the last checkpoint.
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            return _train(store, job_id, rec, settings.runs_dir / job_id, heartbeat)
        except WorkerShutdown:
            shutting_down = True
            log.warning("job %s: worker shutting down; the job will resume later", job_id)
            with contextlib.suppress(JobStateError, redis.exceptions.RedisError):
                store.transition(job_id, QUEUED, (RUNNING,))
                store.update(job_id, attempts=attempts - 1)  # a shutdown is not a crash
                store.event(job_id, {"event": "state", "state": QUEUED, "reason": "shutdown"})
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
            if _shutdown.is_set() and not shutting_down:
                # the run ended on its own just as the shutdown came: let the signal act now
                os.kill(os.getpid(), signal.SIGTERM)
    finally:
        heartbeat.stopped.set()
        with contextlib.suppress(redis.exceptions.LockError, redis.exceptions.RedisError):
            lock.release()
        if shutting_down:
            # Exit without acknowledging: the broker keeps the message for the next worker.
            os._exit(143)


def _train(
    store: JobStore, job_id: str, rec: dict[str, Any], run_dir: Path, heartbeat: _Heartbeat
) -> dict[str, Any]:
    from training.presets import config_from_dict
    from training.progress import ProgressEvent, record_fields
    from training.runner import run_training

    settings = get_settings()
    last_write = 0.0
    last_check = 0.0
    stop_now = False

    def progress(ev: ProgressEvent) -> None:
        nonlocal last_write
        now = time.monotonic()
        if ev["event"] == "step" and now - last_write < PROGRESS_EVERY_S:
            return
        last_write = now
        fields = record_fields(ev)
        if ev.get("samples"):
            names = {*(store.field(job_id, "samples") or []), Path(str(ev["samples"])).name}
            fields["samples"] = sorted(names)
        store.update(job_id, **fields)
        store.event(job_id, {"event": "progress", "kind": ev["event"], **_jsonable(fields)})

    def should_stop() -> bool:
        nonlocal last_check, stop_now
        if heartbeat.lost.is_set() or _shutdown.is_set():
            return True
        now = time.monotonic()
        if not stop_now and now - last_check >= STOP_CHECK_S:
            last_check = now
            try:
                stop_now = bool(store.field(job_id, "cancel_requested"))
            except redis.exceptions.RedisError as exc:
                log.warning("job %s: cannot read the cancel flag: %s", job_id, exc)
        return stop_now

    try:
        _limit_torch_threads()
        config = config_from_dict(rec["config"])
        result = run_training(
            config,
            rec.get("data"),
            run_dir,
            resume=True,
            progress=progress,
            should_stop=should_stop,
        )
    except Exception as exc:  # the record carries the message; the log the traceback
        log.exception("job %s failed", job_id)
        return _finish(store, job_id, FAILED, error=f"{type(exc).__name__}: {exc}")

    if _shutdown.is_set():
        raise WorkerShutdown(signal.SIGTERM)  # checkpoint written; the job goes back to the queue
    fields: dict[str, Any] = {"step": result["step"], "epoch": result["epoch"]}
    if result.get("metrics"):
        fields["metrics"] = result["metrics"]
    if heartbeat.lost.is_set():
        # another delivery owns the job now; leave the record to it
        return {"job_id": job_id, "state": RUNNING}
    if result["status"] == "cancelled":
        return _finish(store, job_id, CANCELLED, **fields)
    model_ref = None
    if result.get("model"):
        try:
            model_ref = _register(rec, job_id, result, settings.registry_dir)
        except (RegistryError, OSError) as exc:
            log.exception("job %s: registering the model failed", job_id)
            return _finish(store, job_id, FAILED, error=f"registering the model failed: {exc}")
    return _finish(store, job_id, SUCCEEDED, model=model_ref, **fields)


def _register(rec: dict[str, Any], job_id: str, result: dict[str, Any], root: Path) -> str:
    """`<preset>@<job_id>` into the registry (idempotent), activated if the job asked."""
    reg = Registry(root)
    name = rec["preset"]
    reg.register(name, job_id, result["model"], metrics=result.get("metrics"), job_id=job_id)
    if rec.get("activate"):
        reg.activate(name, job_id)
    return f"{name}@{job_id}"


def _finish(store: JobStore, job_id: str, state: str, **fields: Any) -> dict[str, Any]:
    store.update(job_id, state=state, finished_at=time.time(), **fields)
    store.event(job_id, {"event": "state", "state": state, **_jsonable(fields)})
    log.info("job %s %s", job_id, state)
    return {"job_id": job_id, "state": state, **_jsonable(fields)}


def _jsonable(fields: dict[str, Any]) -> dict[str, Any]:
    import json

    return json.loads(json.dumps(fields, default=str))


def _limit_torch_threads() -> None:
    import torch

    from worker.celery_app import TRAINING_QUEUE, torch_threads

    torch.set_num_threads(torch_threads(TRAINING_QUEUE))
