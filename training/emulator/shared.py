"""What both emulator loops (cWGAN-GP, flow) share: data, scalers, the detector and its phase,
the checkpoint's emulator fields, and the figures of a finished run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from models.checkpoint import Checkpoint
from models.columns import INPUTS
from models.emulator import Detector, EmulatorScalers
from training.emulator.data import Split, fit_scalers, training_splits
from training.emulator.detector import train_detector
from training.emulator.evaluate import job_figures
from training.presets import EmulatorTrainConfig, FlowTrainConfig, config_to_dict
from training.scaffold import Run

EmulatorConfig = EmulatorTrainConfig | FlowTrainConfig


def load_splits(config: EmulatorConfig, data: Path | str | None) -> tuple[Split, Split]:
    """The (train, val) splits of a run; a catalog with too little to train on is refused."""
    train, val = training_splits(
        data, seed=config.seed, dry_run=config.dry_run, max_rows=config.max_rows
    )
    if len(train) == 0:
        raise ValueError(f"{data} has no rows in the 'train' split")
    if len(train.only_detected()) < 2:
        raise ValueError(f"{data} has fewer than 2 detected objects in its 'train' split")
    return train, val


def run_scalers(
    config: EmulatorConfig,
    train: Split,
    previous: Checkpoint | None,
    *,
    flux_offsets: bool = False,
) -> EmulatorScalers:
    """The input and target scalers: the checkpoint's when resuming, else fitted on `train`
    (`flux_offsets` is decided by the caller: the cWGAN-GP's is "auto")."""
    if previous is not None:
        return EmulatorScalers.from_dict(previous.preprocessing)
    return fit_scalers(
        train,
        log_conditions=config.log_conditions,
        with_errors=config.emulate_errors,
        error_scale=getattr(config, "error_scale", False),
        flux_errors=getattr(config, "flux_errors", False),
        error_basis=getattr(config, "error_basis", False),
        flux_offsets=flux_offsets,
    )


def preprocessing(scalers: EmulatorScalers) -> dict[str, Any]:
    """What a checkpoint records about the columns: scalers, input order, the target."""
    return {**scalers.to_dict(), "inputs": list(INPUTS), "target": "mag - true"}


class DetectorPhase:
    """The detection classifier of a run, and the phase that trains it before the generator.

    A cancel (or a kill) during the phase resumes from the phase's start: the checkpoint
    written there holds the untrained detector and the RNG states of that moment, so that a
    resumed run trains the same detector, and then the same generator, as an uninterrupted
    one. The detector takes seconds; its epochs are not worth a checkpoint each.
    """

    def __init__(self, detector: Detector, previous: Checkpoint | None) -> None:
        self.detector = detector
        self.calibration: dict[str, Any] = {}
        self.trained = False
        if previous is not None:
            detector.load_state_dict(previous.extra["detector"])
            self.calibration = dict(previous.extra.get("calibration", {}))
            self.trained = bool(previous.extra.get("detector_trained", False))

    def checkpoint_extra(self, config: EmulatorConfig, metrics: dict[str, Any]) -> dict[str, Any]:
        """The emulator fields of a checkpoint's `extra` (the detector rides along with it)."""
        return {
            "preset": config.preset,
            "train_config": config_to_dict(config),
            "detector": {k: v.detach().clone() for k, v in self.detector.state_dict().items()},
            "detector_trained": self.trained,
            "calibration": self.calibration,
            "metrics": metrics,
        }

    def run(
        self,
        run: Run,
        step: int,
        checkpoint: Callable[[], Checkpoint],
        scalers: EmulatorScalers,
        splits: tuple[Split, Split],
        config: EmulatorConfig,
        device: torch.device,
        metrics: dict[str, Any],
    ) -> bool:
        """Train and calibrate the detector (unless the resumed run has); False if cancelled.

        On every training row, its calibration reported on the val split; the figures
        go to the metrics log and to `metrics`, and a checkpoint closes the phase.
        """
        if self.trained:
            return True
        checkpoint()  # the phase's start, to resume from
        train, val = splits
        fitted = train_detector(
            self.detector, scalers, train, val, config, device,
            report=run.report, step=step, stopped=run.stopped,
        )  # fmt: skip
        if fitted is None:
            return False
        self.calibration, self.trained = fitted, True
        run.log.write(step, 0, event="detector", **fitted)
        metrics.update({k: v for k, v in fitted.items() if k != "train_bce"})
        checkpoint()
        return True


def finish(
    run: Run,
    final: Checkpoint,
    config: EmulatorConfig,
    data: Path | str | None,
    metrics: dict[str, Any],
) -> str | None:
    """`model.pt` of a completed run, and its figures (= `cosmogan evaluate`) into `metrics`."""
    model = run.finish(final)
    if model is not None and data is not None and not config.dry_run:
        metrics.update(job_figures(model, data, run.folder.root))
    return model
