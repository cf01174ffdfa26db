"""Prometheus metrics of the API processes.

Batch sizes and queue waits happen in the worker processes; the worker reports them in each
result, and the API observes them here, so one scrape of the API covers both. A batch is
counted once (by its first request), not once per request.

`cosmogan api --workers N` runs N API processes behind one port; the launcher then sets
`PROMETHEUS_MULTIPROC_DIR` (emptied at start), every process writes its samples there, and a
scrape of any process sums them all (prometheus_client's multiprocess mode).
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)

REQUEST_LATENCY = Histogram(
    "cosmogan_http_request_duration_seconds",
    "HTTP request latency by route template.",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
QUEUE_WAIT = Histogram(
    "cosmogan_inference_queue_wait_seconds",
    "Time from sending an inference request to its batch starting on a worker.",
    ["task"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "cosmogan_inference_batch_size",
    "Requests coalesced into one inference batch.",
    ["task"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
    registry=REGISTRY,
)
COMPUTE = Histogram(
    "cosmogan_inference_batch_seconds",
    "Worker time spent computing one inference batch.",
    ["task"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
INFERENCE_ERRORS = Counter(
    "cosmogan_inference_errors_total",
    "Inference requests answered with an error, by HTTP status.",
    ["task", "status"],
    registry=REGISTRY,
)
REJECTED = Counter(
    "cosmogan_inference_rejected_total",
    "Inference requests refused because the queue was full.",
    ["task"],
    registry=REGISTRY,
)
JOBS = Gauge(
    "cosmogan_training_jobs",
    "Training jobs by state.",
    ["state"],
    registry=REGISTRY,
    multiprocess_mode="mostrecent",  # every process sets it from Redis: the latest is right
)


def exposition() -> bytes:
    """The metrics text of this process, or of every API process in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


def observe_inference(task: str, result: dict[str, Any], sent_at: float) -> None:
    """Record the worker-side figures that came back with one inference result."""
    started = result.get("started_at")
    if isinstance(started, int | float):
        QUEUE_WAIT.labels(task).observe(max(0.0, started - sent_at))
    if result.get("batch_index") == 0:
        BATCH_SIZE.labels(task).observe(result.get("batch_size", 1))
        if isinstance(result.get("compute_s"), int | float):
            COMPUTE.labels(task).observe(result["compute_s"])
    if not result.get("ok", True):
        INFERENCE_ERRORS.labels(task, str(result.get("status", 500))).inc()
