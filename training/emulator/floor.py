"""The floor of a catalog's own rows: a second simulator draw of objects the service built.

A catalog made by `training.emulator.balrog` (`cosmogan data balrog`, `POST /datasets`)
says in its Parquet schema metadata `cosmogan` which simulator made it and with which
`seed` (the objects and their conditions) and `draw_seed` (the simulator's randomness,
per row id). Its objects can then be simulated again with another draw seed: exactly the
rows that `cosmogan data balrog --seed S --draw-seed D2` would give, so a job's
evaluation gets the same floor as a dedicated `--floor-data` catalog. Only when the rows
are still those of the build: the row count, and every input value, must equal what the
seed gives (so row position is row id, nothing was edited, dropped or reordered).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models import columns
from training.emulator import balrog, minibalrog
from training.emulator.metrics import Output

log = logging.getLogger(__name__)

FLOOR_STREAM = 0xF1004  # a fixed tag: the floor's draw seed is a hash of (draw seed, tag)
# per-object cost that makes the row cap worth having (GalSim renders every stamp)
CAPPED_SIMULATORS = ("galsim",)


@dataclass(frozen=True)
class SecondDraw:
    """The floor draw of the rows under evaluation, or the reason there is none."""

    output: Output | None = None
    source: str | None = None  # one sentence: simulator, objects, draw seed
    missing: str | None = None  # why there is no floor, in plain words
    draw_seed: int | None = None


def floor_draw_seed(draw_seed: int) -> int:
    """The floor's draw seed for a catalog drawn with `draw_seed`: a 32-bit hash of it,
    never equal to it (the same draw twice would be no floor at all)."""
    entropy = [int(draw_seed) & 0xFFFFFFFFFFFFFFFF, FLOOR_STREAM]
    seed = int(np.random.SeedSequence(entropy).generate_state(1, np.uint32)[0])
    return seed + 1 if seed == draw_seed else seed


def _meta_of(path: Path) -> dict[str, Any] | None:
    import pyarrow.parquet as pq

    raw = (pq.read_schema(path).metadata or {}).get(balrog.META_KEY)
    if raw is None:
        return None
    try:
        meta = json.loads(raw)
    except ValueError:
        return None
    return meta if isinstance(meta, dict) else None


def build_metadata(path: str | Path) -> tuple[dict[str, Any] | None, str | None]:
    """The build parameters a catalog carries (`balrog.build_meta`), or why it has none.

    A multi-part dataset folder must carry the same parameters in every part; a folder with
    a `_manifest.json` that records the simulator's version must match today's simulator."""
    from training.emulator.catalog import catalog_format, dataset_parts

    path = Path(path)
    not_ours = (
        "no floor: this catalog was not made by the service's simulator, so there is no "
        "second draw of its objects"
    )
    try:
        if path.is_dir():
            metas = [_meta_of(p) for p in dataset_parts(path)]
            meta = metas[0] if metas and all(m == metas[0] for m in metas) else None
        elif catalog_format(path) == "parquet":
            meta = _meta_of(path)
        else:
            return None, not_ours + f" (a {catalog_format(path)} file carries no build record)"
    except (OSError, ValueError) as exc:
        return None, f"no floor: the catalog's build record cannot be read ({exc})"
    ok = meta is not None and meta.get("simulator") in minibalrog.SIMULATORS
    ok = ok and all(isinstance(meta.get(k), int) for k in ("seed", "draw_seed", "rows"))  # type: ignore[union-attr]
    if not ok:
        return None, not_ours
    manifest = path / "_manifest.json" if path.is_dir() else None
    if manifest is not None and manifest.is_file():
        try:
            recorded = json.loads(manifest.read_text()).get("simulator_version")
        except (OSError, ValueError):
            recorded = None
        today = minibalrog.simulator_version(meta["simulator"])  # type: ignore[index]
        if recorded is not None and recorded != today:
            return None, (
                f"no floor: this catalog was simulated by {recorded}, the service now runs "
                f"{today}, so a new draw would not be a draw of the same simulator"
            )
    return meta, None


def second_draw(
    path: str | Path,
    keep: np.ndarray,
    *,
    x: np.ndarray | None = None,
    draw_seed: int | None = None,
    max_rows: int | None = None,
    data_dir: Path | None = None,
) -> SecondDraw:
    """A second simulator draw of the rows `keep` (boolean mask or row positions) of the
    catalog at `path`, or the reason why there is none (see the module doc).

    `x`: the catalog's (N, 9) inputs if already read (else they are read here);
    `draw_seed`: the floor's draw seed (default `floor_draw_seed` of the catalog's);
    `max_rows`: evaluated rows above which a GalSim catalog gets no floor (default: the
    setting `job_floor_max_rows`); `data_dir`: where the truth table is (default: settings).
    """
    from models.settings import get_settings

    meta, why = build_metadata(path)
    if meta is None:
        return SecondDraw(missing=why)
    simulator, seed, rows = meta["simulator"], meta["seed"], meta["rows"]
    keep = np.asarray(keep)
    if x is None:
        from training.emulator.data import read_rows

        x = read_rows(path)[0].x
    if len(x) != rows:
        return SecondDraw(
            missing=f"no floor: this catalog has {len(x):,} rows but was built with "
            f"{rows:,}: its rows were changed after the build"
        )
    if keep.dtype == bool and len(keep) != rows:
        raise ValueError(f"the rows to draw again must be a mask of the {rows} catalog rows")
    ids = np.flatnonzero(keep) if keep.dtype == bool else keep.astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= rows):
        raise ValueError(f"row positions must be within the {rows} catalog rows")
    cap = get_settings().job_floor_max_rows if max_rows is None else max_rows
    if simulator in CAPPED_SIMULATORS and len(ids) > cap:
        return SecondDraw(
            missing=f"no floor: a second {simulator} draw of {len(ids):,} objects is above "
            f"the limit of {cap:,} (COSMOGAN_JOB_FLOOR_MAX_ROWS; about 5 ms an object)"
        )
    expected = balrog.sample_inputs(rows, seed, data_dir or get_settings().data_dir)
    # compared as float32: the evaluation reads inputs as float32, and a catalog stored in
    # float32 holds exactly the float32 rounding of the float64 inputs
    truth = expected[list(columns.INPUTS)].to_numpy(np.float64).astype(np.float32)
    if not np.array_equal(np.asarray(x, dtype=np.float32), truth):
        bad = int((np.asarray(x, dtype=np.float32) != truth).any(axis=1).sum())
        return SecondDraw(
            missing=f"no floor: {bad:,} of its {rows:,} rows differ from the objects its "
            "build record names: its rows were changed after the build"
        )
    d2 = floor_draw_seed(meta["draw_seed"]) if draw_seed is None else int(draw_seed)
    if d2 == meta["draw_seed"]:
        raise ValueError(f"the floor's draw seed must differ from the catalog's ({d2})")
    log.info(
        "floor: a second %s draw of %d objects of %s (draw seed %d)", simulator, len(ids), path, d2
    )
    sim = minibalrog.simulate(
        expected[list(columns.INPUTS)].to_numpy(np.float64)[ids],
        simulator=simulator,
        seed=d2,
        row_ids=ids,
    )
    detected = sim[columns.DETECTED].to_numpy(bool)
    # the precision the catalog stores and `read_rows` reads: as `--floor-data` would give
    mags = sim[list(columns.OBSERVED)].to_numpy(np.float32, na_value=np.nan, copy=True)
    mags[~detected] = np.nan
    magerr = None
    if all(c in sim.columns for c in columns.MAGERR):
        magerr = sim[list(columns.MAGERR)].to_numpy(np.float32, na_value=np.nan, copy=True)
        magerr[~detected] = np.nan
        magerr = magerr.astype(np.float64)
    source = (
        f"a second {simulator} draw of the {len(ids):,} evaluated objects (seed {seed}, "
        f"draw seed {d2} instead of the catalog's {meta['draw_seed']})"
    )
    return SecondDraw(Output(mags.astype(np.float64), detected, magerr), source, None, d2)


__all__ = ["SecondDraw", "build_metadata", "floor_draw_seed", "second_draw"]
