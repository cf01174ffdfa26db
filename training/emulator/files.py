"""Whole catalogs through the emulator: streamed in chunks, written atomically."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from models.emulator_sampler import EmulatorSampler

log = logging.getLogger(__name__)

KEPT_PREFIX = "input_"  # an input column named like an emulated one is kept under this prefix


def keep_input_columns(names: list[str]) -> dict[str, str]:
    """{old: new} for the input columns that share a name with an emulated column (`mag_*`,
    `magerr_*`, `detected`, `out_of_domain`, `realization`): they are kept, renamed
    `input_<name>`, rather than overwritten. A clash with an existing name is refused."""
    from models.columns import DETECTED, MAGERR, OBSERVED, OUT_OF_DOMAIN, REALIZATION, CatalogError

    emulated = {*OBSERVED, *MAGERR, DETECTED, OUT_OF_DOMAIN, REALIZATION}
    renamed = {c: KEPT_PREFIX + c for c in names if c in emulated}
    taken = sorted(set(renamed.values()) & set(names))
    if taken:
        raise CatalogError(
            f"the input has columns named like the emulated ones ({', '.join(renamed)}) and "
            f"also {', '.join(taken)}, where they would be kept: rename or drop one of them"
        )
    return renamed


def emulate_file(
    checkpoint: str | Path | None,
    input: str | Path,
    output: str | Path,
    *,
    samples: int = 1,
    seed: int = 0,
    chunk_rows: int = 100_000,
    device: str = "auto",
    emulator: EmulatorSampler | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Stream a catalog through the emulator: input rows (× samples) + observed columns.

    Observed columns: `mag_{r,i,z}`, `magerr_{r,i,z}` (models that emulate errors),
    `detected` and `out_of_domain` (an input outside the model's training ranges). Input
    columns with those names (a real Balrog catalog's measurements) are kept, renamed
    `input_<name>`, and listed in the summary's `renamed_input_columns`.

    The input is read `chunk_rows` rows at a time and each chunk is written as soon as it is
    emulated, so memory stays bounded for any catalog size; the output appears only when
    complete. Draws depend on (seed, row position), so the chunk size does not change the
    result. Invalid rows raise `CatalogError` naming them. An already loaded `emulator`
    replaces `checkpoint`; `progress(rows_done)` is called after every chunk.
    """
    from models.columns import validate_inputs
    from training.emulator.catalog import CatalogWriter, catalog_format, iter_catalog, with_emulated

    if samples < 1:
        raise ValueError(f"--samples must be at least 1, got {samples}")
    if chunk_rows < 1:
        raise ValueError(f"--chunk-rows must be at least 1, got {chunk_rows}")
    input, output = Path(input), Path(output)
    if not input.is_file():
        raise FileNotFoundError(f"input catalog not found: {input}")
    catalog_format(input), catalog_format(output)  # an unknown suffix fails before any work
    if emulator is None:
        emulator = EmulatorSampler.load(checkpoint, device=device)
    t0 = time.perf_counter()
    rows = detected = chunks = outside = 0
    renamed: dict[str, str] = {}
    meta = {"checkpoint": str(checkpoint), "seed": seed, "samples": samples}
    with CatalogWriter(output, meta=meta) as writer:
        for chunk in iter_catalog(input, chunk_rows):
            if not chunks:
                renamed = keep_input_columns(list(chunk.columns))
                if renamed:
                    log.warning(
                        "input columns kept under new names, not overwritten: %s",
                        ", ".join(f"{a} → {b}" for a, b in renamed.items()),
                    )
            chunk = chunk.rename(columns=renamed)
            x = validate_inputs(chunk, row_offset=rows)  # (n, 9); CatalogError names bad rows
            noise, uniforms = emulator.draws(len(x), samples, seed, start=rows)
            out = emulator.sample_outputs(np.repeat(x, samples, axis=0), noise, uniforms)
            writer.write(
                with_emulated(
                    chunk,
                    out.mags,
                    out.detected,
                    samples,
                    magerr=out.magerr,
                    out_of_domain=out.out_of_domain,
                )
            )
            rows += len(chunk)
            detected += int(out.detected.sum())
            outside += int(out.out_of_domain[::samples].sum())
            chunks += 1
            if progress is not None:
                progress(rows)
    seconds = time.perf_counter() - t0
    log.info("emulated %d rows × %d samples in %.1f s → %s", rows, samples, seconds, output)
    return {
        "input": str(input),
        "output": str(output),
        "checkpoint": str(checkpoint),
        "rows": rows,
        "samples": samples,
        "output_rows": rows * samples,
        "detected_fraction": detected / max(rows * samples, 1),
        "out_of_domain_rows": outside,
        "seed": seed,
        "renamed_input_columns": renamed,
        "chunks": chunks,
        "seconds": round(seconds, 3),
    }
