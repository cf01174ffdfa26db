"""Send Celery tasks and await their results from async code, without blocking the loop.

Celery's `AsyncResult.get()` blocks, and its Redis result consumer is not safe to share
between threads (celery/celery#4480, #6819), so the API waits differently: one background
connection pattern-subscribes to the result channels that the Redis backend publishes on
(`celery-task-meta-<id>`, payload = the stored result), and each request awaits a future
keyed by its task id. A GET of the result key covers results that arrived before the wait
began or while the subscription was reconnecting.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from typing import Any

import anyio
import redis.asyncio as aioredis
from celery import Celery

log = logging.getLogger(__name__)

PREFIX = "celery-task-meta-"
RECHECK_S = 1.0  # how often a waiter also GETs its key, in case a message was missed


class BrokerUnavailable(RuntimeError):
    """The broker could not be reached to send a task."""


class ResultTimeout(TimeoutError):
    """No worker answered in time."""


class TaskFailed(RuntimeError):
    """The task raised instead of returning a result."""


class ResultWaiter:
    """Awaitable task results over one shared pub/sub connection."""

    def __init__(
        self,
        client: aioredis.Redis,
        celery_app: Celery,
        pubsub_client: aioredis.Redis | None = None,
    ) -> None:
        self.r = client
        self.pubsub_client = pubsub_client or client
        self.celery = celery_app
        self._futures: dict[str, asyncio.Future[bytes]] = {}
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="result-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _listen(self) -> None:
        backoff = 0.1
        while True:
            pubsub = self.pubsub_client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(f"{PREFIX}*")
                self._subscribed.set()
                backoff = 0.1
                async for msg in pubsub.listen():
                    if msg.get("type") != "pmessage":
                        continue
                    channel = msg["channel"]
                    channel = channel.decode() if isinstance(channel, bytes) else channel
                    fut = self._futures.get(channel[len(PREFIX) :])
                    if fut is not None and not fut.done():
                        fut.set_result(msg["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis restarted or unreachable: resubscribe
                self._subscribed.clear()
                log.warning("result subscription lost (%s); retrying", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def call(
        self,
        task_name: str,
        kwargs: dict[str, Any],
        *,
        timeout_s: float,
        queue: str | None = None,
        expires_s: float | None = None,
        task_id: str | None = None,
    ) -> tuple[Any, float]:
        """Send `task_name(**kwargs)` and await its result; returns (result, sent_at)."""
        task_id = task_id or uuid.uuid4().hex
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._futures[task_id] = fut
        try:
            sent_at = time.time()
            await self._send(task_name, task_id, kwargs, queue, expires_s or timeout_s)
            raw = await self._await(task_id, fut, timeout_s)
            return self._decode(task_id, raw), sent_at
        finally:
            self._futures.pop(task_id, None)
            with contextlib.suppress(Exception):
                await self.r.delete(PREFIX + task_id)

    async def _send(
        self,
        task_name: str,
        task_id: str,
        kwargs: dict[str, Any],
        queue: str | None,
        expires_s: float,
    ) -> None:
        def send() -> None:
            self.celery.send_task(
                task_name, kwargs=kwargs, task_id=task_id, queue=queue, expires=expires_s
            )

        try:
            # kombu's publish blocks; its producer pool is safe to use from worker threads
            await anyio.to_thread.run_sync(send)
        except Exception as exc:
            log.error("cannot send %s: %s", task_name, exc)
            raise BrokerUnavailable("the task queue (Redis) is unreachable") from exc

    async def _await(self, task_id: str, fut: asyncio.Future[bytes], timeout_s: float) -> bytes:
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ResultTimeout(f"no worker answered within {timeout_s:g}s")
            try:
                return await asyncio.wait_for(asyncio.shield(fut), min(left, RECHECK_S))
            except TimeoutError:
                raw = await self.r.get(PREFIX + task_id)
                if raw is not None:
                    return raw

    @staticmethod
    def _decode(task_id: str, raw: bytes) -> Any:
        meta = json.loads(raw)
        status = meta.get("status")
        if status == "SUCCESS":
            return meta.get("result")
        result = meta.get("result") or {}
        message = result.get("exc_message") if isinstance(result, dict) else result
        raise TaskFailed(f"task {task_id} {str(status).lower()}: {message}")
