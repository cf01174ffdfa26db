"""The Gaussian-noise baseline: what an emulator must beat to be worth its networks.

Per band, the observed − true offset is Gaussian with a mean and scatter fitted in 0.25-mag
bins of true magnitude on the train split; detection is a Bernoulli draw with the train-split
completeness in bins of true i magnitude; the magnitude error is the bin's median.
"""

from __future__ import annotations

import numpy as np

from training.emulator.data import Split
from training.emulator.metrics import Output


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
        # magnitude errors: the per-bin median of the training rows, when they have them
        self.magerr: list[np.ndarray] | None = None
        if det.magerr is not None and train.has_errors:
            self.magerr = [
                self._binned(det.x[:, j].astype(np.float64), np.log(det.magerr[:, j]), e, 1)[0]
                for j, e in enumerate(self.edges)
            ]

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

    def sample(self, x: np.ndarray, seed: int) -> Output:
        """One realization per row of raw inputs `x` (N, 9)."""
        rng = np.random.default_rng(seed)
        x = x.astype(np.float64)
        p = self.completeness[self._which(x[:, 1], self.det_edges)]
        detected = rng.random(len(x)) < p
        mags = np.full((len(x), 3), np.nan)
        for j in range(3):
            b = self._which(x[:, j], self.edges[j])
            mags[:, j] = x[:, j] + self.mean[j][b] + self.std[j][b] * rng.standard_normal(len(x))
        mags[~detected] = np.nan
        magerr = None
        if self.magerr is not None:
            magerr = np.stack(
                [np.exp(self.magerr[j][self._which(x[:, j], self.edges[j])]) for j in range(3)],
                axis=1,
            )
            magerr[~detected] = np.nan
        return Output(mags, detected, magerr)


def _fill_nearest(values: np.ndarray) -> np.ndarray:
    ok = np.flatnonzero(np.isfinite(values))
    if len(ok) == 0:
        return np.zeros_like(values)
    idx = np.arange(len(values))
    nearest = ok[np.abs(idx[:, None] - ok[None, :]).argmin(axis=1)]
    return values[nearest]


__all__ = ["GaussianBaseline"]
