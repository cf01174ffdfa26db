"""The emulator's training catalog: Buzzard truth, DES-like observing conditions, mini-Balrog.

Truth
-----
True r, i, z magnitudes of the 100,000 Buzzard DES-mock galaxies (DeRose et al. 2019) that
ship in the `pzflow` wheel (`pzflow/example_files/galaxy-data.pkl`: redshift and u g r i z y).
The pickle is read once and converted to `<data_dir>/buzzard_truth.parquet`; everything
afterwards reads the Parquet. A catalog of more than 100,000 rows samples the truth with
replacement (every row still gets its own observing conditions and noise); up to 100,000
rows are sampled without replacement.

Observing conditions (per object and band, `draw_conditions`)
-------------------------------------------------------------
- ``psf_fwhm_b`` — PSF FWHM in arcsec, log-normal about the DES Y3 Gold median coadd seeing
  (Sevilla-Noarbe et al. 2021): r 0.96″, i 0.88″, z 0.84″; scatter 0.15 in ln FWHM
  (≈ ±0.14″), clipped to [0.6″, 2.5″].
- ``sky_sigma_b`` — sky-noise RMS per 0.263″ pixel in flux units at zero-point 30
  (``flux = 10**(0.4 (30 - mag))``). Medians follow from the approximate DES Y3 coadd
  10σ limiting magnitudes in 1.95″-diameter apertures, r 23.9, i 23.3, z 22.6, assuming
  sky-dominated noise: ``sigma = F(m_10) / (10 sqrt(pi (0.975″/0.263″)**2))`` → r 4.1,
  i 7.1, z 13.5. Scatter 0.25 in ln sigma (≈ 0.27 mag of depth), clipped to [0.4, 3] times
  the median.
- Bands are correlated because they share a sky position (correlation 0.8 for seeing, 0.7
  for sky noise, through a shared Gaussian component); seeing and sky noise are independent.

Catalog (`build_catalog`)
-------------------------
Inputs (`columns.INPUTS`), the simulator's `mag_{r,i,z}` and `magerr_{r,i,z}` (NaN when not
detected) and `detected`, `split` (80/10/10 train/val/test, fixed by the seed) and `truth_id`
(row of the Buzzard table). `seed` fixes the objects and their conditions, `draw_seed`
(default: `seed`) the simulator's randomness (galaxy shapes, positions, noise): two builds
with one `seed` and two `draw_seed`s are two independent simulator draws of the same
objects, whose differences are the floor any emulator is measured against. Simulated in
chunks over processes; each finished chunk is saved under `<out>.parts/`, so an interrupted
build resumes where it stopped. `catalog_part` makes one chunk of finished rows on its own:
the service's builds (`worker.datasets`) fan those out over every `data` worker, and their
parts concatenated are the rows of `build_catalog` for the same parameters.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import math
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from models import columns
from models.atomic import atomic_write
from training.emulator import minibalrog

log = logging.getLogger(__name__)

TRUTH_FILE = "buzzard_truth.parquet"
TRUTH_ROWS = 100_000

PSF_FWHM_MEDIAN = {"r": 0.96, "i": 0.88, "z": 0.84}  # arcsec
PSF_FWHM_LN_SCATTER = 0.15
PSF_FWHM_RANGE = (0.6, 2.5)  # arcsec
PSF_BAND_CORRELATION = 0.8
DEPTH_10SIGMA = {"r": 23.9, "i": 23.3, "z": 22.6}  # AB, 1.95″-diameter aperture
DEPTH_APERTURE_DIAMETER = 1.95  # arcsec
SKY_LN_SCATTER = 0.25
SKY_RANGE_FACTOR = (0.4, 3.0)
SKY_BAND_CORRELATION = 0.7
SPLIT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}
META_KEY = b"cosmogan"  # Parquet schema metadata: the build's parameters (`build_meta`)


def sky_sigma_median(band: str) -> float:
    """Median sky RMS per pixel (ZP 30 flux units) implied by the band's 10σ depth."""
    aperture_pixels = math.pi * (DEPTH_APERTURE_DIAMETER / 2 / minibalrog.PIXEL_SCALE) ** 2
    flux_10sigma = 10 ** (0.4 * (minibalrog.ZEROPOINT - DEPTH_10SIGMA[band]))
    return flux_10sigma / (10.0 * math.sqrt(aperture_pixels))


# --------------------------------------------------------------------------------------------
# truth
def _pzflow_galaxy_pickle() -> Path:
    spec = importlib.util.find_spec("pzflow")  # locate the wheel without importing it (jax)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the Buzzard truth catalog ships in the pzflow wheel; install it with "
            "`pip install --no-deps pzflow==4.0.0`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "example_files" / "galaxy-data.pkl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed pzflow package")
    return path


def truth_path(data_dir: Path | None = None) -> Path:
    """`<data_dir>/buzzard_truth.parquet`, converted from the pzflow pickle on first use."""
    if data_dir is None:
        from models.settings import get_settings

        data_dir = get_settings().data_dir
    path = Path(data_dir) / TRUTH_FILE
    if path.is_file():
        return path
    source = _pzflow_galaxy_pickle()
    raw = pd.read_pickle(source)  # a data file shipped in a wheel; read once at build time
    missing = [b for b in columns.BANDS if b not in raw.columns]
    if missing:
        raise ValueError(f"{source} lacks bands {missing}; it has {list(raw.columns)}")
    truth = pd.DataFrame({f"true_mag_{b}": raw[b].to_numpy(np.float64) for b in columns.BANDS})
    if "redshift" in raw.columns:
        truth["redshift"] = raw["redshift"].to_numpy(np.float64)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_parquet_atomic(pa.Table.from_pandas(truth, preserve_index=False), path)
    log.info("converted %s (%d rows) to %s", source, len(truth), path)
    return path


def load_truth(data_dir: Path | None = None) -> pd.DataFrame:
    """The Buzzard truth table: `true_mag_{r,i,z}` and `redshift`."""
    return pd.read_parquet(truth_path(data_dir))


# --------------------------------------------------------------------------------------------
# observing conditions
def _correlated_normals(n: int, rho: float, rng: np.random.Generator) -> np.ndarray:
    """(n, 3) standard normals with correlation `rho` between columns (shared component)."""
    shared = rng.standard_normal((n, 1))
    own = rng.standard_normal((n, len(columns.BANDS)))
    return math.sqrt(rho) * shared + math.sqrt(1.0 - rho) * own


def draw_conditions(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """DES-like `sky_sigma_{r,i,z}` and `psf_fwhm_{r,i,z}` for `n` sky positions."""
    fwhm_z = _correlated_normals(n, PSF_BAND_CORRELATION, rng)
    sky_z = _correlated_normals(n, SKY_BAND_CORRELATION, rng)
    out: dict[str, np.ndarray] = {}
    for k, b in enumerate(columns.BANDS):
        median = sky_sigma_median(b)
        sky = median * np.exp(SKY_LN_SCATTER * sky_z[:, k])
        out[f"sky_sigma_{b}"] = np.clip(
            sky, SKY_RANGE_FACTOR[0] * median, SKY_RANGE_FACTOR[1] * median
        )
    for k, b in enumerate(columns.BANDS):
        fwhm = PSF_FWHM_MEDIAN[b] * np.exp(PSF_FWHM_LN_SCATTER * fwhm_z[:, k])
        out[f"psf_fwhm_{b}"] = np.clip(fwhm, *PSF_FWHM_RANGE)
    return pd.DataFrame(out)[list(columns.CONDITIONS)]


def sample_inputs(rows: int, seed: int, data_dir: Path | None = None) -> pd.DataFrame:
    """`rows` truth galaxies (with `truth_id`) and their observing conditions, fixed by `seed`."""
    if rows < 1:
        raise ValueError(f"rows must be at least 1, got {rows}")
    truth = load_truth(data_dir)
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(truth), size=rows, replace=rows > len(truth))
    mags = truth.iloc[idx][list(columns.TRUE_MAG)].reset_index(drop=True)
    conds = draw_conditions(rows, rng)
    out = pd.concat([mags, conds], axis=1)
    out["truth_id"] = idx.astype(np.int64)
    return out


def assign_split(rows: int, seed: int) -> np.ndarray:
    """A train/val/test label per row (80/10/10), a fixed permutation for `seed`."""
    perm = np.random.default_rng([seed, 2]).permutation(rows)
    n_train = round(SPLIT_FRACTIONS["train"] * rows)
    n_val = round(SPLIT_FRACTIONS["val"] * rows)
    labels = np.empty(rows, dtype=object)
    labels[perm[:n_train]] = "train"
    labels[perm[n_train : n_train + n_val]] = "val"
    labels[perm[n_train + n_val :]] = "test"
    return labels


# --------------------------------------------------------------------------------------------
# building
def _write_parquet_atomic(table: pa.Table, path: Path) -> None:
    with atomic_write(path) as f:
        pq.write_table(table, f)


@functools.lru_cache(maxsize=2)
def _inputs(rows: int, seed: int, data_dir: str) -> pd.DataFrame:
    """`sample_inputs` for a whole build, kept while a process runs its chunks."""
    return sample_inputs(rows, seed, Path(data_dir))


@functools.lru_cache(maxsize=2)
def _split(rows: int, seed: int) -> np.ndarray:
    return assign_split(rows, seed)


def chunk_slice(rows: int, chunk_rows: int, chunk: int) -> slice:
    """The rows of chunk `chunk` of a build of `rows` rows in chunks of `chunk_rows`."""
    return slice(chunk * chunk_rows, min(rows, (chunk + 1) * chunk_rows))


def catalog_rows(inputs: pd.DataFrame, observed: pd.DataFrame, split: np.ndarray) -> pd.DataFrame:
    """Catalog rows in their final column order: inputs, the simulator's measurements,
    `detected`, `split` and `truth_id` (one function, so a part and a whole catalog agree)."""
    catalog = inputs[list(columns.INPUTS)].reset_index(drop=True).copy()
    for name in (*columns.OBSERVED, *columns.MAGERR):
        catalog[name] = observed[name].to_numpy(np.float64)
    catalog[columns.DETECTED] = observed[columns.DETECTED].to_numpy(bool)
    catalog[columns.SPLIT] = split
    catalog["truth_id"] = inputs["truth_id"].to_numpy()
    return catalog


def build_meta(rows: int, simulator: str, seed: int, draw_seed: int) -> dict[str, Any]:
    """What a built catalog says about itself (Parquet schema metadata `cosmogan`)."""
    return {
        "simulator": simulator,
        "seed": seed,
        "draw_seed": draw_seed,
        "rows": rows,
        "truth": "Buzzard DES mock (pzflow galaxy-data)",
        "units": "mag AB; sky_sigma per 0.263 arcsec pixel at ZP 30; psf_fwhm arcsec",
    }


def with_meta(table: pa.Table, meta: dict[str, Any]) -> pa.Table:
    return table.replace_schema_metadata(
        {**(table.schema.metadata or {}), META_KEY: json.dumps(meta).encode()}
    )


def catalog_part(
    rows: int,
    simulator: str,
    seed: int,
    draw_seed: int,
    chunk_rows: int,
    chunk: int,
    data_dir: Path | None = None,
) -> pa.Table:
    """Chunk `chunk` of a build as a table of finished catalog rows.

    Fixed by (rows, seed, draw seed, chunk rows, chunk index) alone: the simulator's draws
    depend on (draw seed, row id), the objects and the split on the seed, so a chunk rerun
    after a crash, or run on another machine, gives the same rows; concatenated in chunk
    order the parts are the rows `build_catalog` writes.
    """
    from models.settings import get_settings

    if simulator not in minibalrog.SIMULATORS:
        raise ValueError(f"unknown simulator {simulator!r}")
    root = str(Path(data_dir or get_settings().data_dir).resolve())
    inputs = _inputs(rows, seed, root)
    s = chunk_slice(rows, chunk_rows, chunk)
    if s.start >= rows:
        raise ValueError(f"chunk {chunk} is past the {rows} rows of the build")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    arr = inputs[list(columns.INPUTS)].to_numpy(np.float64)[s]
    row_ids = np.arange(s.start, s.stop, dtype=np.int64)
    observed = minibalrog.simulate(arr, simulator=simulator, seed=draw_seed, row_ids=row_ids)
    part = catalog_rows(inputs.iloc[s], observed, _split(rows, seed)[s])
    table = pa.Table.from_pandas(part, preserve_index=False)
    return with_meta(table, build_meta(rows, simulator, seed, draw_seed))


def _simulate_chunk(
    simulator: str, inputs: np.ndarray, row_ids: np.ndarray, seed: int, part: str
) -> int:
    """Simulate one chunk and save it atomically; returns the rows simulated (process-safe)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    result = minibalrog.simulate(inputs, simulator=simulator, seed=seed, row_ids=row_ids)
    result.insert(0, "row_id", row_ids)
    _write_parquet_atomic(pa.Table.from_pandas(result, preserve_index=False), Path(part))
    return len(result)


def _prepare_parts(parts: Path, manifest: dict[str, Any]) -> None:
    """Create `parts`, discarding chunks left by a build with different parameters."""
    mpath = parts / "manifest.json"
    if parts.is_dir():
        try:
            old = json.loads(mpath.read_text())
        except (OSError, ValueError):
            old = None
        if old != manifest:
            log.warning("discarding %s: it belongs to a build with other parameters", parts)
            shutil.rmtree(parts)
    parts.mkdir(parents=True, exist_ok=True)
    if not mpath.is_file():
        mpath.write_text(json.dumps(manifest, indent=2))


def build_catalog(
    out: Path,
    rows: int,
    simulator: str = "galsim",
    seed: int = 0,
    workers: int | None = None,
    chunk_rows: int = 2000,
    draw_seed: int | None = None,
    progress: bool = True,
    data_dir: Path | None = None,
) -> dict:
    """Build the mini-Balrog catalog at `out` (Parquet), resumably; returns a summary.
    `progress` draws a bar over the objects simulated; `data_dir` holds the truth table
    (default: the settings' data root)."""
    from tqdm import tqdm

    from models.settings import get_settings

    out = Path(out)
    if simulator not in minibalrog.SIMULATORS:
        raise ValueError(
            f"unknown simulator {simulator!r}; choose one of {', '.join(minibalrog.SIMULATORS)}"
        )
    if rows < 1:
        raise ValueError(f"--rows must be at least 1, got {rows}")
    if chunk_rows < 1:
        raise ValueError(f"--chunk-rows must be at least 1, got {chunk_rows}")
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    workers = workers or os.cpu_count() or 1
    draw_seed = seed if draw_seed is None else draw_seed
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    inputs = sample_inputs(rows, seed, data_dir or get_settings().data_dir)
    arr = inputs[list(columns.INPUTS)].to_numpy(np.float64)
    row_ids = np.arange(rows, dtype=np.int64)
    parts = out.with_name(out.name + ".parts")
    manifest = {
        "rows": rows,
        "simulator": simulator,
        "seed": seed,
        "draw_seed": draw_seed,
        "chunk_rows": chunk_rows,
    }
    _prepare_parts(parts, manifest)

    n_chunks = math.ceil(rows / chunk_rows)
    chunks = [(k, slice(k * chunk_rows, min(rows, (k + 1) * chunk_rows))) for k in range(n_chunks)]
    part_paths = {k: parts / f"chunk-{k:05d}.parquet" for k, _ in chunks}
    todo = [(k, s) for k, s in chunks if not part_paths[k].is_file()]
    reused = n_chunks - len(todo)
    if reused:
        log.info("resuming: %d of %d chunks already simulated", reused, n_chunks)

    sim_start = time.perf_counter()
    done = rows - sum(s.stop - s.start for _, s in todo)
    bar = tqdm(total=rows, initial=done, unit="obj", disable=not progress)
    try:
        if workers == 1 or len(todo) <= 1:
            for k, s in todo:
                part = str(part_paths[k])
                bar.update(_simulate_chunk(simulator, arr[s], row_ids[s], draw_seed, part))
        else:
            with ProcessPoolExecutor(max_workers=min(workers, len(todo))) as pool:
                futures = [
                    pool.submit(
                        _simulate_chunk,
                        simulator,
                        arr[s],
                        row_ids[s],
                        draw_seed,
                        str(part_paths[k]),
                    )
                    for k, s in todo
                ]
                for fut in as_completed(futures):
                    bar.update(fut.result())
    finally:
        bar.close()
    sim_seconds = time.perf_counter() - sim_start

    # assemble: parts in row order, then the split, written atomically
    observed = pd.concat(
        [pd.read_parquet(part_paths[k]) for k, _ in chunks], ignore_index=True
    ).sort_values("row_id")
    if not np.array_equal(observed["row_id"].to_numpy(), row_ids):
        raise RuntimeError(f"chunks in {parts} do not cover rows 0..{rows - 1}; delete it")
    catalog = catalog_rows(inputs, observed.reset_index(drop=True), assign_split(rows, seed))
    table = pa.Table.from_pandas(catalog, preserve_index=False)
    _write_parquet_atomic(with_meta(table, build_meta(rows, simulator, seed, draw_seed)), out)
    shutil.rmtree(parts, ignore_errors=True)

    seconds = time.perf_counter() - start
    simulated = sum(s.stop - s.start for _, s in todo)
    summary = {
        "path": str(out),
        "rows": rows,
        "simulator": simulator,
        "seed": seed,
        "draw_seed": draw_seed,
        "workers": workers,
        "detected_fraction": round(float(catalog[columns.DETECTED].mean()), 4),
        "seconds": round(seconds, 2),
        "simulated_rows": simulated,
        "seconds_per_object": round(sim_seconds / simulated, 6) if simulated else None,
        "chunks_reused": reused,
    }
    log.info("wrote %s: %s", out, summary)
    return summary
