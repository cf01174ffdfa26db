"""`POST /emulate`: rows of true magnitudes and observing conditions → observed magnitudes."""

from __future__ import annotations

import asyncio
import secrets
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.background import BackgroundTask

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
from models.memory import release_soon
from models.settings import Settings
from worker.payload import from_bytes, to_bytes
from worker.policy import EMULATE_TASK

router = APIRouter(tags=["inference"])
router.include_router(emulate_jobs.router)  # catalogs too large for one request

_TABLE = {"schema": {"type": "string", "format": "binary"}}
JOBS_HINT = "; send larger catalogs to POST /emulate/jobs (any size, in the background)"
TRIM_CELLS = 20_000  # responses this large leave megabytes of freed objects behind


async def read_body(request: Request, limit: int = tables.MAX_BODY_BYTES) -> bytes:
    """The request body, refused with 413 as soon as it exceeds `limit` bytes."""
    declared = request.headers.get("content-length")
    too_big = f"request body is larger than {limit / 2**20:g} MiB{JOBS_HINT}"
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, too_big)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, too_big)
        chunks.append(chunk)
    return b"".join(chunks)


def body_limit(fmt: str, settings: Settings) -> int:
    """Largest body of format `fmt`: a JSON body is parsed whole into Python objects (about
    100 bytes each), so it gets a tighter bound than the columnar formats."""
    return settings.max_emulate_json_bytes if fmt == "json" else tables.MAX_BODY_BYTES


def parse(
    body: bytes, fmt: str, media: str, query: EmulateOptions, settings: Settings
) -> tuple[tables.Catalog, EmulateOptions, np.ndarray]:
    """The body's catalog, the options (query parameters first, then the JSON body's) and
    the validated (rows, 9) inputs. The size of the work (rows, columns, cells) and whether
    the response can be written as `media` are checked before the body is parsed where its
    format allows (CSV header, Parquet footer, FITS header), and always before inference."""
    if fmt == "json":
        doc = tables.parse_json(body)
        rows = doc.pop("rows", None)
        try:
            given = EmulateOptions.model_validate(doc)
        except ValidationError as exc:
            raise RequestValidationError(exc.errors(include_url=False)) from exc
        merged = {**given.model_dump(exclude_none=True), **query.model_dump(exclude_none=True)}
        opts = EmulateOptions(**merged)
    else:
        rows, opts = None, query
    n = opts.samples or 1
    if n > settings.max_emulate_samples:
        raise ApiError(422, f"samples must be at most {settings.max_emulate_samples}, got {n}")
    bounds = tables.Bounds(
        settings.max_emulate_rows,
        settings.max_emulate_columns,
        settings.max_emulate_cells,
        samples=n,
    )
    cat = tables.from_rows(rows, bounds) if fmt == "json" else tables.read_table(body, fmt, bounds)
    tables.check_media(media, list(cat.columns), n)
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
        406: {
            "description": "The response cannot be written in the accepted type "
            "(FITS: at most 999 columns)."
        },
        413: {"description": "Too many rows, columns or cells, or too large a body."},
        422: {"description": "Invalid or malformed rows; `problems` names each row and column."},
        503: {
            "description": "The queue is full or cannot serve it in time, or the model "
            "cannot be loaded; see Retry-After and `detail`."
        },
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
        body = await read_body(request, body_limit(fmt, settings))
        query = EmulateOptions(samples=samples, seed=seed, model=model, version=version)
        cat, opts, x = await asyncio.to_thread(parse, body, fmt, media, query, settings)
        del body  # the catalog holds what is needed; the bytes need not live to the end
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
        if await request.is_disconnected():  # nobody to answer: skip the encoding
            raise ApiError(499, "the client closed the connection")
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
    # after the answer is sent: hand the memory its parse and encoding freed back to the OS
    cells = cat.rows * n * len(cat.columns)
    trim = BackgroundTask(release_soon) if cells > TRIM_CELLS else None
    return Response(content, media_type=media, headers=headers, background=trim)


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
