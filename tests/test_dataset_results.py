"""Emulation results as datasets, without a service: when a result is a dataset, and how
finished parts become one (moved, not rewritten; described by a manifest; published whole)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models import datasets
from models.columns import CatalogError
from worker import emulate_jobs

JOB = "0123456789abcdef0123456789abcdef"


def rec(**fields: object) -> dict:
    return {"job_id": JOB, "samples": 1, "output_format": "parquet", **fields}


def test_a_result_within_the_limit_is_one_file() -> None:
    assert emulate_jobs.result_dataset(rec(), 100, limit=100) is None
    assert emulate_jobs.result_dataset(rec(output_format="csv", samples=4), 25, 100) is None


def test_a_parquet_result_over_the_limit_becomes_a_dataset_by_itself() -> None:
    assert emulate_jobs.result_dataset(rec(), 101, limit=100) == "emulated-0123456789ab"
    # the limit counts output rows: rows × samples
    assert emulate_jobs.result_dataset(rec(samples=4), 26, limit=100) == "emulated-0123456789ab"
    assert datasets.NAME_RE.match(emulate_jobs.auto_dataset_name(JOB))


def test_a_named_dataset_is_the_result_whatever_its_size() -> None:
    assert emulate_jobs.result_dataset(rec(result_dataset="mine"), 1, limit=100) == "mine"
    assert emulate_jobs.result_dataset(rec(result_dataset="mine"), 10**9, limit=100) == "mine"


@pytest.mark.parametrize("fmt", ["csv", "fits"])
def test_a_csv_or_fits_result_over_the_limit_is_refused_saying_what_to_ask(fmt: str) -> None:
    with pytest.raises(CatalogError) as err:
        emulate_jobs.result_dataset(rec(output_format=fmt, samples=2), 51, limit=100)
    text = str(err.value)
    assert fmt.upper() in text and "100" in text
    assert "output=parquet" in text and "dataset=NAME" in text
    emulate_jobs.check_one_file(rec(output_format=fmt, samples=2), 50, limit=100)  # fits


def write_parts(folder: Path, sizes: list[int]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths, start = [], 0
    for k, n in enumerate(sizes):
        df = pd.DataFrame({"id": np.arange(start, start + n), "mag_r": np.linspace(20, 24, n)})
        path = folder / datasets.part_name(k)
        df.to_parquet(path, index=False)
        paths.append(path)
        start += n
    return paths


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_moved_parts_keep_their_bytes_and_the_manifest_describes_them(tmp_path: Path) -> None:
    src = write_parts(tmp_path / "out", [5, 7, 3])
    before = [sha(p) for p in src]
    moved = datasets.move_parts(src, tmp_path / "ds")
    assert [p.name for p in moved] == [p.name for p in src] and not any(p.exists() for p in src)
    assert [sha(p) for p in moved] == before  # renamed, not re-encoded
    # a move redone after an interruption finds the parts where they are
    assert datasets.move_parts(src, tmp_path / "ds") == moved
    parts = datasets.describe_parts(moved)
    assert [p["rows"] for p in parts] == [5, 7, 3] and [p["sha256"] for p in parts] == before
    desc = datasets.catalog_manifest("ds", "emulation", tmp_path / "ds", parts, seed=4)
    assert desc["rows"] == 15 and desc["columns"] == ["id", "mag_r"] and desc["seed"] == 4
    assert desc["sha256"] == hashlib.sha256("".join(f"{h}\n" for h in before).encode()).hexdigest()
    assert desc["size"] == sum(p.stat().st_size for p in moved) and desc["kind"] == "catalog"
    with pytest.raises(FileNotFoundError):
        datasets.move_parts([tmp_path / "out" / "part-00009.parquet"], tmp_path / "ds")


def test_a_finished_job_publishes_its_parts_as_a_dataset_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, root = tmp_path / "home", tmp_path / "home" / "data"
    out = emulate_jobs.job_dir(home, JOB) / "out"
    src = write_parts(out, [4, 4, 2])
    hashes = [sha(p) for p in src]
    job = rec(
        samples=2, rows_total=5, chunks_total=3, chunk_rows=2, seed=9, model="balrog",
        version="v3", result_dataset="emu",
    )  # fmt: skip
    # an earlier run moved one part before it died, and an abandoned build left a stray part
    stray = datasets.building_dir(root, "emu")
    datasets.move_parts(src[:1], stray)
    (stray / "part-00007.parquet").write_bytes(b"stale")
    assert emulate_jobs.publish_dataset(home, root, job) == {"rows_done": 5}
    folder = datasets.dataset_dir(root, "emu")
    assert sorted(p.name for p in folder.iterdir()) == [
        "_manifest.json", "part-00000.parquet", "part-00001.parquet", "part-00002.parquet",
    ]  # fmt: skip
    manifest = json.loads((folder / "_manifest.json").read_text())
    assert manifest["source"] == "emulation" and manifest["model"] == "balrog@v3"
    assert (manifest["seed"], manifest["samples"], manifest["job_id"]) == (9, 2, JOB)
    assert manifest["rows"] == 10 and manifest["input_rows"] == 5
    assert [p["sha256"] for p in manifest["parts"]] == hashes
    assert not out.exists() and not stray.exists()
    desc = datasets.describe(root, "emu")
    assert desc["state"] == "ready"
    assert list(pd.read_parquet(folder)["id"]) == list(range(10))  # one table, in order
    # a run that finishes it again (the first died before recording it) changes nothing
    assert emulate_jobs.publish_dataset(home, root, job) == {"rows_done": 5}
    # rows that do not add up are an error, not a dataset
    other = {**job, "job_id": "f" * 32, "result_dataset": "emu2", "rows_total": 6}
    write_parts(emulate_jobs.job_dir(home, other["job_id"]) / "out", [4, 4, 2])
    with pytest.raises(RuntimeError, match="10 rows"):
        emulate_jobs.publish_dataset(home, root, other)
    assert datasets.describe(root, "emu2") is None


def test_a_part_is_served_only_by_a_listed_name(tmp_path: Path) -> None:
    folder = tmp_path / "cat"
    paths = write_parts(folder, [3, 3])
    datasets.write_manifest(
        folder, datasets.catalog_manifest("cat", "upload", folder, datasets.describe_parts(paths))
    )
    assert datasets.part_path(tmp_path, "cat", "part-00001.parquet") == paths[1]
    for bad in ("part-00002.parquet", "../cat/part-00000.parquet", "_manifest.json", ".."):
        with pytest.raises(datasets.DatasetError, match=r"part-00000\.parquet, part-00001"):
            datasets.part_path(tmp_path, "cat", bad)
    # a manifest written before parts were listed: they are read from the folder
    desc = json.loads((folder / "_manifest.json").read_text())
    datasets.write_manifest(folder, {**desc, "parts": 2})
    assert [p["rows"] for p in datasets.parts(tmp_path, "cat")] == [3, 3]
    (tmp_path / "imgs" / "images").mkdir(parents=True)
    datasets.write_manifest(tmp_path / "imgs", {"name": "imgs", "kind": "images"})
    assert datasets.parts(tmp_path, "imgs") is None and datasets.parts(tmp_path, "nope") is None
    with pytest.raises(datasets.DatasetError, match="no parts"):
        datasets.part_path(tmp_path, "imgs", "part-00000.parquet")
