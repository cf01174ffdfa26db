"""/datasets against the real service: upload → train → serve; build (fanned out) → train."""

from __future__ import annotations

import io
import json
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pandas as pd
import pytest

from tests.catalogs import make_analytic_catalog
from tests.integration.conftest import Service, make_images, wait_for_state, wait_until

PARQUET = "application/vnd.apache.parquet"
TRAIN = {"epochs": 1, "hidden": 16, "transforms": 2, "detector_epochs": 1}


@pytest.fixture(scope="module")
def client_headers(service: Service) -> dict[str, str]:
    return service.auth  # uploads, builds and training need the API key


def ready(client: httpx.Client, name: str, timeout: float = 180) -> dict:
    def done() -> dict | None:
        rec = client.get(f"/datasets/{name}").json()
        assert rec.get("state") not in ("failed", "cancelled"), rec
        return rec if rec.get("state") == "ready" else None

    return wait_until(done, timeout=timeout, every=0.3)


def test_upload_train_serve(client: httpx.Client, service: Service, tmp_path: Path) -> None:
    df = pd.read_parquet(make_analytic_catalog(tmp_path / "c.parquet", 3000, seed=5))
    df = df.rename(columns={"true_mag_i": "BDF_MAG_DERED_CALIB_I"})  # DES names are accepted
    body = df.to_csv(index=False).encode()
    r = client.put("/datasets/mine", content=body, headers={"content-type": "text/csv"})
    assert r.status_code == 201, r.text
    desc = r.json()
    assert desc["name"] == "mine" and desc["state"] == "ready" and desc["rows"] == 3000
    assert desc["source"] == "upload" and desc["size"] > 0 and len(desc["sha256"]) == 64
    assert "true_mag_i" in desc["columns"] and desc["created"] > 0
    import hashlib

    assert desc["sha256"] == hashlib.sha256(body).hexdigest()
    assert client.get("/datasets/mine").json()["rows"] == 3000
    assert "mine" in [d["name"] for d in client.get("/datasets").json()["datasets"]]
    again = client.put("/datasets/mine", content=body, headers={"content-type": "text/csv"})
    assert again.status_code == 409

    r = client.post(
        "/train",
        json={"preset": "balrog-flow", "data": "mine", "overrides": TRAIN, "activate": False},
    )
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    busy = client.delete("/datasets/mine")  # queued or running: refused
    job = wait_for_state(client, job_id, {"succeeded", "failed"}, timeout=240)
    assert busy.status_code in (409, 204) and job["state"] == "succeeded", job
    if busy.status_code == 204:
        pytest.fail("a dataset in use by a queued or running job was deleted")
    assert "used by" in busy.json()["detail"] and job_id in busy.json()["detail"]
    rows = df.drop(columns=["mag_r", "mag_i", "mag_z", "detected"]).head(3)
    out = client.post(
        "/emulate",
        json={"rows": rows.to_dict(orient="records"), "model": "balrog", "version": job_id},
    )
    assert out.status_code == 200, out.text
    assert len(out.json()["rows"]) == 3
    assert client.delete("/datasets/mine").status_code == 204
    assert client.get("/datasets/mine").status_code == 404


def test_a_bad_upload_names_the_row_and_leaves_nothing(
    client: httpx.Client, service: Service, tmp_path: Path
) -> None:
    df = pd.read_parquet(make_analytic_catalog(tmp_path / "c.parquet", 500, seed=6))
    df.loc[317, "psf_fwhm_z"] = -1.0
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    r = client.put("/datasets/broken", content=buf.getvalue(), headers={"content-type": PARQUET})
    assert r.status_code == 422, r.text
    assert "psf_fwhm_z" in r.json()["detail"] and "317" in r.json()["detail"]
    assert client.get("/datasets/broken").status_code == 404
    data = service.home / "data"
    assert not (data / "broken").exists()
    assert not any((data / ".incoming").glob("*")) if (data / ".incoming").exists() else True
    r = client.put("/datasets/broken", json={"rows": []})
    assert r.status_code == 415
    with service.client() as anonymous:
        assert anonymous.put("/datasets/x", content=b"a\n1\n").status_code == 401
        assert anonymous.delete("/datasets/x").status_code == 401
        assert anonymous.post("/datasets", json={}).status_code == 401


def test_an_image_archive_becomes_an_image_dataset(client: httpx.Client, tmp_path: Path) -> None:
    make_images(tmp_path / "imgs", n=6)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(tmp_path / "imgs", arcname="set")
    r = client.put(
        "/datasets/blobs", content=buf.getvalue(), headers={"content-type": "application/gzip"}
    )
    assert r.status_code == 201, r.text
    assert r.json()["kind"] == "images" and r.json()["rows"] == 6


def test_build_fanned_out_then_train(client: httpx.Client, service: Service) -> None:
    from training.emulator.balrog import build_catalog
    from training.emulator.catalog import read_catalog

    spec = {"name": "built", "simulator": "analytic", "rows": 3000, "seed": 4, "chunk_rows": 400}
    r = client.post("/datasets", json=spec)
    assert r.status_code == 202, r.text
    assert r.headers["location"] == "/datasets/built" and len(r.json()["job_id"]) == 32
    desc = ready(client, "built")
    assert desc["rows"] == 3000 and desc["source"] == "analytic"
    manifest = json.loads((service.home / "data" / "built" / "_manifest.json").read_text())
    assert len(manifest["parts"]) == 8 and manifest["simulator_version"].startswith("minibalrog")
    job = client.get(f"/datasets/jobs/{r.json()['job_id']}").json()
    assert job["state"] == "succeeded" and job["rows_done"] == 3000

    # the same rows as one local process builds
    local = build_catalog(
        service.home / "local.parquet",
        3000,
        "analytic",
        seed=4,
        workers=1,
        chunk_rows=1000,
        data_dir=service.home / "data",
    )
    want = pd.read_parquet(local["path"])
    got = read_catalog(service.home / "data" / "built")
    pd.testing.assert_frame_equal(got, want)

    r = client.post("/train", json={"preset": "balrog-flow", "data": "built", "overrides": TRAIN})
    assert r.status_code == 202, r.text
    job = wait_for_state(client, r.json()["job_id"], {"succeeded", "failed"}, timeout=240)
    assert job["state"] == "succeeded", job
    # the service built it, so the job's test split gets a second draw: the floor
    metrics = job["metrics"]
    assert metrics["floor"] and "floor_missing" not in metrics, metrics
    tested = metrics["evaluated_on"]["rows"]
    assert f"second analytic draw of the {tested:,} evaluated objects" in metrics["floor_source"]
    assert metrics["ratio"]["ks_i"] > 0 and metrics["verdict"]
    assert job["results"]["floor_source"] == metrics["floor_source"]
    assert job["results"]["us_per_object"] == metrics["us_per_object"] > 0
    assert any(row["floor"] for row in job["results"]["rows"])
    assert client.post("/datasets", json=spec).status_code == 409  # exists now


def test_train_on_a_missing_dataset_says_how_to_make_one(client: httpx.Client) -> None:
    r = client.post("/train", json={"preset": "balrog", "data": "nowhere"})
    assert r.status_code == 422 and "POST /datasets" in r.json()["detail"]
    r = client.post("/train", json={"preset": "balrog", "data": "/etc"})
    assert r.status_code == 422 and "outside the data root /" in r.json()["detail"]
    assert client.get("/datasets/nowhere").status_code == 404


def test_the_command_line_uploads_builds_lists_and_deletes(
    service: Service, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from launcher.cli import main

    key = service.auth["Authorization"].split()[1]
    remote = ["datasets", "--url", service.base_url, "--api-key", key]
    path = make_analytic_catalog(tmp_path / "cli.parquet", 400, seed=9)
    assert main([*remote, "upload", "from-cli", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 400
    submit = ["data", "balrog", "--submit", service.base_url, "--api-key", key]
    args = ["--name", "cli-built", "--simulator", "analytic", "--rows", "500", "--seed", "1"]
    assert main(["-q", *submit, *args]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "ready"
    assert main([*remote, "list"]) == 0
    listed = capsys.readouterr().out
    assert "from-cli" in listed and "cli-built" in listed
    for name in ("from-cli", "cli-built"):
        assert main([*remote, "delete", name]) == 0
    assert main([*remote, "show", "from-cli"]) == 2  # gone: a clear error, exit 2


def test_a_build_is_cancelled_and_resumed_where_it_stopped(
    client: httpx.Client, service: Service
) -> None:
    spec = {"name": "paused", "simulator": "galsim", "rows": 240, "seed": 3, "chunk_rows": 10}
    r = client.post("/datasets", json=spec)
    assert r.status_code == 202, r.text
    job = f"/datasets/jobs/{r.json()['job_id']}"
    wait_until(lambda: client.get(job).json()["rows_done"] >= 20, timeout=120, every=0.2)
    assert client.delete("/datasets/paused").status_code == 409  # its own build uses it
    rec = client.delete(job).json()
    assert rec["state"] == "cancelled"
    parts = service.home / "data" / ".building" / "paused"
    kept = {p.name for p in parts.glob("part-*.parquet")}
    assert kept and client.get("/datasets/paused").json()["state"] == "cancelled"
    again = client.post("/datasets", json=spec)  # the same build again: a resume
    assert again.status_code == 202 and again.json()["job_id"] == r.json()["job_id"]
    desc = ready(client, "paused")
    assert desc["rows"] == 240
    done = client.get(job).json()
    assert done["state"] == "succeeded" and done["rows_done"] == 240  # nothing counted twice
    with service.client() as anonymous:  # no server paths for anonymous callers
        assert anonymous.get("/datasets").json()["data_root"] is None


def test_builds_racing_for_one_name_start_one_job(client: httpx.Client, service: Service) -> None:
    specs = [
        {"name": "raced", "simulator": "analytic", "rows": 1000 + k, "seed": k} for k in range(6)
    ]
    with ThreadPoolExecutor(len(specs)) as pool, service.client(headers=service.auth) as c:
        answers = list(pool.map(lambda spec: c.post("/datasets", json=spec), specs))
    codes = sorted(r.status_code for r in answers)
    assert codes == [202] + [409] * 5, [r.text for r in answers]
    (won,) = [r for r in answers if r.status_code == 202]
    assert ready(client, "raced")["rows"] == specs[answers.index(won)]["rows"]
    assert client.delete("/datasets/raced").status_code == 204


def test_the_readmes_first_training_call_works_after_its_build_step(
    client: httpx.Client,
) -> None:
    # the README's build step (smaller), then its training call: no `data`, the preset's
    # default dataset name
    spec = {"name": "balrog", "simulator": "analytic", "rows": 2000, "seed": 0}
    assert client.post("/datasets", json=spec).status_code == 202
    ready(client, "balrog")
    overrides = {"epochs": 1, "hidden": 16, "n_critic": 1, "detector_epochs": 1}
    r = client.post("/train", json={"preset": "balrog", "overrides": overrides})
    assert r.status_code == 202, r.text
    job = wait_for_state(client, r.json()["job_id"], {"succeeded", "failed"}, timeout=240)
    assert job["state"] == "succeeded" and job["data"].endswith("balrog"), job
    assert client.delete("/datasets/balrog").status_code == 204
