"""The OpenAPI document as the server behaves: a description with a working example on every
route, every status it sends with `{detail}` error bodies (not FastAPI's
`HTTPValidationError`), and the limits this server is configured with."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app.limits import RateLimitMiddleware
from app.schemas import ErrorOut
from models.columns import INPUTS, MAG_RANGE, PSF_FWHM_RANGE, SKY_SIGMA, SKY_SIGMA_RANGE, TRUE_MAG
from models.settings import get_settings
from training.presets import PRESETS, family

BASE = "http://127.0.0.1:8000"
AUTH = '-H "Authorization: Bearer $COSMOGAN_API_KEY"'
JOB = "$JOB"  # a job id, as printed by POST /train
ROW = (
    '{"true_mag_r": 22.1, "true_mag_i": 21.6, "true_mag_z": 21.3, '
    '"sky_sigma_r": 4.1, "sky_sigma_i": 7.1, "sky_sigma_z": 13.5, '
    '"psf_fwhm_r": 0.95, "psf_fwhm_i": 0.88, "psf_fwhm_z": 0.84}'
)


def example(cmd: str) -> str:
    """A description's closing example: one shell command."""
    return f"\n\nExample:\n\n```bash\n{cmd}\n```"


def authed_json_example(method: str, path: str, body: str) -> str:
    """`example` for a route that needs the API key and takes a JSON body."""
    json_body = f"-H 'content-type: application/json' -d '{body}'"
    return example(f"curl -X {method} {BASE}{path} {AUTH} \\\n  {json_body}")


# Used for routes that carry no description of their own (a route's docstring wins).
DESCRIPTIONS: dict[tuple[str, str], str] = {
    ("post", "/train"): "Validates the preset and its overrides, checks the dataset exists "
    "under `COSMOGAN_HOME/data`, and queues the job; `202` with `Location: /train/{job_id}`. "
    'With `"resume": job_id` a cancelled or failed job continues from its last checkpoint. '
    "`dry_run` trains two steps on generated data (no dataset needed)."
    + example(
        f"curl -X POST {BASE}/train {AUTH} -H 'content-type: application/json' \\\n"
        '  -d \'{"preset": "balrog", "overrides": {"dry_run": true}}\''
    ),
    ("get", "/train"): "Jobs newest first, optionally only those in one state."
    + example(f"curl '{BASE}/train?limit=10&state=running'"),
    ("get", "/train/{job_id}"): "State, epoch and step, latest losses, ETA, metrics, the URLs "
    "of the sample grids written so far, and `model` (`name@version`) once registered."
    + example(f"curl {BASE}/train/{JOB}"),
    ("delete", "/train/{job_id}"): "Sets the cancel flag; the run stops at its next step, "
    "writes a checkpoint and ends `cancelled`. A queued job is cancelled at once."
    + example(f"curl -X DELETE {BASE}/train/{JOB} {AUTH}"),
    ("get", "/train/{job_id}/samples/{name}"): "A PNG grid of the fixed latents written at "
    "the end of an epoch; the names are listed in the job's `samples`."
    + example(f"curl -o epoch_0001.png {BASE}/train/{JOB}/samples/epoch_0001.png"),
    ("get", "/train/{job_id}/events"): "A `snapshot` event with the current state, then "
    "`progress` events (step, losses, ETA, samples) and `state` events; the stream ends when "
    "the job ends. Reconnect with `Last-Event-ID` (or `?last_event_id=`) to continue; "
    "`?last_event_id=0-0` replays the whole history."
    + example(f"curl -N {BASE}/train/{JOB}/events"),
    ("get", "/generate"): "A grid of `n` images from an image model (the active version "
    "unless `version` is given). Deterministic: the same seed, n, nrow and version give the "
    "same bytes, so the response has an `ETag` (`304` on `If-None-Match`) and is cached "
    "for good when `version` is explicit."
    + example(f"curl -o grid.png '{BASE}/generate?seed=1&n=16'"),
    ("post", "/emulate"): "For each row, samples the magnitudes the survey would measure "
    "and whether it is detected. Send JSON `{rows, samples?, seed?}` or a CSV / Parquet "
    "body (then `samples` and `seed` are query parameters); `Accept` picks JSON, CSV or "
    "Parquet output. DES Balrog column names are accepted as aliases; a bad row gets a "
    "`422` that names its row and column. The same seed gives the same output."
    + example(
        f"curl -X POST {BASE}/emulate -H 'content-type: application/json' \\\n"
        f'  -d \'{{"rows": [{ROW}], "samples": 3, "seed": 7}}\''
    ),
    ("post", "/emulate/jobs"): "For catalogs too large for one request (a million rows "
    "and more; needs the API key): the CSV, Parquet or FITS body is stored, a worker "
    "emulates it chunk by chunk "
    "(the same code as `cosmogan emulate`), and the job's record reports progress; `202` with "
    "`Location: /emulate/jobs/{job_id}`. `output` picks the result's format (default: the "
    "input's). `dataset=NAME` publishes the result as Parquet dataset NAME instead (one file "
    "per chunk; `409` if NAME exists or is being made); a Parquet result past "
    "`COSMOGAN_EMULATE_MAX_FILE_ROWS` output rows becomes dataset `emulated-<job id>` by itself, "
    "and a CSV or FITS one fails saying so."
    + example(
        f"curl -X POST '{BASE}/emulate/jobs?samples=1&seed=7' {AUTH} \\\n"
        "  -H 'content-type: application/vnd.apache.parquet' --data-binary @catalog.parquet"
    ),
    ("get", "/emulate/jobs/{job_id}"): "State (queued/running/succeeded/failed), rows done "
    "so far, and the result's URL once the job has succeeded (`/datasets/NAME`, with "
    "`result_dataset`, when the result is a dataset)." + example(f"curl {BASE}/emulate/jobs/{JOB}"),
    ("get", "/emulate/jobs/{job_id}/result"): "The emulated catalog of a succeeded job, in "
    "the format asked for; `409` while the job is not done; `303` to the dataset when the "
    "result is one." + example(f"curl -o emulated.parquet {BASE}/emulate/jobs/{JOB}/result"),
    ("delete", "/emulate/jobs/{job_id}"): "Cancels the job: no chunk of it starts after "
    "this, on any worker, and the job ends `cancelled`."
    + example(f"curl -X DELETE {BASE}/emulate/jobs/{JOB} {AUTH}"),
    ("get", "/datasets"): "Every dataset of the data root: uploads, builds (with their "
    "progress while they run) and files put there by hand, and the data root's path."
    + example(f"curl {BASE}/datasets"),
    ("get", "/datasets/{name}"): "One dataset: `name`, `rows`, `state` (`ready` once "
    "usable, else its build's job state), columns, size, sha256, created, source; a build in "
    "progress adds `rows_done`, `rows_total`, `progress` and `eta_s`. With `parts=true`, a "
    "catalog's `parts` (`file`, `rows`, `sha256`, `url`) in row order."
    + example(f"curl '{BASE}/datasets/balrog?parts=true'"),
    ("get", "/datasets/{name}/parts/{file}"): "One Parquet part of a ready catalog (built, "
    "uploaded or emulated), by a name `GET /datasets/{name}?parts=true` lists; `404` naming "
    "the parts otherwise. Check it against the listed sha256."
    + example(f"curl -O {BASE}/datasets/balrog/parts/part-00000.parquet"),
    ("put", "/datasets/{name}"): "Uploads a catalog (CSV, Parquet or FITS; DES column names "
    "accepted) or an image archive (zip or tar of JPEG/PNG/FITS). A data worker checks it "
    "row by row: a bad row gets a `422` naming its row and column and nothing is kept; `201` "
    "with the dataset's description otherwise. Needs the API key."
    + example(
        f"curl -X PUT {BASE}/datasets/mine {AUTH} \
"
        "  -H 'content-type: text/csv' --data-binary @catalog.csv"
    ),
    ("post", "/datasets"): "Builds a training catalog with the mini-Balrog simulator, split "
    "into chunks fanned out over every `data` worker; `202` with `Location: /datasets/{name}`. "
    "The same body again resumes a cancelled or failed build (finished chunks are kept). "
    "Needs the API key."
    + authed_json_example(
        "POST",
        "/datasets",
        '{"name": "balrog", "simulator": "galsim", "rows": 100000, "seed": 0}',
    ),
    ("delete", "/datasets/{name}"): "Deletes a dataset (and any parts of its build); `409` "
    "while a queued or running job uses it. Needs the API key."
    + example(f"curl -X DELETE {BASE}/datasets/mine {AUTH}"),
    ("get", "/datasets/jobs/{job_id}"): "A build's state and progress: rows done of rows "
    "in all, across every data worker, and an ETA." + example(f"curl {BASE}/datasets/jobs/{JOB}"),
    ("delete", "/datasets/jobs/{job_id}"): "Cancels a build: no chunk starts after this; "
    "finished parts are kept, so posting the same build again resumes it."
    + example(f"curl -X DELETE {BASE}/datasets/jobs/{JOB} {AUTH}"),
    ("get", "/healthz"): "Always `200` while the API process runs."
    + example(f"curl {BASE}/healthz"),
    ("get", "/readyz"): "`200` with `status: ready` once an inference worker answers a ping "
    "and serves every active model; `200` with `status: degraded` and `ready: false` when "
    "some model cannot (damaged files): `unavailable` names each and why, its routes answer "
    "`503`, the others serve. `503` with the reason when no worker answers, models are still "
    "loading or none can serve; with `strict=true`, degraded is `503` too."
    + example(f"curl {BASE}/readyz"),
    ("get", "/metrics"): "Request latency by route, inference batch sizes, jobs by state, "
    "in the Prometheus text format." + example(f"curl {BASE}/metrics"),
}


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
INFERENCE = {("get", "/generate"), ("post", "/emulate"), ("post", "/emulate/jobs")}
CONFLICTS = {
    ("post", "/train"),
    ("delete", "/train/{job_id}"),
    ("delete", "/emulate/jobs/{job_id}"),
    ("post", "/datasets"),
    ("put", "/datasets/{name}"),
    ("delete", "/datasets/{name}"),
    ("delete", "/datasets/jobs/{job_id}"),
}
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
    if path in ("/emulate/jobs", "/datasets/{name}") and has_body:
        codes.add(415)
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
    _descriptions(schema)
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


def _descriptions(schema: dict[str, Any]) -> None:
    """A description with an example where a route has none; PNG where a route sends PNG."""
    paths = schema.get("paths", {})
    for (method, path), text in DESCRIPTIONS.items():
        op = paths.get(path, {}).get(method)
        if op is not None and not op.get("description"):
            op["description"] = text
    # a FileResponse route is documented as JSON unless told otherwise
    sample = paths.get("/train/{job_id}/samples/{name}", {}).get("get")
    if sample is not None:
        sample["responses"]["200"] = {
            "description": "A PNG sample grid.",
            "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
        }


def _limits(schema: dict[str, Any]) -> None:
    """Bounds from the settings, and the presets the server knows."""
    settings = get_settings()
    emulators = sorted(p for p in PRESETS if family(p) == "emulator")
    for param in schema["paths"].get("/generate", {}).get("get", {}).get("parameters", []):
        if param["name"] == "n":
            param["schema"]["maximum"] = settings.max_generate_n
            param["description"] = (
                f"Images in the grid (at most {settings.max_generate_n} on this server)."
            )
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
    """What the server accepts in an input column (see `training.emulator.catalog`)."""
    if name in TRUE_MAG:
        return {"type": "number", "minimum": MAG_RANGE[0], "maximum": MAG_RANGE[1]}
    if name in SKY_SIGMA:
        return {"type": "number", "minimum": SKY_SIGMA_RANGE[0], "maximum": SKY_SIGMA_RANGE[1]}
    return {"type": "number", "minimum": PSF_FWHM_RANGE[0], "maximum": PSF_FWHM_RANGE[1]}


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
