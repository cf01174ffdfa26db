"""One valid emulator input row, shared by the tests that send catalogs."""

from __future__ import annotations

ROW = {
    "true_mag_r": 22.1,
    "true_mag_i": 21.7,
    "true_mag_z": 21.5,
    "sky_sigma_r": 5.0,
    "sky_sigma_i": 6.0,
    "sky_sigma_z": 8.0,
    "psf_fwhm_r": 1.0,
    "psf_fwhm_i": 0.9,
    "psf_fwhm_z": 0.95,
}
