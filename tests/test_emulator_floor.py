"""The floor of a catalog's own test rows: a second draw of a service-built catalog's objects."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import cosmogan_home
from training.emulator import balrog
from training.emulator.data import read_rows
from training.emulator.floor import build_metadata, floor_draw_seed, second_draw

ROWS = 3000
SEED, DRAW = 5, 7


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """An analytic catalog (seed 5, draw seed 7) and the data root that holds its truth."""
    with cosmogan_home(tmp_path_factory.mktemp("home")) as home:
        kw = dict(rows=ROWS, simulator="analytic", seed=SEED, workers=1, progress=False)
        path = balrog.build_catalog(home / "a.parquet", draw_seed=DRAW, **kw)["path"]
        yield home, path, kw


def _test_mask(path) -> np.ndarray:
    _, labels = read_rows(path)
    return labels == "test"


def test_the_floor_is_the_rows_of_a_second_build_with_another_draw_seed(built):
    home, path, kw = built
    keep = _test_mask(path)
    other = balrog.build_catalog(home / "b.parquet", draw_seed=11, **kw)["path"]
    draw = second_draw(path, keep, draw_seed=11)
    assert draw.missing is None and draw.draw_seed == 11
    o = read_rows(other)[0].take(keep)
    np.testing.assert_array_equal(draw.output.mags, o.observed.astype(np.float64))
    np.testing.assert_array_equal(draw.output.detected, o.detected)
    np.testing.assert_array_equal(draw.output.magerr, o.magerr.astype(np.float64))
    assert f"{int(keep.sum()):,} evaluated objects" in draw.source and "draw seed 11" in draw.source
    # the same rows given as positions
    again = second_draw(path, np.flatnonzero(keep), draw_seed=11)
    np.testing.assert_array_equal(again.output.mags, draw.output.mags)


def test_the_default_draw_seed_is_derived_and_differs_from_the_catalogs(built):
    _, path, _ = built
    keep = _test_mask(path)
    draw = second_draw(path, keep)
    assert draw.draw_seed == floor_draw_seed(DRAW) != DRAW
    assert floor_draw_seed(DRAW) == floor_draw_seed(DRAW)  # a pure function of the seed
    assert floor_draw_seed(DRAW + 1) != floor_draw_seed(DRAW)
    assert f"draw seed {draw.draw_seed} instead of the catalog's {DRAW}" in draw.source
    own = read_rows(path)[0].take(keep)
    # another realization of the same objects: detections mostly agree, magnitudes do not
    assert not np.array_equal(np.nan_to_num(draw.output.mags), np.nan_to_num(own.observed))
    assert (draw.output.detected == own.detected).mean() > 0.8
    with pytest.raises(ValueError, match="must differ"):
        second_draw(path, keep, draw_seed=DRAW)


def _write(df: pd.DataFrame, path, meta: bytes | None):
    table = pa.Table.from_pandas(df, preserve_index=False)
    if meta is not None:
        table = table.replace_schema_metadata({b"cosmogan": meta})
    pq.write_table(table, path)
    return path


def test_changed_rows_give_no_floor_and_say_why(built, tmp_path):
    _, path, _ = built
    meta = pq.read_schema(path).metadata[b"cosmogan"]
    df = pd.read_parquet(path)
    keep = _test_mask(path)

    dropped = _write(df.drop(index=10), tmp_path / "dropped.parquet", meta)
    draw = second_draw(dropped, keep[1:])
    assert draw.output is None and "rows were changed after the build" in draw.missing
    assert f"{ROWS - 1:,} rows but was built with {ROWS:,}" in draw.missing

    edited = df.copy()
    edited.loc[20, "sky_sigma_r"] *= 1.01
    draw = second_draw(_write(edited, tmp_path / "edited.parquet", meta), keep)
    assert draw.output is None and draw.missing.startswith("no floor: 1 of its")

    swapped = df.iloc[[1, 0, *range(2, ROWS)]]  # reordered: row position is no longer row id
    draw = second_draw(_write(swapped, tmp_path / "swapped.parquet", meta), keep)
    assert draw.output is None and "changed after the build" in draw.missing

    # float32 storage of the same rows keeps the floor
    as32 = df.astype({c: np.float32 for c in df.columns if df[c].dtype == np.float64})
    assert second_draw(_write(as32, tmp_path / "f32.parquet", meta), keep).output is not None


def test_catalogs_the_service_did_not_simulate_have_no_floor(built, tmp_path):
    _, path, _ = built
    df = pd.read_parquet(path)
    keep = _test_mask(path)
    pandas_file = tmp_path / "pandas.parquet"
    df.to_parquet(pandas_file)  # pandas writes its own metadata, not the build record
    csv_file = tmp_path / "cat.csv"
    df.to_csv(csv_file, index=False)
    emulated = _write(df, tmp_path / "emulated.parquet", json.dumps({"model": "balrog"}).encode())
    for p in (pandas_file, csv_file, emulated):
        draw = second_draw(p, keep)
        assert draw.output is None
        assert "not made by the service's simulator" in draw.missing, p
    assert build_metadata(path)[0]["draw_seed"] == DRAW


def test_multi_part_datasets_and_their_manifest(built, tmp_path):
    _, path, _ = built
    table = pq.read_table(path)
    folder = tmp_path / "ds"
    folder.mkdir()
    for k, start in enumerate(range(0, ROWS, 1000)):
        pq.write_table(table.slice(start, 1000), folder / f"part-{k:05d}.parquet")
    keep = _test_mask(path)
    whole = second_draw(path, keep, draw_seed=3)
    parts = second_draw(folder, keep, draw_seed=3)
    np.testing.assert_array_equal(parts.output.mags, whole.output.mags)
    (folder / "_manifest.json").write_text(json.dumps({"simulator_version": "minibalrog-0"}))
    draw = second_draw(folder, keep)
    assert draw.output is None and "simulated by minibalrog-0" in draw.missing


def test_the_cap_on_galsim_rows(built, tmp_path, monkeypatch):
    from models.settings import get_settings

    _, path, _ = built
    df = pd.read_parquet(path)
    meta = json.loads(pq.read_schema(path).metadata[b"cosmogan"])
    galsim = _write(
        df, tmp_path / "g.parquet", json.dumps({**meta, "simulator": "galsim"}).encode()
    )
    keep = _test_mask(path)
    monkeypatch.setenv("COSMOGAN_JOB_FLOOR_MAX_ROWS", "100")
    get_settings.cache_clear()
    try:
        draw = second_draw(galsim, keep)
    finally:
        get_settings.cache_clear()
    assert draw.output is None
    assert f"{int(keep.sum()):,} objects is above the limit of 100" in draw.missing
    assert "COSMOGAN_JOB_FLOOR_MAX_ROWS" in draw.missing
    # the analytic simulator costs microseconds an object: no cap
    assert second_draw(path, keep, max_rows=100).output is not None


def test_a_jobs_result_has_the_floor_of_its_own_test_split(built, tmp_path):
    from training.emulator.gan import train_emulator_gan
    from training.presets import build_config

    _, path, _ = built
    config = build_config(
        "balrog", {"detector_epochs": 1, "device": "cpu", "max_steps": 3, "batch_size": 1000}
    )
    metrics = train_emulator_gan(config, path, tmp_path / "run")["metrics"]
    assert "second analytic draw" in metrics["floor_source"] and "floor_missing" not in metrics
    assert metrics["floor"]["ks_i"] > 0
    assert metrics["ratio"]["ks_i"] == pytest.approx(
        metrics["figures"]["ks_i"] / metrics["floor"]["ks_i"]
    )
    report = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    assert report["rows"] == int(_test_mask(path).sum()) and "floor" in report["models"]

    copy = tmp_path / "copy.parquet"
    pd.read_parquet(path).to_parquet(copy)  # the same rows without the build record
    metrics = train_emulator_gan(config, copy, tmp_path / "run2")["metrics"]
    assert metrics["floor"] == {} and metrics["ratio"] == {} and "floor_source" not in metrics
    assert "not made by the service's simulator" in metrics["floor_missing"]
