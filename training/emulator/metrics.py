"""Emulator figures: one realization of a model against the simulated test rows, as numbers.

Every figure compares what a model says a survey measures with what the simulator measured,
on the same objects (inputs), so that a perfect emulator scores what a second, independent
simulator draw of those objects scores — the floor. All figures are "lower is better":

- ``ks_{b}``, ``w1_{b}``: KS statistic and 1-Wasserstein distance (mag) of the observed
  magnitudes of detected objects, per band; ``ks_{c}``, ``w1_{c}`` for the colours r−i and
  i−z; ``ks_magerr_{b}`` for the magnitude errors when both sides have them;
- ``ks_mag_bins_mean`` / ``w1_mag_bins_mean``: the same for the offsets observed − true
  within 1-mag bins of true magnitude (each band), averaged over bins; ``ks_cond_bins_mean``
  / ``w1_cond_bins_mean`` within quartile bins of each observing condition (the offsets of
  that condition's band);
- ``completeness_mae`` / ``completeness_max``: |emulated − simulated| detected fraction in
  0.5-mag bins of true magnitude (each band); ``completeness_cond_mae`` in the condition
  quartiles;
- ``detected_fraction_error``: |emulated − simulated| overall detected fraction.

`Bins` fixes the bins once (from the test objects), so that bootstrap replicates and models
are scored on the same bins.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from models.columns import BANDS, CONDITIONS
from training.emulator.data import Split

MAG_BIN = 1.0  # width of the true-magnitude bins for KS/W1 of the offsets
COMPLETENESS_BIN = 0.5  # width of the true-magnitude bins for completeness
CONDITION_BINS = 4  # quantile bins of each observing condition
MIN_BIN = 50  # simulated objects a bin needs to be scored
COLOURS = {"r-i": (0, 1), "i-z": (1, 2)}
KS_MEAN_FACTOR = 0.8687  # mean of the Kolmogorov distribution: E[KS] ≈ this · sqrt(1/n + 1/m)


@dataclass
class Output:
    """One realization per test row of a model (or of a second simulator draw)."""

    mags: np.ndarray  # (N, 3) float64, NaN where not detected or not measured
    detected: np.ndarray  # (N,) bool
    magerr: np.ndarray | None = None  # (N, 3) float64 or None

    def take(self, rows: np.ndarray) -> Output:
        err = None if self.magerr is None else self.magerr[rows]
        return Output(self.mags[rows], self.detected[rows], err)


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """The two-sample Kolmogorov–Smirnov statistic (no p-value: fast for large samples)."""
    a, b = np.sort(a), np.sort(b)
    both = np.concatenate([a, b])
    fa = np.searchsorted(a, both, side="right") / len(a)
    fb = np.searchsorted(b, both, side="right") / len(b)
    return float(np.max(np.abs(fa - fb)))


def _ks_w1(a: np.ndarray, b: np.ndarray) -> tuple[float, float] | tuple[None, None]:
    if len(a) < 2 or len(b) < 2:
        return None, None
    return ks_statistic(a, b), float(stats.wasserstein_distance(a, b))


@dataclass
class Bins:
    """Bin edges fixed from the test objects: true magnitude and condition quantiles."""

    mag: list[np.ndarray]  # per band, for the offsets
    completeness: list[np.ndarray]  # per band
    condition: list[np.ndarray] = field(default_factory=list)  # per condition column

    @classmethod
    def from_inputs(cls, x: np.ndarray) -> Bins:
        mag, comp = [], []
        for j in range(3):
            lo, hi = np.quantile(x[:, j], [0.001, 0.999])
            mag.append(np.arange(np.floor(lo), np.ceil(hi) + MAG_BIN, MAG_BIN))
            c_lo = np.floor(lo / COMPLETENESS_BIN) * COMPLETENESS_BIN
            c_hi = np.ceil(hi / COMPLETENESS_BIN) * COMPLETENESS_BIN
            comp.append(np.arange(c_lo, c_hi + 1e-9, COMPLETENESS_BIN))
        cond = []
        for k in range(len(CONDITIONS)):
            edges = np.quantile(x[:, 3 + k], np.linspace(0, 1, CONDITION_BINS + 1))
            edges[-1] += 1e-6  # include the largest value in the last bin
            cond.append(edges)
        return cls(mag, comp, cond)


def _binned(
    key: np.ndarray, sim: np.ndarray, emu_key: np.ndarray, emu: np.ndarray, edges: np.ndarray
) -> tuple[list[float | None], list[float | None], list[int]]:
    """KS and W1 of `emu` vs `sim` within bins of a key (each side binned by its own key)."""
    ks, w1, n = [], [], []
    for lo, hi in itertools.pairwise(edges):
        a = sim[(key >= lo) & (key < hi)]
        b = emu[(emu_key >= lo) & (emu_key < hi)]
        n.append(len(a))
        k, w = _ks_w1(b, a) if len(a) >= MIN_BIN and len(b) >= 2 else (None, None)
        ks.append(k)
        w1.append(w)
    return ks, w1, n


def completeness(key: np.ndarray, detected: np.ndarray, edges: np.ndarray) -> np.ndarray:
    nb = len(edges) - 1
    which = np.searchsorted(edges, key, side="right") - 1
    inside = (which >= 0) & (which < nb)
    n = np.bincount(which[inside], minlength=nb)
    k = np.bincount(which[inside], weights=detected[inside].astype(np.float64), minlength=nb)
    return np.where(n >= MIN_BIN, k / np.maximum(n, 1), np.nan)


def _mean(values: list[float | None]) -> float | None:
    v = [x for x in values if x is not None and np.isfinite(x)]
    return float(np.mean(v)) if v else None


def figures(
    test: Split, out: Output, bins: Bins, *, details: bool = False
) -> dict[str, float | None]:
    """Every scalar figure of one realization `out` of the test rows (see the module doc).

    With `details`, the per-bin values are added under keys ending in `_bins` (lists) for
    plots and tables; those are not scalar figures.
    """
    x = test.x.astype(np.float64)
    sim = test.observed.astype(np.float64)
    emu = out.mags
    f: dict[str, float | None] = {
        "detected_fraction_error": abs(float(out.detected.mean()) - float(test.detected.mean()))
    }
    for j, b in enumerate(BANDS):
        s_ok, e_ok = np.isfinite(sim[:, j]), np.isfinite(emu[:, j])
        f[f"ks_{b}"], f[f"w1_{b}"] = _ks_w1(emu[e_ok, j], sim[s_ok, j])
    for name, (j, k) in COLOURS.items():
        s_ok = np.isfinite(sim[:, [j, k]]).all(1)
        e_ok = np.isfinite(emu[:, [j, k]]).all(1)
        f[f"ks_{name}"], f[f"w1_{name}"] = _ks_w1(
            emu[e_ok, j] - emu[e_ok, k], sim[s_ok, j] - sim[s_ok, k]
        )
    if out.magerr is not None and test.magerr is not None:
        for j, b in enumerate(BANDS):
            s_err, e_err = test.magerr[:, j].astype(np.float64), out.magerr[:, j]
            s_ok, e_ok = np.isfinite(s_err), np.isfinite(e_err)
            # in log: the errors span two decades
            f[f"ks_magerr_{b}"] = _ks_w1(np.log(e_err[e_ok]), np.log(s_err[s_ok]))[0]

    # offsets within bins of true magnitude and of each condition
    mag_ks, mag_w1, cond_ks, cond_w1 = [], [], [], []
    detail: dict[str, list] = {}
    for j, b in enumerate(BANDS):
        s_ok, e_ok = np.isfinite(sim[:, j]), np.isfinite(emu[:, j])
        ks, w1, n = _binned(
            x[s_ok, j],
            sim[s_ok, j] - x[s_ok, j],
            x[e_ok, j],
            emu[e_ok, j] - x[e_ok, j],
            bins.mag[j],
        )
        mag_ks += ks
        mag_w1 += w1
        detail[f"offset_ks_true_mag_{b}_bins"] = ks
        detail[f"n_true_mag_{b}_bins"] = n
    for k, name in enumerate(CONDITIONS):
        j = BANDS.index(name[-1])
        s_ok, e_ok = np.isfinite(sim[:, j]), np.isfinite(emu[:, j])
        ks, w1, _ = _binned(
            x[s_ok, 3 + k],
            sim[s_ok, j] - x[s_ok, j],
            x[e_ok, 3 + k],
            emu[e_ok, j] - x[e_ok, j],
            bins.condition[k],
        )
        cond_ks += ks
        cond_w1 += w1
        detail[f"offset_ks_{name}_bins"] = ks
    f["ks_mag_bins_mean"] = _mean(mag_ks)
    f["w1_mag_bins_mean"] = _mean(mag_w1)
    f["ks_cond_bins_mean"] = _mean(cond_ks)
    f["w1_cond_bins_mean"] = _mean(cond_w1)

    # completeness
    errs = []
    for j, b in enumerate(BANDS):
        c_sim = completeness(x[:, j], test.detected, bins.completeness[j])
        c_emu = completeness(x[:, j], out.detected, bins.completeness[j])
        errs.append(np.abs(c_emu - c_sim))
        detail[f"completeness_sim_{b}_bins"] = c_sim.tolist()
        detail[f"completeness_emu_{b}_bins"] = c_emu.tolist()
    err = np.concatenate(errs)
    f["completeness_mae"] = float(np.nanmean(err)) if np.isfinite(err).any() else None
    f["completeness_max"] = float(np.nanmax(err)) if np.isfinite(err).any() else None
    cerr = np.concatenate(
        [
            np.abs(
                completeness(x[:, 3 + k], out.detected, e)
                - completeness(x[:, 3 + k], test.detected, e)
            )
            for k, e in enumerate(bins.condition)
        ]
    )
    f["completeness_cond_mae"] = float(np.nanmean(cerr)) if np.isfinite(cerr).any() else None
    if details:
        return {**f, **detail}  # type: ignore[dict-item]
    return f


def bootstrap_figures(
    test: Split, outputs: dict[str, Output], bins: Bins, replicates: int, seed: int
) -> dict[str, dict[str, list[float | None]]]:
    """Figures of every model on `replicates` paired bootstrap resamples of the test objects.

    The same resampled objects are used for all models, so differences between models are
    measured with their own (paired) noise.
    """
    rng = np.random.default_rng([seed, 7])
    out: dict[str, dict[str, list[float | None]]] = {name: {} for name in outputs}
    for _ in range(replicates):
        rows = rng.integers(0, len(test), len(test))
        t = test.take(rows)
        for name, o in outputs.items():
            for key, value in figures(t, o.take(rows), bins).items():
                out[name].setdefault(key, []).append(value)
    return out


def spread(values: list[float | None]) -> float | None:
    """Standard deviation of bootstrap replicates (None when too few are defined)."""
    v = np.array([x for x in values if x is not None], dtype=np.float64)
    return float(v.std(ddof=1)) if len(v) >= 2 else None


__all__ = [
    "KS_MEAN_FACTOR",
    "Bins",
    "Output",
    "bootstrap_figures",
    "figures",
    "ks_statistic",
    "spread",
]
