"""A flow emulator trained through POST /train on a DES-named catalog: its figures, its serving."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from tests.catalogs import make_analytic_catalog
from tests.integration.conftest import Service, wait_for_state


def test_flow_job_reports_the_figures_of_cosmogan_evaluate_and_is_served(
    service: Service, client: httpx.Client, tmp_path: Path
) -> None:
    from training.evaluate import evaluate

    # a user's catalog: DES column names, detected rows without a z magnitude
    df = pd.read_parquet(make_analytic_catalog(tmp_path / "c.parquet", 5000, seed=8))
    df.loc[df.index[df["detected"]][::20], "mag_z"] = np.nan
    df = df.rename(columns={"true_mag_i": "BDF_MAG_DERED_CALIB_I", "sky_sigma_r": "SKYRMS_R"})
    path = service.home / "data" / "user_balrog.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(path, index=False)

    overrides = {"epochs": 2, "hidden": 16, "transforms": 2, "detector_epochs": 2}
    r = client.post(
        "/train",
        json={"preset": "balrog-flow", "data": path.name, "overrides": overrides},
        headers=service.auth,
    )
    assert r.status_code == 202, r.text
    job = wait_for_state(client, r.json()["job_id"], {"succeeded", "failed"}, timeout=240)
    assert job["state"] == "succeeded", job
    figures = job["metrics"]["figures"]
    model = service.home / "registry" / "balrog-flow" / "versions" / job["job_id"] / "model.pt"
    report = evaluate(model, data=path, device="cpu")
    for key in ("ks_i", "ks_z", "w1_r", "ks_r-i", "ks_magerr_i", "completeness_mae"):
        assert figures[key] == pytest.approx(report["figures"]["ours"][key]), key
    assert figures["c2st_auc"] == pytest.approx(report["classifier_auc"]["ours"]["auc"])

    # served like the cWGAN-GP, under the preset's name
    inputs = [c for c in df.columns if c.startswith(("true_", "BDF", "sky", "SKY", "psf"))]
    rows = df[inputs].head(3).to_dict(orient="records")
    out = client.post(
        "/emulate", json={"rows": rows, "seed": 4, "model": "balrog-flow", "version": job["job_id"]}
    )
    assert out.status_code == 200, out.text
    assert len(out.json()["rows"]) == 3
