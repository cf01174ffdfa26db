"""Training jobs: queue, list, inspect, follow (server-sent events), cancel, resume."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import redis.asyncio as aioredis
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent

from app.deps import ApiKey, CeleryDep, JobsDep, SettingsDep
from app.errors import ApiError
from app.schemas import JOB_ID_PATTERN, JobList, JobOut, TrainAccepted, TrainRequest
from models.settings import Settings
from training.presets import build_config, config_to_dict, default_data
from training.progress import RECORD_FIELDS
from worker.celery_app import TRAIN_TASK, TRAINING_QUEUE
from worker.jobs import (
    FAILED,
    RUNNING,
    STATES,
    TERMINAL,
    JobStore,
    events_key,
    new_job_id,
)

router = APIRouter(prefix="/train", tags=["training"])

JobId = Annotated[str, PathParam(pattern=JOB_ID_PATTERN, description="A training job id.")]
SAMPLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.png$")
STALE_AFTER_S = 90.0  # a running job without a heartbeat for this long is reported stalled


def resolve_data(preset: str, data: str | None, dry_run: bool, settings: Settings) -> str | None:
    """The dataset path, checked to exist inside the data root (no escaping it)."""
    if data is None and dry_run:
        return None
    root = settings.data_dir.resolve()
    raw = Path(data) if data is not None else Path(default_data(preset))
    path = (raw if raw.is_absolute() else root / raw).resolve()
    if not path.is_relative_to(root):
        raise ApiError(422, f"data {data!r} is outside the data root {root}")
    if not path.exists():
        hint = "" if data is not None else " (build it with `cosmogan data` or pass 'data')"
        raise ApiError(422, f"dataset not found: {path}{hint}")
    return str(path)


def job_out(rec: dict[str, Any], settings: Settings) -> JobOut:
    job_id = rec["job_id"]
    names = set(rec.get("samples") or [])
    sample_dir = settings.runs_dir / job_id / "samples"
    if sample_dir.is_dir():
        names.update(p.name for p in sample_dir.glob("*.png"))
    stalled = (
        rec.get("state") == RUNNING
        and rec.get("heartbeat_at") is not None
        and time.time() - rec["heartbeat_at"] > STALE_AFTER_S
    )
    fields = {k: v for k, v in rec.items() if k in JobOut.model_fields and v is not None}
    fields.update(
        samples=[f"/train/{job_id}/samples/{n}" for n in sorted(names)],
        stalled=stalled,
        events=f"/train/{job_id}/events",
    )
    return JobOut(**fields)


def _enqueue(celery: Any, jobs: JobStore, job_id: str) -> None:
    attempt = f"{job_id}-{int(time.time() * 1000)}"
    try:
        celery.send_task(TRAIN_TASK, args=[job_id], task_id=attempt, queue=TRAINING_QUEUE)
    except Exception as exc:
        jobs.update(job_id, state=FAILED, error=f"could not be queued: {exc}")
        raise ApiError(
            503, "the task queue (Redis) is unreachable; the job was not queued"
        ) from exc


@router.post(
    "",
    status_code=202,
    dependencies=[ApiKey],
    response_model=TrainAccepted,
    summary="Queue a training job (or resume a cancelled/failed one)",
)
def create_job(
    body: TrainRequest, response: Response, jobs: JobsDep, celery: CeleryDep, settings: SettingsDep
) -> TrainAccepted:
    if body.resume is not None:
        rec = jobs.get(body.resume)
        if rec["preset"] != body.preset:
            raise ApiError(
                422, f"job {body.resume} trained preset {rec['preset']!r}, not {body.preset!r}"
            )
        if body.overrides and body.overrides != rec.get("overrides"):
            raise ApiError(422, "overrides cannot change when resuming; omit them")
        if body.data is not None and resolve_data(
            body.preset, body.data, False, settings
        ) != rec.get("data"):
            raise ApiError(422, "data cannot change when resuming; omit it")
        job_id = body.resume
        jobs.requeue_for_resume(job_id, activate=body.activate or bool(rec.get("activate")))
    else:
        config = build_config(body.preset, body.overrides)
        data = resolve_data(body.preset, body.data, config.dry_run, settings)
        job_id = new_job_id()
        jobs.create(
            job_id,
            {
                "preset": body.preset,
                "data": data,
                "overrides": body.overrides,
                "config": config_to_dict(config),
                "activate": body.activate,
                "epochs": config.epochs,
            },
        )
    _enqueue(celery, jobs, job_id)
    url = f"/train/{job_id}"
    response.headers["Location"] = url
    return TrainAccepted(job_id=job_id, state=jobs.field(job_id, "state"), url=url)


@router.get("", response_model=JobList, summary="Recent training jobs, newest first")
def list_jobs(
    jobs: JobsDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    state: Annotated[str | None, Query(pattern="^(" + "|".join(STATES) + ")$")] = None,
) -> JobList:
    return JobList(jobs=[job_out(r, settings) for r in jobs.list(limit=limit, state=state)])


@router.get("/{job_id}", response_model=JobOut, summary="One job's state and progress")
def get_job(job_id: JobId, jobs: JobsDep, settings: SettingsDep) -> JobOut:
    return job_out(jobs.get(job_id), settings)


@router.delete(
    "/{job_id}",
    status_code=202,
    dependencies=[ApiKey],
    response_model=JobOut,
    summary="Cancel a job cooperatively (its checkpoint is kept; resume it with POST /train)",
)
def cancel_job(job_id: JobId, jobs: JobsDep, settings: SettingsDep) -> JobOut:
    return job_out(jobs.request_cancel(job_id), settings)


@router.get("/{job_id}/samples/{name}", summary="A sample grid written during training")
def get_sample(
    job_id: JobId,
    name: Annotated[str, PathParam(max_length=132)],
    jobs: JobsDep,
    settings: SettingsDep,
) -> FileResponse:
    jobs.get(job_id)  # 404 for an unknown job
    if not SAMPLE_NAME.match(name):
        raise ApiError(404, f"no sample {name!r} for job {job_id}")
    path = settings.runs_dir / job_id / "samples" / name
    if not path.is_file():
        raise ApiError(404, f"no sample {name!r} for job {job_id}")
    return FileResponse(path, media_type="image/png")


async def _existing_job(job_id: JobId, jobs: JobsDep) -> dict[str, Any]:
    return await asyncio.to_thread(jobs.get, job_id)


@router.get(
    "/{job_id}/events",
    response_class=EventSourceResponse,
    summary="Live progress as server-sent events; the stream ends when the job ends",
)
async def job_events(
    job_id: JobId,
    request: Request,
    jobs: JobsDep,
    _exists: Annotated[dict[str, Any], Depends(_existing_job)],  # 404 before streaming
    last_event_id: Annotated[str | None, Query(max_length=64)] = None,
) -> AsyncIterator[ServerSentEvent]:
    client: aioredis.Redis = request.app.state.aredis
    key = events_key(job_id)
    header_id = request.headers.get("last-event-id")
    cursor = last_event_id or header_id
    if cursor is None:
        # events after this point are streamed; the snapshot below covers what came before
        newest = await client.xrevrange(key, count=1)
        cursor = newest[0][0].decode() if newest else "0-0"
        rec = await asyncio.to_thread(jobs.get, job_id)
        yield ServerSentEvent(event="snapshot", data=_snapshot(rec), id=cursor)
        if rec["state"] in TERMINAL:
            return
    while True:
        if await request.is_disconnected():
            return
        batch = await client.xread({key: cursor}, count=100, block=5000)
        for _stream, entries in batch or []:
            for eid, fields in entries:
                cursor = eid.decode()
                payload = json.loads(fields[b"data"])
                yield ServerSentEvent(
                    event=payload.get("event", "progress"), data=payload, id=cursor
                )
                ended = payload.get("event") == "state" and payload.get("state") in TERMINAL
                # the end, unless this is history and the job was resumed after it
                if ended and not await client.xread({key: cursor}, count=1):
                    return


def _snapshot(rec: dict[str, Any]) -> dict[str, Any]:
    keys = ("job_id", "state", *RECORD_FIELDS, "metrics", "error", "model")
    return {k: rec.get(k) for k in keys}
