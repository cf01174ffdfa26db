"""Classifier two-sample test: can a network tell emulated rows from simulated ones?

A small MLP is given, for detected objects measured in every band, the inputs (true
magnitudes, log conditions) and the outputs (observed − true offsets, log magnitude errors
when both sides have them), labelled simulated (0) or emulated (1). Both labels come from the
same objects, so the classifier can only use how the outputs depend on the inputs — joint,
band-to-band errors included, which one-dimensional figures miss. It is trained on half of
the objects and its ROC AUC measured on the other half: 0.5 means indistinguishable. The
floor (a second simulator draw) gives the AUC that finite samples alone produce.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import rankdata
from torch import nn

from training.emulator.data import Split
from training.emulator.metrics import Output

EPOCHS = 12
BATCH = 512
HIDDEN = 64
AUC_BOOTSTRAP = 200


def _features(x: np.ndarray, mags: np.ndarray, magerr: np.ndarray | None) -> np.ndarray:
    parts = [x[:, :3], np.log(x[:, 3:]), mags - x[:, :3]]
    if magerr is not None:
        parts.append(np.log(magerr))
    return np.concatenate(parts, axis=1)


def auc(score: np.ndarray, label: np.ndarray) -> float:
    """ROC AUC by the Mann–Whitney rank sum (ties get average ranks)."""
    label = label.astype(bool)
    n1, n0 = int(label.sum()), int((~label).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[label].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def classifier_auc(test: Split, out: Output, seed: int = 0) -> dict[str, float | int]:
    """Held-out AUC of an MLP telling `out` from the simulated rows, with a bootstrap error."""
    x = test.x.astype(np.float64)
    use_err = out.magerr is not None and test.magerr is not None
    sim_err = test.magerr.astype(np.float64) if use_err and test.magerr is not None else None
    sim_ok = np.isfinite(test.observed).all(1)
    emu_ok = np.isfinite(out.mags).all(1)
    if use_err and sim_err is not None and out.magerr is not None:
        sim_ok &= np.isfinite(sim_err).all(1) & (sim_err > 0).all(1)
        emu_ok &= np.isfinite(out.magerr).all(1) & (out.magerr > 0).all(1)
    half = np.random.default_rng([seed, 11]).random(len(x)) < 0.5  # objects, not rows
    feats, labels, train_mask = [], [], []
    for ok, mags, err, label in (
        (sim_ok, test.observed.astype(np.float64), sim_err, 0.0),
        (emu_ok, out.mags, out.magerr if use_err else None, 1.0),
    ):
        feats.append(_features(x[ok], mags[ok], None if err is None else err[ok]))
        labels.append(np.full(int(ok.sum()), label))
        train_mask.append(half[ok])
    f = np.concatenate(feats)
    y = np.concatenate(labels)
    tr = np.concatenate(train_mask)
    if tr.sum() < 100 or (~tr).sum() < 100:
        return {"auc": float("nan"), "auc_sd": float("nan"), "rows": len(y)}
    mean, std = f[tr].mean(0), f[tr].std(0) + 1e-9
    f = ((f - mean) / std).astype(np.float32)

    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Linear(f.shape[1], HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, 1),
    )
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    ft, yt = torch.from_numpy(f[tr]), torch.from_numpy(y[tr].astype(np.float32))
    g = torch.Generator().manual_seed(seed)
    for _ in range(EPOCHS):
        order = torch.randperm(len(ft), generator=g)
        for i in range(0, len(ft), BATCH):
            idx = order[i : i + BATCH]
            loss = nn.functional.binary_cross_entropy_with_logits(net(ft[idx]).squeeze(1), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad():
        score = net(torch.from_numpy(f[~tr])).squeeze(1).numpy()
    y_te = y[~tr]
    value = auc(score, y_te)
    rng = np.random.default_rng([seed, 12])
    boots = []
    for _ in range(AUC_BOOTSTRAP):
        idx = rng.integers(0, len(score), len(score))
        boots.append(auc(score[idx], y_te[idx]))
    return {"auc": value, "auc_sd": float(np.nanstd(boots, ddof=1)), "rows": len(y_te)}


__all__ = ["auc", "classifier_auc"]
