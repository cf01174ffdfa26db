"""`POST /emulate`: rows of true magnitudes and observing conditions → observed magnitudes."""

from __future__ import annotations

import asyncio
import io
import json
import secrets
from typing import Annotated, Any

import pandas as pd
from fastapi import APIRouter, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from app.deps import RegistryDep, SettingsDep, WaiterDep
from app.errors import ApiError
from app.metrics import observe_inference
from app.schemas import MAX_SEED, NAME_PATTERN, EmulateRequest
from models.kinds import EMULATOR
from training.data.catalog import (
    CatalogError,
    read_catalog_bytes,
    rows_to_frame,
    validate_inputs,
    with_emulated,
)
from training.presets import PRESETS, family
from worker.celery_app import EMULATE_TASK, INFERENCE_QUEUE
from worker.payload import pack, unpack

router = APIRouter(tags=["inference"])

MAX_BODY_BYTES = 64 * 1024 * 1024
JSON, CSV, PARQUET = "application/json", "text/csv", "application/vnd.apache.parquet"
BODY_TYPES = {
    JSON: "json",
    "text/csv": "csv",
    "application/csv": "csv",
    PARQUET: "parquet",
    "application/x-parquet": "parquet",
    "application/parquet": "parquet",
}
RESPONSE_TYPES = {
    JSON: JSON,
    "application/*": JSON,
    "text/csv": CSV,
    "text/*": CSV,
    PARQUET: PARQUET,
    "application/x-parquet": PARQUET,
    "application/parquet": PARQUET,
}


def negotiate(accept: str | None) -> str:
    """The response type for an Accept header (JSON by default), or 406."""
    if not accept:
        return JSON
    choices = []
    for i, part in enumerate(accept.split(",")):
        media, *params = [p.strip() for p in part.split(";")]
        q = 1.0
        for p in params:
            if p.startswith("q="):
                try:
                    q = float(p[2:])
                except ValueError:
                    q = 0.0
        choices.append((-q, i, media.lower()))
    for negq, _, media in sorted(choices):
        if negq == 0:
            break
        if media == "*/*":
            return JSON
        if media in RESPONSE_TYPES:
            return RESPONSE_TYPES[media]
    raise ApiError(406, "acceptable response types: application/json, text/csv, " + PARQUET)


async def read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError(413, f"request body is larger than {MAX_BODY_BYTES // 2**20} MiB")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(413, f"request body is larger than {MAX_BODY_BYTES // 2**20} MiB")
        chunks.append(chunk)
    return b"".join(chunks)


def _body_schema() -> dict[str, Any]:
    table = {"schema": {"type": "string", "format": "binary"}}
    return {
        "requestBody": {
            "required": True,
            "content": {
                JSON: {"schema": EmulateRequest.model_json_schema()},
                CSV: table,
                PARQUET: table,
            },
        }
    }


@router.post(
    "/emulate",
    response_class=Response,
    openapi_extra=_body_schema(),
    responses={
        200: {"content": {JSON: {}, CSV: {}, PARQUET: {}}, "description": "Emulated rows."},
        413: {"description": "Too many rows or too large a body."},
        422: {"description": "Invalid rows; `problems` names each row and column."},
    },
    summary="Emulate observed magnitudes and detection for a catalog",
)
async def emulate(
    request: Request,
    settings: SettingsDep,
    registry: RegistryDep,
    waiter: WaiterDep,
    samples: Annotated[int | None, Query(ge=1, description="For CSV/Parquet bodies")] = None,
    seed: Annotated[int | None, Query(ge=0, le=MAX_SEED)] = None,
    model: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
    version: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
) -> Response:
    out_type = negotiate(request.headers.get("accept"))
    ctype = (request.headers.get("content-type") or JSON).split(";")[0].strip().lower()
    kind = BODY_TYPES.get(ctype)
    if kind is None:
        raise ApiError(415, f"unsupported content type {ctype!r}; send JSON, CSV or Parquet")
    body = await read_body(request)
    if kind == "json":
        try:
            req = EmulateRequest.model_validate_json(body)
        except ValidationError as exc:
            raise RequestValidationError(exc.errors(include_url=False)) from exc
        _check_rows(len(req.rows), settings.max_emulate_rows)
        samples, seed = req.samples, req.seed if req.seed is not None else seed
        model, version = req.model, req.version or version
        df = await asyncio.to_thread(rows_to_frame, req.rows)
    else:
        if not body:
            raise ApiError(422, f"the {kind.upper()} body is empty")
        df = await asyncio.to_thread(read_catalog_bytes, body, kind)
    _check_rows(len(df), settings.max_emulate_rows)
    samples = samples or 1
    if samples > settings.max_emulate_samples:
        raise ApiError(
            422, f"samples must be at most {settings.max_emulate_samples}, got {samples}"
        )
    if len(df) * samples > settings.max_emulate_rows * settings.max_emulate_samples:
        raise ApiError(413, "rows × samples is too large")
    model = model or "balrog"
    if model in PRESETS and family(model) != EMULATOR:
        raise ApiError(422, f"model {model!r} is an image generator; use GET /generate")
    try:
        x = await asyncio.to_thread(validate_inputs, df)
    except CatalogError as exc:
        raise ApiError(422, str(exc), problems=exc.problems[:1000]) from exc
    mv = await asyncio.to_thread(registry.get, model, version)  # 404 if unknown
    seed = secrets.randbits(63) if seed is None else seed

    result, sent_at = await waiter.call(
        EMULATE_TASK,
        {
            "model": model,
            "version": version,
            "active": mv.version,
            "x": pack(x, "<f8"),
            "samples": samples,
            "seed": seed,
        },
        timeout_s=settings.inference_timeout_s,
        queue=INFERENCE_QUEUE,
    )
    observe_inference("emulate", result, sent_at)
    if not result.get("ok"):
        raise ApiError(int(result.get("status", 500)), str(result.get("detail")))
    out = await asyncio.to_thread(_output_frame, df, result, samples)
    headers = {
        "X-Model-Version": f"{result['model']}@{result['version']}",
        "X-Emulate-Seed": str(seed),
        "X-Batch-Size": str(result.get("batch_size", 1)),
    }
    if out_type == CSV:
        return Response(out.to_csv(index=False), media_type=CSV, headers=headers)
    if out_type == PARQUET:
        buf = io.BytesIO()
        out.to_parquet(buf, index=False)
        return Response(buf.getvalue(), media_type=PARQUET, headers=headers)
    meta = {"model": result["model"], "version": result["version"], "seed": seed}
    meta["samples"] = samples
    text = json.dumps(meta)[:-1] + ', "rows": ' + out.to_json(orient="records") + "}"
    return Response(text, media_type=JSON, headers=headers)


def _check_rows(n: int, limit: int) -> None:
    if n > limit:
        raise ApiError(413, f"{n} rows is more than the {limit} allowed per request")


def _output_frame(df: pd.DataFrame, result: dict[str, Any], samples: int) -> pd.DataFrame:
    """The input rows (each repeated `samples` times) with mag_r/i/z and detected."""
    mags = unpack(result["mags"], "<f8", 3)
    det = unpack(result["detected"], "u1").astype(bool)
    return with_emulated(df, mags, det, samples)
