"""What the sync and async clients share: settings, retries, tables, PNG tiles, SSE parsing."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import secrets
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

DEFAULT_URL = "http://127.0.0.1:8000"
CSV, PARQUET, FITS = "text/csv", "application/vnd.apache.parquet", "application/fits"
FILE_TYPES = {".csv": CSV, ".parquet": PARQUET, ".pq": PARQUET, ".fits": FITS, ".fit": FITS}
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
RETRY_STATUS = frozenset({429, 502, 503, 504})
# the server's seeds are at most 2**53 - 1, so they survive JSON and JavaScript numbers too
MAX_RANDOM_SEED = 2**53 - 1
GRID_PADDING = 2  # the server's grid layout (torchvision's make_grid: 2-pixel black border)


def resolve_settings(url: str | None, api_key: str | None) -> tuple[str, str | None]:
    """The base URL (`url`, else COSMOGAN_URL, else the local default) and the API key
    (`api_key`, else COSMOGAN_API_KEY, else none)."""
    base = (url or os.environ.get("COSMOGAN_URL") or DEFAULT_URL).rstrip("/")
    key = api_key if api_key is not None else os.environ.get("COSMOGAN_API_KEY") or None
    return base, key


def headers_for(api_key: str | None) -> dict[str, str]:
    h = {"user-agent": "cosmogan-client/0.1"}
    if api_key:
        h["authorization"] = f"Bearer {api_key}"
    return h


def random_seed() -> int:
    """A seed the client draws when the caller gives none, so that a retried request (and
    the caller, from `attrs["seed"]`) gets the very same rows."""
    return secrets.randbelow(MAX_RANDOM_SEED + 1)


@dataclass
class RetryPolicy:
    """Retries of idempotent calls on connection errors and 429/502/503/504; a
    `Retry-After` header sets the wait, else exponential backoff from `backoff_s`."""

    max_retries: int = 4
    backoff_s: float = 0.5
    max_wait_s: float = 60.0

    def delay(self, attempt: int, response: httpx.Response | None = None) -> float | None:
        """Seconds to wait before attempt `attempt + 1`, or None to stop retrying."""
        from cosmogan.errors import parse_retry_after

        if attempt >= self.max_retries:
            return None
        hinted = (
            None if response is None else parse_retry_after(response.headers.get("retry-after"))
        )
        wait = hinted if hinted is not None else self.backoff_s * 2**attempt
        return wait if wait <= self.max_wait_s else None

    @staticmethod
    def retryable(method: str, idempotent: bool | None) -> bool:
        return method.upper() in IDEMPOTENT_METHODS if idempotent is None else idempotent


# ------------------------------------------------------------------------------- tables
def to_frame(table: Any) -> pd.DataFrame:
    """A DataFrame from a DataFrame, an astropy or pyarrow Table, or a list of row dicts."""
    if isinstance(table, pd.DataFrame):
        return table
    if isinstance(table, pa.Table):
        return table.to_pandas()
    if hasattr(table, "to_pandas"):  # astropy.table.Table, without importing astropy
        return table.to_pandas()
    if isinstance(table, (list, dict)):
        return pd.DataFrame(table)
    raise TypeError(
        f"expected a pandas DataFrame, an astropy/pyarrow Table, rows or a path, "
        f"got {type(table).__name__}"
    )


def parquet_bytes(df: pd.DataFrame) -> bytes:
    """The frame as a Parquet file (its index is not a column of the catalog)."""
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), buf)
    return buf.getvalue()


def read_parquet(data: bytes) -> pd.DataFrame:
    return pq.read_table(io.BytesIO(data)).to_pandas()


@dataclass
class Upload:
    """A catalog ready to send: its bytes, media type and row count (None when unknown)."""

    body: bytes
    media: str
    rows: int | None
    index: pd.Index | None = None


def prepare_catalog(table: Any) -> Upload:
    """A path is sent as it is (CSV, Parquet or FITS); anything else as Parquet."""
    if isinstance(table, (str, os.PathLike)):
        path = Path(table)
        media = FILE_TYPES.get(path.suffix.lower())
        if media is None:
            raise ValueError(f"{path}: use a .csv, .parquet or .fits file, or pass a DataFrame")
        rows = pq.ParquetFile(path).metadata.num_rows if media == PARQUET else None
        return Upload(path.read_bytes(), media, rows)
    df = to_frame(table)
    return Upload(parquet_bytes(df), PARQUET, len(df), df.index)


def attach(df: pd.DataFrame, response: httpx.Response, index: pd.Index | None) -> pd.DataFrame:
    """Keep the caller's index when the rows map one to one; note model and seed in attrs."""
    if index is not None and len(index) == len(df):
        df.index = index
    model = response.headers.get("x-model-version")
    seed = response.headers.get("x-emulate-seed")
    if model:
        df.attrs["model"] = model
    if seed:
        df.attrs["seed"] = int(seed)
    return df


# ---------------------------------------------------------------------------- PNG tiles
def decode_png(data: bytes) -> np.ndarray:
    """An 8-bit RGB PNG as an (H, W, 3) uint8 array, without Pillow (all five filters)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, width = 8, [], 0
    height = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
            if (depth, ctype, interlace) != (8, 2, 0):
                raise ValueError("only 8-bit RGB, non-interlaced PNGs are decoded here")
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    stride = width * 3
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8).reshape(height, stride + 1)
    out = np.zeros((height, stride), np.int32)
    prev = np.zeros(stride, np.int32)
    for y in range(height):
        f, line = raw[y, 0], raw[y, 1:].astype(np.int32)
        if f == 0:
            cur = line
        elif f == 2:
            cur = (line + prev) & 0xFF
        else:  # Sub, Average, Paeth depend on the pixel to the left: byte by byte
            cur = np.zeros(stride, np.int32)
            for x in range(stride):
                a = cur[x - 3] if x >= 3 else 0
                b, c = prev[x], prev[x - 3] if x >= 3 else 0
                if f == 1:
                    pred = a
                elif f == 3:
                    pred = (a + b) // 2
                else:
                    p = a + b - c
                    pa_, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa_ <= pb and pa_ <= pc else b if pb <= pc else c
                cur[x] = (line[x] + pred) & 0xFF
        out[y] = cur
        prev = cur
    return out.astype(np.uint8).reshape(height, width, 3)


def grid_columns(n: int) -> int:
    """Images per row the client asks for (the server's default, ⌈√n⌉)."""
    return max(1, math.ceil(math.sqrt(n)))


def split_grid(grid: np.ndarray, n: int, nrow: int) -> np.ndarray:
    """The (n, H, W, 3) tiles of a grid of `n` images, `nrow` per row."""
    cols = min(nrow, n)
    rows = math.ceil(n / cols)
    p = GRID_PADDING
    h = (grid.shape[0] - p) // rows - p
    w = (grid.shape[1] - p) // cols - p
    tiles = [
        grid[r * (h + p) + p : (r + 1) * (h + p), c * (w + p) + p : (c + 1) * (w + p)]
        for r, c in (divmod(k, cols) for k in range(n))
    ]
    return np.stack(tiles)


def to_images(tiles: np.ndarray, output: str) -> Any:
    if output == "array":
        return tiles
    if output == "pil":
        try:
            from PIL import Image
        except ImportError:
            raise ImportError(
                "generate() returns PIL images with Pillow installed "
                "(pip install 'cosmogan-client[images]'); or pass output='array'"
            ) from None
        return [Image.fromarray(t) for t in tiles]
    raise ValueError(f"output must be 'pil', 'array' or 'png', got {output!r}")


# ---------------------------------------------------------------------------------- SSE
@dataclass
class Event:
    """One server-sent event of a training job: `snapshot`, `progress` or `state`."""

    event: str
    id: str | None
    data: dict[str, Any] = field(default_factory=dict)


class SSEParser:
    """Server-sent events from lines (the text/event-stream format, comments skipped)."""

    def __init__(self) -> None:
        self._event, self._id, self._data = "message", None, []

    def feed(self, line: str) -> Event | None:
        if line == "":
            if not self._data:
                self._event = "message"
                return None
            raw = "\n".join(self._data)
            ev = Event(self._event, self._id, json.loads(raw) if raw else {})
            self._event, self._data = "message", []
            return ev
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            self._id = value
        return None

    def parse(self, lines: Iterable[str]) -> Iterator[Event]:
        for line in lines:
            ev = self.feed(line)
            if ev is not None:
                yield ev


def model_params(model: str | None, version: str | None) -> dict[str, str]:
    """`model` and `version` query parameters; `model` may be a `name@version` reference
    (what `Job.model` gives)."""
    if model and "@" in model:
        model, version = split_ref(model, version)
    out = {}
    if model:
        out["model"] = model
    if version:
        out["version"] = version
    return out


def emulate_job_params(
    samples: int, seed: int, model: str | None, version: str | None, dataset: str | None = None
) -> dict[str, Any]:
    params = {"samples": samples, "seed": seed, "output": "parquet", **model_params(model, version)}
    if dataset is not None:
        params["dataset"] = dataset
    return params


def dataset_parts(name: str, desc: dict[str, Any]) -> list[dict[str, Any]]:
    """The parts listed in a dataset's description (`GET /datasets/{name}?parts=true`)."""
    from cosmogan.errors import CosmoganError

    parts = desc.get("parts")
    if not parts:
        raise CosmoganError(
            f"dataset {name!r} has no Parquet parts to read (state {desc.get('state')!r}, "
            f"kind {desc.get('kind')!r})"
        )
    return parts


def checked_part(name: str, part: dict[str, Any], data: bytes) -> bytes:
    """A downloaded part's bytes, once their sha256 is the manifest's."""
    from cosmogan.errors import CosmoganError

    got = hashlib.sha256(data).hexdigest()
    if got != part["sha256"]:
        raise CosmoganError(
            f"part {part['file']} of dataset {name!r} arrived with sha256 {got}, not the "
            f"manifest's {part['sha256']}"
        )
    return data


def concat_parts(frames: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def save_file(path: Path, data: bytes) -> None:
    """Write `path` whole or not at all (a temporary file renamed into place)."""
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def save_manifest(folder: Path, desc: dict[str, Any]) -> None:
    save_file(folder / "_manifest.json", json.dumps(desc, indent=2).encode())


def split_ref(model: str, version: str | None) -> tuple[str, str]:
    """(`name`, `version`) from `name@version`, or from `name` and `version`."""
    if "@" in model:
        name, _, ref = model.partition("@")
        if version is not None and version != ref:
            raise ValueError(f"{model!r} names version {ref!r}, and version={version!r}")
        return name, ref
    if version is None:
        raise ValueError("name a version: activate('balrog', 'v2') or activate('balrog@v2')")
    return model, version
