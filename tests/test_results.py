"""One table per evaluation: the forms a job and a shipped version record, and the verdict."""

from __future__ import annotations

import json
from pathlib import Path

from models.results import results_table

WEIGHTS = Path(__file__).parents[1] / "models" / "weights"


def test_a_jobs_figures_become_rows_with_ratio_baseline_and_verdict() -> None:
    metrics = {
        "figures": {"ks_r": 0.02, "w1_r": 0.03, "c2st_auc": 0.8},
        "floor": {"ks_r": 0.01, "w1_r": 0.01},
        "ratio": {"ks_r": 2.0},
        "baseline": {"ks_r": 0.01, "w1_r": 0.02},
        "verdicts": {"ks_r": "worse", "w1_r": "worse", "c2st_auc": "better"},
    }
    table = results_table(metrics)
    rows = {r["figure"]: r for r in table["rows"]}
    assert rows["ks_r"] == {
        "figure": "ks_r", "model": 0.02, "baseline": 0.01, "floor": 0.01, "ratio": 2.0,
        "verdict": "worse",
    }  # fmt: skip
    assert rows["w1_r"]["ratio"] == 3.0  # computed where the job did not record it
    assert rows["c2st_auc"]["ratio"] is None  # an AUC has no floor ratio
    assert table["counts"] == {"better": 1, "tie": 0, "worse": 2}
    assert table["loses_to_baseline"] and table["summary"].startswith("Worse than the Gaussian")


def test_a_run_without_evaluation_has_no_table() -> None:
    assert results_table({"images": 12, "eta_s": 0, "steps": 18}) is None
    assert results_table(None) is None


def test_shipped_versions_get_the_same_rows_as_trained_ones() -> None:
    for name in ("balrog", "nebula"):
        sidecar = json.loads((WEIGHTS / f"{name}.json").read_text())
        table = results_table(sidecar["metrics"], shipped=sidecar)
        rows = {r["figure"]: r for r in table["rows"]}
        assert not any(k.startswith("floor_") for k in rows)
        figure = "ks_r" if name == "balrog" else "swd_avg"
        assert rows[figure]["floor"] and rows[figure]["ratio"] > 1
    balrog = json.loads((WEIGHTS / "balrog.json").read_text())
    table = results_table(balrog["metrics"], shipped=balrog)
    assert table["counts"]["better"] == len(balrog["goals"]["better_than_gaussian"])
    assert not table["loses_to_baseline"]


def test_the_table_names_the_floor_or_why_there_is_none_and_the_cost() -> None:
    job = {
        "figures": {"ks_r": 0.02},
        "floor": {"ks_r": 0.01},
        "floor_source": "a second analytic draw of the 600 evaluated objects",
        "us_per_object": 3.5,
    }
    table = results_table(job)
    assert table["floor_source"] == job["floor_source"] and table["floor_missing"] is None
    assert table["us_per_object"] == 3.5
    missing = results_table(
        {"figures": {"ks_r": 0.02}, "floor": {}, "floor_missing": "no floor: x"}
    )
    assert missing["floor_missing"] == "no floor: x" and missing["floor_source"] is None
    assert missing["us_per_object"] is None
    for name in ("balrog", "balrog-flow"):
        sidecar = json.loads((WEIGHTS / f"{name}.json").read_text())
        table = results_table(sidecar["metrics"], shipped=sidecar)
        # the cost is beside the table, not a row of distances
        assert table["us_per_object"] == sidecar["metrics"]["us_per_object"] > 0
        figures = {r["figure"] for r in table["rows"]}
        assert not figures & {"us_per_object", "times_faster_than_galsim", "seconds_per_object"}
        assert "balrog_test_floor.parquet" in table["floor_source"]


def test_ties_without_a_majority_name_the_detected_test_objects_they_are_within() -> None:
    figures = {f"ks_{b}": 0.01 for b in "riz"} | {"c2st_auc": 0.55}
    verdicts = {"ks_r": "better", "ks_i": "tie", "ks_z": "tie", "c2st_auc": "better"}
    job = {"figures": figures, "verdicts": verdicts}
    small = job | {"evaluated_on": {"rows": 6000, "split": "test", "detected": 1650}}
    text = results_table(small)["summary"]
    assert text.startswith("Better than the Gaussian baseline on 2 of 4 figures, a tie on 2")
    assert "1,650 detected test objects" in text and "cosmogan evaluate --data" in text
    # the page tells it from a win and from a loss (amber, not green or red)
    assert not results_table(small)["beats_baseline"]
    assert not results_table(small)["loses_to_baseline"]
    # no count recorded (older jobs), or a majority won: the sentence is as before
    assert "detected" not in results_table(job)["summary"]
    clear = small | {"verdicts": verdicts | {"ks_i": "better"}}
    assert "detected" not in results_table(clear)["summary"]
    assert results_table(clear)["beats_baseline"]
