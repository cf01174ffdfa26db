"""What every process agrees on about the queues, torch-free and Celery-free: queue and task
names, where each task goes, the pool and torch-thread policy, the broker's address.

Importing this module builds nothing, so the API, the launcher and the training job can read
a constant without building the Celery app (`worker.celery_app`).
"""

from __future__ import annotations

import os

from models.settings import get_settings

TRAINING_QUEUE = "training"
INFERENCE_QUEUE = "inference"
DATA_QUEUE = "data"  # CPU work: catalog builds and dataset uploads, never beside training
QUEUES = (TRAINING_QUEUE, INFERENCE_QUEUE, DATA_QUEUE)

TRAIN_TASK = "cosmogan.train"
GENERATE_TASK = "cosmogan.generate"
EMULATE_TASK = "cosmogan.emulate"
PING_TASK = "cosmogan.ping"
EMULATE_FILE_TASK = "cosmogan.emulate_file"  # the chunks of an emulation job
DATASET_BUILD_TASK = "cosmogan.dataset_build"  # the chunks of a catalog build
DATASET_INGEST_TASK = "cosmogan.dataset_ingest"  # an uploaded catalog or image archive

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

# Where each task goes: every task has a route.
ROUTES = {
    TRAIN_TASK: {"queue": TRAINING_QUEUE},
    GENERATE_TASK: {"queue": INFERENCE_QUEUE},
    EMULATE_TASK: {"queue": INFERENCE_QUEUE},
    EMULATE_FILE_TASK: {"queue": INFERENCE_QUEUE},
    PING_TASK: {"queue": INFERENCE_QUEUE},
    DATASET_BUILD_TASK: {"queue": DATA_QUEUE},
    DATASET_INGEST_TASK: {"queue": DATA_QUEUE},
}

# Messages sent per fanned-out job: each run claims chunks until none is left, so this only
# needs to reach every worker process (`worker.fanout`).
FANOUT_MESSAGES = 64
# Queue a fanned-out job of each kind runs on.
KIND_QUEUES = {"emulate": INFERENCE_QUEUE, "dataset": DATA_QUEUE}
KIND_TASKS = {"emulate": EMULATE_FILE_TASK, "dataset": DATASET_BUILD_TASK}


def torch_threads(queue: str, processes: int = 1) -> int:
    """CPU threads for torch in each of a worker's `processes` of `queue`.

    Training gets all cores but one, split among its processes, inference one (up to 4 on
    big machines), so that a running training job leaves a core to answer requests. Two
    training processes that each took all the cores would oversubscribe them: on 2 cores,
    two cWGAN-GP runs with 2 threads each ran 7× slower per step than with 1 each.
    """
    cores = os.cpu_count() or 2
    if queue == TRAINING_QUEUE:
        return max(1, (cores - 1) // max(1, processes))
    if queue == DATA_QUEUE:
        return 1  # one process per core instead
    return max(1, min(4, cores // 4))


def pool_policy(
    queue: str, concurrency: int, batch_max_size: int, data_processes: int | None = None
) -> tuple[int, int]:
    """(processes, prefetch multiplier) for a worker of `queue`.

    Training: one job per process at a time, prefetch 1, so late acks hand a job back if the
    process dies. Inference: one process whose celery-batches buffer is fed by prefetching;
    the prefetch must exceed a full batch or a batch could never fill. Data: `data_processes`
    (default: the settings', else one per core), prefetch 1, late acks.
    """
    if queue == TRAINING_QUEUE:
        return max(1, concurrency), 1
    if queue == DATA_QUEUE:
        n = data_processes or get_settings().data_processes or os.cpu_count() or 1
        return max(1, n), 1
    return 1, 2 * batch_max_size


def redis_url() -> str:
    """The broker/result-store URL: settings, else a Redis on the default local port."""
    return get_settings().redis_url or DEFAULT_REDIS_URL
