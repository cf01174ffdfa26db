"""The emulator's detection classifier: training on every row, Platt calibration, its report."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from models.emulator import Detector, EmulatorScalers
from training.emulator_data import Split

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
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: torch.device,
    on_epoch: Callable[[int, float], bool] | None = None,
) -> dict[str, Any] | None:
    """Fit `detector` with BCE on every training row, then Platt-scale it on `val`.

    `on_epoch(epoch, bce)` is called after each epoch and returns True to stop (the
    detector restarts from scratch on resume: it takes seconds). Returns the calibration
    figures (empty when `val` cannot calibrate), or None when stopped.
    """

    def standardized(s: Split) -> tuple[torch.Tensor, torch.Tensor]:
        return scalers.split_inputs(torch.from_numpy(s.x).to(device))

    cond, true = standardized(train)
    label = torch.from_numpy(train.detected.astype(np.float32)).to(device)
    opt = torch.optim.Adam(detector.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed + 1)
    bs = min(batch_size, len(train))
    detector.train()
    bce = float("nan")
    for epoch in range(epochs):
        order = torch.randperm(len(train), generator=g).to(device)
        total = 0.0
        for i in range(0, len(train), bs):
            idx = order[i : i + bs]
            loss = F.binary_cross_entropy_with_logits(detector(cond[idx], true[idx]), label[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        bce = total / len(train)
        if on_epoch is not None and on_epoch(epoch + 1, bce):
            return None
    detector.eval()

    calibration: dict[str, Any] = {"train_bce": bce}
    if len(val) and 0 < val.detected.sum() < len(val):
        with torch.no_grad():
            logits = detector(*standardized(val))
        raw = calibration_report(torch.sigmoid(logits).cpu().numpy(), val.detected)
        a, b = fit_platt(logits, torch.from_numpy(val.detected.astype(np.float32)))
        cal = calibration_report(torch.sigmoid(a * logits.double().cpu() + b).numpy(), val.detected)
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


__all__ = ["calibration_report", "fit_platt", "train_detector"]
