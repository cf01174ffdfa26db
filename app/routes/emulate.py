"""`POST /emulate`: rows of true magnitudes and observing conditions → observed magnitudes."""

from __future__ import annotations

import asyncio
import secrets
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from app import tables
from app.deps import RegistryDep, SettingsDep, WaiterDep
from app.errors import ApiError
from app.inference import emulate_cost, infer, resolve
from app.routes import emulate_jobs
from app.schemas import (
    DEFAULT_EMULATOR_MODEL,
    MAX_SEED,
    NAME_PATTERN,
    EmulateOptions,
    EmulateRequest,
)
from models import columns
from models.kinds import EMULATOR
from models.settings import Settings
from worker.payload import from_bytes, to_bytes
from worker.policy import EMULATE_TASK

router = APIRouter(tags=["inference"])
router.include_router(emulate_jobs.router)  # catalogs too large for one request

_TABLE = {"schema": {"type": "string", "format": "binary"}}
JOBS_HINT = "; send larger catalogs to POST /emulate/jobs (any size, in the background)"


async def read_body(request: Request) -> bytes:
    """The request body, refused with 413 as soon as it exceeds `tables.MAX_BODY_BYTES`."""
    limit = tables.MAX_BODY_BYTES
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body is larger than {limit // 2**20} MiB{JOBS_HINT}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body is larger than {limit // 2**20} MiB{JOBS_HINT}")
        chunks.append(chunk)
    return b"".join(chunks)


def parse(
    body: bytes, fmt: str, query: EmulateOptions, settings: Settings
) -> tuple[tables.Catalog, EmulateOptions, np.ndarray]:
    """The body's catalog, the options (query parameters first, then the JSON body's) and
    the validated (rows, 9) inputs."""
    max_rows = settings.max_emulate_rows
    if fmt == "json":
        doc = tables.parse_json(body)
        rows = doc.pop("rows", None)
        try:
            given = EmulateOptions.model_validate(doc)
        except ValidationError as exc:
            raise RequestValidationError(exc.errors(include_url=False)) from exc
        merged = {**given.model_dump(exclude_none=True), **query.model_dump(exclude_none=True)}
        cat, opts = tables.from_rows(rows, max_rows), EmulateOptions(**merged)
    else:
        cat, opts = tables.read_table(body, fmt, max_rows), query
    n = opts.samples or 1
    if n > settings.max_emulate_samples:
        raise ApiError(422, f"samples must be at most {settings.max_emulate_samples}, got {n}")
    return cat, opts, cat.inputs()


@router.post(
    "/emulate",
    response_class=Response,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                tables.JSON: {"schema": EmulateRequest.model_json_schema()},
                tables.CSV: _TABLE,
                tables.PARQUET: _TABLE,
                tables.FITS: _TABLE,
            },
        }
    },
    responses={
        200: {
            "content": {m: {} for m in tables.MEDIA_TYPES},
            "description": "The rows as sent (names kept), with mag_r/i/z and detected.",
        },
        413: {"description": "Too many rows or too large a body."},
        422: {"description": "Invalid or malformed rows; `problems` names each row and column."},
        503: {"description": "The inference queue is full; see Retry-After."},
    },
    summary="Emulate observed magnitudes and detection for a catalog",
)
async def emulate(
    request: Request,
    settings: SettingsDep,
    registry: RegistryDep,
    waiter: WaiterDep,
    samples: Annotated[int | None, Query(ge=1, description="Realizations per row")] = None,
    seed: Annotated[int | None, Query(ge=0, le=MAX_SEED)] = None,
    model: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
    version: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
) -> Response:
    try:
        media = tables.negotiate(request.headers.get("accept"))
        fmt = tables.body_format(request.headers.get("content-type"))
        body = await read_body(request)
        query = EmulateOptions(samples=samples, seed=seed, model=model, version=version)
        cat, opts, x = await asyncio.to_thread(parse, body, fmt, query, settings)
        n = opts.samples or 1
        mv = await asyncio.to_thread(
            resolve, registry, opts.model or DEFAULT_EMULATOR_MODEL, opts.version, EMULATOR
        )
        # a drawn seed is at most 2**53 - 1: a JavaScript number holds it exactly
        seed = secrets.randbits(53) if opts.seed is None else opts.seed
        call = await infer(
            request,
            settings,
            waiter,
            EMULATE_TASK,
            {
                "model": mv.name,
                "version": opts.version,
                "active": mv.version,
                "samples": n,
                "seed": seed,
            },
            cost=emulate_cost(cat.rows * n),
            metric="emulate",
            blobs={"x": to_bytes(x, "<f8")},
        )
        result = call.result
        meta = {"model": result["model"], "version": result["version"], "seed": seed, "samples": n}
        content = await asyncio.to_thread(_respond, cat, result, n, media, meta)
    except tables.TableError as exc:
        message = exc.message
        if exc.status == 413 and "/emulate/jobs" not in message:
            message += JOBS_HINT
        raise ApiError(exc.status, message, problems=exc.problems) from exc
    headers = {
        "X-Model-Version": f"{result['model']}@{result['version']}",
        "X-Emulate-Seed": str(seed),
        "X-Batch-Size": str(result.get("batch_size", 1)),
    }
    return Response(content, media_type=media, headers=headers)


def _respond(
    cat: tables.Catalog, result: dict[str, Any], samples: int, media: str, meta: dict[str, Any]
) -> bytes:
    magerr = result.get("magerr")  # absent for models that do not emulate errors
    emulated = columns.emulated(
        from_bytes(result["mags"], "<f8", 3),
        from_bytes(result["detected"], "u1").astype(bool),
        None if magerr is None else from_bytes(magerr, "<f8", 3),
        from_bytes(result["out_of_domain"], "u1").astype(bool),
    )
    if media == tables.JSON and (rows := tables.emulated_records(cat, emulated, samples)):
        return tables.encode_json(rows, meta)
    return tables.encode(tables.emulated_columns(cat, emulated, samples), media, meta)
