"""Catalog tables over HTTP: read JSON/CSV/Parquet/FITS bodies, encode emulated rows back.

Columnar end to end: a body becomes a `Catalog` of named columns (Arrow arrays for files,
the parsed lists for JSON), the nine emulator inputs are validated once into one float64
array, and the response is written from the columns plus the emulated arrays. Column names
come back exactly as they were sent (DES aliases included). Every way a body can be
malformed is a `TableError` (a 4xx with a message), checked before anything large is
materialised: a Parquet or FITS body's row count and decoded size come from its metadata.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from models import columns
from models.columns import (
    ALIASES,
    CatalogError,
    fits_provenance,
    range_checks,
    resolve_names,
    validate_inputs,
    with_provenance,
)

JSON, CSV, PARQUET, FITS = (
    "application/json",
    "text/csv",
    "application/vnd.apache.parquet",
    "application/fits",
)
MEDIA_TYPES = (JSON, CSV, PARQUET, FITS)
BODY_FORMATS = {
    JSON: "json",
    CSV: "csv",
    "application/csv": "csv",
    PARQUET: "parquet",
    "application/x-parquet": "parquet",
    "application/parquet": "parquet",
    FITS: "fits",
    "image/fits": "fits",
}
RESPONSE_TYPES = {
    JSON: JSON,
    "application/*": JSON,
    CSV: CSV,
    "text/*": CSV,
    PARQUET: PARQUET,
    "application/x-parquet": PARQUET,
    "application/parquet": PARQUET,
    FITS: FITS,
    "image/fits": FITS,
}
MAX_BODY_BYTES = 64 * 2**20
MAX_DECODED_BYTES = 256 * 2**20  # what a table body may decode to, checked before decoding
MAX_COLUMNS = 1000
FITS_MAX_COLUMNS = 999  # the FITS standard numbers table columns TTYPE1 … TTYPE999
REALIZATION = columns.REALIZATION
# what a response adds to the body's columns: the emulated ones and the realization index
EMULATED_WIDTH = len(columns.OBSERVED) + len(columns.MAGERR) + 3


@dataclass(frozen=True)
class Bounds:
    """What one request may send and ask for: rows and columns of the body, and the cells
    (rows × samples × columns) of its response. Each is checked as soon as it is known:
    from a CSV body's header line and line count, a Parquet footer or a FITS header, before
    the body is parsed."""

    rows: int
    columns: int = MAX_COLUMNS
    cells: int | None = None  # None: no cap
    samples: int = 1  # realizations per row, when known before the body is read

    def check(self, rows: int, width: int, samples: int | None = None) -> None:
        """TableError(413) when `rows` × `width` body columns (× samples) is too much."""
        if width > self.columns:
            raise TableError(
                413,
                f"{width} columns is more than the {self.columns} allowed per request "
                "(COSMOGAN_MAX_EMULATE_COLUMNS)",
            )
        _check_rows(rows, self.rows)
        n = self.samples if samples is None else samples
        cells = rows * n * (width + EMULATED_WIDTH)
        if self.cells is not None and cells > self.cells:
            raise TableError(
                413,
                f"the response would hold {cells:,} cells (rows × samples × columns: {rows} × "
                f"{n} × {width + EMULATED_WIDTH}), more than the {self.cells:,} allowed per "
                "request (COSMOGAN_MAX_EMULATE_CELLS); send fewer rows, columns or samples, "
                "or use POST /emulate/jobs",
            )


class TableError(ValueError):
    """A body that cannot be used; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str, problems: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.status, self.message, self.problems = status, message, problems


# --------------------------------------------------------------------------------------------
# media types


def negotiate(accept: str | None) -> str:
    """The response type for an Accept header (JSON by default); TableError(406) if none fits."""
    if not accept:
        return JSON
    choices = []
    for i, part in enumerate(accept.split(",")):
        media, *params = [p.strip() for p in part.split(";")]
        q = 1.0
        for p in params:
            if p.startswith("q="):
                try:
                    q = float(p[2:])
                except ValueError:
                    q = 0.0
        choices.append((-q, i, media.lower()))
    for negq, _, media in sorted(choices):
        if negq == 0:
            break
        if media == "*/*":
            return JSON
        if media in RESPONSE_TYPES:
            return RESPONSE_TYPES[media]
    raise TableError(406, "acceptable response types: " + ", ".join(MEDIA_TYPES))


def body_format(content_type: str | None) -> str:
    """'json', 'csv', 'parquet' or 'fits' for a Content-Type (JSON when absent), else 415."""
    ctype = (content_type or JSON).split(";")[0].strip().lower()
    fmt = BODY_FORMATS.get(ctype)
    if fmt is None:
        raise TableError(
            415, f"unsupported content type {ctype!r}; send JSON, CSV, Parquet or FITS"
        )
    return fmt


# --------------------------------------------------------------------------------------------
# the catalog


@dataclass
class Catalog:
    """Named columns of equal length, in the order they were sent; names as sent."""

    columns: dict[str, Any]  # name → pa.Array | pa.ChunkedArray | list (JSON values)
    rows: int
    records: list[dict[str, Any]] | None = None  # JSON rows that all have the same keys

    def inputs(self) -> np.ndarray:
        """The (rows, 9) float64 emulator inputs in `columns.INPUTS` order, or TableError(422).

        The one validation rule of `models.columns` applies. Plain numeric columns
        that pass its range checks are taken as they are; anything else (text, nulls,
        variances to convert, values out of range) goes through the full validation, which
        names every bad row.
        """
        fast = self._numeric_inputs()
        if fast is not None:
            return fast
        wanted = {
            name: self.columns[name]
            for name in self.columns
            if ALIASES.get(name.strip().lower(), ("",))[0] in columns.INPUTS
        }
        frame = pd.DataFrame({name: _to_pandas(col) for name, col in wanted.items()})
        frame.index = pd.RangeIndex(self.rows)
        try:
            return validate_inputs(frame).astype(np.float64)
        except CatalogError as exc:
            raise TableError(422, str(exc), exc.problems[:1000]) from exc

    def _numeric_inputs(self) -> np.ndarray | None:
        chosen = resolve_names(self.columns)
        values = np.empty((self.rows, len(columns.INPUTS)), dtype=np.float64)
        for k, name in enumerate(columns.INPUTS):
            source, is_var = chosen.get(name, (None, True))
            if is_var:
                return None
            col = _numbers(self.columns[source])
            if col is None or not np.isfinite(col).all():
                return None
            if any(mask.any() for mask, _ in range_checks(name, col)):
                return None
            values[:, k] = col
        # the same float32 rounding as `validate_inputs`: one path, one set of numbers
        return values.astype(np.float32).astype(np.float64)


def _numbers(col: Any) -> np.ndarray | None:
    """A column as float64 when it holds only numbers (no text, nulls or booleans)."""
    if isinstance(col, list):
        # bool is an int subclass; lists, dicts and text leave it to the full validation
        if not all(type(v) in (int, float) for v in col):
            return None
        try:
            return np.array(col, dtype=np.float64)
        except OverflowError:  # an integer beyond float64
            return None
    t = col.type
    if col.null_count or not (pa.types.is_floating(t) or pa.types.is_integer(t)):
        return None
    return np.asarray(col.to_numpy(), dtype=np.float64)


def _to_pandas(col: Any) -> Any:
    return col if isinstance(col, list) else col.to_pandas()


def _check_names(names: Sequence[str]) -> None:
    seen: set[str] = set()
    dupes = sorted({n for n in names if n in seen or seen.add(n)})  # type: ignore[func-returns-value]
    if dupes:
        raise TableError(422, f"duplicate column names: {', '.join(map(repr, dupes[:10]))}")


def _check_rows(n: int, max_rows: int, too_many: int = 413) -> None:
    if n > max_rows:
        raise TableError(
            too_many,
            f"{n} rows is more than the {max_rows} allowed per request; "
            "send larger catalogs to POST /emulate/jobs (any size, in the background)",
        )
    if n == 0:
        raise TableError(422, "the catalog has no rows")


def _bounds(max_rows: Bounds | int) -> Bounds:
    """`max_rows` as Bounds (a bare row limit keeps the other defaults)."""
    return max_rows if isinstance(max_rows, Bounds) else Bounds(max_rows)


def from_rows(rows: Any, max_rows: Bounds | int) -> Catalog:
    """A catalog from the `rows` of a JSON body: a non-empty list of objects."""
    bounds = _bounds(max_rows)
    if not isinstance(rows, list) or not rows:
        raise TableError(422, "rows: must be a non-empty list of objects")
    # the schema of a JSON body states the row limit (maxItems), so too many is a 422 there
    _check_rows(len(rows), bounds.rows, too_many=422)
    bad = next((i for i, r in enumerate(rows) if type(r) is not dict), None)
    if bad is not None:
        raise TableError(
            422, f"rows.{bad}: must be an object", [{"row": bad, "message": "not an object"}]
        )
    first = rows[0].keys()
    bounds.check(len(rows), len(first))  # before any column is built
    uniform = all(r.keys() == first for r in rows)
    # rows with different keys: every key, in the order first seen; missing = null
    names = list(first) if uniform else list(dict.fromkeys(k for r in rows for k in r))
    bounds.check(len(rows), len(names))
    cols = {name: [r.get(name) for r in rows] for name in names}
    return Catalog(cols, len(rows), rows if uniform else None)


def from_arrow(table: pa.Table, max_rows: Bounds | int) -> Catalog:
    _check_names(table.column_names)
    _bounds(max_rows).check(table.num_rows, table.num_columns)
    return Catalog(dict(zip(table.column_names, table.columns, strict=True)), table.num_rows)


def read_table(data: bytes, fmt: str, max_rows: Bounds | int) -> Catalog:
    """A CSV, Parquet or FITS body as a catalog; malformed or too large → TableError."""
    bounds = _bounds(max_rows)
    if not data:
        raise TableError(422, f"the {fmt.upper()} body is empty")
    try:
        if fmt == "csv":
            return from_arrow(_read_csv(data, bounds), bounds)
        if fmt == "parquet":
            return from_arrow(_read_parquet(data, bounds), bounds)
        if fmt == "fits":
            return _read_fits(data, bounds)
    except TableError:
        raise
    except Exception as exc:  # any parser failure is the client's malformed body
        raise TableError(422, f"cannot read the body as {fmt.upper()}: {_short(exc)}") from exc
    raise TableError(415, f"unknown table format {fmt!r}")


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def _read_csv(data: bytes, bounds: Bounds) -> pa.Table:
    import pyarrow.csv as pacsv

    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TableError(422, f"the CSV body is not UTF-8 text (byte {exc.start})") from exc
    bounds.check(*_csv_shape(data))  # before the parse: its memory grows with the columns
    opts = pacsv.ReadOptions(autogenerate_column_names=False)
    parse = pacsv.ParseOptions(newlines_in_values=False)
    return pacsv.read_csv(io.BytesIO(data), read_options=opts, parse_options=parse)


def _csv_shape(data: bytes) -> tuple[int, int]:
    """(rows, columns) of a CSV body from its header line and its non-empty lines (a value
    cannot hold a line break: the parse refuses them)."""
    end = data.find(b"\n")
    header = data[: end if end >= 0 else len(data)].decode("utf-8")
    width = len(next(csv.reader([header.rstrip("\r")]), []))
    rows = data.count(b"\n") + (not data.endswith(b"\n"))
    if rows > 1 and data.count(b"\n\n"):  # blank lines are skipped, count the others
        rows = sum(1 for _ in _LINE.finditer(data))
    return max(0, rows - 1), width


_LINE = re.compile(rb"^[^\r\n]", re.MULTILINE)


def _read_parquet(data: bytes, bounds: Bounds) -> pa.Table:
    """Read a Parquet body whose decoded size, bounded from its footer, is acceptable.

    Fixed-width values cost their width per value (the footer counts values); plain byte
    strings their uncompressed size (also in the footer). Dictionary-encoded strings are the
    bomb: one long value repeated on every row decodes to rows × its length. Those columns
    are read still dictionary-encoded (dictionary + indices, small), their decoded length
    summed without decoding, and only then decoded.
    """
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(io.BytesIO(data))
    meta = pf.metadata
    bounds.check(meta.num_rows, len(pf.schema_arrow))
    for field in pf.schema_arrow:
        if pa.types.is_nested(field.type):
            raise TableError(
                422, f"column {field.name!r} is nested ({field.type}); send flat columns"
            )
    decoded, dictionary = 0, set()
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        for c in range(group.num_columns):
            col = group.column(c)
            if col.physical_type not in ("BYTE_ARRAY", "FIXED_LEN_BYTE_ARRAY"):
                decoded += 16 * col.num_values
            elif col.has_dictionary_page:
                dictionary.add(col.path_in_schema)
            else:
                decoded += col.total_uncompressed_size + 4 * col.num_values
    _check_decoded(decoded)
    if dictionary:
        pf = pq.ParquetFile(io.BytesIO(data), read_dictionary=sorted(dictionary))
    table = pf.read()
    if table.num_rows != meta.num_rows:
        raise TableError(422, "the Parquet body's row count does not match its metadata")
    for name in dictionary:
        i = table.schema.get_field_index(name)
        col = table.column(i)
        if not pa.types.is_dictionary(col.type):
            continue
        for chunk in col.chunks:
            lengths = pc.binary_length(chunk.dictionary)
            decoded += pc.sum(pc.take(lengths, chunk.indices)).as_py() or 0
        _check_decoded(decoded)
        plain = pa.chunked_array(
            [chunk.dictionary_decode() for chunk in col.chunks], col.type.value_type
        )
        table = table.set_column(i, table.field(i).with_type(plain.type), plain)
    return table


def _check_decoded(size: int) -> None:
    if size > MAX_DECODED_BYTES:
        raise TableError(
            413, f"the body decodes to more than {MAX_DECODED_BYTES // 2**20} MiB ({size:,} bytes)"
        )


def _read_fits(data: bytes, bounds: Bounds) -> Catalog:
    from astropy.io import fits

    from models.columns import native_order

    with fits.open(io.BytesIO(data), memmap=False, lazy_load_hdus=True) as hdul:
        hdu = next((h for h in hdul if isinstance(h, fits.BinTableHDU | fits.TableHDU)), None)
        if hdu is None:
            raise TableError(422, "the FITS body has no table extension")
        rows, width = int(hdu.header.get("NAXIS2", 0)), int(hdu.header.get("NAXIS1", 0))
        bounds.check(rows, int(hdu.header.get("TFIELDS", 0)))
        _check_decoded(rows * width)
        table = hdu.data
        names = list(table.columns.names)
        _check_names([n.lower() for n in names])
        cols = {n: pa.array(native_order(table[n])) for n in names if table[n].ndim == 1}
    return Catalog(cols, rows)


def parse_json(data: bytes) -> dict[str, Any]:
    """The JSON body as an object (TableError(422) when it is not one)."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise TableError(422, f"the body is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise TableError(422, 'the JSON body must be an object: {"rows": [...], ...}')
    return doc


# --------------------------------------------------------------------------------------------
# responses


def response_width(names: Sequence[str], samples: int) -> int:
    """Columns of the response to a catalog with columns `names`."""
    replaced = _replaced(samples)
    kept = sum(not _is_replaced(n, replaced) for n in names)
    return kept + EMULATED_WIDTH - (samples == 1)


def check_media(media: str, names: Sequence[str], samples: int) -> None:
    """TableError(406) when the response cannot be written as `media` (checked before any
    work): FITS tables have at most 999 columns."""
    width = response_width(names, samples)
    if media == FITS and width > FITS_MAX_COLUMNS:
        raise TableError(
            406,
            f"a FITS table holds at most {FITS_MAX_COLUMNS} columns and this response would "
            f"have {width}; ask for Parquet, CSV or JSON",
        )


def _replaced(samples: int) -> set[str]:
    """Input columns the output replaces: emulated columns (any alias) and realization."""
    replaced = {*columns.OBSERVED, *columns.MAGERR, columns.DETECTED, columns.OUT_OF_DOMAIN}
    return replaced | {REALIZATION} if samples > 1 else replaced


def _is_replaced(name: str, replaced: set[str]) -> bool:
    key = name.strip().lower()
    return key in replaced or ALIASES.get(key, ("",))[0] in replaced


def emulated_columns(cat: Catalog, emulated: dict[str, Any], samples: int) -> dict[str, Any]:
    """The output columns: the input ones (each row `samples` times), then the emulated ones
    (`models.columns.emulated`). Input columns that hold emulated quantities are replaced."""
    replaced = _replaced(samples)
    out: dict[str, Any] = {
        name: _repeat(col, samples)
        for name, col in cat.columns.items()
        if not _is_replaced(name, replaced)
    }
    if samples > 1:
        out[REALIZATION] = np.tile(np.arange(samples, dtype=np.int64), cat.rows)
    out.update(emulated)
    return out


def emulated_records(
    cat: Catalog, emulated: dict[str, Any], samples: int
) -> list[dict[str, Any]] | None:
    """The JSON output rows built on the request's own row objects (no columns → dicts
    round trip), or None when the rows did not all have the same keys. Consumes `cat`."""
    if cat.records is None:
        return None
    replaced = _replaced(samples)
    drop = [k for k in cat.records[0] if _is_replaced(k, replaced)]
    added = [*([REALIZATION] if samples > 1 else []), *emulated]
    values = [_pylist(col) if col.dtype.kind == "f" else col.tolist() for col in emulated.values()]
    if samples > 1:
        values.insert(0, np.tile(np.arange(samples), cat.rows).tolist())
    base = cat.records
    if drop:
        base = [{k: v for k, v in r.items() if k not in drop} for r in base]
    if samples > 1:
        base = [dict(r) for r in base for _ in range(samples)]
    for r, *vals in zip(base, *values, strict=True):
        r.update(zip(added, vals, strict=True))
    return base


def _repeat(col: Any, samples: int) -> Any:
    if samples == 1:
        return col
    if isinstance(col, list):
        return [v for v in col for _ in range(samples)]
    return col.take(np.repeat(np.arange(len(col)), samples))


def encode(out: dict[str, Any], media: str, meta: dict[str, Any]) -> bytes:
    """Response bytes of the output columns as `media`; `meta` heads a JSON response."""
    if media == JSON:
        names = list(out)
        values = [_pylist(out[n]) for n in names]
        rows = [dict(zip(names, row, strict=True)) for row in zip(*values, strict=True)]
        return encode_json(rows, meta)
    table = _arrow_table(out)
    table = table.cast(with_provenance(table.schema, meta))
    buf = io.BytesIO()
    if media == CSV:
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, buf)
    elif media == PARQUET:
        import pyarrow.parquet as pq

        # dictionary pages and statistics cost 15× the time of the plain pages (10k rows)
        pq.write_table(table, buf, compression="snappy", use_dictionary=False,
                       write_statistics=False)  # fmt: skip
    else:
        _write_fits(table, buf, meta)
    return buf.getvalue()


def _pylist(col: Any) -> list[Any]:
    if isinstance(col, list):
        return col
    if isinstance(col, np.ndarray):
        if col.dtype.kind == "f":
            return [None if v != v else v for v in col.tolist()]  # NaN → null
        return col.tolist()
    return col.to_pylist()


def encode_json(rows: list[dict[str, Any]], meta: dict[str, Any]) -> bytes:
    """`meta` and the output rows as one JSON object."""
    try:
        return orjson.dumps({**meta, "rows": rows})
    except TypeError as exc:  # e.g. integers beyond 64 bits in pass-through columns
        raise TableError(422, f"cannot encode the rows as JSON: {exc}") from exc


def _arrow_table(out: dict[str, Any]) -> pa.Table:
    arrays = {}
    for name, col in out.items():
        if isinstance(col, list):
            try:
                col = pa.array(col)
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
                raise TableError(
                    422,
                    f"column {name!r} mixes value types; it can only be returned as JSON "
                    f"({_short(exc)})",
                ) from exc
        arrays[name] = col
    return pa.table(arrays)


def _write_fits(table: pa.Table, buf: io.BytesIO, meta: dict[str, Any]) -> None:
    from astropy.table import Table

    cols = {}
    for name, col in zip(table.column_names, table.columns, strict=True):
        t = col.type
        if pa.types.is_floating(t) or pa.types.is_integer(t):
            arr = col.to_numpy()  # integers with nulls come back as floats with NaN
        elif pa.types.is_boolean(t):
            arr = col.fill_null(False).to_numpy()
        elif pa.types.is_string(t) or pa.types.is_large_string(t):
            arr = np.asarray(col.fill_null("").to_pylist(), dtype=str)
        elif pa.types.is_null(t):
            arr = np.full(len(col), np.nan)
        else:
            raise TableError(422, f"column {name!r} ({t}) cannot be written to FITS")
        cols[name] = arr
    fits = Table(cols)
    fits_provenance(fits, meta)
    fits.write(buf, format="fits")
