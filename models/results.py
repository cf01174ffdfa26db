"""One table of a version's or a job's evaluation: figure, model, baseline, floor, ratio,
verdict; torch-free, shared by `GET /models`, `GET /train/{id}` and the web page.

Every figure is a distance to the simulator (or to held-out images), so lower is better;
`c2st_auc` is a classifier's AUC, best at 0.5. `ratio` is model / floor (1 = as close as
two draws of the simulator are to each other). The verdict compares the model with the
Gaussian baseline beyond the bootstrap noise (`better`, `tie`, `worse`), where the
evaluation measured it. Beside the rows: where the floor came from (`floor_source`) or why
there is none (`floor_missing`), and what one emulated object costs (`us_per_object`).
"""

from __future__ import annotations

import math
from typing import Any

VERDICTS = ("better", "tie", "worse")
# numbers recorded beside the figures that are not distances to the data
NOT_FIGURES = {
    "seconds_per_object",
    "us_per_object",
    "times_faster_than_galsim",
    "best_epoch",
    "step",
    "epoch",
}
GOAL_KEYS = {
    "better_than_gaussian": "better",
    "tie_with_gaussian": "tie",
    "worse_than_gaussian": "worse",
}


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def _verdicts_from_goals(goals: dict[str, Any]) -> dict[str, str]:
    return {k: verdict for key, verdict in GOAL_KEYS.items() for k in goals.get(key) or []}


def results_table(
    metrics: dict[str, Any] | None, shipped: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """The table of `metrics` in either recorded form: a training job's (`figures`,
    `floor`, `ratio`, `baseline`, `verdicts`) or, given `shipped` (the sidecar file of a
    shipped version, possibly empty), a shipped version's flat figures (with
    `floor_<figure>` beside them, or `floor`/`goals` in the sidecar). None when there is no
    figure: a run that was not evaluated records only its progress numbers."""
    metrics, extra = metrics or {}, shipped or {}
    if isinstance(metrics.get("figures"), dict):
        figures = metrics["figures"]
        floor = metrics.get("floor") or {}
        ratio = metrics.get("ratio") or {}
        baseline = metrics.get("baseline") or {}
        verdicts = metrics.get("verdicts") or {}
    elif shipped is not None:
        figures = {
            k: v
            for k, v in metrics.items()
            if _num(v) is not None and not k.startswith("floor_") and k not in NOT_FIGURES
        }
        floor = {k.removeprefix("floor_"): v for k, v in metrics.items() if k.startswith("floor_")}
        floor.update(extra.get("floor") or {})
        ratio = extra.get("vs_floor") or {}
        baseline = {}
        verdicts = _verdicts_from_goals(extra.get("goals") or {})
    else:
        return None
    rows = []
    for name, value in figures.items():
        value = _num(value)
        if value is None or name in NOT_FIGURES:
            continue
        f = _num(floor.get(name))
        r = _num(ratio.get(name))
        if r is None and f and name != "c2st_auc":
            r = value / f
        verdict = verdicts.get(name)
        rows.append(
            {
                "figure": name,
                "model": value,
                "baseline": _num(baseline.get(name)),
                "floor": f,
                "ratio": r,
                "verdict": verdict if verdict in VERDICTS else None,
            }
        )
    if not rows:
        return None
    counts = {v: sum(1 for row in rows if row["verdict"] == v) for v in VERDICTS}
    cost = _num(metrics.get("us_per_object"))
    if cost is None and _num(metrics.get("seconds_per_object")) is not None:
        cost = metrics["seconds_per_object"] * 1e6
    return {
        "lower_is_better": True,
        "rows": rows,
        "counts": counts,
        "summary": summary(counts, _detected(metrics)),
        "loses_to_baseline": counts["worse"] > (sum(counts.values()) / 2),
        "beats_baseline": counts["better"] > (sum(counts.values()) / 2),
        "floor_source": _text(metrics.get("floor_source")) or _shipped_floor(extra),
        "floor_missing": _text(metrics.get("floor_missing")),
        "us_per_object": cost,
    }


def _detected(metrics: dict[str, Any]) -> int | None:
    """The detected objects of a job's test split (`evaluated_on`), where it was recorded."""
    evaluated = metrics.get("evaluated_on")
    n = evaluated.get("detected") if isinstance(evaluated, dict) else None
    return n if isinstance(n, int) and not isinstance(n, bool) else None


def _text(v: Any) -> str | None:
    return v if isinstance(v, str) and v else None


def _shipped_floor(sidecar: dict[str, Any]) -> str | None:
    """A shipped emulator's floor: the second draw its sidecar names (`--floor-data`)."""
    evaluated = sidecar.get("evaluated_on")
    data = _text(evaluated.get("floor_data")) if isinstance(evaluated, dict) else None
    return f"a second simulator draw of the test objects: {data}" if data else None


def summary(counts: dict[str, int], detected: int | None = None) -> str | None:
    """A plain sentence on the model against the Gaussian baseline (None if not measured);
    where it wins no majority, with the test's `detected` objects the ties are within."""
    n = sum(counts.values())
    if not n:
        return None
    if counts["worse"] > n / 2:
        return (
            f"Worse than the Gaussian baseline on {counts['worse']} of {n} figures: this "
            "model does not yet beat a per-band Gaussian fit; train longer or on more data."
        )
    text = (
        f"Better than the Gaussian baseline on {counts['better']} of {n} figures, "
        f"a tie on {counts['tie']}, worse on {counts['worse']}."
    )
    unresolved = tie_note(counts["tie"], detected) if counts["better"] <= n / 2 else None
    return f"{text} {unresolved[0].upper()}{unresolved[1:]}." if unresolved else text


def tie_note(tie: int, detected: int | None) -> str | None:
    """Why ties may be no loss: the bootstrap noise of the test's `detected` objects (None
    without a tie or a count)."""
    if not tie or detected is None:
        return None
    return (
        f"the ties are within the bootstrap noise of {detected:,} detected test objects, "
        "and scoring on more objects (`cosmogan evaluate --data`) may resolve them"
    )
