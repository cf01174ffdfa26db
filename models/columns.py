"""The emulator's column contract, torch-free: names in model order, the accepted aliases
(DES Balrog names among them), the value ranges a request is checked against, units.

=================  ========================================================================
column             also accepted (``{b}`` is r, i or z)
=================  ========================================================================
``true_mag_{b}``   ``bdf_mag_dered_calib_{b}``, ``true_bdf_mag_dered_calib_{b}``,
                   ``true_bdf_mag_deredden_{b}``, ``bdf_mag_{b}``, ``true_mag_{b}``,
                   ``mag_true_{b}``, ``truth_mag_{b}``
``sky_sigma_{b}``  ``skysigma_{b}``, ``sky_noise_{b}``, ``sky_rms_{b}``, ``skyrms_{b}``;
                   ``skyvar_{b}``, ``skyvar_wmean_{b}``, ``skyvar_uncertainty_{b}``
                   (variances: the square root is taken)
``psf_fwhm_{b}``   ``fwhm_{b}``, ``fwhm_wmean_{b}``, ``psf_fwhm_wmean_{b}``, ``seeing_{b}``
``mag_{b}``        ``unsheared/mag_{b}``, ``unsheared_mag_{b}``, ``meas_mag_{b}``,
                   ``observed_mag_{b}``
``detected``       ``is_detected``, ``detected_flag``
=================  ========================================================================

Units are those of `training.emulator.balrog`: AB magnitudes, sky-noise RMS per 0.263″ pixel
in flux units at zero-point 30, PSF FWHM in arcsec. When a table holds both a canonical name
and an alias, the canonical name wins and the alias column is kept under its own name.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

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


MAG_RANGE = (10.0, 40.0)  # AB; anything outside is not a galaxy magnitude
# Observing conditions a survey can have. The bounds are far outside DES's (sky sigma 3–20,
# seeing 0.6–2″) but keep every value finite and non-zero in float32, where the networks work.
SKY_SIGMA_RANGE = (1e-3, 1e6)  # flux units per 0.263″ pixel at zero-point 30
PSF_FWHM_RANGE = (0.05, 10.0)  # arcsec
MAX_PROBLEMS = 1000  # per-row problems kept for API responses
_SHOWN_ROWS = 5  # row indices quoted per column in the error message


class CatalogError(ValueError):
    """A catalog that cannot be read or used; `problems` lists what is wrong, row by row."""

    def __init__(self, message: str, problems: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.problems: list[dict[str, Any]] = problems or []


# --------------------------------------------------------------------------------------------
# column names
def _alias_table() -> dict[str, tuple[str, bool]]:
    """lower-case alias → (canonical column, is a variance whose square root is wanted)."""
    table: dict[str, tuple[str, bool]] = {}
    for b in BANDS:
        for alias in (
            f"true_mag_{b}",
            f"bdf_mag_dered_calib_{b}",
            f"true_bdf_mag_dered_calib_{b}",
            f"true_bdf_mag_deredden_{b}",
            f"bdf_mag_{b}",
            f"mag_true_{b}",
            f"truth_mag_{b}",
        ):
            table[alias] = (f"true_mag_{b}", False)
        for alias in (
            f"sky_sigma_{b}",
            f"skysigma_{b}",
            f"sky_noise_{b}",
            f"sky_rms_{b}",
            f"skyrms_{b}",
        ):
            table[alias] = (f"sky_sigma_{b}", False)
        for alias in (f"skyvar_{b}", f"skyvar_wmean_{b}", f"skyvar_uncertainty_{b}"):
            table[alias] = (f"sky_sigma_{b}", True)
        for alias in (
            f"psf_fwhm_{b}",
            f"fwhm_{b}",
            f"fwhm_wmean_{b}",
            f"psf_fwhm_wmean_{b}",
            f"seeing_{b}",
        ):
            table[alias] = (f"psf_fwhm_{b}", False)
        for alias in (
            f"mag_{b}",
            f"unsheared/mag_{b}",
            f"unsheared_mag_{b}",
            f"meas_mag_{b}",
            f"observed_mag_{b}",
        ):
            table[alias] = (f"mag_{b}", False)
    for alias in ("detected", "is_detected", "detected_flag"):
        table[alias] = (DETECTED, False)
    table["split"] = (SPLIT, False)
    return table


ALIASES = _alias_table()


def resolve_names(names: Any) -> dict[str, tuple[Any, bool]]:
    """canonical column → (the column of `names` that provides it, is a variance).

    The canonical name itself (any case) wins over an alias; otherwise the first alias.
    """
    chosen: dict[str, tuple[Any, bool]] = {}
    for name in names:
        hit = ALIASES.get(str(name).strip().lower())
        if hit is None:
            continue
        canonical, is_var = hit
        exact = str(name).strip().lower() == canonical
        if canonical not in chosen or exact:
            chosen[canonical] = (name, is_var)
    return chosen


def normalize_columns(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with known columns renamed to their canonical names (variances → RMS)."""
    chosen = resolve_names(df.columns)
    if not chosen:
        return df
    out = df.copy()
    for canonical, (source, is_var) in chosen.items():
        if source == canonical and not is_var:
            continue
        values = out.pop(source)
        if is_var:
            values = np.sqrt(pd.to_numeric(values, errors="coerce").where(lambda v: v >= 0))
        if canonical in out.columns:  # a differently-cased copy that lost: keep it aside
            out = out.rename(columns={canonical: f"{canonical}_original"})
        out[canonical] = values
    return out


# --------------------------------------------------------------------------------------------
# validation
def _rows_text(rows: np.ndarray) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:_SHOWN_ROWS])
    return shown + (", …" if len(rows) > _SHOWN_ROWS else "")


def _as_float(raw: pd.Series) -> np.ndarray:
    """A column as float64: anything that is not a number (text, lists, an integer beyond
    float64's range) becomes NaN, to be reported by row."""
    try:
        return pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    except (OverflowError, TypeError, ValueError):  # to_numeric gives up on the whole column
        return np.array([_one_float(v) for v in raw], dtype=np.float64)


def _one_float(value: Any) -> float:
    try:
        return float(pd.to_numeric(value))
    except (OverflowError, TypeError, ValueError):
        return np.nan


def range_checks(name: str, col: np.ndarray) -> list[tuple[np.ndarray, str]]:
    """(rows out of range, message) for the finite values of input column `name`."""
    finite = np.isfinite(col)
    with np.errstate(invalid="ignore"):
        if name in TRUE_MAG:
            lo, hi = MAG_RANGE
            return [(finite & ((col < lo) | (col > hi)), f"magnitude outside {lo:g}–{hi:g}")]
        if name in SKY_SIGMA:
            lo, hi = SKY_SIGMA_RANGE
            return [(finite & ((col < lo) | (col > hi)), f"sky sigma outside {lo:g}–{hi:g}")]
        lo, hi = PSF_FWHM_RANGE
        return [(finite & ((col < lo) | (col > hi)), f"PSF FWHM outside {lo:g}–{hi:g} arcsec")]


def find_problems(
    df: pd.DataFrame, row_offset: int = 0
) -> tuple[list[str], list[dict[str, Any]], np.ndarray | None]:
    """(summary lines, per-row problems, (N, 9) float64 values or None) for the INPUTS."""
    df = normalize_columns(df)
    missing = [c for c in INPUTS if c not in df.columns]
    if missing:
        line = (
            f"missing columns: {', '.join(missing)} (names are case-insensitive; "
            "DES aliases such as BDF_MAG_DERED_CALIB_R, FWHM_WMEAN_R or SKYVAR_WMEAN_R work too)"
        )
        return [line], [{"row": None, "column": c, "message": "missing"} for c in missing], None

    lines: list[str] = []
    problems: list[dict[str, Any]] = []
    values = np.empty((len(df), len(INPUTS)), dtype=np.float64)
    for k, name in enumerate(INPUTS):
        raw = df[name]
        col = _as_float(raw)
        values[:, k] = col
        checks: list[tuple[np.ndarray, str]] = []
        not_number = ~np.isfinite(col) & raw.notna().to_numpy() & ~np.isinf(col)
        checks.append((not_number, "not a number"))
        checks.append((raw.isna().to_numpy() | np.isinf(col), "NaN, null or infinite"))
        checks += range_checks(name, col)
        for mask, message in checks:
            rows = np.flatnonzero(mask) + row_offset
            if len(rows) == 0:
                continue
            lines.append(
                f"column {name}: {len(rows)} rows {message} "
                f"(rows {_rows_text(rows)}, counted from 0)"
            )
            for r in rows[: max(0, MAX_PROBLEMS - len(problems))]:
                problems.append({"row": int(r), "column": name, "message": message})
    return lines, problems, values


def validate_inputs(df: pd.DataFrame, row_offset: int = 0) -> np.ndarray:
    """The (N, 9) float32 emulator inputs in `INPUTS` order, or a `CatalogError`.

    `row_offset` is added to the row numbers quoted in errors (for chunks of a file).
    """
    if len(df) == 0:
        raise CatalogError("the catalog has no rows")
    lines, problems, values = find_problems(df, row_offset)
    if lines or values is None:
        raise CatalogError("invalid catalog: " + "; ".join(lines), problems)
    return values.astype(np.float32)


def native_order(arr: np.ndarray) -> np.ndarray:
    """FITS data are big-endian; pandas and pyarrow want native byte order and str."""
    arr = np.asarray(arr)
    if arr.dtype.kind == "S":
        return np.char.decode(arr, "ascii", errors="replace").astype(str)
    if arr.dtype.byteorder not in ("=", "|"):
        return arr.astype(arr.dtype.newbyteorder("="))
    return arr


# --------------------------------------------------------------------------------------------
# writing
def with_provenance(schema: Any, meta: dict[str, Any] | None) -> Any:
    """A pyarrow schema with each contract column's unit (field metadata `unit`) and `meta`
    (model, version, seed, samples) as JSON under the schema key `cosmogan`."""
    import pyarrow as pa

    fields = [
        f.with_metadata({**(f.metadata or {}), b"unit": UNITS[f.name].encode()})
        if f.name in UNITS
        else f
        for f in schema
    ]
    metadata = dict(schema.metadata or {})
    if meta:
        metadata[b"cosmogan"] = json.dumps(meta, default=str).encode()
    return pa.schema(fields, metadata=metadata)


def fits_provenance(table: Any, meta: dict[str, Any] | None) -> None:
    """Units of the contract columns (those FITS can name) and `meta` as header keywords."""
    for name in table.colnames:
        unit = UNITS.get(name)
        if unit in ("mag", "arcsec"):
            table[name].unit = unit
    for key, value in (meta or {}).items():
        table.meta[key.upper()[:8]] = value if isinstance(value, int | float) else str(value)
