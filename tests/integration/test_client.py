"""The Python client (`import cosmogan`) against the real service: README example, emulation
small and large, images, job handles, naming, errors, and the async twin."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from PIL import Image

import cosmogan
from tests.integration.conftest import API_KEY, Service
from tests.integration.test_http import TINY_DCGAN
from tests.rows import ROW

README = Path(__file__).parents[2] / "README.md"


@pytest.fixture(scope="module")
def client(service: Service) -> cosmogan.Client:
    with cosmogan.Client(service.base_url, api_key=API_KEY, progress=False) as c:
        yield c


def catalog(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame([ROW] * n)
    df["true_mag_r"] = rng.uniform(19.0, 25.5, n)
    df["true_mag_i"] = df["true_mag_r"] - rng.normal(0.4, 0.2, n)
    df["true_mag_z"] = df["true_mag_i"] - rng.normal(0.2, 0.1, n)
    df["object_id"] = np.arange(n) * 7
    df.index = pd.Index([f"gal{k}" for k in range(n)], name="name")
    return df


def readme_example() -> str:
    text = README.read_text()
    section = text.split("## Python client", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs_as_written(
    service: Service, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = readme_example().replace("http://127.0.0.1:8000", service.base_url)
    monkeypatch.setenv("COSMOGAN_API_KEY", API_KEY)
    monkeypatch.chdir(tmp_path)
    scope: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), scope)  # the block exactly as a user pastes it
    assert Image.open(tmp_path / "nebula.png").size == scope["images"][0].size
    observed, mine, job = scope["observed"], scope["mine"], scope["job"]
    assert list(observed.index) == [0, 1] and observed.attrs["seed"] == 7
    assert job.model == f"my-emulator@{job.job_id}"
    assert mine.attrs["model"] == job.model
    models = scope["client"].models()
    assert models["my-emulator"]["family"] == "emulator"
    assert models["my-emulator"]["active"] == job.job_id
    (version,) = models["my-emulator"]["versions"]
    assert version["kind"] == "cflow" and version["preset"] == "balrog-flow"


def test_emulate_keeps_the_catalog_and_reproduces_its_seed(
    client: cosmogan.Client, tmp_path: Path
) -> None:
    df = catalog(50)
    out = client.emulate(df)
    assert list(out.index) == list(df.index) and out.index.name == "name"
    assert (out["object_id"] == df["object_id"]).all()
    assert {"mag_r", "mag_i", "mag_z", "detected"} <= set(out.columns)
    seed = out.attrs["seed"]
    assert 0 <= seed <= 2**53 - 1
    again = client.emulate(df, seed=seed)
    pd.testing.assert_frame_equal(out, again)
    # the same rows as an astropy Table and as files give the same answer
    from astropy.table import Table

    pd.testing.assert_frame_equal(
        client.emulate(Table.from_pandas(df.reset_index()), seed=seed)[list(out.columns)].set_axis(
            df.index
        ),
        out,
    )
    df.to_csv(tmp_path / "c.csv", index=False)
    from_csv = client.emulate(tmp_path / "c.csv", seed=seed)
    np.testing.assert_allclose(from_csv["mag_r"], out["mag_r"].to_numpy(), equal_nan=True)
    two = client.emulate(df, seed=seed, samples=2)
    assert len(two) == 100


def test_a_catalog_over_the_request_limit_goes_through_emulate_jobs(
    service: Service, client: cosmogan.Client
) -> None:
    limit = client.config()["max_emulate_rows"]
    df = catalog(limit * 2 + 50, seed=1)
    with httpx.Client(base_url=service.base_url) as raw:
        r = raw.post("/emulate", json={"rows": df.head(limit + 1).to_dict("records")})
        assert r.status_code == 422 and "POST /emulate/jobs" in r.json()["detail"]
        body = df.head(limit + 1).to_csv(index=False)
        r = raw.post("/emulate", content=body, headers={"content-type": "text/csv"})
        assert r.status_code == 413 and "POST /emulate/jobs" in r.json()["detail"]
    out = client.emulate(df, seed=11)
    assert len(out) == len(df) and list(out.index) == list(df.index)
    assert (out["object_id"] == df["object_id"]).all()
    assert out.attrs["seed"] == 11
    # the background path draws the same rows as the direct one for the same seed
    head = client.emulate(df.head(limit), seed=11)
    np.testing.assert_array_equal(out["detected"].head(limit), head["detected"])
    np.testing.assert_allclose(out["mag_r"].head(limit), head["mag_r"], equal_nan=True)
    # without the key, the background path says so
    anonymous = cosmogan.Client(service.base_url, api_key="", progress=False)
    with pytest.raises(cosmogan.AuthenticationError):
        anonymous.emulate(df, seed=11)


def test_generate_gives_the_servers_images(client: cosmogan.Client) -> None:
    images = client.generate(seed=3, n=5)
    assert len(images) == 5 and all(isinstance(im, Image.Image) for im in images)
    arrays = client.generate(seed=3, n=5, output="array")
    assert arrays.shape[0] == 5 and arrays.shape[3] == 3 and arrays.dtype == np.uint8
    assert all(np.array_equal(np.asarray(im), a) for im, a in zip(images, arrays, strict=True))
    # the grid decodes as Pillow decodes it
    import io

    png = client.generate(seed=3, n=5, output="png")
    grid = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    h, w = arrays.shape[1:3]
    assert np.array_equal(grid[2 : 2 + h, 2 : 2 + w], arrays[0])
    assert not np.array_equal(arrays[0], arrays[1])


def test_a_job_handle_streams_cancels_resumes_and_registers_under_its_name(
    client: cosmogan.Client,
) -> None:
    job = client.train(
        "nebula-dcgan", data="tiny", model="client-dcgan", **TINY_DCGAN, max_steps=300, epochs=1000
    )
    seen = []
    for ev in job.events():
        seen.append(ev)
        if ev.event == "progress" and ev.data.get("step", 0) >= 1:
            break
    assert seen[0].event == "snapshot" and seen[-1].event == "progress"
    assert job.cancel()["cancel_requested"] is True
    done = job.wait(raise_on_failure=False, timeout=120)
    assert done["state"] == "cancelled" and done["step"] < 300
    with pytest.raises(cosmogan.JobFailed, match="cancelled"):
        job.wait()
    # resumed with its own settings, it finishes and registers under the name it was given
    rec = job.resume().wait(timeout=240)
    assert rec["state"] == "succeeded" and rec["step"] == 300
    assert job.model == f"client-dcgan@{job.job_id}" and rec["target"] == "client-dcgan"
    models = client.models()
    assert models["client-dcgan"]["family"] == "image"
    assert models["client-dcgan"]["active"] is None  # not asked to activate: nothing served
    with pytest.raises(cosmogan.NotFoundError, match="no active version"):
        client.generate(model="client-dcgan", n=1)
    client.activate(job.model)
    assert len(client.generate(model="client-dcgan", n=1)) == 1


def test_errors_name_what_is_wrong(service: Service, client: cosmogan.Client) -> None:
    anonymous = cosmogan.Client(service.base_url, api_key="", progress=False)
    with pytest.raises(cosmogan.AuthenticationError):
        anonymous.train("balrog", dry_run=True)
    with pytest.raises(cosmogan.InvalidRequestError, match="unknown preset"):
        client.train("no-such-preset")
    with pytest.raises(cosmogan.InvalidRequestError, match="an image generator"):
        client.train("balrog-flow", model="nebula", dry_run=True)
    with pytest.raises(cosmogan.NotFoundError, match="ghost"):
        client.generate(model="ghost", n=1)
    bad = catalog(3)
    bad.loc["gal1", "psf_fwhm_r"] = -1.0
    with pytest.raises(cosmogan.InvalidRequestError) as info:
        client.emulate(bad, seed=1)
    assert any(p.get("column") == "psf_fwhm_r" for p in info.value.problems)


def test_the_async_client_does_what_the_sync_one_does(
    service: Service, client: cosmogan.Client
) -> None:
    df = catalog(20, seed=4)

    async def run() -> tuple[pd.DataFrame, np.ndarray, dict[str, Any], list[str]]:
        async with cosmogan.AsyncClient(service.base_url, api_key=API_KEY, progress=False) as ac:
            out, arrays = await asyncio.gather(
                ac.emulate(df, seed=5), ac.generate(seed=3, n=2, output="array")
            )
            job = await ac.train("balrog", model="client-async", dry_run=True)
            kinds = [ev.event async for ev in job.events()]
            rec = await job.wait()
            return out, arrays, rec, kinds

    out, arrays, rec, kinds = asyncio.run(run())
    pd.testing.assert_frame_equal(out, client.emulate(df, seed=5))
    assert np.array_equal(arrays, client.generate(seed=3, n=2, output="array"))
    assert rec["state"] == "succeeded" and rec["model"].startswith("client-async@")
    assert kinds[0] == "snapshot" and kinds[-1] == "state"


def test_datasets_through_the_client(service: Service, client: cosmogan.Client) -> None:
    try:
        client.datasets()
    except cosmogan.NotFoundError:
        pytest.skip("this service has no /datasets routes")
    df = catalog(30)
    desc = client.upload_dataset("client-upload", df.reset_index(drop=True))
    assert desc["name"] == "client-upload" and desc["rows"] == 30
    assert client.dataset("client-upload")["state"] == "ready"
    assert "client-upload" in [d["name"] for d in client.datasets()]
    client.delete_dataset("client-upload")
    with pytest.raises(cosmogan.NotFoundError):
        client.dataset("client-upload")


def test_a_registry_made_before_model_names_still_lists_and_serves(
    service: Service, client: cosmogan.Client
) -> None:
    # a version as the registry stored trained models before: under the preset's name,
    # with no kind in its meta
    vdir = service.home / "registry" / "balrog-flow" / "versions" / "legacy"
    vdir.mkdir(parents=True)
    shutil.copy(service.home / "registry" / "balrog" / "versions" / "default" / "model.pt", vdir)
    meta = {
        "version": "legacy",
        "created": 1.0,
        "job_id": None,
        "metrics": {},
        "source": "training",
    }
    (vdir / "meta.json").write_text(json.dumps(meta))
    (vdir.parent.parent / "active.json").write_text(json.dumps({"version": "legacy"}))

    listed = client.models()["balrog-flow"]
    assert listed["family"] == "emulator" and listed["active"] == "legacy"
    assert listed["versions"][0]["kind"] == "cflow"
    out = client.emulate(catalog(5), seed=2, model="balrog-flow")
    assert out.attrs["model"] == "balrog-flow@legacy" and len(out) == 5
    with pytest.raises(cosmogan.InvalidRequestError, match="is an emulator"):
        client.generate(model="balrog-flow", n=1)
