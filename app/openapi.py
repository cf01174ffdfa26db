"""The OpenAPI document: each route's description with a working example, and the limits
this server is configured with (not only the hard bounds the routes declare)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from models.settings import get_settings

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
    "and more): the CSV, Parquet or FITS body is stored, a worker emulates it chunk by chunk "
    "(the same code as `cosmogan emulate`), and the job's record reports progress; `202` with "
    "`Location: /emulate/jobs/{job_id}`. `output` picks the result's format (default: the "
    "input's)."
    + example(
        f"curl -X POST '{BASE}/emulate/jobs?samples=1&seed=7' \\\n"
        "  -H 'content-type: application/vnd.apache.parquet' --data-binary @catalog.parquet"
    ),
    ("get", "/emulate/jobs/{job_id}"): "State (queued/running/succeeded/failed), rows done "
    "so far, and the result's URL once the job has succeeded."
    + example(f"curl {BASE}/emulate/jobs/{JOB}"),
    ("get", "/emulate/jobs/{job_id}/result"): "The emulated catalog of a succeeded job, in "
    "the format asked for; `409` while the job is not done."
    + example(f"curl -o emulated.parquet {BASE}/emulate/jobs/{JOB}/result"),
    ("get", "/healthz"): "Always `200` while the API process runs."
    + example(f"curl {BASE}/healthz"),
    ("get", "/readyz"): "`200` once an inference worker answers a ping and has the active "
    "models loaded; `503` with the reason otherwise." + example(f"curl {BASE}/readyz"),
    ("get", "/metrics"): "Request latency by route, inference batch sizes, jobs by state, "
    "in the Prometheus text format." + example(f"curl {BASE}/metrics"),
}


def build_openapi(app: FastAPI) -> dict[str, Any]:
    """The schema FastAPI derives from the routes, completed as described above."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        description=app.description,
        routes=app.routes,
    )
    paths = schema.get("paths", {})
    for (method, path), text in DESCRIPTIONS.items():
        op = paths.get(path, {}).get(method)
        if op is not None and not op.get("description"):
            op["description"] = text

    # the route declares a hard bound; this server answers 422 above its configured limit
    limit = get_settings().max_generate_n
    for param in paths.get("/generate", {}).get("get", {}).get("parameters", []):
        if param["name"] == "n":
            param["schema"]["maximum"] = limit
            param["description"] = f"Images in the grid (at most {limit} on this server)."

    # a FileResponse route is documented as JSON unless told otherwise
    sample = paths.get("/train/{job_id}/samples/{name}", {}).get("get")
    if sample is not None:
        sample["responses"]["200"] = {
            "description": "A PNG sample grid.",
            "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
        }
    app.openapi_schema = schema
    return schema


def install(app: FastAPI) -> None:
    app.openapi = lambda: build_openapi(app)  # type: ignore[method-assign]
