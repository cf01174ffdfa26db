"""`/datasets`: upload, build (fanned out over the data workers), list, describe, read a
multi-part catalog part by part, delete."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

from celery.exceptions import TimeoutError as CeleryTimeout
from fastapi import APIRouter, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from app import tables
from app.deps import ApiKey, Authenticated, CeleryDep, JobsDep, SettingsDep
from app.errors import ApiError
from app.schemas import JOB_ID_PATTERN, MAX_SEED
from models import datasets
from models.settings import Settings
from worker.celery_app import send_run
from worker.jobs import (
    DATASET,
    DATASET_JOBS_KEY,
    EMULATE,
    QUEUED,
    RUNNING,
    TERMINAL,
    TRAIN,
    JobNotFound,
    JobStore,
)
from worker.policy import DATA_QUEUE, DATASET_INGEST_TASK, FANOUT_MESSAGES

router = APIRouter(prefix="/datasets", tags=["datasets"])

MAX_UPLOAD_BYTES = 16 * 2**30
INGEST_TIMEOUT_S = 900.0
# Every process of a build draws the whole build's inputs (`balrog.sample_inputs`, about
# 220 bytes a row, measured at 2 million rows) before simulating its chunks: this bounds a
# build's size.
MAX_ROWS = 10_000_000
CHUNK_ROWS = {"galsim": 500, "analytic": 50_000}  # a few seconds of one core per chunk
ARCHIVE_TYPES = {
    "application/zip": "zip",
    "application/x-zip-compressed": "zip",
    "application/x-tar": "tar",
    "application/gzip": "tar",
    "application/x-gzip": "tar",
    "application/x-gtar": "tar",
}
RESERVED = {"jobs"}
CLAIM_HOLD_S = 30.0  # how long a name stays held by a request that died while claiming it
Name = Annotated[str, PathParam(pattern=datasets.NAME_PATTERN, description="A dataset name.")]
Entry = Annotated[
    str, PathParam(pattern=datasets.ENTRY_RE.pattern, description="A dataset (or file) name.")
]
HOW_TO_MAKE = (
    "upload one with PUT /datasets/{name} (CSV, Parquet, FITS, or a zip/tar of images), or "
    'build one with POST /datasets {"name": "balrog", "simulator": "galsim", '
    '"rows": 100000, "seed": 0} (or `cosmogan data balrog` on the server)'
)


class BuildRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=datasets.NAME_PATTERN, description="The new dataset's name.")
    simulator: Literal["galsim", "analytic"] = Field(description="mini-Balrog or analytic.")
    rows: int = Field(ge=1, le=MAX_ROWS, description="Galaxies in the catalog.")
    seed: int = Field(default=0, ge=0, le=MAX_SEED, description="Fixes objects and conditions.")
    draw_seed: int | None = Field(
        default=None, ge=0, le=MAX_SEED, description="Fixes the simulator's draws (default: seed)."
    )
    chunk_rows: int | None = Field(
        default=None, ge=10, le=1_000_000, description="Rows per chunk (default by simulator)."
    )


class BuildAccepted(BaseModel):
    job_id: str
    name: str
    state: str
    url: str
    job: str


class PartOut(BaseModel):
    file: str = Field(description="The part's file name, in row order.")
    rows: int
    sha256: str
    url: str = Field(description="Where to download it (GET, Parquet).")


class DatasetOut(BaseModel):
    """A dataset: a ready one's description, or a build's progress (`state` is its job's)."""

    model_config = ConfigDict(extra="allow")

    name: str
    state: str = Field(description='"ready" once usable; a build\'s job state before.')
    rows: int | None = Field(description="Rows (catalog) or images; a build's target rows.")
    kind: str = "catalog"
    columns: list[str] | None = None
    size: int | None = Field(default=None, description="Bytes on disk.")
    sha256: str | None = None
    created: float | None = None
    source: str | None = Field(default=None, description="upload, galsim, analytic or file.")
    job_id: str | None = None
    rows_done: int | None = None
    rows_total: int | None = None
    progress: float | None = None
    eta_s: float | None = None
    stalled: bool | None = None
    error: str | None = None
    parts: list[PartOut] | None = Field(
        default=None,
        description="A multi-part catalog's parts, in row order, with `?parts=true`.",
    )


class DatasetList(BaseModel):
    datasets: list[DatasetOut]
    data_root: str | None = Field(
        default=None, description="Where the datasets are on the server (API key holders)."
    )


HIDDEN_ERROR = "hidden from anonymous callers: send the API key to see it"


def _shown(desc: dict[str, Any], full: bool) -> DatasetOut:
    """What a caller sees: anonymous callers get no error texts (they may hold paths)."""
    desc = {k: v for k, v in desc.items() if k != "parts"}
    if desc.get("error") and not full:
        desc["error"] = HIDDEN_ERROR
    return DatasetOut(**desc)


# --------------------------------------------------------------------------------------------
# views
def _build_view(rec: dict[str, Any]) -> dict[str, Any]:
    from worker.jobs import is_stalled

    if rec.get("kind") == EMULATE:
        return _emulation_view(rec)
    done, total = rec.get("rows_done") or 0, rec.get("rows_total") or rec.get("rows")
    eta = None
    started = rec.get("started_at")
    if rec["state"] == RUNNING and started and done:
        rate = done / max(1e-3, time.time() - started)
        eta = round((total - done) / rate, 1)
    return {
        "name": rec["name"],
        "state": rec["state"],
        "kind": "catalog",
        "rows": rec.get("rows"),
        "source": rec.get("simulator"),
        "created": rec.get("created_at"),
        "job_id": rec["job_id"],
        "rows_done": done,
        "rows_total": total,
        "progress": round(done / total, 4) if total else None,
        "eta_s": eta,
        "stalled": is_stalled(rec),
        "error": rec.get("error"),
        "simulator": rec.get("simulator"),
        "seed": rec.get("seed"),
        "draw_seed": rec.get("draw_seed"),
    }


def _emulation_view(rec: dict[str, Any]) -> dict[str, Any]:
    """A dataset being made by an emulation job: its rows are the job's rows × samples."""
    from worker.jobs import is_stalled

    done, total, samples = rec.get("rows_done") or 0, rec.get("rows_total"), rec["samples"]
    return {
        "name": rec["result_dataset"],
        "state": rec["state"],
        "kind": "catalog",
        "rows": total * samples if total else None,
        "source": "emulation",
        "created": rec.get("created_at"),
        "job_id": rec["job_id"],
        "rows_done": done * samples,
        "rows_total": total * samples if total else None,
        "progress": round(done / total, 4) if total else None,
        "stalled": is_stalled(rec),
        "error": rec.get("error"),
        "model": rec.get("model"),
        "seed": rec.get("seed"),
        "samples": samples,
    }


def _job(jobs: JobStore, job_id: str) -> dict[str, Any] | None:
    try:
        rec = jobs.get(job_id, None)
    except JobNotFound:
        return None
    return rec if rec.get("kind") in (DATASET, EMULATE) else None


def _build_job(jobs: JobStore, name: str) -> dict[str, Any] | None:
    """The job that makes (or made) dataset `name`: a build or an emulation job."""
    raw = jobs.r.hget(DATASET_JOBS_KEY, name)
    return None if raw is None else _job(jobs, raw.decode())


def _check_not_ready(root: Path, name: str) -> None:
    """ApiError unless `name` may name a dataset and none by that name is ready."""
    if name in RESERVED:
        raise ApiError(422, f"{name!r} is a reserved name")
    if datasets.describe(root, name) is not None:
        raise ApiError(409, f"dataset {name!r} already exists; delete it first")


def check_free(jobs: JobStore, settings: Settings, name: str) -> None:
    """ApiError unless `name` can become a new dataset: 409 if it exists or is being made."""
    _check_not_ready(settings.data_dir, name)
    rec = _build_job(jobs, name)
    if rec is not None and rec["state"] in (QUEUED, RUNNING):
        raise ApiError(409, f"dataset {name!r} is being made by job {rec['job_id']}")


def claim(jobs: JobStore, name: str, job_id: str) -> None:
    """Record `job_id` as the job making dataset `name` (listed with its progress)."""
    jobs.r.hset(DATASET_JOBS_KEY, name, job_id)


@contextmanager
def holding(jobs: JobStore, name: str, ttl_s: float = CLAIM_HOLD_S) -> Iterator[None]:
    """Run the body while this request alone holds dataset name `name`, so that two requests
    for one name cannot both find it free and both claim it: the other gets a 409."""
    token = jobs.hold_name(name, ttl_s)
    if token is None:
        raise ApiError(409, f"dataset {name!r} is being made by another request")
    try:
        yield
    finally:
        jobs.release_name(name, token)


def describe(jobs: JobStore, settings: Settings, name: str) -> dict[str, Any] | None:
    """A dataset's view: ready on disk, else its build's progress; None if neither."""
    desc = datasets.describe(settings.data_dir, name)
    if desc is not None:
        desc.pop("parts", None)  # per-part detail stays in the manifest
        return desc
    rec = _build_job(jobs, name) if datasets.NAME_RE.match(name) else None
    return None if rec is None else _build_view(rec)


def _missing(name: str) -> ApiError:
    return ApiError(404, f"no dataset {name!r}: {HOW_TO_MAKE}")


@router.get("", response_model=DatasetList, summary="Every dataset: ready ones and builds")
def list_datasets(jobs: JobsDep, settings: SettingsDep, full: Authenticated) -> DatasetList:
    out = {d["name"]: d for d in datasets.iter_ready(settings.data_dir)}
    for name, raw in jobs.r.hgetall(DATASET_JOBS_KEY).items():
        name = name.decode()
        if name in out:
            continue
        rec = _job(jobs, raw.decode())
        if rec is not None:
            out[name] = _build_view(rec)
    items = [_shown(d, full) for _, d in sorted(out.items())]
    root = str(settings.data_dir.resolve()) if full else None
    return DatasetList(datasets=items, data_root=root)


@router.get("/jobs/{job_id}", response_model=DatasetOut, summary="A build job's progress")
def get_build(
    job_id: Annotated[str, PathParam(pattern=JOB_ID_PATTERN)], jobs: JobsDep, full: Authenticated
) -> DatasetOut:
    return _shown(_build_view(jobs.get(job_id, DATASET)), full)


@router.delete(
    "/jobs/{job_id}",
    status_code=202,
    dependencies=[ApiKey],
    response_model=DatasetOut,
    summary="Cancel a build: no chunk starts after this; finished parts are kept for a resume",
)
def cancel_build(
    job_id: Annotated[str, PathParam(pattern=JOB_ID_PATTERN)], jobs: JobsDep
) -> DatasetOut:
    return DatasetOut(**_build_view(jobs.request_cancel(job_id, DATASET)))


@router.get("/{name}", response_model=DatasetOut, summary="One dataset")
def get_dataset(
    name: Entry,
    jobs: JobsDep,
    settings: SettingsDep,
    full: Authenticated,
    parts: Annotated[
        bool, Query(description="List a ready multi-part catalog's parts, with their URLs.")
    ] = False,
) -> DatasetOut:
    desc = describe(jobs, settings, name)
    if desc is None:
        raise _missing(name)
    out = _shown(desc, full)
    listed = datasets.parts(settings.data_dir, name) if parts else None
    if listed is not None:
        url = f"/datasets/{name}/parts"
        out.parts = [
            PartOut(file=p["file"], rows=p["rows"], sha256=p["sha256"], url=f"{url}/{p['file']}")
            for p in listed
        ]
    return out


@router.get(
    "/{name}/parts/{file}",
    response_class=FileResponse,
    responses={
        200: {"content": {tables.PARQUET: {}}},
        404: {"description": "No such dataset, or no such part (the parts are named)."},
    },
    summary="One part (Parquet) of a ready multi-part catalog: built, uploaded or emulated",
)
def get_part(name: Entry, file: str, settings: SettingsDep) -> FileResponse:
    if datasets.describe(settings.data_dir, name) is None:
        raise _missing(name)
    try:
        path = datasets.part_path(settings.data_dir, name, file)
    except datasets.DatasetError as exc:
        raise ApiError(404, str(exc)) from None
    return FileResponse(path, media_type=tables.PARQUET, filename=f"{name}-{file}")


# --------------------------------------------------------------------------------------------
# build
@router.post(
    "",
    status_code=202,
    dependencies=[ApiKey],
    response_model=BuildAccepted,
    summary="Build a catalog with the simulator, fanned out over the data workers (or resume)",
)
def build_dataset(
    body: BuildRequest, response: Response, jobs: JobsDep, celery: CeleryDep, settings: SettingsDep
) -> BuildAccepted:
    name = body.name
    with holding(jobs, name):  # the checks below and the claim, one request at a time
        job_id = _start_build(body, jobs, celery, settings)
    response.headers["Location"] = f"/datasets/{name}"
    state = jobs.field(job_id, "state")
    return BuildAccepted(
        job_id=job_id,
        name=name,
        state=state,
        url=f"/datasets/{name}",
        job=f"/datasets/jobs/{job_id}",
    )


def _start_build(body: BuildRequest, jobs: JobStore, celery: Any, settings: Settings) -> str:
    """The job that builds `body.name`: a new one, or the one under way or resumed."""
    name, root = body.name, settings.data_dir
    _check_not_ready(root, name)  # a build of `name` under way is resumed or refused below
    draw_seed = body.seed if body.draw_seed is None else body.draw_seed
    chunk_rows = body.chunk_rows or CHUNK_ROWS[body.simulator]
    params = {
        "name": name,
        "simulator": body.simulator,
        "rows": body.rows,
        "seed": body.seed,
        "draw_seed": draw_seed,
        "chunk_rows": chunk_rows,
    }
    rec = _build_job(jobs, name)
    same = rec is not None and all(rec.get(k) == v for k, v in params.items())
    if rec is not None and rec["state"] in (QUEUED, RUNNING):
        if not same:
            raise ApiError(409, f"dataset {name!r} is being built by job {rec['job_id']}")
        job_id = rec["job_id"]  # the same build again: nothing new to do
    elif rec is not None and same and rec["state"] in TERMINAL:
        job_id = rec["job_id"]  # resume: finished parts are kept and skipped
        jobs.requeue_for_resume(job_id)
        _send(celery, job_id, rec["chunks_total"])
    else:
        shutil.rmtree(datasets.building_dir(root, name), ignore_errors=True)  # other params
        job_id = uuid.uuid4().hex
        chunks = -(-body.rows // chunk_rows)
        jobs.create(
            job_id,
            {
                **params,
                "kind": DATASET,
                "rows_total": body.rows,
                "rows_done": 0,
                "chunks_total": chunks,
                "chunks_done": 0,
            },
        )
        claim(jobs, name, job_id)
        _send(celery, job_id, chunks)
    return job_id


def _send(celery: Any, job_id: str, chunks: int) -> None:
    try:
        send_run(DATASET, job_id, celery, n=min(chunks, FANOUT_MESSAGES))
    except Exception as exc:  # the reaper sends it once the broker is back
        raise ApiError(503, "the task queue (Redis) is unreachable; retry the request") from exc


# --------------------------------------------------------------------------------------------
# upload
def _upload_format(content_type: str | None) -> str:
    base = (content_type or "").split(";")[0].strip().lower()
    if base in ARCHIVE_TYPES:
        return ARCHIVE_TYPES[base]
    try:
        fmt = tables.body_format(content_type)
    except tables.TableError as exc:
        raise ApiError(
            415,
            f"{exc.message}; an image set is a zip or tar archive (application/zip, "
            "application/x-tar, application/gzip)",
        ) from exc
    if fmt == "json":
        raise ApiError(415, "send the catalog as CSV, Parquet or FITS, or images as zip/tar")
    return fmt


@router.put(
    "/{name}",
    status_code=201,
    dependencies=[ApiKey],
    response_model=DatasetOut,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                m: {"schema": {"type": "string", "format": "binary", "minLength": 1}}
                for m in (
                    tables.CSV,
                    tables.PARQUET,
                    tables.FITS,
                    "application/zip",
                    "application/x-tar",
                )
            },
        }
    },
    responses={
        409: {"description": "The name is taken."},
        413: {"description": "Body too large."},
        415: {"description": "Not a catalog or an image archive."},
        422: {"description": "A bad row or column (named), or an unreadable file."},
    },
    summary="Upload a catalog (CSV, Parquet, FITS) or an image archive (zip/tar) as a dataset",
)
async def upload_dataset(
    name: Name, request: Request, jobs: JobsDep, celery: CeleryDep, settings: SettingsDep
) -> DatasetOut:
    fmt = _upload_format(request.headers.get("content-type"))
    root = settings.data_dir
    if name in RESERVED:
        raise ApiError(422, f"{name!r} is a reserved name")
    if await asyncio.to_thread(describe, jobs, settings, name) is not None:
        raise ApiError(409, f"dataset {name!r} already exists; delete it first")
    token = uuid.uuid4().hex
    folder = datasets.incoming_dir(root, token)
    try:
        sha, size = await _save(request, folder / f"upload.{fmt}")
        res = await asyncio.to_thread(
            _ingest, jobs, settings, celery, name, [name, token, fmt, sha, size]
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if not res.get("ok"):
        raise ApiError(int(res.get("status", 422)), str(res.get("detail")))
    desc = dict(res["dataset"])
    desc.pop("parts", None)
    return DatasetOut(**desc)


def _ingest(
    jobs: JobStore, settings: Settings, celery: Any, name: str, args: list[Any]
) -> dict[str, Any]:
    """A data worker's check and publication of a saved upload, the name held meanwhile (an
    emulation job or a build cannot claim it between the check and the publication)."""
    with holding(jobs, name, INGEST_TIMEOUT_S + CLAIM_HOLD_S):
        if describe(jobs, settings, name) is not None:
            raise ApiError(409, f"dataset {name!r} already exists; delete it first")
        task = celery.send_task(DATASET_INGEST_TASK, args=args, queue=DATA_QUEUE)
        try:
            return task.get(timeout=INGEST_TIMEOUT_S, interval=0.2)
        except CeleryTimeout:
            raise ApiError(
                503, "no data worker checked the upload in time (is a `data` worker running?)"
            ) from None
        finally:
            task.forget()


async def _save(request: Request, path: Path) -> tuple[str, int]:
    """Stream the body to `path`, refusing it past the limit; (sha256, size)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h, size = hashlib.sha256(), 0
    with path.open("wb") as f:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_UPLOAD_BYTES:
                raise ApiError(413, f"the upload is larger than {MAX_UPLOAD_BYTES >> 30} GiB")
            h.update(chunk)
            await asyncio.to_thread(f.write, chunk)
    if size == 0:
        raise ApiError(422, "the body is empty")
    return h.hexdigest(), size


# --------------------------------------------------------------------------------------------
# delete
def users(jobs: JobStore, path: Path, name: str) -> list[str]:
    """Queued or running jobs that use the dataset at `path` (training) or build it."""
    out = []
    build = _build_job(jobs, name) if datasets.NAME_RE.match(name) else None
    if build is not None and build["state"] in (QUEUED, RUNNING):
        out.append(build["job_id"])
    for rec in jobs.list(limit=500, kind=TRAIN):
        data = rec.get("data")
        if rec.get("state") in (QUEUED, RUNNING) and data:
            p = Path(str(data))
            if p == path or p.is_relative_to(path):
                out.append(rec["job_id"])
    return out


@router.delete(
    "/{name}",
    status_code=204,
    dependencies=[ApiKey],
    responses={409: {"description": "A queued or running job uses it."}},
    summary="Delete a dataset (refused while a queued or running job uses it)",
)
def delete_dataset(name: Entry, jobs: JobsDep, settings: SettingsDep) -> Response:
    if name.startswith(".") or name == "buzzard_truth.parquet":
        raise _missing(name)
    root = settings.data_dir
    path = datasets.dataset_dir(root, name).resolve()
    busy = users(jobs, path, name)
    if busy:
        raise ApiError(409, f"dataset {name!r} is used by queued or running job(s) {busy}")
    found = datasets.remove(root, name)
    if datasets.NAME_RE.match(name):
        found = bool(jobs.r.hdel(DATASET_JOBS_KEY, name)) or found
    if not found:
        raise _missing(name)
    return Response(status_code=204)
