"""Every error becomes JSON `{"detail": message}` with the right status, never a traceback."""

from __future__ import annotations

import logging
import re
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.results import BrokerUnavailable, ResultTimeout, TaskFailed
from models.registry import RegistryDamaged, RegistryError
from training.presets import PresetError
from worker.jobs import JobNotFound, JobStateError

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error with an HTTP status and a message (and optional per-row problems)."""

    def __init__(
        self,
        status: int,
        detail: str,
        problems: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status, self.detail, self.problems = status, detail, problems
        self.headers = headers


def _json(
    status: int,
    detail: str,
    problems: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"detail": detail}
    if problems:
        body["problems"] = problems
    return JSONResponse(body, status_code=status, headers=headers)


def _loc(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) or "body"


def _errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    """The errors once each (a parameter shared by two dependencies is checked twice)."""
    seen, out = set(), []
    for err in exc.errors():
        key = (tuple(err.get("loc", ())), err.get("msg"))
        if key not in seen:
            seen.add(key)
            out.append(err)
    return out


def validation_message(exc: RequestValidationError) -> str:
    msgs = []
    for err in _errors(exc)[:10]:
        msgs.append(f"{_loc(tuple(err.get('loc', ())))}: {err.get('msg', 'invalid')}")
    return "; ".join(msgs) or "invalid request"


def allowed_methods(request: Request) -> str:
    """Every documented method on this path (Starlette's 405 names only the methods of the
    first route whose path matched)."""
    methods: set[str] = set()
    for template, ops in request.app.openapi()["paths"].items():
        if re.fullmatch(re.sub(r"\{[^/]+?\}", "[^/]+", template), request.url.path):
            methods |= {m.upper() for m in ops}
    return ", ".join(sorted(methods))


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"column": _loc(tuple(e.get("loc", ()))), "message": e.get("msg", "invalid")}
            for e in _errors(exc)[:100]
        ]
        return _json(422, validation_message(exc), problems=problems)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            headers["Allow"] = allowed_methods(request)
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return _json(exc.status, exc.detail, problems=exc.problems, headers=exc.headers)

    @app.exception_handler(PresetError)
    async def _preset(_: Request, exc: PresetError) -> JSONResponse:
        return _json(422, str(exc))

    @app.exception_handler(RegistryDamaged)
    async def _damaged(_: Request, exc: RegistryDamaged) -> JSONResponse:
        log.error("%s", exc)
        return _json(503, str(exc))

    @app.exception_handler(RegistryError)
    async def _registry(_: Request, exc: RegistryError) -> JSONResponse:
        return _json(404, str(exc))

    @app.exception_handler(JobNotFound)
    async def _job_missing(_: Request, exc: JobNotFound) -> JSONResponse:
        return _json(404, str(exc))

    @app.exception_handler(JobStateError)
    async def _job_state(_: Request, exc: JobStateError) -> JSONResponse:
        return _json(409, str(exc))

    @app.exception_handler(BrokerUnavailable)
    async def _broker(_: Request, exc: BrokerUnavailable) -> JSONResponse:
        return _json(503, str(exc), headers={"Retry-After": "5"})

    @app.exception_handler(redis.exceptions.ConnectionError)
    async def _redis_down(_: Request, exc: redis.exceptions.ConnectionError) -> JSONResponse:
        log.error("Redis unreachable: %s", exc)
        return _json(503, "the job store (Redis) is unreachable", headers={"Retry-After": "5"})

    @app.exception_handler(redis.exceptions.TimeoutError)
    async def _redis_slow(_: Request, exc: redis.exceptions.TimeoutError) -> JSONResponse:
        log.error("Redis timed out: %s", exc)
        return _json(504, "the job store (Redis) did not answer in time")

    @app.exception_handler(ResultTimeout)
    async def _timeout(_: Request, exc: ResultTimeout) -> JSONResponse:
        return _json(504, f"inference timed out: {exc}")

    @app.exception_handler(TaskFailed)
    async def _task_failed(_: Request, exc: TaskFailed) -> JSONResponse:
        log.error("%s", exc)
        return _json(500, "the worker failed to process the request")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _json(500, "internal server error")
