"""Read, validate and write users' galaxy catalogs (CSV, Parquet, FITS), streaming, torch-free.

Column names are those of `models.columns`, matched case-insensitively, plus these
aliases (the DES Y3 Balrog / Gold names among them):

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

Units are those of `training.data.balrog`: AB magnitudes, sky-noise RMS per 0.263″ pixel in
flux units at zero-point 30, PSF FWHM in arcsec. When a file holds both a canonical name and
an alias, the canonical name wins and the alias column is kept under its own name.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pandas as pd

from models import columns

log = logging.getLogger(__name__)

FORMATS = ("csv", "parquet", "fits")
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
    for b in columns.BANDS:
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
        table[alias] = (columns.DETECTED, False)
    table["split"] = (columns.SPLIT, False)
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
        if name in columns.TRUE_MAG:
            lo, hi = MAG_RANGE
            return [(finite & ((col < lo) | (col > hi)), f"magnitude outside {lo:g}–{hi:g}")]
        if name in columns.SKY_SIGMA:
            lo, hi = SKY_SIGMA_RANGE
            return [(finite & ((col < lo) | (col > hi)), f"sky sigma outside {lo:g}–{hi:g}")]
        lo, hi = PSF_FWHM_RANGE
        return [(finite & ((col < lo) | (col > hi)), f"PSF FWHM outside {lo:g}–{hi:g} arcsec")]


def find_problems(
    df: pd.DataFrame, row_offset: int = 0
) -> tuple[list[str], list[dict[str, Any]], np.ndarray | None]:
    """(summary lines, per-row problems, (N, 9) float64 values or None) for the INPUTS."""
    df = normalize_columns(df)
    missing = [c for c in columns.INPUTS if c not in df.columns]
    if missing:
        line = (
            f"missing columns: {', '.join(missing)} (names are case-insensitive; "
            "DES aliases such as BDF_MAG_DERED_CALIB_R, FWHM_WMEAN_R or SKYVAR_WMEAN_R work too)"
        )
        return [line], [{"row": None, "column": c, "message": "missing"} for c in missing], None

    lines: list[str] = []
    problems: list[dict[str, Any]] = []
    values = np.empty((len(df), len(columns.INPUTS)), dtype=np.float64)
    for k, name in enumerate(columns.INPUTS):
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
            lines.append(f"column {name}: {len(rows)} rows {message} (rows {_rows_text(rows)})")
            for r in rows[: max(0, MAX_PROBLEMS - len(problems))]:
                problems.append({"row": int(r), "column": name, "message": message})
    return lines, problems, values


def validate_inputs(df: pd.DataFrame, row_offset: int = 0) -> np.ndarray:
    """The (N, 9) float32 emulator inputs in `columns.INPUTS` order, or a `CatalogError`.

    `row_offset` is added to the row numbers quoted in errors (for chunks of a file).
    """
    if len(df) == 0:
        raise CatalogError("the catalog has no rows")
    lines, problems, values = find_problems(df, row_offset)
    if lines or values is None:
        raise CatalogError("invalid catalog: " + "; ".join(lines), problems)
    return values.astype(np.float32)


def rows_to_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """A frame from JSON rows (a list of objects), columns normalised to canonical names."""
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise CatalogError("rows must be a list of JSON objects")
    if not rows:
        raise CatalogError("no rows given")
    return normalize_columns(pd.DataFrame.from_records(rows))


# --------------------------------------------------------------------------------------------
# reading
def with_emulated(
    df: pd.DataFrame,
    mags: np.ndarray,
    detected: np.ndarray,
    samples: int,
    *,
    magerr: np.ndarray | None = None,
    out_of_domain: np.ndarray | None = None,
) -> pd.DataFrame:
    """The input rows, each repeated `samples` times, with the emulated columns.

    `mags` (N·samples, 3) and `detected` (N·samples,) are in the emulator's order: row i,
    realization k at i·samples + k; so are `magerr` (N·samples, 3), written as
    `magerr_r/i/z` when the model emulates errors, and `out_of_domain` (N·samples,) bool. A
    `realization` column is added when samples > 1; any emulated columns already in `df`
    are replaced.
    """
    added = columns.emulated(mags, detected, magerr, out_of_domain)
    replaced = (*columns.OBSERVED, *columns.MAGERR, columns.DETECTED, columns.OUT_OF_DOMAIN)
    out = df.drop(columns=[c for c in replaced if c in df.columns])
    out = out.iloc[np.repeat(np.arange(len(out)), samples)].reset_index(drop=True)
    if samples > 1:
        out[columns.REALIZATION] = np.tile(np.arange(samples), len(df))
    for name, values in added.items():
        out[name] = values
    return out


def catalog_format(path: str | Path) -> str:
    """'csv', 'parquet' or 'fits' from the file name (compressed CSV/FITS allowed)."""
    name = Path(path).name.lower()
    for suffix in (".gz", ".bz2", ".xz", ".zip"):
        name = name.removesuffix(suffix)
    if name.endswith((".csv", ".txt")):
        return "csv"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".fits", ".fit", ".fts")):
        return "fits"
    raise CatalogError(f"{path}: unknown catalog format; use .csv, .parquet or .fits")


def _native(arr: np.ndarray) -> np.ndarray:
    """FITS data are big-endian; pandas and pyarrow want native byte order and str."""
    arr = np.asarray(arr)
    if arr.dtype.kind == "S":
        return np.char.decode(arr, "ascii", errors="replace").astype(str)
    if arr.dtype.byteorder not in ("=", "|"):
        return arr.astype(arr.dtype.newbyteorder("="))
    return arr


def _fits_table_hdu(hdul: Any, path: Any) -> Any:
    from astropy.io import fits

    for hdu in hdul:
        if isinstance(hdu, fits.BinTableHDU | fits.TableHDU):
            return hdu
    raise CatalogError(f"{path}: no table extension in this FITS file")


def _iter_fits(source: Any, chunk_rows: int, label: Any) -> Iterator[pd.DataFrame]:
    from astropy.io import fits

    memmap = isinstance(source, str | Path) and catalog_format(source) == "fits"
    memmap = memmap and not str(source).lower().endswith((".gz", ".bz2", ".xz", ".zip"))
    with fits.open(source, memmap=memmap) as hdul:
        hdu = _fits_table_hdu(hdul, label)
        data = hdu.data
        n = 0 if data is None else len(data)
        names = [] if data is None else list(data.columns.names)
        skipped = [c for c in names if data[c].ndim > 1] if n else []
        if skipped:
            log.warning("%s: skipping multi-dimensional columns %s", label, skipped)
        keep = [c for c in names if c not in skipped]
        for start in range(0, n, chunk_rows):
            part = data[start : start + chunk_rows]  # a view: memmap reads only these rows
            yield pd.DataFrame({c: _native(part[c]) for c in keep})


def iter_catalog(path: str | Path, chunk_rows: int = 100_000) -> Iterator[pd.DataFrame]:
    """Chunks of at most `chunk_rows` rows of a CSV, Parquet or FITS catalog, names normalised."""
    if chunk_rows < 1:
        raise CatalogError(f"chunk_rows must be at least 1, got {chunk_rows}")
    path = Path(path)
    fmt = catalog_format(path)
    if not path.is_file():
        raise CatalogError(f"{path}: no such file")
    try:
        if fmt == "csv":
            with pd.read_csv(path, chunksize=chunk_rows) as reader:
                for chunk in reader:
                    yield normalize_columns(chunk)
        elif fmt == "parquet":
            import pyarrow.parquet as pq

            with pq.ParquetFile(path) as pf:
                for batch in pf.iter_batches(batch_size=chunk_rows):
                    yield normalize_columns(batch.to_pandas())
        else:
            for chunk in _iter_fits(path, chunk_rows, path):
                yield normalize_columns(chunk)
    except CatalogError:
        raise
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise CatalogError(f"{path}: cannot read as {fmt}: {exc}") from exc


def count_rows(path: str | Path) -> int | None:
    """The rows of a catalog file from its metadata (Parquet footer, FITS header) or its
    line count (plain CSV); None when that cannot be known without parsing it."""
    path = Path(path)
    fmt = catalog_format(path)
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(path).metadata.num_rows
        if fmt == "fits":
            from astropy.io import fits

            with fits.open(path, memmap=True) as hdul:
                return int(_fits_table_hdu(hdul, path).header.get("NAXIS2", 0))
        if path.suffix.lower() in (".csv", ".txt"):
            with path.open("rb") as f:
                lines = sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))
            return max(0, lines - 1)  # the header line
    except (OSError, ValueError, CatalogError):
        return None
    return None


def read_catalog(path: str | Path) -> pd.DataFrame:
    """A whole catalog in memory (see `iter_catalog` for large files)."""
    chunks = list(iter_catalog(path, chunk_rows=1_000_000))
    if not chunks:
        return pd.DataFrame()
    return pd.concat(chunks, ignore_index=True)


def read_catalog_bytes(data: bytes, fmt: str) -> pd.DataFrame:
    """A catalog sent as a request body: `fmt` is 'csv', 'parquet' or 'fits'."""
    if fmt not in FORMATS:
        raise CatalogError(f"unknown catalog format {fmt!r}; use one of {', '.join(FORMATS)}")
    try:
        if fmt == "csv":
            df = pd.read_csv(io.BytesIO(data))
        elif fmt == "parquet":
            df = pd.read_parquet(io.BytesIO(data))
        else:
            chunks = list(_iter_fits(io.BytesIO(data), 1 << 62, "request body"))
            df = pd.concat(chunks, ignore_index=True) if chunks else pd.DataFrame()
    except CatalogError:
        raise
    except Exception as exc:  # any parser failure is the client's malformed body
        raise CatalogError(f"cannot read the body as {fmt}: {exc}") from exc
    return normalize_columns(df)


# --------------------------------------------------------------------------------------------
# writing
def with_provenance(schema: Any, meta: dict[str, Any] | None) -> Any:
    """A pyarrow schema with each contract column's unit (field metadata `unit`) and `meta`
    (model, version, seed, samples) as JSON under the schema key `cosmogan`."""
    import pyarrow as pa

    fields = [
        f.with_metadata({**(f.metadata or {}), b"unit": columns.UNITS[f.name].encode()})
        if f.name in columns.UNITS
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
        unit = columns.UNITS.get(name)
        if unit in ("mag", "arcsec"):
            table[name].unit = unit
    for key, value in (meta or {}).items():
        table.meta[key.upper()[:8]] = value if isinstance(value, int | float) else str(value)


class CatalogWriter:
    """Write a catalog chunk by chunk; the file appears only when the `with` block succeeds.

    Parquet and CSV stream to a temporary file; FITS is written at close from the chunks.
    """

    def __init__(
        self, path: str | Path, fmt: str | None = None, meta: dict[str, Any] | None = None
    ) -> None:
        self.path = Path(path)
        self.meta = meta  # provenance: written into Parquet and FITS files with the units
        self.fmt = fmt or catalog_format(self.path)
        if self.fmt not in FORMATS:
            raise CatalogError(f"unknown catalog format {self.fmt!r}")
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self.rows = 0
        self._parquet: Any = None
        self._schema: Any = None
        self._chunks: list[pd.DataFrame] = []
        self._csv_started = False

    def __enter__(self) -> CatalogWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return self

    def write(self, df: pd.DataFrame) -> None:
        """Append the rows of `df` (the same columns every time)."""
        if self.fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            if self._parquet is None:
                table = pa.Table.from_pandas(df, preserve_index=False)
                self._schema = with_provenance(table.schema, self.meta)
                table = table.cast(self._schema)
                self._parquet = pq.ParquetWriter(self.tmp, self._schema)
            else:
                try:
                    table = pa.Table.from_pandas(df, schema=self._schema, preserve_index=False)
                except (pa.ArrowInvalid, pa.ArrowTypeError, KeyError, ValueError) as exc:
                    raise CatalogError(
                        f"{self.path}: rows {self.rows}+ do not match the columns and types "
                        f"of the first rows written: {exc}"
                    ) from exc
            self._parquet.write_table(table)
        elif self.fmt == "csv":
            df.to_csv(self.tmp, mode="a" if self._csv_started else "w", index=False,
                      header=not self._csv_started)  # fmt: skip
            self._csv_started = True
        else:
            self._chunks.append(df)
        self.rows += len(df)

    def _finish(self) -> None:
        if self.fmt == "parquet":
            if self._parquet is None:
                import pyarrow as pa
                import pyarrow.parquet as pq

                pq.write_table(pa.table({}), self.tmp)
            else:
                self._parquet.close()
                self._parquet = None
        elif self.fmt == "csv":
            if not self._csv_started:
                self.tmp.write_text("")
        else:
            from astropy.table import Table

            df = pd.concat(self._chunks, ignore_index=True) if self._chunks else pd.DataFrame()
            table = Table.from_pandas(df)
            fits_provenance(table, self.meta)
            table.write(self.tmp, format="fits", overwrite=True)
        os.replace(self.tmp, self.path)

    def _abort(self) -> None:
        if self._parquet is not None:
            try:
                self._parquet.close()
            except Exception:  # the file is discarded anyway
                log.debug("closing an aborted Parquet writer failed", exc_info=True)
            self._parquet = None
        self.tmp.unlink(missing_ok=True)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self._abort()
            return
        try:
            self._finish()
        except BaseException:
            self._abort()
            raise
