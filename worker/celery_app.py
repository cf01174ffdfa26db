"""The Celery app, built from the one settings object; JSON messages only.

Three queues that must not block each other, each served by its own worker process:
  - `training`: long jobs, one at a time per process, late acks, prefetch 1;
  - `inference`: generate/emulate requests coalesced into batches (celery-batches), and
    the chunks of emulation jobs;
  - `data`: CPU work (catalog build chunks, upload checks), a process per core, late acks.

Both workers use the prefork pool and this module never imports torch: the pool's parent
process only routes messages, so CUDA is first initialized inside a pool child (the tasks
import torch lazily). Forking after CUDA initialization breaks CUDA in the child; keeping
torch out of the parent avoids that without giving up prefork's crash isolation (a child
that dies is replaced and its message redelivered).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from celery import Celery, signals

from models.settings import get_settings
from worker.policy import (
    INFERENCE_QUEUE,
    KIND_QUEUES,
    KIND_TASKS,
    ROUTES,
    TRAIN_TASK,
    TRAINING_QUEUE,
    redis_url,
)


def create_app() -> Celery:
    settings = get_settings()
    url = redis_url()
    app = Celery("cosmogan", broker=url, backend=url, include=["worker.tasks"])
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_default_queue=INFERENCE_QUEUE,
        task_routes=ROUTES,
        # Redis redelivers an unacknowledged message after the visibility timeout: it must
        # be longer than any training job, or a running job would be handed out twice.
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        result_backend_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        # A worker outlives a Redis outage of any length: it reconnects instead of exiting
        # after 100 tries. The messages it held unacknowledged stay in Redis's `unacked` set
        # (redelivered only after the visibility timeout); the reaper (`app.reaper`) re-sends
        # the jobs they carried, and their leases keep a job from running twice.
        broker_connection_max_retries=None,
        # A send to a dead broker fails fast, so the API can answer 503 instead of hanging.
        broker_connection_timeout=3,
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        # Inference results are read once by the API (which deletes them); training results
        # live in the job records, so the result keys only need to outlive a slow reader.
        result_expires=600,
        worker_prefetch_multiplier=1,
        # Duplicate deliveries of a training job are harmless (a per-job lease in Redis lets
        # one run at a time and the run resumes from its checkpoint), so a lost broker
        # connection need not kill a long job.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        task_send_sent_event=False,
        timezone="UTC",
    )
    return app


app = create_app()
celery = app  # `celery -A worker.celery_app` finds either name


def send_training(job_id: str, celery_app: Celery | None = None) -> None:
    """One message for `job_id` on the training queue (a fresh task id per send)."""
    attempt = f"{job_id}-{int(time.time() * 1000)}"
    (celery_app or app).send_task(TRAIN_TASK, args=[job_id], task_id=attempt, queue=TRAINING_QUEUE)


def send_run(kind: str, job_id: str, celery_app: Celery | None = None, n: int = 1) -> None:
    """`n` messages for the fanned-out job `job_id` of `kind` on its queue (`worker.fanout`).
    Task ids start with the job id, so the reaper finds the job's messages in the queue."""
    for _ in range(max(0, n)):
        (celery_app or app).send_task(
            KIND_TASKS[kind],
            args=[job_id],
            task_id=f"{job_id}-{uuid.uuid4().hex[:12]}",
            queue=KIND_QUEUES[kind],
        )


def _consumes_training() -> bool:
    """Whether this worker process serves the training queue (`-Q`)."""
    return TRAINING_QUEUE in {q.name for q in app.amqp.queues.consume_from.values()}


@signals.worker_ready.connect
def _resend_jobs_of_dead_runs(sender: Any = None, **_: Any) -> None:
    """A training worker that starts re-sends the jobs its killed predecessor was running
    (their runs are gone: no need to wait for the leases to expire and the reaper)."""
    if not _consumes_training():
        return
    import logging

    import redis

    from worker.jobs import JobStore
    from worker.training_job import release_dead_leases

    store = JobStore.from_url(redis_url())
    try:
        for job_id in release_dead_leases(store):
            if store.requeue_orphan(job_id, "its worker died"):
                send_training(job_id)
    except redis.exceptions.RedisError as exc:
        logging.getLogger(__name__).warning("could not check for dead runs: %s", exc)
    finally:
        store.r.close()


@signals.worker_process_init.connect
def _report_devices(**_: Any) -> None:
    """A training pool process tells the API which devices it has, so that a job asking for
    one it lacks is refused at the door. In a thread: importing torch may take longer than
    the pool allows a process to start."""
    if not _consumes_training():
        return

    def report() -> None:
        from worker.jobs import JobStore
        from worker.training_job import report_devices

        store = JobStore.from_url(redis_url())
        try:
            report_devices(store)
        finally:
            store.r.close()

    import threading

    threading.Thread(target=report, name="report-devices", daemon=True).start()
