"""The emulator's column contract: input names in model order, output names, units."""

from __future__ import annotations

from typing import Any

import numpy as np

BANDS = ("r", "i", "z")
TRUE_MAG = tuple(f"true_mag_{b}" for b in BANDS)
SKY_SIGMA = tuple(f"sky_sigma_{b}" for b in BANDS)
PSF_FWHM = tuple(f"psf_fwhm_{b}" for b in BANDS)
CONDITIONS = SKY_SIGMA + PSF_FWHM  # observing conditions, 6 columns
INPUTS = TRUE_MAG + CONDITIONS  # what the emulator is given, 9 columns
OBSERVED = tuple(f"mag_{b}" for b in BANDS)  # NaN/null where not detected
MAGERR = tuple(f"magerr_{b}" for b in BANDS)  # 1-sigma magnitude errors, NaN where not detected
DETECTED = "detected"
OUT_OF_DOMAIN = "out_of_domain"  # an input outside the ranges the model was trained on
REALIZATION = "realization"  # k of `samples` draws of one input row
SPLIT = "split"  # "train" | "val" | "test" in built catalogs

# Units of the contract columns, written into FITS and Parquet outputs.
UNITS = {
    **{c: "mag" for c in (*TRUE_MAG, *OBSERVED, *MAGERR)},
    **{c: "flux/pixel (ZP 30, 0.263 arcsec pixels)" for c in SKY_SIGMA},
    **{c: "arcsec" for c in PSF_FWHM},
}


def emulated(
    mags: np.ndarray,
    detected: np.ndarray,
    magerr: np.ndarray | None = None,
    out_of_domain: np.ndarray | None = None,
) -> dict[str, Any]:
    """The emulator's output columns in contract order: `mag_*`, `magerr_*` (when the model
    emulates errors), `detected`, `out_of_domain` (when known)."""
    out: dict[str, Any] = {name: mags[:, j] for j, name in enumerate(OBSERVED)}
    if magerr is not None:
        out.update({name: magerr[:, j] for j, name in enumerate(MAGERR)})
    out[DETECTED] = np.asarray(detected, dtype=bool)
    if out_of_domain is not None:
        out[OUT_OF_DOMAIN] = np.asarray(out_of_domain, dtype=bool)
    return out
