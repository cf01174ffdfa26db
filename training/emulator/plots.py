"""Emulator evaluation plots; each one that fails is a logged warning, never a lost report."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from models.columns import BANDS
from training.emulator.data import Split
from training.emulator.metrics import Bins, Output, figures

log = logging.getLogger(__name__)

COLOURS = {"simulated": "k", "floor": "0.5", "gaussian": "C2", "seed_mse": "C1"}


def _colour_colour(test: Split, outputs: dict[str, Output], path: Path) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    sim = test.observed[np.isfinite(test.observed).all(1)].astype(np.float64)
    panels = {"simulated": sim} | {
        name: o.mags[np.isfinite(o.mags).all(1)] for name, o in outputs.items()
    }
    ri, iz = sim[:, 0] - sim[:, 1], sim[:, 1] - sim[:, 2]
    xr, yr = np.quantile(ri, [0.005, 0.995]), np.quantile(iz, [0.005, 0.995])
    pad = 0.15 * np.array([-1, 1])
    xr, yr = xr + pad * max(np.ptp(xr), 0.1), yr + pad * max(np.ptp(yr), 0.1)
    bins = [np.linspace(*xr, 45), np.linspace(*yr, 45)]
    h_sim, *_ = np.histogram2d(ri, iz, bins=bins)
    # distinct, increasing levels: a small sample gives equal quantiles
    levels = np.unique(np.quantile(h_sim[h_sim > 0], [0.5, 0.9, 0.99])) if h_sim.any() else []
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), sharey=True)
    for ax, (name, m) in zip(np.atleast_1d(axes), panels.items(), strict=True):
        if len(m):
            ax.hist2d(
                m[:, 0] - m[:, 1], m[:, 1] - m[:, 2], bins=bins, norm=LogNorm(), cmap="viridis"
            )
        if len(levels):
            centres = [0.5 * (e[1:] + e[:-1]) for e in bins]
            ax.contour(*centres, h_sim.T, levels=levels, colors="white", linewidths=0.8)
        ax.set_title(f"{name} ({len(m)} detected)")
        ax.set_xlabel("r − i")
    np.atleast_1d(axes)[0].set_ylabel("i − z")
    fig.suptitle("Colour–colour of detected test objects (white: simulated density contours)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _completeness(test: Split, outputs: dict[str, Output], bins: Bins, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        2, 3, figsize=(13, 6.5), sharex="col", gridspec_kw={"height_ratios": [2.2, 1]}
    )
    for j, b in enumerate(BANDS):
        edges = bins.completeness[j]
        centres = 0.5 * (edges[1:] + edges[:-1])
        first = figures(test, next(iter(outputs.values())), bins, details=True)
        sim_c = np.asarray(first[f"completeness_sim_{b}_bins"], dtype=np.float64)
        axes[0, j].plot(centres, sim_c, "k-", lw=2.5, label="simulated")
        for k, (name, o) in enumerate(outputs.items()):
            c = np.asarray(
                figures(test, o, bins, details=True)[f"completeness_emu_{b}_bins"], dtype=np.float64
            )
            style = {"color": COLOURS.get(name, f"C{(k + 3) % 10}"), "lw": 1.3}
            axes[0, j].plot(centres, c, "--", label=name, **style)
            axes[1, j].plot(centres, c - sim_c, "o-", ms=3, **style)
        axes[1, j].axhline(0, color="k", lw=0.8)
        axes[0, j].set_title(f"{b} band")
        axes[1, j].set_xlabel(f"true {b} magnitude")
    axes[0, 0].set_ylabel("completeness")
    axes[1, 0].set_ylabel("model − simulated")
    axes[0, 0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _floor_ratios(report: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    ratios = report["vs_floor"]
    models = list(ratios)
    keys = sorted({k for r in ratios.values() for k in r})
    fig, ax = plt.subplots(figsize=(max(8, 0.45 * len(keys) * len(models) / 2), 4.5))
    width = 0.8 / max(len(models), 1)
    for m, name in enumerate(models):
        values = [ratios[name].get(k) or np.nan for k in keys]
        ax.bar(np.arange(len(keys)) + m * width, values, width, label=name)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.axhline(1.5, color="r", lw=0.8, ls="--", label="1.5 × floor")
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(keys)) + 0.4 - width / 2, keys, rotation=60, ha="right")
    ax.set_ylabel("figure / floor")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(
    test: Split, outputs: dict[str, Output], bins: Bins, report: dict[str, Any], out_dir: Path
) -> dict[str, str]:
    """Write every plot it can into `out_dir`; returns name → path of those written."""
    import matplotlib

    matplotlib.use("Agg")
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs: dict[str, Callable[[Path], None]] = {
        "colour_colour": lambda p: _colour_colour(test, outputs, p),
        "completeness": lambda p: _completeness(test, outputs, bins, p),
        "floor_ratios": lambda p: _floor_ratios(report, p),
    }
    written = {}
    for name, job in jobs.items():
        path = out_dir / f"balrog_{name}.png"
        try:
            job(path)
        except Exception as exc:  # a plot must never lose the figures already computed
            log.warning("plot %s failed: %s: %s", name, type(exc).__name__, exc)
            continue
        written[name] = str(path)
    return written


__all__ = ["write_plots"]
