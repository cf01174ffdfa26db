"""Emulator catalogs as arrays: the one split rule, dry-run rows and the scalers fitted on them.

Real catalogs carry detected objects whose flux is non-positive in one band (no magnitude
there). Such rows count as detected for the detection classifier; the magnitude model learns
from the rows measured in every band, and the evaluation compares each band on the rows
measured in it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from models.columns import DETECTED, MAGERR, OBSERVED, SPLIT
from models.emulator import LN_FLUX_PER_MAG, EmulatorScalers

SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)


@dataclass
class Split:
    """Rows of an emulator catalog as arrays."""

    x: np.ndarray  # (N, 9) float32, columns.INPUTS order
    observed: np.ndarray  # (N, 3) float32, NaN where not detected (or not measured)
    detected: np.ndarray  # (N,) bool
    magerr: np.ndarray | None = None  # (N, 3) float32 or None when the catalog has none

    def __len__(self) -> int:
        return len(self.x)

    def take(self, rows: np.ndarray | slice) -> Split:
        """The rows selected by a boolean mask, index array or slice."""
        err = None if self.magerr is None else self.magerr[rows]
        return Split(self.x[rows], self.observed[rows], self.detected[rows], err)

    def head(self, n: int) -> Split:
        return self.take(slice(0, n))

    @property
    def has_errors(self) -> bool:
        """Whether every detected, fully measured row has finite positive errors."""
        if self.magerr is None:
            return False
        ok = self.detected & np.isfinite(self.observed).all(axis=1)
        err = self.magerr[ok]
        return bool(ok.any() and np.isfinite(err).all() and (err > 0).all())

    def only_detected(self) -> Split:
        """Detected rows measured in every band (what the magnitude model learns from)."""
        return self.take(self.detected & np.isfinite(self.observed).all(axis=1))


def target_tensors(
    scalers: EmulatorScalers, s: Split, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(cond (N, 6), true (N, 3), target (N, D)) standardized, of the rows the model learns."""
    det = s.only_detected()
    x = torch.from_numpy(det.x).to(device)
    cond, true = scalers.split_inputs(x)
    obs = torch.from_numpy(det.observed).to(device)
    magerr = None
    if scalers.out_dim == 6 and det.magerr is not None:
        magerr = torch.from_numpy(det.magerr).to(device)
    return cond, true, scalers.target(obs, x, magerr)


def split_labels(rows: int, seed: int) -> np.ndarray:
    """The split rule for catalogs without a `split` column: 80/10/10 drawn from `seed`."""
    u = np.random.default_rng(seed).random(rows)
    train, val, _ = SPLIT_FRACTIONS
    return np.where(u < train, "train", np.where(u < train + val, "val", "test"))


def read_rows(path: str | Path) -> tuple[Split, np.ndarray | None]:
    """All rows of a catalog with observations, and its `split` labels (None if it has none)."""
    from models.columns import validate_inputs
    from training.emulator.catalog import read_catalog

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"emulator catalog not found: {path}")
    df = read_catalog(path)
    x = validate_inputs(df)  # (N, 9) float32; raises CatalogError naming the bad rows
    missing = [c for c in (*OBSERVED, DETECTED) if c not in df.columns]
    if missing:
        raise ValueError(f"{path} has no column(s) {missing}: it cannot train an emulator")
    observed = df[list(OBSERVED)].to_numpy(dtype=np.float32, na_value=np.nan, copy=True)
    detected = df[DETECTED].to_numpy(dtype=bool)
    observed[~detected] = np.nan
    magerr = None
    if all(c in df.columns for c in MAGERR):
        magerr = df[list(MAGERR)].to_numpy(dtype=np.float32, na_value=np.nan, copy=True)
        magerr[~detected] = np.nan
    labels = df[SPLIT].astype(str).to_numpy() if SPLIT in df.columns else None
    return Split(x, observed, detected, magerr), labels


def load_emulator_catalog(path: str | Path, *, seed: int = 0) -> dict[str, Split]:
    """Read a catalog into train/val/test (its `split` column, or `split_labels(seed)`)."""
    rows, labels = read_rows(path)
    if labels is None:
        labels = split_labels(len(rows), seed)
    return {s: rows.take(labels == s) for s in SPLITS}


def training_splits(
    data: str | Path | None, *, seed: int, dry_run: bool, max_rows: int | None
) -> tuple[Split, Split]:
    """(train, val) of an emulator run: the catalog's, or generated rows for a dry run;
    `max_rows` keeps only the first training rows."""
    if dry_run or data is None:
        if not dry_run:
            raise ValueError("no training catalog given (pass data, or use a dry run)")
        splits = fake_catalog(3000, seed=seed)
    else:
        splits = load_emulator_catalog(data, seed=seed)
    train = splits["train"] if max_rows is None else splits["train"].head(max_rows)
    return train, splits["val"]


def fake_catalog(rows: int = 3000, seed: int = 0) -> dict[str, Split]:
    """Generated rows with the catalog's shape, for dry runs (not a physical model)."""
    rng = np.random.default_rng(seed)
    true = rng.uniform(18.0, 25.0, (rows, 3))
    sky = rng.uniform(0.5, 2.0, (rows, 3))
    psf = rng.uniform(0.8, 1.5, (rows, 3))
    sigma = 0.02 * 10 ** (0.4 * (true - 20.0)) * sky * psf
    observed = true + sigma * rng.standard_normal((rows, 3))
    detected = rng.random(rows) < 1.0 / (1.0 + np.exp(2.0 * (true[:, 1] - 24.0)))
    observed[~detected] = np.nan
    magerr = np.where(detected[:, None], sigma, np.nan)
    x = np.concatenate([true, sky, psf], axis=1).astype(np.float32)
    whole = Split(x, observed.astype(np.float32), detected, magerr.astype(np.float32))
    labels = split_labels(rows, seed)
    return {s: whole.take(labels == s) for s in SPLITS}


def scatter_floor(residual: np.ndarray, noise: np.ndarray, share: float = 0.1) -> np.ndarray:
    """Per band, the offsets' scatter that their noise does not explain, from the objects
    with the least noise (`share` of them): sqrt(robust variance − mean noise²), at least
    1e-6. A simulator whose errors are the whole scatter gives ~0; one whose measurements
    scatter with galaxy shape and size (GalSim's) gives that scatter."""
    out = []
    for j in range(residual.shape[1]):
        quiet = noise[:, j] <= np.quantile(noise[:, j], share)
        r = residual[quiet, j]
        mad = 1.4826 * np.median(np.abs(r - np.median(r)))
        out.append(max(math.sqrt(max(mad**2 - float(np.mean(noise[quiet, j] ** 2)), 0.0)), 1e-6))
    return np.asarray(out)


def noise_share(scalers: EmulatorScalers, rows: Split) -> np.ndarray:
    """Per band, the mean over `rows`' detected objects of noise² / (noise² + floor²): the
    share of the scaled offsets' variance that the measurement noise explains. 1 where the
    noise is the whole scatter (the analytic simulator: floor ~0); 0.86–0.91 on the
    project's GalSim catalog, whose fluxes also scatter with a galaxy's shape and size.
    Zeros without an error scale."""
    if not scalers.scale_coef:
        return np.zeros(3)
    feats = scalers.features_numpy(rows.only_detected().x.astype(np.float64))
    noise2 = np.exp(2 * feats @ np.asarray(scalers.scale_coef).reshape(3, -1).T)  # (N, 3)
    floor2 = np.asarray(scalers.scale_floor) ** 2 if scalers.scale_floor else np.zeros(3)
    return (noise2 / (noise2 + floor2)).mean(axis=0)


def fit_scalers(
    train: Split,
    *,
    log_conditions: bool = True,
    with_errors: bool = True,
    error_scale: bool = False,
    flux_errors: bool = False,
    error_basis: bool = False,
    flux_offsets: bool = False,
) -> EmulatorScalers:
    """Train-split standardization of inputs (all rows) and targets (detected rows).

    The target gets the log magnitude errors as 3 more columns when `with_errors` and the
    catalog has them; the training ranges of the inputs are kept for the out-of-domain flag.
    With `error_scale`, each band's offset is first shifted by its expected value and divided
    by a per-object scale, both fitted here (see `EmulatorScalers`): least-squares fits of the
    offset and of ln magerr on the standardized inputs (of ln |residual| when the catalog has
    no errors: its constant bias does not matter, the z-score after it takes it out), the
    scale floored by the scatter the noise does not explain (`scatter_floor`). With
    `flux_errors` the error columns are ln(σ_F / F_true), with `error_basis` they are drawn
    as their principal components, and with `flux_offsets` (and both `error_scale` and
    `flux_errors`) the offsets are flux deviations in units of their own error (see
    `EmulatorScalers`).
    """
    det = train.only_detected()
    if len(det) < 2:
        raise ValueError("the training split has fewer than 2 detected objects")
    offset = det.observed.astype(np.float64) - det.x[:, :3]
    target = offset
    has_errors = with_errors and train.has_errors and det.magerr is not None
    if has_errors:
        ln_magerr = np.log(det.magerr.astype(np.float64))  # type: ignore[union-attr]
        ln_err = ln_magerr - LN_FLUX_PER_MAG * offset if flux_errors else ln_magerr
        target = np.concatenate([target, ln_err], axis=1)

    def std(a: np.ndarray) -> list[float]:
        return np.maximum(a.std(axis=0), 1e-6).tolist()  # a constant column must not give 0

    x = train.x.astype(np.float64)
    cond = np.log(x[:, 3:]) if log_conditions else x[:, 3:]
    scalers = EmulatorScalers(
        true_mean=tuple(x[:, :3].mean(axis=0)),
        true_std=tuple(std(x[:, :3])),
        cond_mean=tuple(cond.mean(axis=0)),
        cond_std=tuple(std(cond)),
        delta_mean=(),
        delta_std=(),
        log_conditions=log_conditions,
        input_min=tuple(x.min(axis=0)),
        input_max=tuple(x.max(axis=0)),
        flux_errors=has_errors and flux_errors,
    )
    if error_scale:
        xd = det.x.astype(np.float64)
        feats = scalers.features_numpy(xd)  # (N, 10)
        if has_errors:  # the scale is a fit of ln magerr, also with `flux_errors`
            ln_noise = ln_magerr
        else:
            ln_noise = np.log(np.abs(offset - np.median(offset, axis=0)) + 1e-6)
        coef = np.linalg.lstsq(feats, ln_noise, rcond=None)[0].T  # (3, 10)
        noise = np.exp(feats @ coef.T)  # (N, 3)
        # the expected offset (a measurement's bias), each object weighted by its precision
        # (else the faint objects' large, selection-skewed offsets set it for the bright)
        shift = np.stack(
            [
                np.linalg.lstsq(feats / noise[:, j : j + 1], offset[:, j] / noise[:, j], None)[0]
                for j in range(3)
            ]
        )  # (3, 10)
        residual = offset - feats @ shift.T
        floor = scatter_floor(residual, noise)
        scalers = replace(
            scalers,
            scale_coef=tuple(coef.ravel().tolist()),
            shift_coef=tuple(shift.ravel().tolist()),
            scale_floor=tuple(floor.tolist()),
        )
        ln_s = scalers.ln_scale_numpy(xd, feats)
        if flux_offsets and scalers.flux_errors:  # the flux's deviation in its own error
            scalers = replace(scalers, flux_offsets=True)
            own = LN_FLUX_PER_MAG * np.exp(scalers.floored(target[:, 3:]))
            scaled = [-np.expm1(-LN_FLUX_PER_MAG * residual) / own]
        else:
            scaled = [residual * np.exp(-ln_s)]
        if has_errors:  # ln magerr (or ln σ_F / F_true) - ln s: the errors in units of s
            scaled.append(target[:, 3:] - ln_s)
        target = np.concatenate(scaled, axis=1)
    mean, sd = target.mean(axis=0), std(target)
    scalers = replace(scalers, delta_mean=tuple(mean), delta_std=tuple(sd))
    if error_basis and has_errors:
        basis = principal_basis(((target - mean) / sd)[:, 3:])
        scalers = replace(scalers, error_basis=tuple(basis.ravel().tolist()))
    return scalers


def principal_basis(columns: np.ndarray) -> np.ndarray:
    """M (k, k) with columns = components @ M (up to the mean), the components uncorrelated,
    in order of decreasing variance, each of standard deviation λ^¼ for its direction's
    variance λ: row i of M is the i-th principal axis times λ_i^¼, its largest entry made
    positive (a fixed sign). Thin directions are widened by λ^-¼, halfway (in logarithm)
    between the columns as they are and whitened components (`EmulatorScalers`)."""
    var, axes = np.linalg.eigh(np.cov(columns, rowvar=False))  # ascending
    var, axes = var[::-1], axes[:, ::-1]
    var = np.maximum(var, 1e-6 * var[0])  # a direction without spread stays invertible
    axes = axes * np.sign(axes[np.abs(axes).argmax(axis=0), np.arange(axes.shape[1])])
    return var[:, None] ** 0.25 * axes.T


__all__ = [
    "SPLITS",
    "Split",
    "fake_catalog",
    "fit_scalers",
    "load_emulator_catalog",
    "noise_share",
    "read_rows",
    "split_labels",
    "target_tensors",
]
