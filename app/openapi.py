"""The OpenAPI document as the server behaves: every status it sends, `{detail}` error bodies
(not FastAPI's `HTTPValidationError`), and the limits set in the settings."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app.limits import RateLimitMiddleware
from app.schemas import ErrorOut
from models.columns import INPUTS, SKY_SIGMA, TRUE_MAG
from models.settings import get_settings
from training.data.catalog import MAG_RANGE, MAX_PSF_FWHM
from training.presets import PRESETS, family

ERRORS = {
    400: "The body could not be decoded.",
    401: "No API key: send `Authorization: Bearer <key>`.",
    403: "Wrong API key.",
    404: "No such job, model, version or sample.",
    406: "None of the accepted response types can be produced.",
    409: "The job is not in a state that allows this (e.g. resuming a running job).",
    413: "The body, or the work it asks for, is too large.",
    415: "Unsupported content type.",
    422: "Invalid input: `detail` says what; `problems` lists each field, row or column.",
    429: "Too many requests or event streams from this client; see `Retry-After`.",
    500: "The worker failed to process the request.",
    503: "Redis or the workers are unavailable; see `Retry-After`.",
    504: "Redis or the inference worker did not answer in time.",
}
# Routes that answer without Redis, and those exempt from the rate limit.
NO_REDIS = {("get", "/healthz"), ("get", "/metrics"), ("get", "/models")}
INFERENCE = {("get", "/generate"), ("post", "/emulate")}
CONFLICTS = {("post", "/train"), ("delete", "/train/{job_id}")}
# What a 202 from POST /train leads to: the job's other operations (stateful testing).
JOB_LINKS = {
    "GetJob": ("get", "/train/{job_id}"),
    "CancelJob": ("delete", "/train/{job_id}"),
    "FollowJob": ("get", "/train/{job_id}/events"),
}
TRAIN_EXAMPLE = {"preset": "balrog", "overrides": {"dry_run": True}}


def statuses(method: str, path: str, op: dict[str, Any]) -> set[int]:
    """The error statuses operation `method path` can answer with."""
    has_body = "requestBody" in op
    codes: set[int] = set()
    if op.get("parameters") or has_body:
        codes.add(422)
    if has_body:
        codes |= {400, 413}
    if op.get("security"):
        codes |= {401, 403}
    if "{" in path or (method, path) in INFERENCE:
        codes.add(404)
    if (method, path) in CONFLICTS:
        codes |= {404, 409}  # resume or cancel an unknown job; or one in the wrong state
    if (method, path) not in NO_REDIS and path != "/readyz":
        codes |= {503, 504}
    if (method, path) in INFERENCE:
        codes |= {500, 503, 504}
    if path == "/emulate":
        codes |= {406, 415}
    if path.endswith("/events") or path not in RateLimitMiddleware.EXEMPT:
        codes.add(429)
    return codes


def build(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, corrected; built once."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        description=app.description,
        routes=app.routes,
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name, sub in ErrorOut.model_json_schema(ref_template="#/components/schemas/{model}")[
        "$defs"
    ].items():
        components[name] = sub
    error = ErrorOut.model_json_schema(ref_template="#/components/schemas/{model}")
    error.pop("$defs", None)
    components["ErrorOut"] = error
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    body = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}
    rate_limited = any(m.cls is RateLimitMiddleware for m in app.user_middleware)
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            responses = op.setdefault("responses", {})
            codes = statuses(method, path, op)
            if not rate_limited and not path.endswith("/events"):
                codes.discard(429)
            for code in sorted(codes):
                entry = responses.setdefault(str(code), {})
                if code == 422 or not entry.get("description"):
                    entry["description"] = ERRORS[code]
                entry["content"] = body
    _limits(schema)
    _links(schema)
    app.openapi_schema = schema
    return schema


def _limits(schema: dict[str, Any]) -> None:
    """Bounds from the settings, and the presets the server knows."""
    settings = get_settings()
    emulators = sorted(p for p in PRESETS if family(p) == "emulator")
    for param in schema["paths"].get("/generate", {}).get("get", {}).get("parameters", []):
        if param["name"] == "n":
            param["schema"]["maximum"] = settings.max_generate_n
        if param["name"] == "model":  # an emulator is served by POST /emulate
            param["schema"]["not"] = {"enum": emulators}
    train = schema["components"]["schemas"].get("TrainRequest", {}).get("properties", {})
    if "preset" in train:
        train["preset"]["enum"] = sorted(PRESETS)
    op = schema["paths"].get("/emulate", {}).get("post", {})
    for param in op.get("parameters", []):
        if param["name"] == "samples":
            _set_max(param["schema"], settings.max_emulate_samples)
    body = op.get("requestBody", {}).get("content", {}).get("application/json", {})
    props = body.get("schema", {}).get("properties", {})
    if "rows" in props:
        props["rows"]["maxItems"] = settings.max_emulate_rows
        props["rows"]["items"] = {
            "type": "object",
            "required": list(INPUTS),
            "properties": {name: _column(name) for name in INPUTS},
            "additionalProperties": True,
        }
        props["samples"]["maximum"] = settings.max_emulate_samples


def _set_max(schema: dict[str, Any], maximum: int) -> None:
    for sub in schema.get("anyOf", [schema]):
        if sub.get("type") == "integer":
            sub["maximum"] = maximum


def _column(name: str) -> dict[str, Any]:
    """What the server accepts in an input column (see `training.data.catalog`)."""
    if name in TRUE_MAG:
        return {"type": "number", "minimum": MAG_RANGE[0], "maximum": MAG_RANGE[1]}
    if name in SKY_SIGMA:
        return {"type": "number", "exclusiveMinimum": 0}
    return {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_PSF_FWHM}


def _links(schema: dict[str, Any]) -> None:
    paths = schema["paths"]
    accepted = paths["/train"]["post"]["responses"]["202"]
    accepted["links"] = {
        name: {
            "operationId": paths[path][method]["operationId"],
            "parameters": {"job_id": "$response.body#/job_id"},
        }
        for name, (method, path) in JOB_LINKS.items()
    }
    schema["components"]["schemas"]["TrainRequest"]["examples"] = [TRAIN_EXAMPLE]


def install(app: FastAPI) -> None:
    app.openapi = lambda: build(app)  # type: ignore[method-assign]
