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
    `detected` and `out_of_domain` (an input outside the model's training ranges).

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
    meta = {"checkpoint": str(checkpoint), "seed": seed, "samples": samples}
    with CatalogWriter(output, meta=meta) as writer:
        for chunk in iter_catalog(input, chunk_rows):
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
        "chunks": chunks,
        "seconds": round(seconds, 3),
    }
