"""Catalogs too large for one request: emulated as a background job, the result a file.

The API stores the uploaded catalog under `COSMOGAN_HOME/emulate/<job_id>/` and records the
job in Redis; the inference worker streams it through the emulator chunk by chunk (the same
code as `cosmogan emulate`), writing the output file atomically and its progress (rows done,
rows in all) to the record after every chunk. The job runs in one background thread of the
inference process, so interactive requests keep being batched beside it: both share the
process's loaded models and its cores, and a job never blocks a batch for its whole length.
A record whose heartbeat stops (the process died) is reported as stalled.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

KEY = "cosmogan:emulate-job:"
TTL_S = 7 * 24 * 3600
STALLED_S = 60.0  # no heartbeat for this long while queued or running: the worker is gone
CHUNK_ROWS = 65_536
STATES = ("queued", "running", "succeeded", "failed")
EXTENSIONS = {"csv": ".csv", "parquet": ".parquet", "fits": ".fits"}

_runner = ThreadPoolExecutor(1, thread_name_prefix="emulate-job")  # one job at a time


def job_dir(home: Path, job_id: str) -> Path:
    return home / "emulate" / job_id


def input_path(home: Path, job_id: str, fmt: str) -> Path:
    return job_dir(home, job_id) / f"input{EXTENSIONS[fmt]}"


def output_path(home: Path, job_id: str, fmt: str) -> Path:
    return job_dir(home, job_id) / f"output{EXTENSIONS[fmt]}"


def prune(home: Path) -> int:
    """Delete the folders of jobs older than their records (TTL_S); returns how many."""
    import shutil

    root, cutoff, n = home / "emulate", time.time() - TTL_S, 0
    for folder in root.glob("*") if root.is_dir() else []:
        try:
            if folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
                n += 1
        except OSError:
            continue
    return n


def create(client: Any, job_id: str, fields: dict[str, Any]) -> None:
    """A new queued job record (`fields`: model, version, samples, seed, input/output format)."""
    now = time.time()
    record = {**fields, "state": "queued", "rows_done": 0, "created_at": now, "updated_at": now}
    key = KEY + job_id
    client.hset(key, mapping={k: str(v) for k, v in record.items() if v is not None})
    client.expire(key, TTL_S)


def read(client: Any, job_id: str) -> dict[str, Any] | None:
    """The job record, typed, with `stalled` and `progress` (None when unknown)."""
    raw = client.hgetall(KEY + job_id)
    if not raw:
        return None
    rec: dict[str, Any] = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in raw.items()
    }
    for k in ("rows_done", "rows_total", "samples", "seed"):
        if k in rec:
            rec[k] = int(rec[k])
    for k in ("created_at", "updated_at", "started_at", "finished_at"):
        if k in rec:
            rec[k] = float(rec[k])
    total = rec.get("rows_total")
    rec["progress"] = min(1.0, rec["rows_done"] / total) if total else None
    if rec["state"] == "succeeded":
        rec["progress"] = 1.0
    alive = rec["state"] in ("queued", "running")
    rec["stalled"] = alive and time.time() - rec["updated_at"] > STALLED_S
    return rec


def _update(client: Any, job_id: str, **fields: Any) -> None:
    fields["updated_at"] = time.time()
    client.hset(KEY + job_id, mapping={k: str(v) for k, v in fields.items()})


def submit(client_factory: Any, home: Path, job_id: str) -> None:
    """Queue the job on this process's background runner (returns at once)."""
    _runner.submit(_run, client_factory, home, job_id)


def _heartbeat(client: Any, job_id: str, stop: threading.Event) -> None:
    while not stop.wait(STALLED_S / 4):
        _update(client, job_id)


def _run(client_factory: Any, home: Path, job_id: str) -> None:
    from models.columns import CatalogError
    from training.emulator.catalog import count_rows
    from training.emulator.files import emulate_file
    from worker.engine import RequestError, get_engine

    client = client_factory()
    rec = read(client, job_id)
    if rec is None or rec["state"] != "queued":
        return  # expired, or a redelivered message of a job already run
    _update(client, job_id, state="running", started_at=time.time())
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(client, job_id, stop), daemon=True)
    beat.start()
    src = input_path(home, job_id, rec["input_format"])
    dst = output_path(home, job_id, rec["output_format"])
    try:
        total = count_rows(src)
        if total is not None:
            _update(client, job_id, rows_total=total)
        loaded = get_engine().get(rec["model"], rec.get("version") or None)
        if loaded.family != "emulator":
            raise RequestError(422, f"model {loaded.name!r} is not an emulator")
        summary = emulate_file(
            None,
            src,
            dst,
            samples=rec["samples"],
            seed=rec["seed"],
            chunk_rows=CHUNK_ROWS,
            emulator=loaded.model,
            progress=lambda rows: _update(client, job_id, rows_done=rows),
        )
        _update(
            client,
            job_id,
            state="succeeded",
            rows_done=summary["rows"],
            rows_total=summary["rows"],
            seconds=summary["seconds"],
            model=loaded.name,
            version=loaded.version,
            finished_at=time.time(),
        )
    except (CatalogError, RequestError, ValueError, OSError) as exc:
        log.info("emulate job %s failed: %s", job_id, exc)
        if isinstance(exc, RequestError):
            detail = exc.detail
        elif isinstance(exc, OSError):  # its text is a server path
            detail = "the catalog or its result could not be read or written"
        else:
            detail = _public(str(exc), home)
        _update(client, job_id, state="failed", error=detail[:2000], finished_at=time.time())
    except Exception as exc:
        log.exception("emulate job %s failed", job_id)
        _update(
            client,
            job_id,
            state="failed",
            error=f"internal error: {type(exc).__name__}",
            finished_at=time.time(),
        )
    finally:
        stop.set()
        src.unlink(missing_ok=True)


def _public(detail: str, home: Path) -> str:
    """An error text as anonymous callers may read it: the job's files by role, never by
    their server path."""
    for root in {str(home.resolve()), str(home)}:
        detail = re.sub(re.escape(root) + r"/\S*?(input|output)(\.\w+)?\b", r"the \1 file", detail)
        detail = detail.replace(root, "<home>")
    return detail
