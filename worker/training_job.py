"""Run one training job by id: one live run per job, progress into Redis, resumable.

A job may be delivered more than once (late acks: a worker that dies or shuts down hands
its message back; the reaper re-sends lost ones). Each delivery takes the job's lease (a
Redis key with a TTL that a heartbeat thread renews); a delivery that finds the lease held
by a live run is dropped (or retried while the job is still queued) instead of starting a
second run, and every run resumes from the run folder's last checkpoint.

Redis may go away under a running job: the run keeps training and checkpointing, skips
progress writes while Redis is unreachable, takes its lease back when Redis returns and
writes its final state then (waiting for it up to FINISH_WAIT_S).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import redis

from models.kinds import family_of
from models.registry import DEFAULT_MODEL, LEGACY_KINDS, Registry, RegistryError
from models.settings import get_settings
from worker.jobs import (
    CANCELLED,
    FAILED,
    HEARTBEAT_S,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    TERMINAL,
    JobNotFound,
    JobStateError,
    JobStore,
    Renewal,
    check_data_path,
    record_key,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

STOP_CHECK_S = 1.0  # how often `should_stop` reads the cancel flag from Redis
REDIS_BACKOFF_S = 2.0  # after a failed Redis call, progress writes pause this long
FINISH_WAIT_S = 120.0  # how long a finished run waits for Redis to record its final state
LOOP_SILENT_S = 120.0  # a training loop silent this long (no step, no stop check) is stalled
PROGRESS_EVERY_S = 0.5  # step events are written at most this often
MAX_ATTEMPTS = 3  # deliveries that crash before a job is marked failed


class LeaseHeld(RuntimeError):
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
    """Renews the job's lease and heartbeat; notices when the lease is lost for good.

    A Redis error is transient: the thread keeps trying every beat (redis-py reconnects), and
    takes the lease back if it expired meanwhile and no other run took it. The lease is
    renewed as long as the process lives (no second run may start), but the heartbeat time
    only while the training loop shows life (`touch`), so a hung loop is reported stalled.
    """

    def __init__(self, store: JobStore, job_id: str, token: str) -> None:
        super().__init__(name=f"heartbeat-{job_id[:8]}", daemon=True)
        self.store, self.job_id, self.token = store, job_id, token
        self.stopped = threading.Event()
        self.lost = threading.Event()
        self.loop_seen = time.monotonic()

    def touch(self) -> None:
        self.loop_seen = time.monotonic()

    def run(self) -> None:
        failing = False
        while not self.stopped.wait(HEARTBEAT_S):
            alive = time.monotonic() - self.loop_seen < LOOP_SILENT_S
            try:
                renewed = self.store.renew_lease(self.job_id, self.token, beat=alive)
            except redis.exceptions.RedisError as exc:
                if not failing:
                    log.warning("job %s: heartbeat failed (retrying): %s", self.job_id, exc)
                failing = True
                continue
            if failing or renewed == Renewal.TAKEN_BACK:
                log.warning("job %s: Redis is back; lease %s", self.job_id, renewed.name.lower())
            failing = False
            if renewed == Renewal.LOST:
                log.error("job %s: lost its lease; stopping this run", self.job_id)
                self.lost.set()
                return


class _RedisGate:
    """Skips best-effort Redis writes for REDIS_BACKOFF_S after one fails, so a run whose
    Redis is down trains on (and checkpoints) instead of failing or waiting on timeouts."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.closed_until = 0.0
        self.skipped = 0

    def call(self, fn: Callable[..., T], *args: Any) -> T | None:
        if time.monotonic() < self.closed_until:
            self.skipped += 1
            return None
        try:
            out = fn(*args)
        except redis.exceptions.RedisError as exc:
            if self.closed_until == 0.0:
                log.warning("job %s: Redis unreachable, training on: %s", self.job_id, exc)
            self.closed_until = time.monotonic() + REDIS_BACKOFF_S
            self.skipped += 1
            return None
        if self.closed_until:
            log.warning("job %s: Redis is back (%d writes skipped)", self.job_id, self.skipped)
            self.closed_until, self.skipped = 0.0, 0
        return out


def _pid_alive(pid: int) -> bool:
    """A live process (not a zombie: a killed worker's pool processes can linger as zombies
    where nothing reaps orphans)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _host_id() -> str:
    """This machine and pid namespace: pids are comparable only between processes that
    share both (containers on one host can share a hostname, never a pid namespace)."""
    try:
        ns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        ns = 0
    return f"{socket.gethostname()}/{ns}"


def _dead_local_lease(rec: dict[str, Any]) -> str | None:
    """The token of the record's lease if it belongs to a dead process of this host."""
    lease = rec.get("lease") or {}
    pid = lease.get("pid")
    if lease.get("host") != _host_id() or not isinstance(pid, int) or pid == os.getpid():
        return None
    return None if _pid_alive(pid) else str(lease.get("token"))


def _take_stale_lease(store: JobStore, job_id: str, rec: dict[str, Any], token: str) -> bool:
    """Take over a lease left by a dead process on this machine (e.g. a `kill -9`d pool
    process whose message came straight back): no need to wait for it to expire."""
    dead = _dead_local_lease(rec)
    if dead is None or not store.release_lease(job_id, dead):
        return False
    log.warning("job %s: its run (pid %s) died; taking over its lease", job_id, rec["lease"]["pid"])
    return store.acquire_lease(job_id, token)


def release_dead_leases(store: JobStore) -> list[str]:
    """At a worker's start: free the leases that dead runs of this host left behind (a
    worker killed with its pool), so the reaper re-sends their jobs without waiting for
    the leases to expire. Returns the job ids."""
    freed = []
    for job_id, state, leased in store.active():
        if state != RUNNING or not leased:
            continue
        with contextlib.suppress(JobNotFound):
            dead = _dead_local_lease(store.get(job_id))
            if dead is not None and store.release_lease(job_id, dead):
                log.warning("job %s: its run died with its worker; lease freed", job_id)
                freed.append(job_id)
    return freed


def run_job(job_id: str, store: JobStore | None = None) -> dict[str, Any]:
    """Run (or resume) job `job_id`; returns its final record fields. Raises LeaseHeld."""
    settings = get_settings()
    if store is None:
        from worker.policy import redis_url

        store = JobStore.from_url(redis_url())
    try:
        rec = store.get(job_id)
    except JobNotFound:
        log.error("job %s: no record; dropping the message", job_id)
        return {"job_id": job_id, "state": "unknown"}
    if rec["state"] in TERMINAL:
        log.info("job %s already %s; nothing to do", job_id, rec["state"])
        return {"job_id": job_id, "state": rec["state"]}

    token = uuid.uuid4().hex
    if not (store.acquire_lease(job_id, token) or _take_stale_lease(store, job_id, rec, token)):
        if store.field(job_id, "state") == RUNNING:
            # a live run owns the job; if it dies the reaper re-sends the job
            log.info("job %s: a live run holds it; dropping this duplicate delivery", job_id)
            return {"job_id": job_id, "state": RUNNING}
        raise LeaseHeld(f"job {job_id} is running elsewhere")
    heartbeat = _Heartbeat(store, job_id, token)
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
            lease={"host": _host_id(), "pid": os.getpid(), "token": token},
        )
        store.event(job_id, {"event": "state", "state": RUNNING, "attempt": attempts})
        if attempts > MAX_ATTEMPTS:
            return _finish(store, job_id, FAILED, error=f"gave up after {MAX_ATTEMPTS} attempts")
        heartbeat.start()
        # A cold worker shutdown terminates this pool process with SIGTERM and hands the
        # unacknowledged message back to the broker. Put the record back to `queued` and free
        # the lease first, so the next delivery resumes at once from the last checkpoint.
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
        with contextlib.suppress(redis.exceptions.RedisError):
            store.release_lease(job_id, token)
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
    store_key = record_key(job_id)

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

    gate = _RedisGate(job_id)

    def should_stop() -> bool:
        nonlocal last_check, stop_now
        heartbeat.touch()
        if heartbeat.lost.is_set() or _shutdown.is_set():
            return True
        now = time.monotonic()
        if not stop_now and now - last_check >= STOP_CHECK_S:
            last_check = now
            got = gate.call(store.r.hmget, store_key, "state", "cancel_requested")
            if got is not None:
                state, flag = (None if v is None else json.loads(v) for v in got)
                if state != RUNNING:  # cancelled or re-queued while this run was cut off
                    log.warning("job %s is %s now; stopping this run", job_id, state)
                    heartbeat.lost.set()
                stop_now = bool(flag) or heartbeat.lost.is_set()
        return stop_now

    try:
        _limit_torch_threads()
        report_devices(store)
        _recheck_data(rec, settings.data_dir)
        config = config_from_dict(rec["config"])
        result = run_training(
            config,
            rec.get("data"),
            run_dir,
            resume=True,
            progress=lambda ev: gate.call(progress, ev),  # best effort while Redis is down
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
    """`<model>@<job_id>` into the registry (idempotent), activated if the job asked: the
    model the job named, else its family's default (`nebula`, `balrog`); the network kind
    is recorded on the version."""
    reg = Registry(root)
    kind = (rec.get("config") or {}).get("kind") or LEGACY_KINDS[rec["preset"]]
    name = rec.get("target") or DEFAULT_MODEL[family_of(kind)]
    reg.register(
        name,
        job_id,
        result["model"],
        metrics=result.get("metrics"),
        job_id=job_id,
        kind=kind,
        preset=rec["preset"],
    )
    if rec.get("activate"):
        reg.activate(name, job_id)
    return f"{name}@{job_id}"


def _finish(store: JobStore, job_id: str, state: str, **fields: Any) -> dict[str, Any]:
    """Record the end of the run (only over `running`: a job cancelled or re-queued meanwhile
    keeps its state), waiting for Redis if it is down."""

    def write() -> bool:
        try:
            store.transition(job_id, state, (RUNNING,))
        except JobStateError:
            if store.field(job_id, "state") != state:
                log.warning("job %s: not recording %s: it is no longer running", job_id, state)
                return False
            # an earlier try got this far before Redis went away: write the rest
        store.update(job_id, finished_at=time.time(), **fields)
        store.event(job_id, {"event": "state", "state": state, **_jsonable(fields)})
        return True

    deadline = time.monotonic() + FINISH_WAIT_S
    while True:
        try:
            recorded = write()
            break
        except redis.exceptions.RedisError as exc:
            if time.monotonic() > deadline:
                # the lease expires, and the reaper re-sends the job: it resumes from the
                # final checkpoint and records the end then
                log.error("job %s: could not record %s: %s", job_id, state, exc)
                recorded = False
                break
            time.sleep(1.0)
    if recorded:
        log.info("job %s %s", job_id, state)
    return {"job_id": job_id, "state": state, **_jsonable(fields)}


def _jsonable(fields: dict[str, Any]) -> dict[str, Any]:
    import json

    return json.loads(json.dumps(fields, default=str))


def _recheck_data(rec: dict[str, Any], data_dir: Path) -> None:
    """The record came through Redis: its data path must still be a dataset in the data
    root (whoever could write Redis must not point a run at other files)."""
    if rec.get("data") is not None:
        from training.presets import family

        want = "dir" if family(rec["preset"]) == "image" else "file"
        check_data_path(str(rec["data"]), data_dir, want)


def report_devices(store: JobStore) -> None:
    """Tell the API how many CUDA devices this training host sees (best effort)."""
    import torch

    with contextlib.suppress(redis.exceptions.RedisError):
        store.report_devices(_host_id(), torch.cuda.device_count())


def _limit_torch_threads() -> None:
    """The threads the launcher gave this process (`OMP_NUM_THREADS`, its share of the cores
    among the worker's training processes), else the training policy's for one process."""
    import torch

    from worker.policy import TRAINING_QUEUE, torch_threads

    given = os.environ.get("OMP_NUM_THREADS", "")
    torch.set_num_threads(
        int(given) if given.isdigit() and int(given) > 0 else torch_threads(TRAINING_QUEUE)
    )
