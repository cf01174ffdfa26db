"""`python -m bench --quick` runs every benchmark end to end (real service, real training)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.bench
@pytest.mark.timeout(600)
def test_quick_bench_runs_every_suite(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=580,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((out / "latest.json").read_text())
    assert set(report["seconds"]) == {"training", "serving", "scaling"}
    assert report["machine"]["cores"] >= 1
    tables = report["tables"]
    assert len(tables) >= 5
    for table in tables:
        assert table["rows"], f"empty table {table['title']!r}"
        assert table["command"].startswith("python -m bench --quick")
        for row in table["rows"]:
            numbers = [v for v in row if isinstance(v, int | float)]
            assert all(math.isfinite(v) and v >= 0 for v in numbers), (table["title"], row)

    scaling = report["raw"]["scaling"]  # one worker and two gave the same bytes
    assert scaling["same_build"] and scaling["same_emulation"]
    assert scaling["build_ratio"] > 0 and scaling["emulate_ratio"] > 0

    train = report["raw"]["training"]
    for recipe in ("seed", "ours", "ours-w16"):
        trial = train[f"train_{recipe}"]
        assert trial["steps"] >= 1 and trial["flops_per_step"] > 0
        assert trial["quality"]["swd_avg"] > 0
    # the seed critic's patch map and wider generator cost more FLOPs per image than ours
    seed, ours = train["train_seed"], train["train_ours"]
    per_image = lambda t: t["flops_per_step"] / t["batch_size"]  # noqa: E731
    assert per_image(seed) > per_image(ours)

    serve = report["raw"]["serving"]
    # /generate was measured again while a real training job was running in the worker
    loaded = serve["generate_training"]
    assert len(loaded["service"]) == len(loaded["raw"]) == serve["sizes"]["repeats"]
    assert all(b >= 1 for level in serve["concurrency"].values() for b in level["batches"])
    assert (out / "latest.md").read_text().count("###") == len(tables)
