"""The emulator's detection classifier: training on every row, its calibration report."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from models.emulator import Detector, EmulatorScalers
from training.emulator.data import Split
from training.emulator.metrics import MIN_BIN, Bins, completeness
from training.progress import StopFn
from training.scaffold import Reporter

log = logging.getLogger(__name__)


def calibration_report(prob: np.ndarray, label: np.ndarray, bins: int = 15) -> dict[str, float]:
    """Expected calibration error (equal-width bins) and Brier score of `prob` against `label`."""
    prob = np.asarray(prob, dtype=np.float64)
    label = np.asarray(label, dtype=np.float64)
    which = np.minimum((prob * bins).astype(int), bins - 1)
    ece = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            ece += m.mean() * abs(prob[m].mean() - label[m].mean())
    return {"ece": float(ece), "brier": float(np.mean((prob - label) ** 2))}


def detection_figures(
    x: np.ndarray, prob: np.ndarray, detected: np.ndarray, bins: Bins
) -> dict[str, Any]:
    """The detection model per bin, on inputs `x` (N, 9) with simulated `detected` (N,).

    `completeness_error_max`: the largest |expected − simulated completeness| over the
    0.5-mag bins of true magnitude (every band); `completeness_error_cond_max` the same over
    the quartiles of each condition. The expected completeness is the mean calibrated
    probability, so the model side carries no sampling noise (the simulated side does:
    ~sqrt(p (1 − p) / n) per bin). `ece_mag_bins` is the expected calibration error within
    each 0.5-mag bin of true i (gaNdalF's figure); bins with fewer than `MIN_BIN` objects
    are left out (None).
    """
    prob = np.asarray(prob, dtype=np.float64)

    def gap(key: np.ndarray, edges: np.ndarray) -> np.ndarray:
        return np.abs(completeness(key, prob, edges) - completeness(key, detected, edges))

    mag_err = [gap(x[:, j], e) for j, e in enumerate(bins.completeness)]
    cond_err = [gap(x[:, 3 + k], e) for k, e in enumerate(bins.condition)]
    edges = bins.completeness[1]
    which = np.searchsorted(edges, x[:, 1], side="right") - 1
    ece: list[float | None] = []
    for b in range(len(edges) - 1):
        m = which == b
        ece.append(calibration_report(prob[m], detected[m])["ece"] if m.sum() >= MIN_BIN else None)
    known = [v for v in ece if v is not None]

    def top(errs: list[np.ndarray]) -> float | None:
        a = np.concatenate(errs)
        return float(np.nanmax(a)) if np.isfinite(a).any() else None

    return {
        "completeness_error_max": top(mag_err),
        "completeness_error_cond_max": top(cond_err),
        "ece_mag_bins_max": max(known) if known else None,
        "ece_mag_bins_mean": float(np.mean(known)) if known else None,
        "ece_mag_bins": ece,
        "ece_mag_bin_edges_i": edges.tolist(),
    }


def fit_platt(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Platt scaling `sigmoid(a · logit + b)`: minimize the validation BCE over (a, b)."""
    ab = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    z = logits.detach().double().cpu()
    y = labels.double().cpu()
    opt = torch.optim.LBFGS([ab], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(ab[0] * z + ab[1], y)
        loss.backward()
        return loss

    opt.step(closure)
    a, b = (float(v) for v in ab.detach())
    if not (math.isfinite(a) and math.isfinite(b)):
        return 1.0, 0.0
    return a, b


def train_detector(
    detector: Detector,
    scalers: EmulatorScalers,
    train: Split,
    val: Split,
    config: Any,
    device: torch.device,
    *,
    report: Reporter,
    step: int,
    stopped: StopFn,
) -> dict[str, Any] | None:
    """Fit `detector` with BCE on every training row; report its calibration on `val`.

    `config` is the run's (`detector_epochs`, `detector_batch_size`, `detector_lr`,
    `detector_platt`, `seed`, `dry_run`). The probabilities are the network's own: trained
    with BCE, a proper scoring rule, on the train split, they are calibrated in every bin
    to its sampling noise, while Platt scaling (`detector_platt`, off by default) fits two
    parameters on the val split, a tenth as many rows, and carries that split's noise into
    every bin (up to ~1 % of completeness, measured). Each epoch is reported as a "step"
    event at generator step `step` (with the val BCE), and `stopped()` is asked before each
    (a stopped run trains the detector again from the start on resume: it takes seconds).
    Returns the calibration figures, or None when stopped.
    """
    epochs = 1 if config.dry_run else config.detector_epochs
    lr, batch_size, seed = config.detector_lr, config.detector_batch_size, config.seed

    def standardized(s: Split) -> tuple[torch.Tensor, torch.Tensor]:
        return scalers.split_inputs(torch.from_numpy(s.x).to(device))

    cond, true = standardized(train)
    label = torch.from_numpy(train.detected.astype(np.float32)).to(device)
    scored = len(val) > 0 and 0 < val.detected.sum() < len(val)
    if scored:
        val_cond, val_true = standardized(val)
        val_label = torch.from_numpy(val.detected.astype(np.float32)).to(device)
    opt = torch.optim.Adam(detector.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed + 1)
    bs = min(batch_size, len(train))
    bce = float("nan")
    for epoch in range(epochs):
        if stopped():
            return None
        detector.train()
        order = torch.randperm(len(train), generator=g).to(device)
        total = 0.0
        for i in range(0, len(train), bs):
            # the full rate for the first half, then a cosine decay to zero: a constant rate
            # leaves the probabilities jittering by ~1 % near the threshold, where the
            # completeness changes fastest
            done = max(0.0, 2 * (epoch + i / len(train)) / epochs - 1)
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * done))
            idx = order[i : i + bs]
            loss = F.binary_cross_entropy_with_logits(detector(cond[idx], true[idx]), label[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        bce = total / len(train)
        losses = {"detector_bce": bce}
        if scored:
            detector.eval()
            with torch.no_grad():
                v = F.binary_cross_entropy_with_logits(detector(val_cond, val_true), val_label)
            losses["detector_val_bce"] = float(v)
        report(
            "step", step, losses=losses, eta_s=None, metrics={"detector_epoch": epoch + 1}
        )  # fmt: skip
    detector.eval()

    calibration: dict[str, Any] = {"train_bce": bce}
    if scored:
        with torch.no_grad():
            logits = detector(*standardized(val))
        raw = calibration_report(torch.sigmoid(logits).cpu().numpy(), val.detected)
        calibration.update(val_ece=raw["ece"], val_brier=raw["brier"])
        if getattr(config, "detector_platt", False):
            a, b = fit_platt(logits, torch.from_numpy(val.detected.astype(np.float32)))
            cal = calibration_report(
                torch.sigmoid(a * logits.double().cpu() + b).numpy(), val.detected
            )
            calibration.update(
                platt_a=a,
                platt_b=b,
                val_ece_raw=raw["ece"],
                val_brier_raw=raw["brier"],
                val_ece=cal["ece"],
                val_brier=cal["brier"],
            )
            detector.platt_a.fill_(a)
            detector.platt_b.fill_(b)
    log.info("detector trained: %s", calibration)
    return calibration


__all__ = ["calibration_report", "detection_figures", "fit_platt", "train_detector"]
