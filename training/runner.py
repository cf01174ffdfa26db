"""One entry point for every training family: the CLI and the worker both call `run_training`.

A run directory holds `config.json`, `checkpoints/last.pt` (full state, for resuming),
`samples/` (image grids), `metrics.jsonl` (one JSON object per logged step/epoch) and, when
the run ends, `model.pt` (inference-only: EMA weights, config, preprocessing).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict

from training.presets import EmulatorTrainConfig, ImageTrainConfig, family

ProgressFn = Callable[[dict[str, Any]], None]
StopFn = Callable[[], bool]


class TrainResult(TypedDict):
    status: str  # "succeeded" | "cancelled"
    step: int
    epoch: int
    checkpoint: str  # full-state checkpoint (resume from it)
    model: str | None  # inference-only checkpoint, written when the run finished
    metrics: dict[str, Any]


def run_training(
    config: ImageTrainConfig | EmulatorTrainConfig,
    data: str | Path | None,
    out_dir: str | Path,
    *,
    resume: bool = True,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> TrainResult:
    """Train `config` on `data` into `out_dir`, resuming from its last checkpoint if any."""
    out_dir = Path(out_dir)
    if family(config.preset) == "image":
        from training.image_gan import train_image_gan

        return train_image_gan(
            config, data, out_dir, resume=resume, progress=progress, should_stop=should_stop
        )
    from training.emulator_gan import train_emulator_gan

    return train_emulator_gan(
        config, data, out_dir, resume=resume, progress=progress, should_stop=should_stop
    )
