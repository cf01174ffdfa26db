"""`/emulate/jobs`: catalogs of any size emulated in the background, fanned out over every
inference worker; the result is a file, or a Parquet dataset (`dataset=NAME`, or by itself
past `emulate_max_file_rows` output rows)."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, RedirectResponse
from pydantic import BaseModel, Field

from app import tables
from app.deps import ApiKey, CeleryDep, JobsDep, RegistryDep, SettingsDep
from app.errors import ApiError
from app.inference import resolve
from app.routes import datasets as dataset_routes
from app.schemas import DEFAULT_EMULATOR_MODEL, JOB_ID_PATTERN, MAX_SEED, NAME_PATTERN
from models import datasets
from models.atomic import atomic_write
from models.kinds import EMULATOR
from models.settings import Settings
from worker import emulate_jobs
from worker.jobs import EMULATE as EMULATE_KIND
from worker.jobs import JobStore
from worker.policy import EMULATE_FILE_TASK, INFERENCE_QUEUE

router = APIRouter(tags=["inference"])

MAX_JOB_BODY_BYTES = 4 * 2**30
JOB_ID_PATH = PathParam(pattern=JOB_ID_PATTERN)
BINARY = {"type": "string", "format": "binary"}
MEDIA = {"csv": tables.CSV, "parquet": tables.PARQUET, "fits": tables.FITS}


class EmulateJobOut(BaseModel):
    job_id: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    model: str
    version: str | None = None
    samples: int
    seed: int
    input_format: str
    output_format: str
    rows_done: int = Field(description="Input rows emulated so far.")
    rows_total: int | None = Field(default=None, description="Input rows, once known.")
    progress: float | None = Field(default=None, description="rows_done / rows_total.")
    chunks_total: int | None = Field(default=None, description="Chunks the job is cut into.")
    chunks_done: int = Field(default=0, description="Chunks finished, by any worker.")
    stalled: bool = Field(default=False, description="No heartbeat from any of its workers.")
    error: str | None = None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    url: str
    result: str | None = Field(
        default=None,
        description="Once succeeded: the output file, or the dataset (`/datasets/NAME`) when "
        "the result is one.",
    )
    result_dataset: str | None = Field(
        default=None,
        description="The dataset the result is (asked for, or too large for one file), once "
        "known; its parts are listed by GET /datasets/NAME?parts=true.",
    )


def _out(rec: dict[str, Any]) -> EmulateJobOut:
    url = f"/emulate/jobs/{rec['job_id']}"
    fields = {k: v for k, v in rec.items() if k in EmulateJobOut.model_fields and v is not None}
    fields.pop("result", None)
    result = None
    if rec["state"] == "succeeded":
        name = rec.get("result_dataset")
        result = f"/datasets/{name}" if name else f"{url}/result"
    return EmulateJobOut(**fields, url=url, result=result)


@router.post(
    "/emulate/jobs",
    status_code=202,
    # a background job and gigabytes of disk: for key holders, as training is
    dependencies=[ApiKey],
    response_model=EmulateJobOut,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                m: {"schema": {"type": "string", "format": "binary", "minLength": 1}}
                for m in MEDIA.values()
            },
        }
    },
    responses={
        409: {"description": "The dataset named by `dataset` exists or is being made."},
        413: {"description": "Body too large."},
        415: {"description": "Not a table."},
    },
    summary="Emulate a catalog of any size in the background (CSV, Parquet or FITS body)",
)
async def create_job(
    request: Request,
    response: Response,
    settings: SettingsDep,
    registry: RegistryDep,
    jobs: JobsDep,
    celery: CeleryDep,
    samples: Annotated[int, Query(ge=1, description="Realizations per row")] = 1,
    seed: Annotated[int | None, Query(ge=0, le=MAX_SEED)] = None,
    model: Annotated[str, Query(pattern=NAME_PATTERN)] = DEFAULT_EMULATOR_MODEL,
    version: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
    output: Annotated[
        Literal["csv", "parquet", "fits"] | None, Query(description="Default: as the input")
    ] = None,
    dataset: Annotated[
        str | None,
        Query(
            pattern=datasets.NAME_PATTERN,
            description="Publish the result as this new Parquet dataset (one file per chunk) "
            "instead of one file.",
        ),
    ] = None,
) -> EmulateJobOut:
    try:
        fmt = tables.body_format(request.headers.get("content-type"))
    except tables.TableError as exc:
        raise ApiError(exc.status, exc.message) from exc
    if fmt == "json":
        raise ApiError(415, "send the catalog as CSV, Parquet or FITS (JSON rows: POST /emulate)")
    if samples > settings.max_emulate_samples:
        raise ApiError(
            422, f"samples must be at most {settings.max_emulate_samples}, got {samples}"
        )
    if dataset is not None:
        if output not in (None, "parquet"):
            raise ApiError(
                422, f"a dataset result is Parquet: drop output={output} or ask output=parquet"
            )
        output = "parquet"
        # refused before the upload; checked again, with the name held, before it is claimed
        await asyncio.to_thread(dataset_routes.check_free, jobs, settings, dataset)
    mv = await asyncio.to_thread(resolve, registry, model, version, EMULATOR)
    job_id = uuid.uuid4().hex
    home = settings.home
    await asyncio.to_thread(emulate_jobs.prune, home)  # results past their records' lifetime
    path = emulate_jobs.input_path(home, job_id, fmt)
    await _save_body(request, path)
    fields = {
        "job_id": job_id,
        "model": mv.name,
        "version": version,
        "samples": samples,
        # a drawn seed is at most 2**53 - 1: a JavaScript number holds it exactly
        "seed": secrets.randbits(53) if seed is None else seed,
        "input_format": fmt,
        "output_format": output or fmt,
    }
    if dataset is not None:
        fields["result_dataset"] = dataset
    try:
        await asyncio.to_thread(_create, jobs, settings, job_id, fields)
    except ApiError:  # the name was taken meanwhile: the saved upload goes
        shutil.rmtree(emulate_jobs.job_dir(home, job_id), ignore_errors=True)
        raise
    await asyncio.to_thread(
        celery.send_task,
        EMULATE_FILE_TASK,
        args=[job_id],
        queue=INFERENCE_QUEUE,
        task_id=f"{job_id}-{uuid.uuid4().hex[:12]}",  # the reaper finds the job's messages
    )
    response.headers["Location"] = f"/emulate/jobs/{job_id}"
    return _out(await asyncio.to_thread(emulate_jobs.read, jobs, job_id))


def _create(jobs: JobStore, settings: Settings, job_id: str, fields: dict[str, Any]) -> None:
    """The job's record; with a dataset result, the name checked and claimed (listed, and
    refused to other requests, while it is made) by this request alone."""
    name = fields.get("result_dataset")
    if name is None:
        emulate_jobs.create(jobs, job_id, fields)
        return
    with dataset_routes.holding(jobs, name):
        dataset_routes.check_free(jobs, settings, name)
        emulate_jobs.create(jobs, job_id, fields)
        dataset_routes.claim(jobs, name, job_id)


async def _save_body(request: Request, path: os.PathLike) -> None:
    """Stream the body to `path` (written whole or not at all), refusing it past the limit."""
    size = 0
    with atomic_write(path) as f:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_JOB_BODY_BYTES:
                raise ApiError(413, f"the catalog is larger than {MAX_JOB_BODY_BYTES >> 30} GiB")
            await asyncio.to_thread(f.write, chunk)
        if size == 0:
            raise ApiError(422, "the body is empty")


async def _record(jobs: Any, job_id: str) -> dict[str, Any]:
    return await asyncio.to_thread(emulate_jobs.read, jobs, job_id)  # 404: JobNotFound


@router.get("/emulate/jobs/{job_id}", response_model=EmulateJobOut, summary="An emulate job")
async def get_job(job_id: Annotated[str, JOB_ID_PATH], jobs: JobsDep) -> EmulateJobOut:
    return _out(await _record(jobs, job_id))


@router.delete(
    "/emulate/jobs/{job_id}",
    status_code=202,
    dependencies=[ApiKey],
    response_model=EmulateJobOut,
    summary="Cancel an emulate job: no chunk of it starts after this",
)
async def cancel_job(job_id: Annotated[str, JOB_ID_PATH], jobs: JobsDep) -> EmulateJobOut:
    await asyncio.to_thread(jobs.request_cancel, job_id, EMULATE_KIND)
    return _out(await _record(jobs, job_id))


@router.get(
    "/emulate/jobs/{job_id}/result",
    response_class=FileResponse,
    responses={
        200: {"content": {m: {} for m in MEDIA.values()}},
        303: {"description": "The result is a dataset: its description, listing its parts."},
        409: {"description": "Not done."},
    },
    summary="The emulated catalog of a finished job",
)
async def get_result(
    job_id: Annotated[str, JOB_ID_PATH], jobs: JobsDep, settings: SettingsDep
) -> Response:
    rec = await _record(jobs, job_id)
    if rec["state"] != "succeeded":
        detail = f": {rec['error']}" if rec.get("error") else ""
        raise ApiError(409, f"job {job_id} is {rec['state']}{detail}")
    if rec.get("result_dataset"):
        return RedirectResponse(f"/datasets/{rec['result_dataset']}?parts=true", 303)
    fmt = rec["output_format"]
    path = emulate_jobs.output_path(settings.home, job_id, fmt)
    if not path.is_file():
        raise ApiError(410, f"the result of job {job_id} is no longer stored")
    return FileResponse(path, media_type=MEDIA[fmt], filename=f"emulated-{job_id}{path.suffix}")
