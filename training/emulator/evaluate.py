"""Emulator evaluation report: models side by side, each figure beside its floor and its noise.

Models scored on the same simulated test rows, one realization per object each:

- `ours` — the checkpoint under evaluation;
- `seed_mse` — the seed's variant (cWGAN-GP with the generator's MSE term): pass
  `baseline_checkpoint`, or put it in the sibling run folder `<run>-mse/model.pt`;
- any other checkpoints passed in `compare` (e.g. the flow next to the cWGAN-GP);
- `gaussian` — `training.emulator.baselines.GaussianBaseline`, fitted on a train split;
- `floor` — with `floor_data`, a second, independent simulator draw of the same objects
  (`cosmogan data balrog --seed S --draw-seed D`): what a perfect emulator would score.
  Without it, a catalog the service's simulator built (and nobody changed since) gets
  its second draw simulated here (`training.emulator.floor`); any other catalog has no
  floor, and the report says why (`floor_source` or `floor_missing`).

Noise: every figure is recomputed on `bootstrap` paired resamples of the test objects (the
same resample for every model); `noise` holds each figure's bootstrap standard deviation,
and `vs_gaussian` each model's difference from the Gaussian with the standard deviation of
that paired difference. A difference beyond 2 of those is "better" or "worse", else "tie".
`vs_floor` divides each figure by the floor's. The classifier two-sample AUC
(`training.emulator.c2st`) is reported with its own bootstrap error.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from models.checkpoint import load_checkpoint
from models.emulator_sampler import EmulatorSampler
from models.results import tie_note
from training.emulator.baselines import GaussianBaseline
from training.emulator.c2st import classifier_auc
from training.emulator.data import Split, load_emulator_catalog, read_rows, split_labels
from training.emulator.detector import calibration_report, detection_figures
from training.emulator.floor import SecondDraw, second_draw
from training.emulator.metrics import (
    KS_MEAN_FACTOR,
    Bins,
    Output,
    bootstrap_figures,
    figures,
    spread,
)

log = logging.getLogger(__name__)

BEYOND_NOISE = 2.0  # a difference counts when it exceeds this many standard deviations
FLOOR_GOAL = 1.5  # the target: every figure within this factor of the floor
# the figures the goals are judged on (the per-band and binned figures behind them are kept)
HEADLINE = (
    "ks_r",
    "ks_i",
    "ks_z",
    "w1_r",
    "w1_i",
    "w1_z",
    "ks_r-i",
    "ks_i-z",
    "w1_r-i",
    "w1_i-z",
    "ks_magerr_r",
    "ks_magerr_i",
    "ks_magerr_z",
    "ks_mag_bins_mean",
    "w1_mag_bins_mean",
    "ks_cond_bins_mean",
    "w1_cond_bins_mean",
    "completeness_mae",
    "completeness_cond_mae",
)  # not `detected_fraction_error`: one |difference|, whose floor value is noise around 0


def default_baseline(checkpoint: Path) -> Path:
    """Where the seed-variant run sits next to a run's `model.pt`: `<run>-mse/model.pt`."""
    run = checkpoint.resolve().parent
    return run.with_name(run.name + "-mse") / "model.pt"


def _select(rows: Split, labels: np.ndarray | None, split: str, seed: int) -> np.ndarray:
    if split == "all":
        return np.ones(len(rows), dtype=bool)
    labels = split_labels(len(rows), seed) if labels is None else labels
    return labels == split


def load_test(
    data: Path, split: str, seed: int, floor_data: Path | None
) -> tuple[Split, Output | None]:
    """The test rows, and the floor draw of the same objects when `floor_data` is given."""
    _, _, test, floor = _load(data, split, seed, floor_data)
    return test, floor


def _load(
    data: Path, split: str, seed: int, floor_data: Path | None
) -> tuple[Split, np.ndarray, Split, Output | None]:
    """Every row of `data`, the mask of the rows under evaluation, those rows, and the
    `floor_data` draw of them (None without it)."""
    rows, labels = read_rows(data)
    keep = _select(rows, labels, split, seed)
    test = rows.take(keep)
    if len(test) == 0 or test.detected.sum() < 2:
        raise ValueError(f"{data} has too few detected objects in its {split!r} rows")
    if floor_data is None:
        return rows, keep, test, None
    other, _ = read_rows(floor_data)
    if len(other) != len(rows) or not np.array_equal(other.x, rows.x):
        raise ValueError(
            f"{floor_data} is not a draw of the objects of {data}: build both with one --seed "
            "and two --draw-seed values"
        )
    o = other.take(keep)
    return rows, keep, test, Output(o.observed.astype(np.float64), o.detected, _as64(o.magerr))


def own_floor(data: Path, rows: Split, keep: np.ndarray) -> SecondDraw:
    """The floor of rows `keep` of `data` without a `--floor-data` catalog: a second draw
    simulated here when the service's simulator built `data` (`training.emulator.floor`),
    else the reason there is none; a draw that fails leaves the report without a floor."""
    try:
        draw = second_draw(data, keep, x=rows.x)
    except (OSError, ValueError) as exc:  # e.g. no truth table on this machine
        log.warning("no floor: the second draw of %s failed: %s", data, exc)
        return SecondDraw(missing=f"no floor: the second simulator draw failed ({exc})")
    if draw.output is None:
        log.info("%s", draw.missing)
    else:
        log.info("the floor is %s", draw.source)
    return draw


def _as64(a: np.ndarray | None) -> np.ndarray | None:
    return None if a is None else a.astype(np.float64)


def _verdict(diff: float, sd: float | None) -> str:
    if sd is None or not np.isfinite(sd) or sd == 0:
        return "tie" if diff == 0 else ("better" if diff < 0 else "worse")
    if diff < -BEYOND_NOISE * sd:
        return "better"
    if diff > BEYOND_NOISE * sd:
        return "worse"
    return "tie"


def paired(
    point: dict[str, dict[str, float | None]],
    boots: dict[str, dict[str, list[float | None]]],
    auc: dict[str, dict[str, Any]],
    name: str,
    ref: str,
) -> dict[str, dict[str, Any]]:
    """Model `name` against model `ref`, figure by figure: the difference, the standard
    deviation of the paired bootstrap differences, and the verdict beyond 2 of those."""
    figs, other = point[name], point[ref]
    table: dict[str, dict[str, Any]] = {}
    for k in (k for k in HEADLINE if figs.get(k) is not None and other.get(k) is not None):
        pairs = [
            (a - b)
            for a, b in zip(
                boots.get(name, {}).get(k, []), boots.get(ref, {}).get(k, []), strict=True
            )
            if a is not None and b is not None
        ]
        diff = figs[k] - other[k]  # type: ignore[operator]
        sd = float(np.std(pairs, ddof=1)) if len(pairs) >= 2 else None
        table[k] = {"diff": diff, "sd": sd, "verdict": _verdict(diff, sd)}
    a, g = auc.get(name, {}), auc.get(ref, {})
    if a.get("auc") is not None and g.get("auc") is not None:
        diff = abs(a["auc"] - 0.5) - abs(g["auc"] - 0.5)
        sd = float(np.hypot(a.get("auc_sd", 0.0), g.get("auc_sd", 0.0)))
        table["c2st_auc"] = {"diff": diff, "sd": sd, "verdict": _verdict(diff, sd)}
    return table


def compare(
    point: dict[str, dict[str, float | None]],
    boots: dict[str, dict[str, list[float | None]]],
    auc: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """`vs_floor`, `vs_gaussian`, `vs_compared` (ours against each other model it is shown
    beside) and the per-model goal summary from the figures."""
    out: dict[str, Any] = {"vs_floor": {}, "vs_gaussian": {}, "vs_compared": {}, "goals": {}}
    floor, gauss = point.get("floor"), point.get("gaussian")
    for name, figs in point.items():
        if name == "floor":
            continue
        keys = [k for k in HEADLINE if figs.get(k) is not None]
        goal: dict[str, Any] = {}
        if floor is not None:
            ratios = {k: figs[k] / floor[k] for k in keys if floor.get(k) not in (None, 0)}  # type: ignore[operator]
            out["vs_floor"][name] = ratios
            goal["within_floor_goal"] = sorted(k for k, r in ratios.items() if r <= FLOOR_GOAL)
            goal["beyond_floor_goal"] = {
                k: round(r, 2) for k, r in sorted(ratios.items()) if r > FLOOR_GOAL
            }
        if gauss is not None and name != "gaussian":
            table = paired(point, boots, auc, name, "gaussian")
            out["vs_gaussian"][name] = table
            goal["better_than_gaussian"] = sorted(
                k for k, v in table.items() if v["verdict"] == "better"
            )
            goal["tie_with_gaussian"] = sorted(k for k, v in table.items() if v["verdict"] == "tie")
            goal["worse_than_gaussian"] = sorted(
                k for k, v in table.items() if v["verdict"] == "worse"
            )
        out["goals"][name] = goal
    if "ours" in point:
        for ref in sorted(set(point) - {"ours", "floor", "gaussian"}):
            out["vs_compared"][ref] = paired(point, boots, auc, "ours", ref)
    return out


def evaluate_emulator(
    checkpoint: str | Path,
    data: str | Path | None = None,
    out_dir: str | Path | None = None,
    seed: int = 0,
    device: str = "auto",
    *,
    baseline_checkpoint: str | Path | None = None,
    compare_checkpoints: dict[str, str | Path] | None = None,
    floor_data: str | Path | None = None,
    train_data: str | Path | None = None,
    split: str | None = None,
    bootstrap: int = 20,
    timing_rows: int = 100_000,
) -> dict[str, Any]:
    """Score the emulator, the baselines and the floor on the same test rows (see module doc).

    `split`: which rows of `data` to use — "test" (default), "val", "train" or "all" (the
    default when `floor_data` is given: a dedicated test catalog and its second draw).
    The Gaussian baseline is fitted on the train split of `train_data` (default: `data`
    when the test rows are a split of it, else the default training catalog, if present).
    With `out_dir`, `report.json` is written there first, then the plots.
    """
    from models.registry import write_json_atomic
    from models.settings import get_settings

    checkpoint = Path(checkpoint)
    data = Path(data) if data else get_settings().data_dir / "balrog.parquet"
    floor_path = Path(floor_data) if floor_data else None
    split = split or ("all" if floor_path else "test")
    rows_all, keep, test, floor = _load(data, split, seed, floor_path)
    if floor_path is not None:
        draw = SecondDraw(floor, f"the second simulator draw of the same objects in {floor_path}")
    else:
        draw = own_floor(data, rows_all, keep)
    floor, floor_source, floor_missing = draw.output, draw.source, draw.missing
    del rows_all
    log.info("evaluating %s on %d rows of %s (%s split)", checkpoint, len(test.x), data, split)
    bins = Bins.from_inputs(test.x.astype(np.float64))

    emulators: dict[str, EmulatorSampler] = {
        "ours": EmulatorSampler.load(checkpoint, device=device)
    }
    baseline = Path(baseline_checkpoint) if baseline_checkpoint else default_baseline(checkpoint)
    if baseline.is_file():
        emulators["seed_mse"] = EmulatorSampler.load(baseline, device=device)
    else:
        log.warning("no seed-variant checkpoint at %s: that baseline is skipped", baseline)
    for name, path in (compare_checkpoints or {}).items():
        emulators[name] = EmulatorSampler.load(path, device=device)
    outputs: dict[str, Output] = {}
    detection: dict[str, dict[str, float]] = {}
    x64 = test.x.astype(np.float64)
    for name, em in emulators.items():
        log.info("emulating the test rows with %s", name)
        rows = em.emulate(test.x, 1, seed)
        outputs[name] = Output(rows.mags, rows.detected, rows.magerr)
        prob = em.detection_probability(test.x)
        detection[name] = {
            **calibration_report(prob, test.detected),
            **detection_figures(x64, prob, test.detected, bins),
        }

    if train_data is None and split != "all":
        train_data = data
    if train_data is None and (get_settings().data_dir / "balrog.parquet").is_file():
        train_data = get_settings().data_dir / "balrog.parquet"
    if train_data is not None:
        train = load_emulator_catalog(train_data, seed=seed)["train"]
        outputs["gaussian"] = GaussianBaseline(train).sample(x64, seed)
    else:
        log.warning("no training catalog for the Gaussian baseline: it is skipped")
    if floor is not None:
        outputs["floor"] = floor

    t0 = time.perf_counter()
    log.info(
        "figures of %s, %d bootstrap replicates and two-sample classifiers (the longest step)",
        ", ".join(outputs),
        bootstrap,
    )
    point = {name: figures(test, o, bins) for name, o in outputs.items()}
    boots = bootstrap_figures(test, outputs, bins, bootstrap, seed) if bootstrap >= 2 else {}
    noise = {
        name: {k: spread(v) for k, v in per.items() if k in HEADLINE} for name, per in boots.items()
    }
    auc = {name: classifier_auc(test, o, seed) for name, o in outputs.items()}
    log.info(
        "figures, %d bootstrap replicates and AUCs in %.1f s", bootstrap, time.perf_counter() - t0
    )

    ours = emulators["ours"]
    log.info("timing the emulator on %s rows", f"{timing_rows:,}")
    x_big = np.resize(test.x, (timing_rows, test.x.shape[1]))
    t0 = time.perf_counter()
    ours.sample(x_big, 1, seed)
    per_object = (time.perf_counter() - t0) / len(x_big)
    log.info("%.2f µs per object; figures in bins of magnitude and conditions", per_object * 1e6)
    n_sim = int(test.detected.sum())
    ckpt = load_checkpoint(checkpoint)
    report: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "kind": ckpt.kind,
        "data": str(data),
        "floor_data": str(floor_path) if floor_path else None,
        "floor_source": floor_source,
        "floor_missing": floor_missing,
        "train_data": str(train_data) if train_data else None,
        "split": split,
        "rows": len(test),
        "simulated_detected": n_sim,
        "simulated_detected_fraction": float(test.detected.mean()),
        "seed": seed,
        "bootstrap": bootstrap,
        "steps": ckpt.step,
        "ks_expected_if_identical": KS_MEAN_FACTOR * float(np.sqrt(2.0 / n_sim)),
        "models": sorted(outputs),
        "figures": point,
        "noise": noise,
        "classifier_auc": auc,
        "detection_calibration_test": detection,
        "detector_calibration_val": ckpt.extra.get("calibration", {}),
        "out_of_domain_fraction": float(ours.scalers.out_of_domain(x64).mean()),
        "seconds_per_object": per_object,
        "device": str(ours.device),
        **compare(point, boots, auc),
        "details": {
            name: {
                k: v
                for k, v in figures(test, outputs[name], bins, details=True).items()
                if k.endswith("_bins")
            }
            for name in outputs
        },
    }
    if out_dir is not None:
        out = Path(out_dir)
        write_json_atomic(out / "report.json", report)  # first: plots must never lose it
        from training.emulator.plots import write_plots

        log.info("report written to %s; drawing the plots", out / "report.json")
        report["plots"] = write_plots(test, outputs, bins, report, out)
    return report


def verdict(counts: dict[str, int], detected: int | None = None) -> str:
    """One sentence on a model against the Gaussian baseline, from `vs_baseline`'s counts.

    A model worse than the Gaussian on most figures is marked unfit for science: a per-bin
    Gaussian costs nothing to fit, and a network that loses to it has not learned the data.
    Without a majority either way, the sentence names the test's `detected` objects, whose
    bootstrap noise the ties are within: on a small split they hide real gains (a 60k run
    that beat the Gaussian on 19 of 20 figures on 600,000 test objects tied 11 on its own
    6,000, MODEL_CARD.md).
    """
    better, tie, worse = (counts.get(k, 0) for k in ("better", "tie", "worse"))
    n = better + tie + worse
    if n == 0:
        return "not compared: no Gaussian baseline could be fitted on this catalog"
    if worse > n / 2:
        return (
            f"worse than the Gaussian baseline on {worse} of {n} figures: do not use it for science"
        )
    rest = f" (tied on {tie}, worse on {worse})"
    if better > n / 2:
        return f"better than the Gaussian baseline on {better} of {n} figures{rest}"
    text = f"no clear gain over the Gaussian baseline: better on {better} of {n} figures{rest}"
    unresolved = tie_note(tie, detected)
    return f"{text}; {unresolved}" if unresolved else text


def job_figures(model: str | Path, data: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """The end-of-training evaluation: `cosmogan evaluate --checkpoint MODEL --data DATA`.

    Runs `evaluate_emulator` with the command's defaults (test split, seed 0, Gaussian fitted
    on the train split), writes the report to `<out_dir>/evaluation.json` and returns its
    headline figures under the metric schema every training job records (see
    `training.image.metrics.figures_vs_floor`): `figures`, `floor` and `ratio` (a second
    simulator draw of the test objects when the service's simulator built the catalog, see
    `training.emulator.floor`; else empty), `floor_source` (that draw in one sentence) or
    `floor_missing` (why there is none), `evaluated_on`, plus `baseline` (the
    Gaussian's figures), `vs_baseline` (how many figures beat, tie or lose to it beyond the
    bootstrap noise), `verdict` (that count in one sentence, see `verdict`) and
    `us_per_object` (the model's sampling cost on this machine), so that a job's result and
    the command show the same numbers.
    """
    from models.registry import write_json_atomic

    report = evaluate_emulator(model, data=data, device="cpu", timing_rows=10_000)
    write_json_atomic(Path(out_dir) / "evaluation.json", report)
    point = report["figures"]

    def headline(name: str) -> dict[str, float]:
        figs = point.get(name) or {}
        return {k: figs[k] for k in HEADLINE if figs.get(k) is not None}

    figures = {**headline("ours"), "c2st_auc": report["classifier_auc"]["ours"]["auc"]}
    floor = headline("floor")
    goal = report["goals"].get("ours", {})
    counts = {
        key.removesuffix("_than_gaussian").removesuffix("_with_gaussian"): len(goal[key])
        for key in ("better_than_gaussian", "tie_with_gaussian", "worse_than_gaussian")
        if key in goal
    }
    return {
        "figures": figures,
        "floor": floor,
        "ratio": {k: figures[k] / v for k, v in floor.items() if v and k in figures},
        **{k: report[k] for k in ("floor_source", "floor_missing") if report.get(k)},
        "evaluated_on": {
            "rows": report["rows"],
            "split": report["split"],
            "detected": report["simulated_detected"],
        },
        "baseline": headline("gaussian"),
        "vs_baseline": counts,
        "verdict": verdict(counts, report["simulated_detected"]),
        "us_per_object": report["seconds_per_object"] * 1e6,
        "detection": {
            k: v
            for k, v in report["detection_calibration_test"]["ours"].items()
            if not isinstance(v, list)
        },
        # each figure's verdict against the Gaussian, beyond the bootstrap noise
        "verdicts": {
            k: v["verdict"] for k, v in report.get("vs_gaussian", {}).get("ours", {}).items()
        },
    }


__all__ = [
    "compare",
    "default_baseline",
    "evaluate_emulator",
    "job_figures",
    "load_test",
    "verdict",
]
