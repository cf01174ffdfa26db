"""Celery tasks: thin wrappers around the training runner and the inference engine.

Arguments are ids and plain JSON. Inference tasks batch continuously: the worker's main
process buffers incoming requests, and whenever the inference process is free it hands it
everything buffered (up to `batch_max_size` requests) as one batch. Nothing waits for a
window to close: a lone request starts at once, and under load each batch holds whatever
arrived while the previous one ran. The inference process answers each request on its own
result key (`mark_as_done`), dropping those whose client no longer waits.
"""

from __future__ import annotations

import contextlib
import logging
import time
from concurrent.futures import Future
from queue import Empty
from typing import Any

import redis
from celery_batches import Batches, SimpleRequest
from celery_batches.trace import apply_batches_task

from models.settings import get_settings
from worker.celery_app import app, send_run
from worker.jobs import EMULATE
from worker.payload import (
    COST,
    DEADLINE,
    DROPPED_PREFIX,
    fetch_inputs,
    record_pace,
    seed_pace,
    store_outputs,
)
from worker.policy import (
    DATASET_BUILD_TASK,
    DATASET_INGEST_TASK,
    EMULATE_FILE_TASK,
    EMULATE_TASK,
    GENERATE_TASK,
    PING_TASK,
    TRAIN_TASK,
)

log = logging.getLogger(__name__)
_settings = get_settings()

STUCK_S = max(60.0, 2 * _settings.inference_timeout_s)  # a batch that never returned
# Work units per batch (beyond its first request): a batch of long requests would run for
# minutes, and requests whose deadline passes meanwhile are dropped only between batches.
MAX_BATCH_WORK = 32


class ContinuousBatches(Batches):
    """celery-batches, flushed when the inference process is free rather than on a timer.

    celery-batches flushes its buffer every `flush_interval` or `flush_every` requests and
    queues each flush in the pool, so under load many small batches wait behind one another.
    Here one batch per task is in flight at a time: a new request is flushed at once when
    none is, and the end of a batch (its pool callback) flushes what arrived meanwhile. The
    parent's timer still fires every `flush_interval` as a safety net.
    """

    abstract = True
    flush_every = 2**31  # never flush by count; `_do_flush` decides
    flush_interval = 0.05
    max_batch = _settings.batch_max_size

    def __init__(self) -> None:
        super().__init__()
        self._busy_since: float | None = None

    def Strategy(self, task: Any, app: Any, consumer: Any) -> Any:
        handler = super().Strategy(task, app, consumer)

        def on_message(*args: Any, **kwargs: Any) -> None:
            handler(*args, **kwargs)  # buffers the request (and starts the safety timer)
            self._do_flush()

        return on_message

    def _do_flush(self) -> None:
        if self._busy_since is not None:
            if time.monotonic() - self._busy_since < STUCK_S:
                return
            log.error("an inference batch has not returned for %.0f s; flushing anyway", STUCK_S)
        batch, work = [], 0
        while len(batch) < self.max_batch and work < MAX_BATCH_WORK:
            try:
                batch.append(self._buffer.get_nowait())
            except Empty:
                break
            work += int(batch[-1]._payload[1].get(COST) or 1)
        if not batch:
            if self._tref is not None:  # idle: the next request restarts the timer
                self._tref.cancel()
                self._tref = None
            return
        self._busy_since = time.monotonic()
        self.flush(batch)

    def flush(self, requests: Any) -> Any:
        simple = ([SimpleRequest.from_request(r) for r in requests],)

        def on_accepted(pid: int, time_accepted: float) -> None:
            for req in requests:
                req.acknowledge()

        def on_done(*_: Any) -> None:
            self._busy_since = None
            self._do_flush()

        return self._pool.apply_async(
            apply_batches_task,
            (self, simple, 0, None),
            accept_callback=on_accepted,
            callback=on_done,
            error_callback=on_done,
        )


def _wanted(requests: list[SimpleRequest], quiet: bool = False) -> list[SimpleRequest]:
    """The requests someone still waits for: before their deadline, client not gone."""
    now = time.time()
    live = [r for r in requests if float(r.kwargs.get(DEADLINE) or now) >= now]
    if live:
        try:
            gone = app.backend.client.mget([DROPPED_PREFIX + r.id for r in live])
            live = [r for r, g in zip(live, gone, strict=True) if g is None]
        except Exception:  # no way to ask: compute them all
            log.debug("could not read dropped requests", exc_info=True)
    if len(live) < len(requests) and not quiet:
        log.info("dropped %d request(s) nobody waits for", len(requests) - len(live))
    return live


def _answer(req: SimpleRequest, res: Any, meta: dict[str, Any]) -> None:
    from worker.engine import RequestError

    if isinstance(res, RequestError):
        body: dict[str, Any] = {"ok": False, "status": res.status, "detail": res.detail}
    else:
        body = store_outputs(app.backend.client, req.id, {"ok": True, **res})
    body.update(meta)
    app.backend.mark_as_done(req.id, body, request=req)


def _answer_later(req: SimpleRequest, res: dict[str, Any], meta: dict[str, Any]) -> None:
    """Answer once the result's pending parts (futures: PNG encodes) are done."""
    from worker.engine import RequestError

    pending = {k: v for k, v in res.items() if isinstance(v, Future)}
    if not pending:
        _answer(req, res, meta)
        return
    key, fut = next(iter(pending.items()))

    def done(f: Future) -> None:
        try:
            _answer_later(req, {**res, key: f.result()}, meta)
        except Exception as exc:
            log.exception("finishing %s failed", req.id)
            _answer(req, RequestError(500, f"encoding failed: {type(exc).__name__}"), meta)

    fut.add_done_callback(done)


def _answer_batch(kind: str, requests: list[SimpleRequest]) -> int:
    from worker.engine import RequestError, get_engine

    requests = _wanted(requests)
    if not requests:
        return 0
    started = time.time()
    payloads = [dict(r.kwargs) for r in requests]
    try:
        fetch_inputs(app.backend.client, payloads)
        if kind == "emulate":  # long: stop between passes once every client has left
            results = get_engine().emulate(payloads, lambda: not _wanted(requests, quiet=True))
        else:
            results = get_engine().generate(payloads)
    except Exception as exc:  # the engine guards per request; this is the last resort
        log.exception("%s batch failed", kind)
        results = [RequestError(500, f"{kind} failed: {type(exc).__name__}")] * len(requests)
    compute_s = time.time() - started
    for pos, (req, res) in enumerate(zip(requests, results, strict=True)):
        meta = dict(
            batch_size=len(requests), batch_index=pos, started_at=started, compute_s=compute_s
        )
        if isinstance(res, dict):
            _answer_later(req, res, meta)  # the next batch starts while PNGs encode
        else:
            _answer(req, res, meta)
    # the queue's pace: the batch's work over its time, reading and answering included
    units = sum(int(r.kwargs.get(COST) or 0) for r in requests)
    with contextlib.suppress(Exception):  # a measurement, never a reason to fail
        record_pace(app.backend.client, requests[0].name, units, time.time() - started)
    return len(requests)


@app.task(name=GENERATE_TASK, base=ContinuousBatches)
def generate(requests: list[SimpleRequest]) -> int:
    """kwargs per request: model, version (None = active), active (hint), seed, n, nrow."""
    return _answer_batch("generate", requests)


@app.task(name=EMULATE_TASK, base=ContinuousBatches)
def emulate(requests: list[SimpleRequest]) -> int:
    """kwargs per request: model, version (None = active), active (hint), x, samples, seed."""
    return _answer_batch("emulate", requests)


@app.task(name=EMULATE_FILE_TASK)
def emulate_file(job_id: str) -> None:
    """Chunks of a large catalog, emulated in this inference process's background thread."""
    from worker import emulate_jobs
    from worker.jobs import JobStore

    emulate_jobs.submit(
        lambda: JobStore(app.backend.client),
        _settings.home,
        job_id,
        lambda n: send_run(EMULATE, job_id, n=n),
    )


@app.task(
    name=DATASET_BUILD_TASK,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,  # a chunk whose process died goes back to the queue
    autoretry_for=(OSError, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError),
    retry_backoff=True,
    retry_backoff_max=60,
    max_retries=8,
    ignore_result=True,
)
def dataset_build(self: Any, job_id: str) -> None:
    """Chunks of a catalog build, claimed until none is left (CPU work, `data` queue)."""
    from worker import datasets, fanout
    from worker.jobs import JobNotFound, JobStore

    store = JobStore(app.backend.client)
    try:
        datasets.run_build(store, job_id)
    except JobNotFound:
        return  # deleted meanwhile
    except (OSError, redis.exceptions.RedisError) as exc:
        if self.request.retries >= self.max_retries:
            fanout.fail(store, job_id, f"{type(exc).__name__}: {exc}")
        raise
    except Exception as exc:  # deterministic: every retry would fail the same way
        log.exception("dataset build %s failed", job_id)
        fanout.fail(store, job_id, f"{type(exc).__name__}: {exc}")


@app.task(name=DATASET_INGEST_TASK)
def dataset_ingest(name: str, token: str, fmt: str, sha256: str, size: int) -> dict[str, Any]:
    """Check an uploaded catalog or image archive and publish it as dataset `name`."""
    from worker import datasets

    return datasets.ingest(name, token, fmt, sha256, size)


@app.task(name=PING_TASK)
def ping() -> dict[str, Any]:
    """Readiness: loads the active versions if needed and says what is loaded."""
    from models.kinds import EMULATOR
    from worker.engine import get_engine

    status = get_engine().status()
    for family, pace in status["paces"].items():
        with contextlib.suppress(Exception):  # a first estimate, never a reason to fail
            seed_pace(
                app.backend.client, EMULATE_TASK if family == EMULATOR else GENERATE_TASK, pace
            )
    return status


@app.task(
    name=TRAIN_TASK,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,  # a crashed run is redelivered and resumes
    max_retries=None,
    ignore_result=True,
)
def train(self: Any, job_id: str) -> dict[str, Any]:
    from worker.jobs import LEASE_TTL_S
    from worker.training_job import LeaseHeld, run_job

    try:
        return run_job(job_id)
    except LeaseHeld as exc:
        # Another delivery is running this job; look again once its lease could expire.
        raise self.retry(countdown=LEASE_TTL_S / 2, exc=exc) from exc
