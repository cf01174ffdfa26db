"""Small emulator catalogs built from the project's own condition sampler and mini-Balrog."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from models.columns import INPUTS, TRUE_MAG
from training.emulator import balrog, minibalrog


def make_analytic_catalog(path: Path, rows: int, seed: int = 0) -> Path:
    """A small catalog like `cosmogan data balrog --simulator analytic`, without the truth file.

    True magnitudes follow a rough galaxy colour distribution; conditions and observations
    come from the project's own condition sampler and analytic mini-Balrog.
    """
    rng = np.random.default_rng(seed)
    true_i = rng.uniform(19.0, 25.5, rows)
    true = np.stack(
        [
            true_i + rng.normal(0.5, 0.3, rows),
            true_i,
            true_i - rng.normal(0.3, 0.15, rows),
        ],
        axis=1,
    )
    inputs = pd.concat(
        [pd.DataFrame(true, columns=list(TRUE_MAG)), balrog.draw_conditions(rows, rng)], axis=1
    )[list(INPUTS)]
    observed = minibalrog.simulate(inputs, simulator="analytic", seed=seed)
    df = pd.concat([inputs, observed], axis=1)
    df["split"] = balrog.assign_split(rows, seed)
    df.to_parquet(path, index=False)
    return path
