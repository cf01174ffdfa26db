"""Catalogs too large for one request: emulated as a background job fanned out over every
inference worker, the result one file.

The API stores the uploaded catalog under `COSMOGAN_HOME/emulate/<job_id>/` and records the
job (`kind: emulate`) in the one job store (`worker.jobs`). The first inference worker to
take it plans it: the catalog is read once, checked against the column contract, and cut
into Parquet parts of CHUNK_ROWS rows under `in/`; then one message per chunk goes out and
every inference worker claims chunks (`worker.fanout`), writing each emulated part
atomically under `out/`. Chunk boundaries are multiples of the sampler's BLOCK_ROWS, and its
draws depend only on (seed, row position), so the parts are the rows one worker would write.
The run that sees the last chunk done joins the parts in input order into the output file,
or, for a result too large for one file (`Settings.emulate_max_file_rows` output rows) or one
asked for as a dataset (`dataset=NAME`), moves them unchanged into a Parquet dataset
(`models.datasets`: one file per chunk, a manifest with per-part sha256) published whole.

A chunk runs in a background thread of the inference process, so interactive requests keep
being batched beside it: both share the process's loaded models and its cores.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from models import datasets
from models.settings import get_settings
from worker import fanout
from worker.jobs import DATASET_JOBS_KEY, EMULATE, RUNNING, JobStore, is_stalled
from worker.policy import FANOUT_MESSAGES

log = logging.getLogger(__name__)

TTL_S = 7 * 24 * 3600
CHUNK_ROWS = 32_768  # 32 sampler blocks of 1,024 rows (checked against BLOCK_ROWS at run)
EXTENSIONS = {"csv": ".csv", "parquet": ".parquet", "fits": ".fits"}

_runner = ThreadPoolExecutor(1, thread_name_prefix="emulate-job")  # one run at a time


def job_dir(home: Path, job_id: str) -> Path:
    return home / "emulate" / job_id


def input_path(home: Path, job_id: str, fmt: str) -> Path:
    return job_dir(home, job_id) / f"input{EXTENSIONS[fmt]}"


def output_path(home: Path, job_id: str, fmt: str) -> Path:
    return job_dir(home, job_id) / f"output{EXTENSIONS[fmt]}"


def prune(home: Path) -> int:
    """Delete the folders of jobs older than TTL_S; returns how many."""
    root, cutoff, n = home / "emulate", time.time() - TTL_S, 0
    for folder in root.glob("*") if root.is_dir() else []:
        try:
            if folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
                n += 1
        except OSError:
            continue
    return n


def create(store: JobStore, job_id: str, fields: dict[str, Any]) -> None:
    """A new queued job record (`fields`: model, version, samples, seed, input/output format)."""
    store.create(job_id, {**fields, "kind": EMULATE, "rows_done": 0, "chunks_done": 0})


def read(store: JobStore, job_id: str) -> dict[str, Any]:
    """The job record with `stalled` and `progress` (None when unknown); JobNotFound if none."""
    rec = store.get(job_id, EMULATE)
    total = rec.get("rows_total")
    rec["progress"] = min(1.0, (rec.get("rows_done") or 0) / total) if total else None
    if rec["state"] == "succeeded":
        rec["progress"] = 1.0
    rec["stalled"] = is_stalled(rec)
    return rec


def submit(store_factory: Callable[[], JobStore], home: Path, job_id: str, send: Any) -> None:
    """Run the job's chunks on this process's background runner (returns at once)."""
    _runner.submit(_run_logged, store_factory, home, job_id, send)


def _run_logged(store_factory: Callable[[], JobStore], home: Path, job_id: str, send: Any) -> None:
    try:
        run(store_factory(), home, job_id, send)
    except Exception:
        log.exception("emulate job %s: this run failed", job_id)


def _exact_chunks(frames: Iterator[Any], rows: int) -> Iterator[Any]:
    """Re-cut a stream of DataFrames into pieces of exactly `rows` rows (the last shorter)."""
    import pandas as pd

    buf: list[Any] = []
    held = 0
    for df in frames:
        buf.append(df)
        held += len(df)
        while held >= rows:
            whole = pd.concat(buf, ignore_index=True)
            yield whole.iloc[:rows].reset_index(drop=True)
            rest = whole.iloc[rows:].reset_index(drop=True)
            buf, held = [rest], len(rest)
    if held:
        yield pd.concat(buf, ignore_index=True)


def auto_dataset_name(job_id: str) -> str:
    """The dataset a result too large for one file becomes when none was named."""
    return f"emulated-{job_id[:12]}"


def check_one_file(rec: dict[str, Any], rows: int, limit: int) -> None:
    """CatalogError if `rows` input rows make a CSV or FITS result over `limit` output rows:
    such a result can only be a Parquet dataset (a Parquet output becomes one by itself)."""
    from models.columns import CatalogError

    out_rows = rows * rec["samples"]
    if rec.get("result_dataset") or rec["output_format"] == "parquet" or out_rows <= limit:
        return
    raise CatalogError(
        f"the result would hold more than {limit:,} rows (rows × samples), the most one "
        f"{rec['output_format'].upper()} file may hold here (COSMOGAN_EMULATE_MAX_FILE_ROWS): "
        "ask for Parquet output (output=parquet), which then becomes a dataset of one file per "
        "chunk, or name the dataset the result should be (dataset=NAME)"
    )


def result_dataset(rec: dict[str, Any], rows: int, limit: int) -> str | None:
    """The dataset the result of a job of `rows` input rows becomes (None: one file)."""
    check_one_file(rec, rows, limit)
    if rec.get("result_dataset"):
        return rec["result_dataset"]
    return auto_dataset_name(rec["job_id"]) if rows * rec["samples"] > limit else None


def plan(store: JobStore, home: Path, job_id: str, token: str) -> None:
    """Check the input and cut it into parts of CHUNK_ROWS rows (`in/part-k.parquet`); decide
    whether the result is one file or a dataset."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from models.atomic import atomic_write
    from models.columns import CatalogError, validate_inputs
    from training.emulator.catalog import iter_catalog

    rec = store.get(job_id, EMULATE)
    src = input_path(home, job_id, rec["input_format"])
    folder = job_dir(home, job_id) / "in"
    folder.mkdir(parents=True, exist_ok=True)
    limit = get_settings().emulate_max_file_rows
    rows = k = 0
    try:
        for chunk in _exact_chunks(iter_catalog(src, CHUNK_ROWS), CHUNK_ROWS):
            validate_inputs(chunk, row_offset=rows)  # CatalogError names the bad rows
            check_one_file(rec, rows + len(chunk), limit)  # as soon as it is too large
            path = folder / datasets.part_name(k)
            with atomic_write(path) as f:
                pq.write_table(pa.Table.from_pandas(chunk, preserve_index=False), f)
            rows += len(chunk)
            k += 1
            store.renew_lease(job_id, token)  # and the heartbeat: planning is progress
        if rows == 0:
            raise CatalogError("the catalog has no rows")
        name = result_dataset(rec, rows, limit)
    except CatalogError:
        shutil.rmtree(folder, ignore_errors=True)  # a failed job leaves no parts behind
        raise
    if name is not None and not rec.get("result_dataset"):
        store.r.hset(DATASET_JOBS_KEY, name, job_id)  # listed with its progress meanwhile
    fields: dict[str, Any] = {"rows_total": rows, "chunks_total": k, "chunk_rows": CHUNK_ROWS}
    store.update(job_id, **fields, **({"result_dataset": name} if name else {}))
    src.unlink(missing_ok=True)


def emulate_chunk(home: Path, rec: dict[str, Any], k: int, emulator: Any) -> int:
    """Emulate input part k into `out/part-k.parquet` (skipped if there); returns its rows."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from models.atomic import atomic_write
    from models.columns import validate_inputs
    from training.emulator.catalog import with_emulated

    folder = job_dir(home, rec["job_id"])
    src = folder / "in" / datasets.part_name(k)
    dst = folder / "out" / datasets.part_name(k)
    rows = pq.ParquetFile(src).metadata.num_rows
    if dst.is_file():
        return rows
    chunk = pd.read_parquet(src)
    start = k * rec["chunk_rows"]
    x = validate_inputs(chunk, row_offset=start)
    samples = rec["samples"]
    noise, uniforms = emulator.draws(len(x), samples, rec["seed"], start=start)
    out = emulator.sample_outputs(np.repeat(x, samples, axis=0), noise, uniforms)
    table = with_emulated(
        chunk, out.mags, out.detected, samples, magerr=out.magerr, out_of_domain=out.out_of_domain
    )
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(dst) as f:
        pq.write_table(pa.Table.from_pandas(table, preserve_index=False), f)
    return rows


def assemble(home: Path, rec: dict[str, Any]) -> dict[str, Any]:
    """Join the emulated parts in input order into the output file (written atomically)."""
    import pandas as pd

    from training.emulator.catalog import CatalogWriter

    folder = job_dir(home, rec["job_id"])
    dst = output_path(home, rec["job_id"], rec["output_format"])
    meta = {"checkpoint": f"{rec['model']}@{rec.get('version') or 'active'}"}
    meta.update(seed=rec["seed"], samples=rec["samples"])
    with CatalogWriter(dst, meta=meta) as writer:
        for k in range(rec["chunks_total"]):
            writer.write(pd.read_parquet(folder / "out" / datasets.part_name(k)))
    shutil.rmtree(folder / "in", ignore_errors=True)
    shutil.rmtree(folder / "out", ignore_errors=True)
    return {"rows_done": rec["rows_total"]}


def publish_dataset(home: Path, root: Path, rec: dict[str, Any]) -> dict[str, Any]:
    """Move the emulated parts, in input order and unchanged, into dataset
    `rec["result_dataset"]` under the data root `root`, with its manifest, and publish it
    whole. Redone after a run died midway, it picks up the parts where they are."""
    name, job_id = rec["result_dataset"], rec["job_id"]
    folder = job_dir(home, job_id)
    done = datasets.describe(root, name)
    if done is not None and done.get("job_id") == job_id:
        return {"rows_done": rec["rows_total"]}  # published by a run that died just after
    building = datasets.building_dir(root, name)
    names = [datasets.part_name(k) for k in range(rec["chunks_total"])]
    if building.is_dir():  # whatever an earlier, abandoned job of this name left there
        keep = set(names)
        for path in building.iterdir():
            if path.name in keep:
                continue
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
    moved = datasets.move_parts([folder / "out" / n for n in names], building)
    parts = datasets.describe_parts(moved)
    rows = sum(p["rows"] for p in parts)
    if rows != rec["rows_total"] * rec["samples"]:
        raise RuntimeError(f"the parts hold {rows} rows, not {rec['rows_total']} × samples")
    desc = datasets.catalog_manifest(
        name,
        "emulation",
        building,
        parts,
        model=f"{rec['model']}@{rec.get('version') or 'active'}",
        seed=rec["seed"],
        samples=rec["samples"],
        input_rows=rec["rows_total"],
        chunk_rows=rec["chunk_rows"],
        job_id=job_id,
    )
    datasets.write_manifest(building, desc)
    datasets.publish(building, root, name)
    shutil.rmtree(folder / "in", ignore_errors=True)
    shutil.rmtree(folder / "out", ignore_errors=True)
    return {"rows_done": rec["rows_total"]}


def finish(home: Path, rec: dict[str, Any]) -> dict[str, Any]:
    """The result of a job whose chunks are all done: one file, or a dataset."""
    if rec.get("result_dataset"):
        return publish_dataset(home, get_settings().data_dir, rec)
    return assemble(home, rec)


def run(store: JobStore, home: Path, job_id: str, send: Callable[[int], None]) -> None:
    """One run of an emulation job: plan it if nobody has, then claim chunks until none is
    left. `send(n)` sends n more messages for the job (so other workers join in)."""
    from models.columns import CatalogError
    from models.emulator_sampler import BLOCK_ROWS
    from worker.engine import RequestError, get_engine

    assert CHUNK_ROWS % BLOCK_ROWS == 0, "chunks must hold whole sampler blocks"
    rec = store.get(job_id, EMULATE)
    if rec["state"] not in ("queued", RUNNING):
        return  # finished, failed or cancelled: a late copy of a message
    try:
        loaded = get_engine().get(rec["model"], rec.get("version") or None)
        if loaded.family != "emulator":
            raise RequestError(422, f"model {loaded.name!r} is not an emulator")
        if rec.get("chunks_total") is None:
            token = uuid.uuid4().hex
            if not store.acquire_lease(job_id, token):
                return  # another run is planning it
            try:
                if not fanout.start(store, job_id):
                    return
                plan(store, home, job_id, token)
            finally:
                store.release_lease(job_id, token)
            total = store.field(job_id, "chunks_total")
            send(min(total, FANOUT_MESSAGES) - 1)
        store.update(job_id, model=loaded.name, version=loaded.version)
        rec = store.get(job_id, EMULATE)
        fanout.run_chunks(
            store,
            job_id,
            lambda k: emulate_chunk(home, rec, k, loaded.model),
            lambda: finish(home, store.get(job_id, EMULATE)),
        )
    except (CatalogError, RequestError, ValueError, OSError) as exc:
        log.info("emulate job %s failed: %s", job_id, exc)
        if isinstance(exc, RequestError):
            detail = exc.detail
        elif isinstance(exc, OSError):  # its text is a server path
            detail = "the catalog or its result could not be read or written"
        else:
            detail = _public(str(exc), home)
        fanout.fail(store, job_id, detail)
    except Exception as exc:  # a bug or a broken record: fail it, or the reaper resends forever
        log.exception("emulate job %s failed", job_id)
        fanout.fail(store, job_id, f"internal error: {type(exc).__name__}")


def _public(detail: str, home: Path) -> str:
    """An error text as anonymous callers may read it: the job's files by role, never by
    their server path."""
    for root in {str(home.resolve()), str(home)}:
        detail = re.sub(re.escape(root) + r"/\S*?(input|output)(\.\w+)?\b", r"the \1 file", detail)
        detail = detail.replace(root, "<home>")
    return detail
