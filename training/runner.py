"""One entry point for every training family: the CLI and the worker both call `run_training`.

The run folder layout, the metrics log and the meaning of `epoch` are the run scaffold's
(`training.scaffold`); the progress events and the result are `training.progress`'s.
"""

from __future__ import annotations

from pathlib import Path

from models.kinds import EMULATOR, IMAGE, family_of
from training.emulator.flow import train_emulator_flow
from training.emulator.gan import train_emulator_gan
from training.image.gan import train_image_gan
from training.presets import EmulatorTrainConfig, FlowTrainConfig, ImageTrainConfig
from training.progress import ProgressFn, StopFn, TrainResult


def run_training(
    config: ImageTrainConfig | EmulatorTrainConfig | FlowTrainConfig,
    data: str | Path | None,
    out_dir: str | Path,
    *,
    resume: bool = True,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> TrainResult:
    """Train `config` on `data` into `out_dir`, resuming from its last checkpoint if any."""
    family = family_of(config.kind)
    if family == IMAGE and isinstance(config, ImageTrainConfig):
        return train_image_gan(
            config, data, out_dir, resume=resume, progress=progress, should_stop=should_stop
        )
    if family == EMULATOR and isinstance(config, EmulatorTrainConfig):
        return train_emulator_gan(
            config, data, out_dir, resume=resume, progress=progress, should_stop=should_stop
        )
    if family == EMULATOR and isinstance(config, FlowTrainConfig):
        return train_emulator_flow(
            config, data, out_dir, resume=resume, progress=progress, should_stop=should_stop
        )
    raise ValueError(f"no training loop for {type(config).__name__} of kind {config.kind!r}")
