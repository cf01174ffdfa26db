"""mini-Balrog: inject galaxies into DECam-like stamps with GalSim and measure them back.

Both simulators take the nine emulator inputs (`columns.INPUTS`) and return the observed
magnitudes `mag_{r,i,z}`, their measured 1σ errors `magerr_{r,i,z}` (both NaN when not
detected) and `detected`.

Units (shared with `training.emulator.balrog`)
------------------------------------------
- magnitudes are AB; fluxes are in counts at zero-point 30: ``flux = 10**(0.4 * (30 - mag))``.
- ``sky_sigma_b``: RMS of the sky noise per 0.263″ DECam pixel, in those flux units.
- ``psf_fwhm_b``: PSF full width at half maximum in arcsec.

Galaxy model
------------
An exponential disk (Sérsic n = 1), the same shape in r, i and z. Half-light radius from a
magnitude–size relation approximating HST/COSMOS galaxies at the DES depth (sizes of
0.6″ at i = 22 and 0.3″ at i = 25; cf. the GREAT3/COSMOS training sample, Mandelbaum et al.
2014): ``log10(r_e / arcsec) = log10(0.6) - 0.1 (i_true - 22) + 0.15 N(0, 1)``, clipped to
[0.05″, 2″]. Ellipticity: reduced shear with a Rayleigh modulus of scale 0.2 (clipped at 0.7)
and a uniform position angle. Sub-pixel position uniform within the central pixel.

GalSim measurement (`simulate_galsim`)
--------------------------------------
Each band is drawn on a 48 × 48 stamp of 0.263″ pixels (12.6″), convolved with a
``galsim.Moffat(beta=3)`` PSF of that band's FWHM, with ``galsim.GaussianNoise`` of
``sky_sigma_b`` (seeded per object and band). As DES does, detection runs on a coadd of the
bands (inverse-variance weighted r + i + z): adaptive moments (``galsim.hsm.FindAdaptiveMom``)
fit an elliptical Gaussian there. The object is *detected* when the fit converges, its
centroid lies within 1″ of the injected position (the Balrog match radius) and its detection
S/N is at least `DETECTION_SN`. Fluxes are then forced in each band with the detection's
Gaussian weight (a linear amplitude fit, like multi-band model fitting with a shared shape).
A Gaussian model of an exponential-disk-times-Moffat profile misses light in the wings,
so measured magnitudes are biased faint, more so for large galaxies and in bad seeing.
A non-positive forced flux in any band also counts as a non-detection. The reported error is
that of the linear fit given the known sky RMS, ``sigma_F = sky_sigma / sqrt(sum(w**2))`` for
the unit-flux weight ``w``, and ``magerr = 2.5 / ln 10 * sigma_F / F`` with the measured flux.

Analytic model (`simulate_analytic`)
------------------------------------
The LSST/`photerr` error model (Ivezić et al. 2019; Graham et al. 2020) in its sky-dominated
form: the flux error of a matched-filter measurement is ``sigma_F = sky_sigma * sqrt(A)``,
with the noise-equivalent area ``A = 4 pi (sigma_psf**2 + sigma_gal**2) / pixel**2`` of the
Gaussian-equivalent PSF and galaxy; the observed flux is Gaussian about the true flux (no
bias), and detection uses the same coadd S/N threshold; ``magerr = 2.5 / ln 10 * sigma_F / F``
with the observed flux. It runs in milliseconds and serves
tests and quick runs.

Every random number of an object is derived from ``(seed, row_id)`` by a counter-based hash,
so results do not depend on how the rows are chunked or spread over processes.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.special import ndtri

from models import columns

PIXEL_SCALE = 0.263  # arcsec per pixel (DECam)
ZEROPOINT = 30.0  # flux = 10**(0.4 * (ZEROPOINT - mag))
STAMP_SIZE = 48  # pixels (12.6″)
MOFFAT_BETA = 3.0
DETECTION_SN = 6.0  # coadd detection S/N threshold
MATCH_RADIUS = 1.0  # arcsec, injected-to-detected match radius

# magnitude–size relation (module docstring)
SIZE_AT_I22 = 0.6  # arcsec
SIZE_SLOPE = -0.1  # dex per magnitude
SIZE_SCATTER = 0.15  # dex
SIZE_RANGE = (0.05, 2.0)  # arcsec
ELLIPTICITY_SCALE = 0.2
ELLIPTICITY_MAX = 0.7

SIMULATORS = ("galsim", "analytic")
MODEL_VERSION = 1  # bump when a change here alters the rows a (seed, draw seed) gives


def simulator_version(simulator: str) -> str:
    """This simulator's version as a manifest records it: the model's, and GalSim's."""
    if simulator == "galsim":
        import galsim

        return f"minibalrog-{MODEL_VERSION}+galsim-{galsim.__version__}"
    return f"minibalrog-{MODEL_VERSION}"


# per-object random streams of `row_uniforms`
_S_SIZE, _S_EMOD, _S_EANG, _S_DX, _S_DY = range(5)
_S_NOISE = (5, 6, 7)  # one per band
_N_STREAMS = 8

_U64 = np.uint64


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The SplitMix64 finaliser: a fast, well-mixed 64-bit hash (Steele et al. 2014)."""
    with np.errstate(over="ignore"):
        z = x + _U64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
        return z ^ (z >> _U64(31))


def _row_hashes(seed: int, row_ids: np.ndarray, n_streams: int = _N_STREAMS) -> np.ndarray:
    """(N, n_streams) uint64 hashes of (seed, row, stream): a counter-based random source."""
    key = _splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=_U64))[0]
    rows = np.asarray(row_ids, dtype=np.int64).astype(_U64)
    base = _splitmix64(rows ^ key)
    with np.errstate(over="ignore"):
        return _splitmix64(base[:, None] + np.arange(n_streams, dtype=_U64)[None, :] * key)


def row_uniforms(seed: int, row_ids: np.ndarray, n_streams: int = _N_STREAMS) -> np.ndarray:
    """(N, n_streams) uniforms in (0, 1), a pure function of (seed, row id, stream)."""
    h = _row_hashes(seed, row_ids, n_streams)
    return ((h >> _U64(11)).astype(np.float64) + 0.5) / float(1 << 53)


def flux_from_mag(mag: np.ndarray) -> np.ndarray:
    return np.power(10.0, 0.4 * (ZEROPOINT - np.asarray(mag, dtype=np.float64)))


def mag_from_flux(flux: np.ndarray) -> np.ndarray:
    flux = np.asarray(flux, dtype=np.float64)
    out = np.full(flux.shape, np.nan)
    pos = flux > 0
    out[pos] = ZEROPOINT - 2.5 * np.log10(flux[pos])
    return out


def galaxy_shapes(true_mag_i: np.ndarray, seed: int, row_ids: np.ndarray) -> pd.DataFrame:
    """Half-light radius (arcsec), reduced shear g1, g2 and sub-pixel offsets per object."""
    u = row_uniforms(seed, row_ids)
    log_r = (
        math.log10(SIZE_AT_I22)
        + SIZE_SLOPE * (np.asarray(true_mag_i, dtype=np.float64) - 22.0)
        + SIZE_SCATTER * ndtri(u[:, _S_SIZE])
    )
    hlr = np.clip(10.0**log_r, *SIZE_RANGE)
    gmod = np.minimum(ELLIPTICITY_SCALE * np.sqrt(-2.0 * np.log(u[:, _S_EMOD])), ELLIPTICITY_MAX)
    angle = 2.0 * np.pi * u[:, _S_EANG]  # of the spin-2 shear, i.e. twice the position angle
    return pd.DataFrame(
        {
            "hlr": hlr,
            "g1": gmod * np.cos(angle),
            "g2": gmod * np.sin(angle),
            "dx": u[:, _S_DX] - 0.5,
            "dy": u[:, _S_DY] - 0.5,
        }
    )


def _inputs_array(inputs: pd.DataFrame | np.ndarray) -> np.ndarray:
    arr = inputs[list(columns.INPUTS)].to_numpy() if isinstance(inputs, pd.DataFrame) else inputs
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != len(columns.INPUTS):
        raise ValueError(f"expected inputs of shape (N, {len(columns.INPUTS)}), got {arr.shape}")
    return arr


def _row_ids(n: int, row_ids: np.ndarray | None) -> np.ndarray:
    if row_ids is None:
        return np.arange(n, dtype=np.int64)
    row_ids = np.asarray(row_ids, dtype=np.int64)
    if row_ids.shape != (n,):
        raise ValueError(f"row_ids must have shape ({n},), got {row_ids.shape}")
    return row_ids


MAGERR_PER_FLUX_RATIO = 2.5 / math.log(10.0)  # d mag / d ln flux


def _result(fluxes: np.ndarray, flux_errors: np.ndarray, detected: np.ndarray) -> pd.DataFrame:
    detected = detected & np.all(fluxes > 0, axis=1)
    mags = mag_from_flux(fluxes)
    mags[~detected] = np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        errs = MAGERR_PER_FLUX_RATIO * flux_errors / fluxes
    errs[~detected] = np.nan
    out = pd.DataFrame({name: mags[:, k] for k, name in enumerate(columns.OBSERVED)})
    for k, name in enumerate(columns.MAGERR):
        out[name] = errs[:, k]
    out[columns.DETECTED] = detected
    return out


def noise_area(psf_fwhm: np.ndarray, hlr: np.ndarray) -> np.ndarray:
    """Noise-equivalent area (pixels) of a matched Gaussian filter on PSF ⊗ galaxy."""
    sigma_psf = np.asarray(psf_fwhm) / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    sigma_gal = np.asarray(hlr) / math.sqrt(2.0 * math.log(2.0))  # Gaussian of that r_e
    return 4.0 * np.pi * (sigma_psf**2 + sigma_gal**2) / PIXEL_SCALE**2


def simulate_analytic(
    inputs: pd.DataFrame | np.ndarray, seed: int, row_ids: np.ndarray | None = None
) -> pd.DataFrame:
    """Observed magnitudes from the sky-dominated LSST/photerr error model (vectorised)."""
    arr = _inputs_array(inputs)
    ids = _row_ids(len(arr), row_ids)
    true_mag, sky, fwhm = arr[:, 0:3], arr[:, 3:6], arr[:, 6:9]
    shapes = galaxy_shapes(true_mag[:, 1], seed, ids)
    area = noise_area(fwhm, shapes["hlr"].to_numpy()[:, None])  # (N, 3)
    sigma_f = sky * np.sqrt(area)
    u = row_uniforms(seed, ids)[:, list(_S_NOISE)]
    fluxes = flux_from_mag(true_mag) + sigma_f * ndtri(u)
    # detection on the inverse-variance coadd, as in `simulate_galsim`
    w = 1.0 / sky**2
    sn_det = (fluxes * w).sum(1) / (np.sqrt(area.mean(1)) * np.sqrt(w.sum(1)))
    return _result(fluxes, sigma_f, sn_det >= DETECTION_SN)


def _measure_one(
    mags: np.ndarray,
    sky: np.ndarray,
    fwhm: np.ndarray,
    shape: tuple[float, float, float, float, float],
    noise_seeds: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Draw one galaxy in r, i, z, detect it on the coadd and force its fluxes (and errors)."""
    import galsim

    hlr, g1, g2, dx, dy = shape
    gal = galsim.Exponential(half_light_radius=hlr).shear(g1=g1, g2=g2)
    images = []
    for b in range(3):
        psf = galsim.Moffat(beta=MOFFAT_BETA, fwhm=float(fwhm[b]))
        obj = galsim.Convolve(gal.withFlux(float(flux_from_mag(mags[b]))), psf)
        img = obj.drawImage(nx=STAMP_SIZE, ny=STAMP_SIZE, scale=PIXEL_SCALE, offset=(dx, dy))
        img.addNoise(galsim.GaussianNoise(galsim.BaseDeviate(int(noise_seeds[b])), float(sky[b])))
        images.append(img.array.astype(np.float64))
    stack = np.stack(images)  # (3, S, S)

    # detection image: inverse-variance weighted coadd, in units of its own noise
    w = 1.0 / sky**2
    coadd = np.tensordot(w, stack, axes=1) / np.sqrt(w.sum())  # noise RMS 1 per pixel
    guess_sigma = float(np.sqrt(noise_area(fwhm.mean(), hlr) / (4.0 * np.pi)))
    true_center = galsim.PositionD(
        (STAMP_SIZE + 1) / 2.0 + dx, (STAMP_SIZE + 1) / 2.0 + dy
    )  # GalSim's 1-based pixel centre of the injected galaxy
    fails = np.full(3, np.nan), np.full(3, np.nan), False
    res = galsim.hsm.FindAdaptiveMom(
        galsim.Image(coadd.astype(np.float32), scale=PIXEL_SCALE),
        strict=False,
        guess_sig=guess_sigma,
        guess_centroid=true_center,
    )
    if res.moments_status != 0 or not res.moments_amp > 0:
        return fails
    offset = res.moments_centroid - true_center
    if math.hypot(offset.x, offset.y) * PIXEL_SCALE > MATCH_RADIUS:
        return fails
    sigma_w = float(res.moments_sigma)
    sn_det = res.moments_amp / (2.0 * math.sqrt(math.pi) * sigma_w)
    if not sn_det >= DETECTION_SN:
        return fails

    # forced photometry: the detection's elliptical Gaussian, amplitude fitted per band
    e1, e2 = res.observed_shape.e1, res.observed_shape.e2
    scale = sigma_w**2 / math.sqrt(max(1.0 - e1 * e1 - e2 * e2, 1e-6))
    m11, m22, m12 = scale * (1 + e1), scale * (1 - e1), scale * e2  # x-x, y-y, x-y moments
    det = m11 * m22 - m12 * m12
    ys, xs = np.mgrid[1 : STAMP_SIZE + 1, 1 : STAMP_SIZE + 1].astype(np.float64)
    x = xs - res.moments_centroid.x
    y = ys - res.moments_centroid.y
    q = (m22 * x * x - 2.0 * m12 * x * y + m11 * y * y) / det
    profile = np.exp(-0.5 * q) / (2.0 * np.pi * math.sqrt(det))  # unit-flux Gaussian
    norm = float((profile**2).sum())
    fluxes = np.tensordot(stack, profile, axes=([1, 2], [0, 1])) / norm
    return fluxes, sky / math.sqrt(norm), True


def simulate_galsim(
    inputs: pd.DataFrame | np.ndarray, seed: int, row_ids: np.ndarray | None = None
) -> pd.DataFrame:
    """Observed magnitudes by drawing and measuring every galaxy with GalSim (slow)."""
    arr = _inputs_array(inputs)
    ids = _row_ids(len(arr), row_ids)
    shapes = galaxy_shapes(arr[:, 1], seed, ids)[["hlr", "g1", "g2", "dx", "dy"]].to_numpy()
    # GalSim seeds must be positive 32-bit-ish integers; 0 would mean "seed from the clock"
    noise_seeds = (_row_hashes(seed, ids)[:, list(_S_NOISE)] >> _U64(34)).astype(np.int64) + 1
    fluxes = np.full((len(arr), 3), np.nan)
    errors = np.full((len(arr), 3), np.nan)
    detected = np.zeros(len(arr), dtype=bool)
    for n in range(len(arr)):
        fluxes[n], errors[n], detected[n] = _measure_one(
            arr[n, 0:3], arr[n, 3:6], arr[n, 6:9], tuple(shapes[n]), noise_seeds[n]
        )
    return _result(np.where(detected[:, None], fluxes, np.nan), errors, detected)


def simulate(
    inputs: pd.DataFrame | np.ndarray,
    simulator: str = "galsim",
    seed: int = 0,
    row_ids: np.ndarray | None = None,
) -> pd.DataFrame:
    """Observed `mag_{r,i,z}` and `detected` for each row of `inputs` (columns.INPUTS)."""
    if simulator == "galsim":
        return simulate_galsim(inputs, seed, row_ids)
    if simulator == "analytic":
        return simulate_analytic(inputs, seed, row_ids)
    raise ValueError(f"unknown simulator {simulator!r}; choose one of {', '.join(SIMULATORS)}")
