"""Training jobs: queue, list, inspect, follow (server-sent events), cancel, resume."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import redis
import redis.asyncio as aioredis
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent

from app.deps import ApiKey, Authenticated, CeleryDep, JobsDep, SettingsDep
from app.errors import ApiError
from app.limits import StreamSlots, client_key
from app.routes.datasets import HOW_TO_MAKE
from app.routes.datasets import describe as describe_dataset
from app.schemas import (
    JOB_ID_PATTERN,
    MAX_SEED,
    ErrorOut,
    JobList,
    JobOut,
    TrainAccepted,
    TrainRequest,
)
from models import datasets as model_datasets
from models.registry import DEFAULT_MODEL, FamilyMismatch, Registry, RegistryError
from models.results import results_table
from models.settings import Settings
from training.presets import TEACHER_REF, build_config, config_to_dict, default_data, family
from training.progress import RECORD_FIELDS
from worker.celery_app import send_training
from worker.jobs import (
    DEVICE_RE,
    FAILED,
    RUNNING,
    STALE_AFTER_S,
    STATES,
    TERMINAL,
    JobStore,
    check_data_path,
    events_key,
    new_job_id,
    record_key,
)

router = APIRouter(prefix="/train", tags=["training"])

JobId = Annotated[str, PathParam(pattern=JOB_ID_PATTERN, description="A training job id.")]
SAMPLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.png$")


def resolve_data(
    preset: str,
    data: str | None,
    dry_run: bool,
    settings: Settings,
    jobs: JobStore | None = None,
) -> str | None:
    """The dataset to train on: a dataset name (`/datasets`), else a path checked to exist
    inside the data root (no escaping it), a folder for an image preset or a catalog for the
    emulator. The preset's default is its dataset name (`balrog`), else the file of that
    name the CLI builds (`balrog.parquet`)."""
    if data is None and dry_run:
        return None
    fam = family(preset)
    default = default_data(preset)
    names = [data] if data is not None else [Path(default).stem, default]
    root = settings.data_dir
    for name in dict.fromkeys(names):
        path = model_datasets.training_path(root, name)
        if path is not None:
            kind = "images" if fam == "image" else "catalog"
            have = (model_datasets.describe(root, name) or {}).get("kind")
            if have != kind:
                raise ApiError(
                    422, f"dataset {name!r} holds {have}; preset {preset!r} needs {kind}"
                )
            return str(path)
        try:
            building = describe_dataset(jobs, settings, name) if jobs is not None else None
        except redis.exceptions.RedisError:
            building = None  # no word on builds: the message below still says what to do
        if building is not None and building["state"] != "ready":
            done = f", {building['progress']:.0%} done" if building.get("progress") else ""
            raise ApiError(
                422,
                f"dataset {name!r} is not ready: its build is {building['state']}{done} "
                f"(GET /datasets/{name})",
            )
    want = "dir" if fam == "image" else "file"
    try:
        return str(check_data_path(names[-1], root, want))
    except ValueError as exc:
        raise ApiError(422, f"{exc}; {HOW_TO_MAKE}") from None


def check_runnable(config: Any, jobs: JobStore) -> None:
    """Refuse a job that could only fail: a seed torch cannot take, a device that no
    training worker has (as they report it; with no report yet the worker checks)."""
    if not 0 <= config.seed <= MAX_SEED:
        raise ApiError(422, f"overrides.seed must be between 0 and {MAX_SEED}")
    m = DEVICE_RE.match(str(config.device))
    if not m or (m.group(2) and m.group(1) != "cuda"):
        raise ApiError(422, "overrides.device must be auto, cpu, cuda or cuda:N")
    if m.group(1) == "cuda":
        reports = jobs.devices()
        need = int(m.group(3) or 0) + 1
        if reports and max(reports.values()) < need:
            have = max(reports.values())
            raise ApiError(
                422,
                f"no training worker has device {config.device!r}: "
                f"the most CUDA devices a worker reports is {have}",
            )


HIDDEN_ERROR = "hidden from anonymous callers: send the API key to see it"


def public_fields(fields: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """What anonymous callers see of a job or event: no server paths, no error texts."""
    out = dict(fields)
    if out.get("data"):
        path, root = Path(str(out["data"])), settings.data_dir.resolve()
        out["data"] = str(path.relative_to(root)) if path.is_relative_to(root) else path.name
    if out.get("error"):
        out["error"] = HIDDEN_ERROR
    return out


def job_out(rec: dict[str, Any], settings: Settings, full: bool = True) -> JobOut:
    """The API view of a record; `full` for callers with the API key."""
    if not full:
        rec = public_fields(rec, settings)
    job_id = rec["job_id"]
    names = set(rec.get("samples") or [])
    sample_dir = settings.runs_dir / job_id / "samples"
    if sample_dir.is_dir():
        names.update(p.name for p in sample_dir.glob("*.png"))
    beat = rec.get("heartbeat_at") or rec.get("started_at")
    stalled = rec.get("state") == RUNNING and (beat is None or time.time() - beat > STALE_AFTER_S)
    fields = {k: v for k, v in rec.items() if k in JobOut.model_fields and v is not None}
    fields.update(
        results=results_table(rec.get("metrics")),
        samples=[f"/train/{job_id}/samples/{n}" for n in sorted(names)],
        stalled=stalled,
        events=f"/train/{job_id}/events",
    )
    return JobOut(**fields)


def _enqueue(celery: Any, jobs: JobStore, job_id: str) -> None:
    try:
        send_training(job_id, celery)
    except Exception as exc:
        jobs.update(job_id, state=FAILED, error=f"could not be queued: {exc}")
        raise ApiError(
            503, "the task queue (Redis) is unreachable; the job was not queued"
        ) from exc


def check_teacher(teacher: str, settings: Settings) -> None:
    """A `teacher` override names a registered flow, `NAME[@VERSION]`, or gets a 422."""
    if not TEACHER_REF.match(teacher):
        raise ApiError(422, f"teacher must be a registered model, NAME[@VERSION]: {teacher!r}")
    try:
        kind = Registry(settings.registry_dir).resolve(teacher).kind
    except RegistryError as exc:
        raise ApiError(422, f"teacher {teacher!r}: {exc}") from None
    if kind != "cflow":
        raise ApiError(422, f"teacher {teacher!r} is a {kind!r} model; only a flow (cflow) distils")


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
        if body.model is not None and body.model != rec.get("target", body.model):
            raise ApiError(422, "model cannot change when resuming; omit it")
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
        teacher = getattr(config, "teacher", None)
        if teacher is not None:
            check_teacher(teacher, settings)
        check_runnable(config, jobs)
        data = resolve_data(body.preset, body.data, config.dry_run, settings, jobs)
        target = body.model or DEFAULT_MODEL[family(body.preset)]
        try:
            Registry(settings.registry_dir).check_family(target, family(body.preset))
        except FamilyMismatch as exc:
            raise ApiError(422, str(exc)) from None
        job_id = new_job_id()
        jobs.create(
            job_id,
            {
                "preset": body.preset,
                "data": data,
                "target": target,
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
    full: Authenticated,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    state: Annotated[str | None, Query(pattern="^(" + "|".join(STATES) + ")$")] = None,
) -> JobList:
    recs = jobs.list(limit=limit, state=state)
    return JobList(jobs=[job_out(r, settings, full) for r in recs])


@router.get("/{job_id}", response_model=JobOut, summary="One job's state and progress")
def get_job(job_id: JobId, jobs: JobsDep, settings: SettingsDep, full: Authenticated) -> JobOut:
    return job_out(jobs.get(job_id), settings, full)


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


async def _stream_slot(request: Request) -> AsyncIterator[tuple[str, str]]:
    """A slot among the capped concurrent streams, held until the stream ends; the stream
    refreshes it (`StreamSlots.refresh`) as it goes."""
    slots: StreamSlots = request.app.state.streams
    who, token = client_key(request), new_job_id()
    refused = await slots.acquire(who, token)
    if refused:
        raise ApiError(429, refused, headers={"Retry-After": "10"})
    try:
        yield who, token
    finally:
        with contextlib.suppress(redis.exceptions.RedisError):
            await slots.release(who, token)


def _at_most(limit: int) -> str:
    """A regular expression of the decimal numbers from 0 to `limit` (leading zeros allowed
    up to its width): shorter numbers, or a digit below the limit's after an equal prefix."""
    digits = str(limit)
    below = [
        f"{digits[:i]}[0-{int(d) - 1}][0-9]{{{len(digits) - i - 1}}}"
        for i, d in enumerate(digits)
        if d != "0"
    ]
    return f"(?:[0-9]{{1,{len(digits) - 1}}}|{'|'.join([*below, digits])})"


# A Redis stream id: `<ms>-<seq>`, each an unsigned 64-bit number (the sequence optional)
UINT64 = _at_most(2**64 - 1)
STREAM_ID = rf"^{UINT64}(?:-{UINT64})?$"
NOT_AN_ID = "is not an event id: `<ms>-<seq>`, each a number from 0 to 18446744073709551615"
STREAM_RETRY_S = 60.0  # a stream whose Redis stays unreachable this long ends


def _event_cursor(
    request: Request,
    last_event_id: Annotated[
        str | None,
        Query(
            max_length=41,
            description="Resume after this event id (`<ms>-<seq>`); also `Last-Event-ID`.",
            # checked below with a message that says what an id is; the schema states it
            json_schema_extra={"pattern": STREAM_ID},
        ),
    ] = None,
) -> str | None:
    """Where to resume: the query's id, else the `Last-Event-ID` header; checked before the
    stream starts, so a bad one is a 422."""
    if last_event_id is not None:
        if not re.fullmatch(STREAM_ID, last_event_id):
            raise ApiError(422, f"last_event_id {last_event_id!r} {NOT_AN_ID}")
        return last_event_id
    header_id = request.headers.get("last-event-id")
    if header_id is not None and not re.fullmatch(STREAM_ID, header_id):
        raise ApiError(422, f"Last-Event-ID {header_id[:64]!r} {NOT_AN_ID}")
    return header_id


@router.get(
    "/{job_id}/events",
    response_class=EventSourceResponse,
    summary="Live progress as server-sent events; the stream ends when the job ends",
    responses={
        429: {"model": ErrorOut, "description": "Too many concurrent event streams."},
    },
)
async def job_events(
    job_id: JobId,
    request: Request,
    jobs: JobsDep,
    _exists: Annotated[dict[str, Any], Depends(_existing_job)],  # 404 before streaming
    slot: Annotated[tuple[str, str], Depends(_stream_slot)],
    cursor: Annotated[str | None, Depends(_event_cursor)],
    settings: SettingsDep,
    full: Authenticated,
) -> AsyncIterator[ServerSentEvent]:
    def shown(data: dict[str, Any]) -> dict[str, Any]:
        return data if full else public_fields(data, settings)

    # its own connection pool, capped with the streams: streams never starve /readyz etc.
    client: aioredis.Redis = request.app.state.stream_redis
    key = events_key(job_id)
    if cursor is None:
        # events after this point are streamed; the snapshot below covers what came before
        newest = await client.xrevrange(key, count=1)
        cursor = newest[0][0].decode() if newest else "0-0"
        rec = await asyncio.to_thread(jobs.get, job_id)
        yield ServerSentEvent(event="snapshot", data=shown(_snapshot(rec)), id=cursor)
        if rec["state"] in TERMINAL:
            return
    failing_since: float | None = None
    while not await request.is_disconnected():
        try:
            await request.app.state.streams.refresh(*slot)
            batch = await client.xread({key: cursor}, count=100, block=5000)
            # a finished job with nothing past the cursor (even a cursor in the future) ends
            if not batch and await _ended(client, job_id, key, cursor):
                return
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            # Redis restarting: keep the stream open a while, the client keeps its cursor
            failing_since = failing_since or time.monotonic()
            if time.monotonic() - failing_since > STREAM_RETRY_S:
                return
            await asyncio.sleep(1.0)
            continue
        failing_since = None
        for _stream, entries in batch or []:
            for eid, fields in entries:
                cursor = eid.decode()
                payload = json.loads(fields[b"data"])
                yield ServerSentEvent(
                    event=payload.get("event", "progress"), data=shown(payload), id=cursor
                )
                ended = payload.get("event") == "state" and payload.get("state") in TERMINAL
                # the end, unless this is history and the job was resumed after it
                if ended and not await client.xread({key: cursor}, count=1):
                    return


async def _ended(client: aioredis.Redis, job_id: str, key: str, cursor: str) -> bool:
    raw = await client.hget(record_key(job_id), "state")
    return raw is None or (
        json.loads(raw) in TERMINAL and not await client.xread({key: cursor}, count=1)
    )


def _snapshot(rec: dict[str, Any]) -> dict[str, Any]:
    keys = ("job_id", "state", *RECORD_FIELDS, "metrics", "error", "model")
    return {k: rec.get(k) for k in keys}
