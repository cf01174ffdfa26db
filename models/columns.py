"""Emulator catalog column names and the DES Balrog aliases that map onto them."""

from __future__ import annotations

BANDS = ("r", "i", "z")
TRUE_MAG = tuple(f"true_mag_{b}" for b in BANDS)
SKY_SIGMA = tuple(f"sky_sigma_{b}" for b in BANDS)
PSF_FWHM = tuple(f"psf_fwhm_{b}" for b in BANDS)
CONDITIONS = SKY_SIGMA + PSF_FWHM  # observing conditions, 6 columns
INPUTS = TRUE_MAG + CONDITIONS  # what the emulator is given, 9 columns
OBSERVED = tuple(f"mag_{b}" for b in BANDS)  # NaN/null where not detected
MAGERR = tuple(f"magerr_{b}" for b in BANDS)  # 1-sigma magnitude errors, NaN where not detected
DETECTED = "detected"
SPLIT = "split"  # "train" | "val" | "test" in built catalogs
