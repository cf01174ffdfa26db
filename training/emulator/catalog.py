"""Read and write users' galaxy catalogs (CSV, Parquet, FITS) chunk by chunk, torch-free.

Column names, aliases and the validation rule are the contract of `models.columns`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pandas as pd

from models import columns
from models.columns import (
    CatalogError,
    fits_provenance,
    native_order,
    normalize_columns,
    with_provenance,
)

log = logging.getLogger(__name__)

FORMATS = ("csv", "parquet", "fits")


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


def dataset_parts(path: str | Path) -> list[Path]:
    """The Parquet parts of a multi-part dataset folder, in row order (by file name)."""
    parts = sorted(Path(path).glob("*.parquet"))
    if not parts:
        raise CatalogError(f"{path}: a folder with no Parquet parts")
    return parts


def catalog_format(path: str | Path) -> str:
    """'csv', 'parquet' or 'fits' from the file name (compressed CSV/FITS allowed); a folder
    is a multi-part Parquet dataset."""
    if Path(path).is_dir():
        return "parquet"
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
            yield pd.DataFrame({c: native_order(part[c]) for c in keep})


def iter_catalog(path: str | Path, chunk_rows: int = 100_000) -> Iterator[pd.DataFrame]:
    """Chunks of at most `chunk_rows` rows of a CSV, Parquet or FITS catalog, names normalised."""
    if chunk_rows < 1:
        raise CatalogError(f"chunk_rows must be at least 1, got {chunk_rows}")
    path = Path(path)
    fmt = catalog_format(path)
    if not path.is_file() and not path.is_dir():
        raise CatalogError(f"{path}: no such file")
    try:
        if path.is_dir():  # a multi-part dataset: its parts in order, one at a time
            import pyarrow.parquet as pq

            for part in dataset_parts(path):
                with pq.ParquetFile(part) as pf:
                    for batch in pf.iter_batches(batch_size=chunk_rows):
                        yield normalize_columns(batch.to_pandas())
        elif fmt == "csv":
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
        if path.is_dir():
            import pyarrow.parquet as pq

            return sum(pq.ParquetFile(p).metadata.num_rows for p in dataset_parts(path))
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
