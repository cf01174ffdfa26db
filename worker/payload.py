"""How large values travel between the API and the inference worker: beside the message.

A 10,000-row catalog is 720 kB of float64. Inside a Celery message it would be encoded
(base64 in JSON), decoded by the worker's parent, pickled to the pool process, and its answer
stored and published as JSON again: tens of ms per request. Instead the sender stores each
large value as a binary Redis value ("blob") under a key named after the task, and the message
or result names the key: the task kwarg `<name>_blob` for inputs, the result's `blobs`
mapping for outputs. Blobs expire on their own; the reader deletes them.

Arrays are little-endian bytes of a stated dtype, C order.
"""

from __future__ import annotations

from typing import Any

import numpy as np

DEADLINE = "deadline"  # task kwarg: epoch seconds after which nobody waits for the answer
DROPPED_PREFIX = "cosmogan:inference:dropped:"  # + task id: the client went away
COST = "cost"  # task kwarg: the request's work units (images, or thousands of emulated rows)
PACE_PREFIX = "cosmogan:inference:pace:"  # + task name: work units served a second (average)
PACE_WEIGHT = 0.3  # weight of the newest batch in the moving average
BLOB_PREFIX = "cosmogan:blob:"
BLOB_SUFFIX = "_blob"  # task kwarg `x_blob` names the blob that holds input `x`
BLOBS = "blobs"  # result field: output name → blob key
BLOB_TTL_S = 600


def blob_key(task_id: str, name: str) -> str:
    return f"{BLOB_PREFIX}{task_id}:{name}"


def to_bytes(a: np.ndarray, dtype: str) -> bytes:
    """`a` as `dtype` (e.g. "<f8"), C order, raw bytes."""
    return np.ascontiguousarray(a, dtype=dtype).tobytes()


def from_bytes(data: bytes, dtype: str, columns: int | None = None) -> np.ndarray:
    """The array `to_bytes` made; reshaped to (-1, columns) when `columns` is given."""
    a = np.frombuffer(data, dtype=dtype)
    return a if columns is None else a.reshape(-1, columns)


def fetch_inputs(client: Any, requests: list[dict[str, Any]]) -> None:
    """Replace every `<name>_blob` kwarg by the blob's bytes (one round trip; None if gone)."""
    wanted = [(r, k) for r in requests for k in r if k.endswith(BLOB_SUFFIX)]
    if not wanted:
        return
    with client.pipeline(transaction=False) as pipe:
        for r, k in wanted:
            pipe.get(r[k])
            pipe.delete(r[k])
        values = pipe.execute()[::2]
    for (r, k), value in zip(wanted, values, strict=True):
        r[k.removesuffix(BLOB_SUFFIX)] = value
        del r[k]


def store_outputs(client: Any, task_id: str, result: dict[str, Any]) -> dict[str, Any]:
    """`result` with its bytes values stored as blobs and named in `result["blobs"]`."""
    large = {k: v for k, v in result.items() if isinstance(v, bytes)}
    if not large:
        return result
    out = {k: v for k, v in result.items() if k not in large}
    out[BLOBS] = {k: blob_key(task_id, k) for k in large}
    with client.pipeline(transaction=False) as pipe:
        for k, v in large.items():
            pipe.set(out[BLOBS][k], v, ex=BLOB_TTL_S)
        pipe.execute()
    return out


# KEYS: the task's pace. ARGV: the pace of one batch, the weight of the newest measurement.
_PACE = """
local old = tonumber(redis.call('GET', KEYS[1]) or ARGV[1])
redis.call('SET', KEYS[1], tostring(old + (tonumber(ARGV[1]) - old) * tonumber(ARGV[2])))
"""


def record_pace(client: Any, task: str, units: float, seconds: float) -> None:
    """Fold one batch (`units` of work in `seconds`) into the task's measured pace, which
    the API's admission uses to refuse at once what could not be served in time."""
    if units > 0 and seconds > 0:
        client.eval(_PACE, 1, PACE_PREFIX + task, units / seconds, PACE_WEIGHT)


def seed_pace(client: Any, task: str, pace: float) -> None:
    """The task's pace, timed on a warm-up pass, where no batch has measured one yet."""
    if pace > 0:
        client.set(PACE_PREFIX + task, pace, nx=True)
