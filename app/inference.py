"""How a route runs inference: resolve the model, admit, enqueue, wait, measure, map errors.

Admission keeps the inference queue bounded across every API process: each request adds its
cost (images, or thousands of emulated rows) to a Redis sorted set scored by its deadline,
and a request is refused at once with 503 and `Retry-After` when the queued total would
exceed `COSMOGAN_MAX_QUEUED_WORK`, or when the queue could not serve it before its deadline
at the measured pace (work units a second, an average over answered requests that waited
behind others; `COSMOGAN_INFERENCE_WORK_PER_S` until measured): a refusal now instead of a
504 a minute later. Entries leave the set when their answer arrives, when the client goes
away, or at their deadline if the API process died. The deadline travels with the task:
the worker drops work nobody waits for any more, and work whose client disconnected (the
API marks it dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from app.errors import ApiError
from app.metrics import REJECTED, observe_inference
from app.results import ResultWaiter
from models.kinds import Family
from models.registry import ModelVersion, Registry
from models.settings import Settings
from training.presets import PRESETS, family
from worker.payload import (
    BLOB_SUFFIX,
    BLOB_TTL_S,
    BLOBS,
    COST,
    DEADLINE,
    DROPPED_PREFIX,
    PACE_PREFIX,
    blob_key,
)
from worker.policy import EMULATE_TASK, GENERATE_TASK, INFERENCE_QUEUE

log = logging.getLogger(__name__)

QUEUED_KEY = "cosmogan:inference:queued"
RETRY_AFTER_S = 2
MAX_RETRY_AFTER_S = 60
# Queued work may take this share of a request's deadline: the rest is for the transfer of
# its answer and the estimate's error (the pace of a loaded machine varies by a quarter).
DEADLINE_SHARE = 0.7
OTHER_ROUTE = {"image": "GET /generate", "emulator": "POST /emulate"}
PACED_TASKS = (GENERATE_TASK, EMULATE_TASK)  # the index+1 of a task names it in the queue

# Atomically: forget entries past their deadline, sum the queued work (units, and seconds at
# each task's latest measured pace), then admit or refuse. Members are `task id|task|units`,
# task the 1-based index in PACED_TASKS.
# KEYS: the queued set, then the pace of each of PACED_TASKS. ARGV: now, deadline, task id,
# task, units, max queued units, pace until measured, seconds the queue may take. Returns
# {0, units ahead, member} when admitted, {1, units} when the queue is full, {2, units,
# seconds queued, seconds of this request} when it could not be served in time. A request
# is always admitted into an empty queue, however large it is.
_ADMIT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local pace = {}
for i = 2, #KEYS do pace[i - 1] = tonumber(redis.call('GET', KEYS[i]) or ARGV[7]) end
local units, secs = 0, 0
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local t, c = string.match(m, '|(%d+)|(%d+)$')
  units = units + tonumber(c)
  secs = secs + tonumber(c) / pace[tonumber(t)]
end
local task, cost = tonumber(ARGV[4]), tonumber(ARGV[5])
local need = cost / pace[task]
if units > 0 and units + cost > tonumber(ARGV[6]) then
  return {1, units}
end
if units > 0 and secs + need > tonumber(ARGV[8]) then
  return {2, units, tostring(secs), tostring(need)}
end
local member = ARGV[3] .. '|' .. task .. '|' .. cost
redis.call('ZADD', KEYS[1], ARGV[2], member)
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2]) - tonumber(ARGV[1])) + 60)
return {0, units, member}
"""


@dataclass(frozen=True)
class Call:
    """An inference call's answer: the worker's result and where it came from."""

    result: dict[str, Any]
    sent_at: float


def resolve(registry: Registry, model: str, version: str | None, want: Family) -> ModelVersion:
    """The registered version to serve (404 if unknown, 422 for the other model family)."""
    # the family is the versions' (a name serves one family); a preset's name, before it
    # has any version, is taken for that preset's family
    have = registry.family(model)
    if have is None and model in PRESETS:
        have = family(model)
    if have is not None and have != want:
        other = "an emulator" if want == "image" else "an image generator"
        raise ApiError(422, f"model {model!r} is {other}; use {OTHER_ROUTE[have]}")
    return registry.get(model, version)  # RegistryError → 404


def emulate_cost(rows: int) -> int:
    """Queue cost of emulating `rows` rows (realizations included): thousands, at least 1."""
    return max(1, math.ceil(rows / 1000))


async def infer(
    request: Request,
    settings: Settings,
    waiter: ResultWaiter,
    task: str,
    kwargs: dict[str, Any],
    *,
    cost: int,
    metric: str,
    blobs: dict[str, bytes] | None = None,
) -> Call:
    """Admit, send `task(**kwargs)` to the inference queue and await its answer.

    `blobs` (name → bytes) travel beside the message (see `worker.payload`), and so do the
    bytes values of the answer: `Call.result` holds them under their names.
    Errors: 503 + Retry-After when the queue is full or the broker is down, 504 on timeout,
    the worker's own status (404, 422, 503, ...) when it refused the request.
    """
    aredis = request.app.state.aredis
    task_id = uuid.uuid4().hex
    timeout_s = settings.inference_timeout_s
    deadline = time.time() + timeout_s
    verdict, ahead, *more = await aredis.eval(
        _ADMIT,
        1 + len(PACED_TASKS),
        QUEUED_KEY,
        *(PACE_PREFIX + t for t in PACED_TASKS),
        time.time(),
        deadline,
        task_id,
        PACED_TASKS.index(task) + 1,
        int(cost),
        settings.max_queued_work,
        settings.inference_work_per_s,
        timeout_s * DEADLINE_SHARE,
    )
    if int(verdict):
        raise _refusal(metric, int(verdict), int(ahead), more, settings)
    member = more[0]
    sent = {**kwargs, DEADLINE: deadline, COST: int(cost)}
    if blobs:
        async with aredis.pipeline(transaction=False) as pipe:
            for name, value in blobs.items():
                sent[name + BLOB_SUFFIX] = blob_key(task_id, name)
                pipe.set(sent[name + BLOB_SUFFIX], value, ex=min(BLOB_TTL_S, int(timeout_s) + 5))
            await pipe.execute()
    call = asyncio.create_task(
        waiter.call(
            task,
            sent,
            timeout_s=timeout_s,
            queue=INFERENCE_QUEUE,
            task_id=task_id,
        )
    )
    gone = asyncio.create_task(_disconnected(request))
    try:
        await asyncio.wait({call, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not call.done():  # the client went away: tell the worker not to bother
            call.cancel()
            with contextlib.suppress(Exception):
                await aredis.set(DROPPED_PREFIX + task_id, 1, ex=int(timeout_s) + 60)
            raise ApiError(499, "the client closed the connection")
        result, sent_at = call.result()
    finally:
        gone.cancel()
        with contextlib.suppress(Exception):
            await aredis.zrem(QUEUED_KEY, member)
    observe_inference(metric, result, sent_at)
    if not result.get("ok"):
        raise ApiError(int(result.get("status", 500)), str(result.get("detail")))
    if keys := result.pop(BLOBS, None):
        async with aredis.pipeline(transaction=False) as pipe:
            for key in keys.values():
                pipe.get(key)
                pipe.delete(key)
            values = (await pipe.execute())[::2]
        if any(v is None for v in values):
            raise ApiError(500, "the worker's answer expired before it was read")
        result.update(zip(keys, values, strict=True))
    return Call(result, sent_at)


def _refusal(
    metric: str, verdict: int, queued: int, more: list[Any], settings: Settings
) -> ApiError:
    """The 503 for a request the queue cannot take, with when to retry."""
    REJECTED.labels(metric).inc()
    if verdict == 1:
        why = (
            f"the inference queue is full ({queued} units of work queued, limit "
            f"{settings.max_queued_work}); retry shortly"
        )
        return ApiError(503, why, headers={"Retry-After": str(RETRY_AFTER_S)})
    ahead_s, own_s = float(more[0]), float(more[1])
    why = (
        f"the inference queue cannot serve this request in time: about {ahead_s:.0f}s of "
        f"work is queued ahead of its {own_s:.1f}s, and requests time out after "
        f"{settings.inference_timeout_s:g}s; retry later or send less"
    )
    # when enough of the queue will have drained for this request to fit
    wait = ahead_s + own_s - settings.inference_timeout_s * DEADLINE_SHARE
    retry = min(MAX_RETRY_AFTER_S, max(1, math.ceil(wait)))
    return ApiError(503, why, headers={"Retry-After": str(retry)})


async def _disconnected(request: Request) -> None:
    """Returns when the client disconnects (the request body must have been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
