"""Celery tasks: thin wrappers around the training runner and the inference engine.

Arguments are ids and plain JSON. Inference tasks are celery-batches `Batches` tasks: the
worker's main process buffers requests for up to `batch_window_ms` or `batch_max_size`
requests, then hands the whole list to one pool process, which answers each request on its
own result key (`mark_as_done`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery_batches import Batches, SimpleRequest

from models.settings import get_settings
from worker.celery_app import EMULATE_TASK, GENERATE_TASK, PING_TASK, TRAIN_TASK, app

log = logging.getLogger(__name__)
_settings = get_settings()

# The buffer is flushed when `flush_every` requests are waiting or every `flush_interval`
# seconds; the inference worker's prefetch must exceed `flush_every` (see training.service).
BATCH_OPTIONS: dict[str, Any] = {
    "base": Batches,
    "flush_every": _settings.batch_max_size,
    "flush_interval": max(_settings.batch_window_ms, 1) / 1000.0,
}


def _answer_batch(kind: str, requests: list[SimpleRequest]) -> int:
    from worker.inference import RequestError, get_engine

    started = time.time()
    payloads = [dict(r.kwargs) for r in requests]
    try:
        results = getattr(get_engine(), kind)(payloads)
    except Exception as exc:  # the engine guards per request; this is the last resort
        log.exception("%s batch failed", kind)
        results = [RequestError(500, f"{kind} failed: {type(exc).__name__}")] * len(requests)
    compute_s = time.time() - started
    for pos, (req, res) in enumerate(zip(requests, results, strict=True)):
        if isinstance(res, RequestError):
            body: dict[str, Any] = {"ok": False, "status": res.status, "detail": res.detail}
        else:
            body = {"ok": True, **res}
        body.update(
            batch_size=len(requests), batch_index=pos, started_at=started, compute_s=compute_s
        )
        app.backend.mark_as_done(req.id, body, request=req)
    return len(requests)


@app.task(name=GENERATE_TASK, **BATCH_OPTIONS)
def generate(requests: list[SimpleRequest]) -> int:
    """kwargs per request: model, version (None = active), active (hint), seed, n, nrow."""
    return _answer_batch("generate", requests)


@app.task(name=EMULATE_TASK, **BATCH_OPTIONS)
def emulate(requests: list[SimpleRequest]) -> int:
    """kwargs per request: model, version (None = active), active (hint), x, samples, seed."""
    return _answer_batch("emulate", requests)


@app.task(name=PING_TASK)
def ping() -> dict[str, Any]:
    """Readiness: loads the active versions if needed and says what is loaded."""
    from worker.inference import get_engine

    return get_engine().status()


@app.task(
    name=TRAIN_TASK,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,  # a crashed run is redelivered and resumes
    max_retries=None,
    ignore_result=True,
)
def train(self: Any, job_id: str) -> dict[str, Any]:
    from worker.training_job import LOCK_TTL_S, LockHeld, run_job

    try:
        return run_job(job_id)
    except LockHeld as exc:
        # Another delivery is running this job; look again once its lock could expire.
        raise self.retry(countdown=LOCK_TTL_S / 2, exc=exc) from exc
