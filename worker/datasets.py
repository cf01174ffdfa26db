"""Dataset work on the `data` queue: the chunks of a catalog build, and checking an upload.

A build (`POST /datasets`) is a fanned-out job (`worker.fanout`): chunk k is
`training.emulator.balrog.catalog_part` for (rows, seed, draw seed, chunk rows, k), written
atomically as `part-<k>.parquet` under `data/.building/<name>/`; a part already there is not
simulated again (a resume, or a chunk redone after its worker died). The last run writes the
manifest (rows, per-part sha256, simulator and version) and renames the folder into place.

An upload (`PUT /datasets/{name}`) arrives as a file under `data/.incoming/<token>/`; here it
is read chunk by chunk, checked against the column contract (a bad row and column is named),
rewritten as Parquet parts, described, and renamed into place, or removed whole.
"""

from __future__ import annotations

import logging
import shutil
import tarfile
import zipfile
from pathlib import Path
from typing import Any

from models import datasets
from models.atomic import atomic_write
from models.settings import get_settings
from worker import fanout
from worker.jobs import JobStore

log = logging.getLogger(__name__)

UPLOAD_PART_ROWS = 1_000_000
MAX_ARCHIVE_BYTES = 16 * 2**30  # what an archive may expand to
ARCHIVES = ("zip", "tar")


def _write_part(table: Any, path: Path) -> None:
    import pyarrow.parquet as pq

    with atomic_write(path) as f:
        pq.write_table(table, f)


def _part_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


# --------------------------------------------------------------------------------------------
# builds
def build_chunk(root: Path, rec: dict[str, Any], chunk: int) -> int:
    """Write part `chunk` of the build `rec` unless it exists; returns its rows."""
    from training.emulator.balrog import catalog_part

    folder = datasets.building_dir(root, rec["name"])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / datasets.part_name(chunk)
    if path.is_file():
        return _part_rows(path)
    table = catalog_part(
        rec["rows"],
        rec["simulator"],
        rec["seed"],
        rec["draw_seed"],
        rec["chunk_rows"],
        chunk,
        data_dir=root,
    )
    _write_part(table, path)
    return table.num_rows


def finish_build(root: Path, rec: dict[str, Any]) -> dict[str, Any]:
    """Describe the finished parts (manifest) and move the folder into place."""
    from training.emulator import minibalrog

    name = rec["name"]
    folder = datasets.building_dir(root, name)
    parts = [folder / datasets.part_name(k) for k in range(rec["chunks_total"])]
    missing = [p.name for p in parts if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"parts missing from {folder}: {missing[:5]}")
    described = datasets.describe_parts(parts)
    rows = sum(p["rows"] for p in described)
    if rows != rec["rows"]:
        raise RuntimeError(f"the parts hold {rows} rows, not {rec['rows']}")
    desc = datasets.catalog_manifest(
        name,
        rec["simulator"],
        folder,
        described,
        simulator=rec["simulator"],
        simulator_version=minibalrog.simulator_version(rec["simulator"]),
        seed=rec["seed"],
        draw_seed=rec["draw_seed"],
        chunk_rows=rec["chunk_rows"],
        job_id=rec["job_id"],
    )
    datasets.write_manifest(folder, desc)
    datasets.publish(folder, root, name)
    return {"result": name, "rows_total": rows}


def run_build(store: JobStore, job_id: str) -> None:
    """One run of a build job: claim chunks until none is left (see `worker.fanout`)."""
    root = get_settings().data_dir
    rec = store.get(job_id, "dataset")
    fanout.run_chunks(
        store,
        job_id,
        lambda k: build_chunk(root, rec, k),
        lambda: finish_build(root, store.get(job_id, "dataset")),
    )


# --------------------------------------------------------------------------------------------
# uploads
def ingest(name: str, token: str, fmt: str, sha256: str, size: int) -> dict[str, Any]:
    """Check the upload `token` and publish it as dataset `name`: {"ok": True, "dataset": …}
    or {"ok": False, "status": 4xx, "detail": what is wrong}; nothing is left on failure."""
    from models.columns import CatalogError

    root = get_settings().data_dir
    folder = datasets.incoming_dir(root, token)
    upload = folder / f"upload.{fmt}"
    try:
        if fmt in ARCHIVES:
            desc = _ingest_images(folder, upload, fmt)
        else:
            desc = _ingest_catalog(folder, upload, fmt)
        upload.unlink(missing_ok=True)
        desc = {
            **datasets.base_description(name, "upload", desc.pop("kind")),
            **desc,
            "sha256": sha256,
            "upload_size": size,
            "upload_format": fmt,
        }
        desc["size"] = datasets.folder_size(folder)
        datasets.write_manifest(folder, desc)
        datasets.publish(folder, root, name)
        return {"ok": True, "dataset": {**desc, "state": datasets.READY}}
    except (CatalogError, datasets.DatasetError) as exc:
        status = 409 if "already exists" in str(exc) else 422
        return {"ok": False, "status": status, "detail": str(exc)}
    except (OSError, ValueError, tarfile.TarError, zipfile.BadZipFile) as exc:
        return {"ok": False, "status": 422, "detail": f"cannot read the upload: {exc}"}
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # a published folder has moved away


def _ingest_catalog(folder: Path, upload: Path, fmt: str) -> dict[str, Any]:
    import pyarrow as pa

    from models.columns import CatalogError, validate_inputs
    from training.emulator.catalog import iter_catalog

    rows, names, part = 0, None, 0
    for chunk in iter_catalog(upload, UPLOAD_PART_ROWS):
        validate_inputs(chunk, row_offset=rows)  # CatalogError naming the rows and columns
        table = pa.Table.from_pandas(chunk, preserve_index=False)
        if names is None:
            names = table.schema.names
        elif table.schema.names != names:
            raise CatalogError(f"rows from {rows} on have other columns than the rows before")
        _write_part(table, folder / datasets.part_name(part))
        rows += len(chunk)
        part += 1
    if rows == 0:
        raise CatalogError("the catalog has no rows")
    described = datasets.describe_parts([folder / datasets.part_name(k) for k in range(part)])
    return {"kind": "catalog", "rows": rows, "columns": names, "parts": described}


def _members(archive: Any, fmt: str) -> list[tuple[str, int, Any]]:
    """(name, size, opener) of the files in an open zip or tar archive."""
    if fmt == "zip":
        return [
            (i.filename, i.file_size, lambda i=i: archive.open(i))
            for i in archive.infolist()
            if not i.is_dir()
        ]
    return [(m.name, m.size, lambda m=m: archive.extractfile(m)) for m in archive if m.isfile()]


def _ingest_images(folder: Path, upload: Path, fmt: str) -> dict[str, Any]:
    from models.columns import CatalogError

    images = folder / "images"
    total, n = 0, 0
    opener = zipfile.ZipFile if fmt == "zip" else tarfile.open  # tar: plain, gz, bz2 or xz
    with opener(upload) as archive:
        for name, size, read in _members(archive, fmt):
            rel = Path(name)
            if rel.is_absolute() or ".." in rel.parts:
                raise CatalogError(f"archive member {name!r} points outside the archive")
            if not name.lower().endswith(datasets.IMAGE_SUFFIXES) or rel.name.startswith("."):
                continue  # licences, read-mes, metadata: not images
            total += size
            if total > MAX_ARCHIVE_BYTES:
                raise CatalogError(f"the archive expands past {MAX_ARCHIVE_BYTES >> 30} GiB")
            dst = images / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            with read() as src, dst.open("wb") as out:
                shutil.copyfileobj(src, out)
            _check_image(dst, name)
            n += 1
    if n == 0:
        raise CatalogError("the archive holds no JPEG, PNG or FITS image")
    return {"kind": "images", "rows": n, "columns": None}


def _check_image(path: Path, name: str) -> None:
    from models.columns import CatalogError

    try:
        if path.suffix.lower() in (".fits", ".fit", ".fts"):
            from astropy.io import fits

            with fits.open(path) as hdul:
                if not any(getattr(h, "data", None) is not None for h in hdul):
                    raise ValueError("no image data")
        else:
            from PIL import Image

            with Image.open(path) as im:
                im.verify()
    except Exception as exc:
        raise CatalogError(f"archive member {name!r} is not a readable image: {exc}") from None
