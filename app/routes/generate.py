"""`GET /generate`: a PNG grid from an image model; cacheable by ETag."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from app.deps import RegistryDep, SettingsDep, WaiterDep
from app.errors import ApiError
from app.inference import infer, resolve
from app.schemas import DEFAULT_IMAGE_MODEL, MAX_QUERY_N, MAX_SEED, NAME_PATTERN
from models.image_format import BYTES_VERSION
from models.kinds import IMAGE
from worker.policy import GENERATE_TASK

router = APIRouter(tags=["inference"])

IMMUTABLE = "public, max-age=31536000, immutable"  # an explicit version never changes
REVALIDATE = "no-cache"  # the active version may move: revalidate with If-None-Match


def make_etag(
    model: str,
    version: str,
    created: float,
    seed: int,
    n: int,
    nrow: int | None,
    fmt: str = BYTES_VERSION,
) -> str:
    """The ETag of a grid; `fmt` names how pixels become bytes, so a new encoder never
    matches a tag (or a cached response) made by an old one."""
    key = f"{model}\0{version}\0{created!r}\0{seed}\0{n}\0{nrow}\0{fmt}"
    return '"' + hashlib.sha256(key.encode()).hexdigest()[:32] + '"'


def etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or any(t.removeprefix("W/") == etag for t in tags)


@router.get(
    "/generate",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}, "description": "A grid of generated images."},
        304: {"description": "Not modified (If-None-Match matched the ETag)."},
        404: {"description": "Unknown model or version."},
        503: {
            "description": "The queue is full or cannot serve it in time, or the model "
            "cannot be loaded; see Retry-After and `detail`."
        },
    },
    summary="Generate a PNG grid; the same seed and version give the same bytes",
)
async def generate(
    request: Request,
    settings: SettingsDep,
    registry: RegistryDep,
    waiter: WaiterDep,
    seed: Annotated[int, Query(ge=0, le=MAX_SEED)] = 0,
    n: Annotated[
        int, Query(ge=1, le=MAX_QUERY_N, description="Images (≤ COSMOGAN_MAX_GENERATE_N)")
    ] = 16,
    model: Annotated[str, Query(pattern=NAME_PATTERN)] = DEFAULT_IMAGE_MODEL,
    version: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
    nrow: Annotated[int | None, Query(ge=1, le=MAX_QUERY_N, description="Images per row")] = None,
) -> Response:
    if n > settings.max_generate_n:
        raise ApiError(422, f"n must be at most {settings.max_generate_n}, got {n}")
    mv = await asyncio.to_thread(resolve, registry, model, version, IMAGE)
    cache_control = IMMUTABLE if version else REVALIDATE
    etag = make_etag(model, mv.version, float(mv.meta.get("created") or 0.0), seed, n, nrow)
    if etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers={"ETag": etag, "Cache-Control": cache_control})

    # Without a version the worker serves its active one (the previous version keeps
    # serving if a new one fails to load); the ETag then names what was really served.
    call = await infer(
        request,
        settings,
        waiter,
        GENERATE_TASK,
        {"model": model, "version": version, "active": mv.version, "seed": seed, "n": n,
         "nrow": nrow},
        cost=n,
        metric="generate",
    )  # fmt: skip
    result = call.result
    served = result["version"]
    fmt = str(result.get("format", BYTES_VERSION))
    created = float(result.get("created") or 0.0)
    return Response(
        result["png"],
        media_type="image/png",
        headers={
            "ETag": make_etag(model, served, created, seed, n, nrow, fmt),
            "Cache-Control": cache_control,
            "X-Model-Version": f"{model}@{served}",
            "X-Batch-Size": str(result.get("batch_size", 1)),
        },
    )
