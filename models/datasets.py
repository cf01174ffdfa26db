"""The dataset registry: named datasets in the data root, one layout for the API, the CLI,
the workers and the page. Torch-free; the filesystem is the truth (shared by every machine).

Layout under `<COSMOGAN_HOME>/data/`:
    <name>/_manifest.json          a ready dataset's description (written last: it marks it ready)
    <name>/part-00000.parquet …     a catalog, one Parquet file per part (a pyarrow dataset)
    <name>/images/…                 an image set (uploaded archive)
    .building/<name>/               parts of a build in progress (kept for resume)
    .incoming/<token>/              an upload being checked, renamed to <name>/ if it passes
Files and folders put in the data root by hand (`balrog.parquet`, `nebulae/`) are listed too,
with `source: "file"`, and path-style names keep working for training.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
NAME_RE = re.compile(NAME_PATTERN)
# names of files and folders already in the data root (listed, trained on, deleted)
ENTRY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MANIFEST = "_manifest.json"  # "_": pyarrow and pandas skip it when reading the folder
PART_GLOB = "part-*.parquet"
BUILDING, INCOMING = ".building", ".incoming"
FORMAT_VERSION = 1
CATALOG_SUFFIXES = (".parquet", ".pq", ".csv", ".fits", ".fit", ".fts")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".fits", ".fit", ".fts")

# states of a dataset (`state`): a build's job state until it is usable
READY = "ready"


class DatasetError(ValueError):
    """A dataset that does not exist, or a name that cannot be one."""


def part_name(chunk: int) -> str:
    return f"part-{chunk:05d}.parquet"


def dataset_dir(root: Path, name: str) -> Path:
    return Path(root) / name


def building_dir(root: Path, name: str) -> Path:
    return Path(root) / BUILDING / name


def incoming_dir(root: Path, token: str) -> Path:
    return Path(root) / INCOMING / token


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise DatasetError(
            f"dataset name {name[:80]!r} must be 1-64 letters, digits, '_' or '-' "
            "(starting with a letter or digit)"
        )
    return name


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def combined_sha256(part_hashes: list[str]) -> str:
    """A multi-part dataset's sha256: of its parts' hex digests in order, one per line."""
    return hashlib.sha256("".join(f"{h}\n" for h in part_hashes).encode()).hexdigest()


def folder_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def write_manifest(folder: Path, description: dict[str, Any]) -> None:
    """Write `_manifest.json` atomically (it is what makes a folder a ready dataset)."""
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(description, indent=2))
    os.replace(tmp, folder / MANIFEST)


def publish(src: Path, root: Path, name: str) -> Path:
    """Move a finished folder into place as dataset `name` (one rename, so a reader sees it
    whole or not at all); DatasetError if the name was taken meanwhile."""
    dst = dataset_dir(root, name)
    try:
        os.rename(src, dst)  # fails on an existing non-empty folder
    except OSError as exc:
        if dst.exists():
            raise DatasetError(f"dataset {name!r} already exists") from None
        raise DatasetError(f"dataset {name!r} could not be stored: {exc.strerror}") from None
    return dst


def _legacy(root: Path, entry: Path) -> dict[str, Any] | None:
    """A file or folder put in the data root by hand, described without reading it whole."""
    if not ENTRY_RE.match(entry.name):
        return None
    if entry.is_file() and entry.name.lower().endswith(CATALOG_SUFFIXES):
        kind, rows = "catalog", _catalog_rows(entry)
    elif entry.is_dir() and not (entry / MANIFEST).exists():
        images = [p for p in entry.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES]
        if not images:
            return None
        kind, rows = "images", len(images)
    else:
        return None
    st = entry.stat()
    return {
        "name": entry.name,
        "state": READY,
        "kind": kind,
        "rows": rows,
        "columns": None,
        "size": folder_size(entry),
        "sha256": None,
        "created": st.st_mtime,
        "source": "file",
    }


def _catalog_rows(path: Path) -> int | None:
    if path.suffix.lower() in (".parquet", ".pq"):
        try:
            import pyarrow.parquet as pq

            return pq.ParquetFile(path).metadata.num_rows
        except Exception:  # unreadable: listed, and training says why
            return None
    return None


def describe(root: Path, name: str) -> dict[str, Any] | None:
    """The description of the ready dataset `name` (or of a hand-placed entry), or None."""
    if not ENTRY_RE.match(name) or name.startswith("."):
        return None
    folder = dataset_dir(root, name)
    manifest = folder / MANIFEST
    if manifest.is_file():
        try:
            desc = json.loads(manifest.read_text())
        except (OSError, ValueError):
            return None
        return {**desc, "state": READY}
    if folder.exists():
        return _legacy(Path(root), folder)
    return None


def iter_ready(root: Path) -> Iterator[dict[str, Any]]:
    """Every ready dataset and hand-placed entry in the data root, by name."""
    root = Path(root)
    if not root.is_dir():
        return
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") or entry.name == "buzzard_truth.parquet":
            continue
        desc = describe(root, entry.name)
        if desc is not None:
            yield desc


def remove(root: Path, name: str) -> bool:
    """Delete dataset `name` and any build parts of it; True if something was removed."""
    found = False
    for path in (dataset_dir(root, name), building_dir(root, name)):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            found = True
        elif path.is_file():
            path.unlink(missing_ok=True)
            found = True
    return found


def training_path(root: Path, name: str) -> Path | None:
    """What a training run reads for dataset `name`: its folder (parts or images) if ready."""
    desc = describe(root, name)
    if desc is None or desc.get("source") == "file":
        return None
    folder = dataset_dir(root, name)
    return folder / "images" if desc.get("kind") == "images" else folder


def base_description(name: str, source: str, kind: str) -> dict[str, Any]:
    return {
        "name": name,
        "kind": kind,
        "source": source,
        "created": time.time(),
        "format_version": FORMAT_VERSION,
    }


# --------------------------------------------------------------------------------------------
# multi-part catalogs: their parts, one at a time
PART_RE = re.compile(r"^part-[0-9]{5,}\.parquet$")


def describe_parts(paths: list[Path]) -> list[dict[str, Any]]:
    """`{file, rows, sha256}` of each Parquet part, in the order given (a manifest's list)."""
    import pyarrow.parquet as pq

    return [
        {"file": p.name, "rows": pq.ParquetFile(p).metadata.num_rows, "sha256": sha256_file(p)}
        for p in paths
    ]


def catalog_manifest(
    name: str, source: str, folder: Path, parts: list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    """The description of a multi-part catalog in `folder` whose parts are described by
    `parts` (`describe_parts`): rows, columns, size, per-part and combined sha256."""
    import pyarrow.parquet as pq

    if not parts:
        raise DatasetError(f"dataset {name!r} has no parts")
    files = [folder / p["file"] for p in parts]
    return {
        **base_description(name, source, "catalog"),
        "rows": sum(p["rows"] for p in parts),
        "columns": pq.read_schema(files[0]).names,
        "size": sum(f.stat().st_size for f in files),
        "sha256": combined_sha256([p["sha256"] for p in parts]),
        "parts": parts,
        **extra,
    }


def move_parts(paths: list[Path], folder: Path) -> list[Path]:
    """Move finished parts into `folder` by renaming them (no byte is rewritten); a part
    already there (a move that was interrupted and is redone) stays. Returns the new paths."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for src in paths:
        dst = folder / src.name
        if src.is_file():
            os.replace(src, dst)
        elif not dst.is_file():
            raise FileNotFoundError(f"part {src.name} is neither at {src.parent} nor moved")
        out.append(dst)
    return out


def parts(root: Path, name: str) -> list[dict[str, Any]] | None:
    """The parts (`{file, rows, sha256}`, in row order) of the ready multi-part catalog
    `name`; None when it is not one (an image set, a file placed by hand, no such dataset).
    A manifest written before it listed its parts gets them read from the folder."""
    desc = describe(root, name)
    if desc is None or desc.get("source") == "file" or desc.get("kind") != "catalog":
        return None
    listed = desc.get("parts")
    if isinstance(listed, list):
        return listed
    return describe_parts(sorted(dataset_dir(root, name).glob(PART_GLOB)))


def part_path(root: Path, name: str, file: str) -> Path:
    """The path of part `file` of the ready catalog `name`; DatasetError saying what exists
    otherwise. Only a file listed in the manifest is ever served (no path from the caller)."""
    listed = parts(root, name)
    if listed is None:
        raise DatasetError(f"dataset {name!r} is not a ready multi-part catalog: it has no parts")
    files = [p["file"] for p in listed]
    if file not in files or not PART_RE.match(file):
        some = ", ".join(files[:3]) + (f", … {files[-1]}" if len(files) > 3 else "")
        raise DatasetError(
            f"dataset {name!r} has no part {file[:80]!r}: its {len(files)} parts are {some}"
        )
    return dataset_dir(root, name) / file
