"""Emulator quality on held-out objects: KS/W1 per band and per bin, completeness, plots.

Three models are scored on the same test split against the simulated observations:

- `ours` — the checkpoint under evaluation (cWGAN-GP without the MSE term + calibrated
  detection classifier);
- `seed_mse` — the seed's variant: the same networks trained with the same budget and the
  generator's MSE term (`--set mse_weight=1.0`). Pass `baseline_checkpoint`, or train it into
  the sibling run folder `<run>-mse/` (e.g. `var/runs/balrog-default-mse/model.pt` next to
  `var/runs/balrog-default/model.pt`), where it is found automatically;
- `gaussian` — per band, the observed − true offset is Gaussian with a mean and scatter
  fitted in bins of true magnitude on the train split; detection is a Bernoulli draw with
  the train-split completeness in bins of true i magnitude.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from models.checkpoint import load_checkpoint
from models.columns import BANDS, CONDITIONS
from models.emulator_sampler import Emulator
from training.emulator_gan import Split, calibration_report, load_emulator_catalog

log = logging.getLogger(__name__)

SampleFn = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]

MAG_BIN = 1.0  # width of the true-magnitude bins for KS/W1
COMPLETENESS_BIN = 0.5  # width of the true-magnitude bins for completeness
CONDITION_BINS = 4  # quantile bins of each observing condition
MIN_BIN = 30  # objects a bin needs (on both sides) to be scored
KS_MEAN_FACTOR = 0.8687  # mean of the Kolmogorov distribution: E[KS] ≈ this · sqrt(1/n + 1/m)


# --------------------------------------------------------------------------------------------
# the Gaussian-noise baseline


class GaussianBaseline:
    """Per-band Gaussian offsets and per-bin completeness, fitted on the train split."""

    def __init__(self, train: Split, bin_width: float = 0.25, min_count: int = 20) -> None:
        self.bin_width = bin_width
        det = train.only_detected()
        self.edges: list[np.ndarray] = []
        self.mean: list[np.ndarray] = []
        self.std: list[np.ndarray] = []
        for j in range(3):
            true, delta = det.x[:, j].astype(np.float64), det.observed[:, j] - det.x[:, j]
            edges = self._edges(true)
            m, s = self._binned(true, delta, edges, min_count)
            self.edges.append(edges)
            self.mean.append(m)
            self.std.append(s)
        true_i = train.x[:, 1].astype(np.float64)
        self.det_edges = self._edges(true_i)
        which = self._which(true_i, self.det_edges)
        n = np.bincount(which, minlength=len(self.det_edges) - 1)
        k = np.bincount(which, weights=train.detected, minlength=len(self.det_edges) - 1)
        # empty bins take the completeness of the nearest filled bin
        self.completeness = _fill_nearest(np.where(n > 0, k / np.maximum(n, 1), np.nan))

    def _edges(self, values: np.ndarray) -> np.ndarray:
        lo = np.floor(values.min() / self.bin_width) * self.bin_width
        hi = np.ceil(values.max() / self.bin_width) * self.bin_width + self.bin_width
        return np.arange(lo, hi + 1e-9, self.bin_width)

    @staticmethod
    def _which(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
        return np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)

    def _binned(
        self, x: np.ndarray, y: np.ndarray, edges: np.ndarray, min_count: int
    ) -> tuple[np.ndarray, np.ndarray]:
        which = self._which(x, edges)
        nb = len(edges) - 1
        mean, std = np.full(nb, np.nan), np.full(nb, np.nan)
        for b in range(nb):
            v = y[which == b]
            if len(v) >= min_count:
                mean[b], std[b] = v.mean(), v.std()
        return _fill_nearest(mean), _fill_nearest(std)

    def sample(self, x: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        x = x.astype(np.float64)
        p = self.completeness[self._which(x[:, 1], self.det_edges)]
        detected = rng.random(len(x)) < p
        mags = np.full((len(x), 3), np.nan)
        for j in range(3):
            b = self._which(x[:, j], self.edges[j])
            mags[:, j] = x[:, j] + self.mean[j][b] + self.std[j][b] * rng.standard_normal(len(x))
        mags[~detected] = np.nan
        return mags, detected


def _fill_nearest(values: np.ndarray) -> np.ndarray:
    ok = np.flatnonzero(np.isfinite(values))
    if len(ok) == 0:
        return np.zeros_like(values)
    idx = np.arange(len(values))
    nearest = ok[np.abs(idx[:, None] - ok[None, :]).argmin(axis=1)]
    return values[nearest]


# --------------------------------------------------------------------------------------------
# metrics


def _ks_w1(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    return (
        float(stats.ks_2samp(a, b).statistic),
        float(stats.wasserstein_distance(a, b)),
    )


def _binned_distances(
    key_sim: np.ndarray,
    sim: np.ndarray,
    key_emu: np.ndarray,
    emu: np.ndarray,
    edges: np.ndarray,
) -> dict[str, list]:
    """KS/W1 of `emu` vs `sim` within bins of a key (the key of each side's own objects)."""
    out: dict[str, list] = {"edges": [float(e) for e in edges], "n": [], "ks": [], "w1": []}
    for lo, hi in itertools.pairwise(edges):
        a = sim[(key_sim >= lo) & (key_sim < hi)]
        b = emu[(key_emu >= lo) & (key_emu < hi)]
        out["n"].append(len(a))
        if len(a) >= MIN_BIN and len(b) >= MIN_BIN:
            ks, w1 = _ks_w1(b, a)
        else:
            ks, w1 = None, None
        out["ks"].append(ks)
        out["w1"].append(w1)
    return out


def _mean(values: list[float | None]) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else None


def model_metrics(
    test: Split,
    mags: np.ndarray,
    detected: np.ndarray,
    mag_edges: list[np.ndarray],
    x: np.ndarray | None = None,
) -> dict[str, Any]:
    """Every figure of one model's realizations of the test split.

    `x` (M, 9) are the inputs the model was given (default: the test inputs; pass them
    repeated when the model drew several realizations per object); `mags` (M, 3) and
    `detected` (M,) are its outputs.
    """
    x = test.x if x is None else x
    sim_det = test.only_detected()
    emu_ok = detected & np.isfinite(mags).all(axis=1)
    x_emu, m_emu = x[emu_ok], mags[emu_ok]
    x_sim, m_sim = sim_det.x, sim_det.observed.astype(np.float64)
    out: dict[str, Any] = {"detected_fraction": float(detected.mean())}
    if len(m_emu) < 2:
        return {**out, "error": "the model detected fewer than 2 test objects"}

    # overall, per band and in the two colours
    for j, b in enumerate(BANDS):
        out[f"ks_{b}"], out[f"w1_{b}"] = _ks_w1(m_emu[:, j], m_sim[:, j])
    out["ks_mean"] = float(np.mean([out[f"ks_{b}"] for b in BANDS]))
    out["w1_mean"] = float(np.mean([out[f"w1_{b}"] for b in BANDS]))
    for name, (j, k) in {"r-i": (0, 1), "i-z": (1, 2)}.items():
        out[f"ks_{name}"], out[f"w1_{name}"] = _ks_w1(
            m_emu[:, j] - m_emu[:, k], m_sim[:, j] - m_sim[:, k]
        )
    out["ks_colour_mean"] = float(np.mean([out["ks_r-i"], out["ks_i-z"]]))

    # in bins of true magnitude (same band)
    by_mag = {
        b: _binned_distances(x_sim[:, j], m_sim[:, j], x_emu[:, j], m_emu[:, j], mag_edges[j])
        for j, b in enumerate(BANDS)
    }
    out["by_true_mag"] = by_mag
    out["ks_mag_bins_mean"] = _mean([v for d in by_mag.values() for v in d["ks"]])
    out["w1_mag_bins_mean"] = _mean([v for d in by_mag.values() for v in d["w1"]])

    # in quantile bins of each observing condition (the observed magnitude of its band)
    by_cond = {}
    for k, name in enumerate(CONDITIONS):
        j = BANDS.index(name[-1])
        col = 3 + k
        edges = np.quantile(test.x[:, col], np.linspace(0, 1, CONDITION_BINS + 1))
        edges[-1] += 1e-6  # include the largest value in the last bin
        by_cond[name] = _binned_distances(
            x_sim[:, col], m_sim[:, j], x_emu[:, col], m_emu[:, j], edges
        )
    out["by_condition"] = by_cond
    out["ks_condition_bins_mean"] = _mean([v for d in by_cond.values() for v in d["ks"]])
    out["w1_condition_bins_mean"] = _mean([v for d in by_cond.values() for v in d["w1"]])

    # completeness vs true magnitude
    comp = {}
    errors: list[float] = []
    for j, b in enumerate(BANDS):
        edges = _completeness_edges(test.x[:, j])
        n, sim_c = _completeness_curve(test.x[:, j], test.detected, edges)
        _, emu_c = _completeness_curve(x[:, j], detected, edges)
        ok = n >= MIN_BIN
        err = np.abs(emu_c - sim_c)
        comp[b] = {
            "edges": [float(e) for e in edges],
            "n": n.tolist(),
            "simulated": [float(v) if o else None for v, o in zip(sim_c, ok, strict=True)],
            "emulated": [float(v) if o else None for v, o in zip(emu_c, ok, strict=True)],
            "abs_error": [float(v) if o else None for v, o in zip(err, ok, strict=True)],
        }
        errors.extend(err[ok].tolist())
    out["completeness"] = comp
    out["completeness_mae"] = float(np.mean(errors)) if errors else None
    out["completeness_max_error"] = float(np.max(errors)) if errors else None
    return out


def _completeness_curve(
    true: np.ndarray, detected: np.ndarray, edges: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Objects per bin and the detected fraction per bin of true magnitude."""
    nb = len(edges) - 1
    which = np.searchsorted(edges, true, side="right") - 1
    inside = (which >= 0) & (which < nb)
    n = np.bincount(which[inside], minlength=nb)
    k = np.bincount(which[inside], weights=detected[inside].astype(np.float64), minlength=nb)
    return n, k / np.maximum(n, 1)


def _completeness_edges(values: np.ndarray) -> np.ndarray:
    lo = np.floor(np.quantile(values, 0.001) / COMPLETENESS_BIN) * COMPLETENESS_BIN
    hi = np.ceil(np.quantile(values, 0.999) / COMPLETENESS_BIN) * COMPLETENESS_BIN
    return np.arange(lo, hi + 1e-9, COMPLETENESS_BIN)


SUMMARY_KEYS = (
    "ks_mean",
    "w1_mean",
    *(f"ks_{b}" for b in BANDS),
    *(f"w1_{b}" for b in BANDS),
    "ks_r-i",
    "ks_i-z",
    "ks_colour_mean",
    "ks_mag_bins_mean",
    "w1_mag_bins_mean",
    "ks_condition_bins_mean",
    "w1_condition_bins_mean",
    "completeness_mae",
)


def _summary(models: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each headline figure side by side with the winner (lowest value; ties share it)."""
    table: dict[str, Any] = {}
    for key in SUMMARY_KEYS:
        row = {name: m.get(key) for name, m in models.items() if m.get(key) is not None}
        if row:
            best = min(row.values())
            winners = [name for name, value in row.items() if value == best]
            table[key] = {**row, "winner": " = ".join(winners)}
    return table


# --------------------------------------------------------------------------------------------
# plots


def _plots(
    test: Split,
    x: np.ndarray,
    realizations: dict[str, tuple[np.ndarray, np.ndarray]],
    out_dir: Path,
) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    out_dir.mkdir(parents=True, exist_ok=True)
    sim = test.only_detected().observed.astype(np.float64)
    # one realization per object, so that every panel has the test split's sampling noise
    reps = len(x) // len(test)
    panels = {"simulated": sim} | {
        name: mags[::reps][det[::reps] & np.isfinite(mags[::reps]).all(axis=1)]
        for name, (mags, det) in realizations.items()
    }
    ri, iz = sim[:, 0] - sim[:, 1], sim[:, 1] - sim[:, 2]
    xr = np.quantile(ri, [0.005, 0.995])
    yr = np.quantile(iz, [0.005, 0.995])
    pad = 0.15 * np.array([-1, 1])
    xr, yr = xr + pad * np.ptp(xr), yr + pad * np.ptp(yr)
    bins = [np.linspace(*xr, 45), np.linspace(*yr, 45)]
    h_sim, *_ = np.histogram2d(ri, iz, bins=bins)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), sharey=True)
    for ax, (name, m) in zip(np.atleast_1d(axes), panels.items(), strict=True):
        ax.hist2d(m[:, 0] - m[:, 1], m[:, 1] - m[:, 2], bins=bins, norm=LogNorm(), cmap="viridis")
        levels = np.quantile(h_sim[h_sim > 0], [0.5, 0.9, 0.99])
        ax.contour(
            0.5 * (bins[0][1:] + bins[0][:-1]),
            0.5 * (bins[1][1:] + bins[1][:-1]),
            h_sim.T,
            levels=levels,
            colors="white",
            linewidths=0.8,
        )
        ax.set_title(f"{name} ({len(m)} detected)")
        ax.set_xlabel("r − i")
    np.atleast_1d(axes)[0].set_ylabel("i − z")
    fig.suptitle(
        "Colour–colour of detected test objects, one realization each "
        "(white: simulated density contours)"
    )
    fig.tight_layout()
    cc = out_dir / "balrog_colour_colour.png"
    fig.savefig(cc, dpi=110)
    plt.close(fig)

    colours = {"ours": "C0", "seed_mse": "C1", "gaussian": "C2"}
    order = ["seed_mse", "gaussian", "ours"]  # ours drawn last, on top
    realizations = dict(
        sorted(realizations.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else -1)
    )
    fig, axes = plt.subplots(
        2, 3, figsize=(13, 6.5), sharex="col", gridspec_kw={"height_ratios": [2.2, 1]}
    )
    for j, b in enumerate(BANDS):
        edges = _completeness_edges(test.x[:, j])
        centres = 0.5 * (edges[1:] + edges[:-1])
        n, sim_c = _completeness_curve(test.x[:, j], test.detected, edges)
        ok = n >= MIN_BIN
        axes[0, j].plot(centres[ok], sim_c[ok], "k-", lw=2.5, label="simulated")
        for name, (_, det) in realizations.items():
            c = _completeness_curve(x[:, j], det, edges)[1]
            label = name
            ours = realizations.get("ours")
            if name != "ours" and ours is not None and np.array_equal(det, ours[1]):
                label = f"{name} (same detector as ours)"
            style = {"color": colours.get(name), "lw": 2.5 if name == "seed_mse" else 1.2}
            axes[0, j].plot(centres[ok], c[ok], "--", label=label, **style)
            axes[1, j].plot(centres[ok], c[ok] - sim_c[ok], "o-", ms=3, **style)
        axes[1, j].axhline(0, color="k", lw=0.8)
        axes[0, j].set_title(f"{b} band")
        axes[1, j].set_xlabel(f"true {b} magnitude")
    axes[0, 0].set_ylabel("completeness")
    axes[1, 0].set_ylabel("emulated − simulated")
    axes[0, 0].legend()
    fig.tight_layout()
    cp = out_dir / "balrog_completeness.png"
    fig.savefig(cp, dpi=110)
    plt.close(fig)
    return {"colour_colour": str(cc), "completeness": str(cp)}


# --------------------------------------------------------------------------------------------
# the report


def default_baseline(checkpoint: Path) -> Path:
    """Where the seed-variant run sits next to a run's `model.pt`: `<run>-mse/model.pt`."""
    run = checkpoint.resolve().parent
    return run.with_name(run.name + "-mse") / "model.pt"


def evaluate_emulator(
    checkpoint: str | Path,
    data: str | Path | None = None,
    out_dir: str | Path | None = None,
    seed: int = 0,
    device: str = "auto",
    *,
    baseline_checkpoint: str | Path | None = None,
    timing_rows: int = 100_000,
    realizations: int = 10,
) -> dict[str, Any]:
    """Score the emulator and both baselines on the test split; plots go to `out_dir`.

    Each model draws `realizations` outputs per test object, so that the comparison is
    limited by the simulated test sample, not by the models' own sampling noise.
    `seconds_per_object` times one `Emulator.sample` call on `timing_rows` test inputs
    (repeated as needed) on the evaluation device.
    """
    from models.settings import get_settings

    if realizations < 1:
        raise ValueError(f"realizations must be at least 1, got {realizations}")
    checkpoint = Path(checkpoint)
    data = Path(data) if data else get_settings().data_dir / "balrog.parquet"
    splits = load_emulator_catalog(data, seed=seed)
    test, train = splits["test"], splits["train"]
    if len(test) == 0 or test.detected.sum() < 2:
        raise ValueError(f"{data} has too few detected objects in its 'test' split")

    ours = Emulator.load(checkpoint, device=device)
    samplers: dict[str, SampleFn] = {"ours": lambda x, s: ours.sample(x, 1, s)}
    baseline = Path(baseline_checkpoint) if baseline_checkpoint else default_baseline(checkpoint)
    baseline_info: dict[str, Any] = {"checkpoint": str(baseline), "available": baseline.is_file()}
    if baseline.is_file():
        seed_mse = Emulator.load(baseline, device=device)
        samplers["seed_mse"] = lambda x, s: seed_mse.sample(x, 1, s)
        baseline_info["step"] = seed_mse.meta.get("step")
    else:
        log.warning("no seed-variant checkpoint at %s: that baseline is skipped", baseline)
    gauss = GaussianBaseline(train)
    samplers["gaussian"] = gauss.sample

    mag_edges = [
        np.arange(np.floor(test.x[:, j].min()), np.ceil(test.x[:, j].max()) + MAG_BIN, MAG_BIN)
        for j in range(3)
    ]
    x_rep = np.repeat(test.x, realizations, axis=0)  # (N·R, 9)
    draws = {name: fn(x_rep, seed) for name, fn in samplers.items()}
    models = {
        name: model_metrics(test, mags, det, mag_edges, x_rep)
        for name, (mags, det) in draws.items()
    }

    # time per object of the emulator: one batch of `timing_rows` test inputs
    x_big = np.resize(test.x, (timing_rows, test.x.shape[1]))
    t0 = time.perf_counter()
    ours.sample(x_big, 1, seed)
    per_object = (time.perf_counter() - t0) / len(x_big)

    n_sim = int(test.detected.sum())
    n_emu = int(draws["ours"][1].sum())
    ckpt = load_checkpoint(checkpoint)
    summary = _summary(models)
    report: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "data": str(data),
        "split": "test",
        "rows": len(test),
        "realizations": realizations,
        "seed": seed,
        "steps": ckpt.step,
        "simulated_detected_fraction": float(test.detected.mean()),
        "ks_expected_if_identical": KS_MEAN_FACTOR * float(np.sqrt(1 / n_sim + 1 / n_emu)),
        "detector_calibration": ckpt.extra.get("calibration", {}),
        "detector_test": calibration_report(ours.detection_probability(test.x), test.detected),
        "seconds_per_object": per_object,
        "device": str(ours.device),
        "baseline_seed_mse": baseline_info,
        "summary": summary,
        # the headline figure of each plot, and who wins it
        "plot_winners": {
            "colour_colour (ks_colour_mean)": summary.get("ks_colour_mean", {}).get("winner"),
            "completeness (completeness_mae)": summary.get("completeness_mae", {}).get("winner"),
        },
        "models": models,
    }
    if out_dir is not None:
        report["plots"] = _plots(test, x_rep, draws, Path(out_dir))
    return report


__all__ = ["GaussianBaseline", "default_baseline", "evaluate_emulator", "model_metrics"]
