"""A trained emulator with its detection classifier trained again by today's recipe.

The magnitude model (generator, flow or distilled student) and the scalers are kept as they
are; only the detector is fitted again on the catalog's train split (and reported on its val
split), with the detector settings of the preset's current defaults or the ones given: by
default its own probabilities, no Platt scaling (`training.emulator.detector.train_detector`).
Any emulator checkpoint can be brought up to date this way without training its generator
again, except a cWGAN-GP whose generator takes the detector's logit (`detection_input`).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from models.checkpoint import load_checkpoint, save_checkpoint
from models.emulator import Detector, EmulatorScalers
from models.emulator_sampler import build_offset_model
from models.kinds import EMULATOR_KINDS
from training.emulator.detector import train_detector
from training.emulator.shared import load_splits
from training.presets import PRESETS, build_config, config_from_dict

log = logging.getLogger(__name__)

DETECTOR_KEYS = ("detector_epochs", "detector_batch_size", "detector_lr", "detector_platt")


def retrain_detector(
    checkpoint: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    overrides: dict[str, Any] | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Write `out`: `checkpoint` with a detector trained on `data` (the catalog it was
    trained on, read with the run's seed). `overrides`: detector settings (`DETECTOR_KEYS`)
    instead of the preset's defaults. Returns the new calibration figures."""
    ck = load_checkpoint(checkpoint)
    if ck.kind not in EMULATOR_KINDS:
        raise ValueError(f"{checkpoint} is a {ck.kind!r} checkpoint, not an emulator")
    if ck.config.get("detection_input"):
        raise ValueError(
            f"{checkpoint}'s generator takes its detector's logit as an input, so a new "
            "detector would change what the generator was trained on: train it again instead"
        )
    run_config = config_from_dict(ck.extra.get("train_config") or {"preset": "balrog"})
    defaults = PRESETS[run_config.preset]
    settings = {k: getattr(defaults, k) for k in DETECTOR_KEYS if hasattr(defaults, k)}
    unknown = set(overrides or {}) - set(settings)
    if unknown:
        raise ValueError(f"not detector settings: {', '.join(sorted(unknown))}")
    # the run's own config (seed, rows), today's detector settings, the overrides checked
    config = build_config(run_config.preset, {**settings, **(overrides or {})}, base=run_config)
    config = replace(config, dry_run=False)
    settings = {k: getattr(config, k) for k in settings}
    train, val = load_splits(config, data)
    scalers = EmulatorScalers.from_dict(ck.preprocessing)
    # seeded just before the detector is made: the same catalog gives a flow and its
    # distilled student the same detector
    detector_config = build_offset_model(ck.kind, ck.config)[1].cfg
    torch.manual_seed(config.seed)
    detector = Detector(detector_config)
    log.info("training the detector of %s on %s: %s", checkpoint, data, settings)
    calibration = train_detector(
        detector, scalers, train, val, config, torch.device(device),
        report=lambda *a, **k: None, step=ck.step, stopped=lambda: False,
    )  # fmt: skip
    assert calibration is not None  # never stopped
    # the metrics recorded the old detector's calibration beside the run's figures
    stale = set(ck.extra.get("calibration", {})) | {"train_bce"}
    metrics = {k: v for k, v in ck.extra.get("metrics", {}).items() if k not in stale}
    metrics.update({k: v for k, v in calibration.items() if k != "train_bce"})
    extra = {
        **ck.extra,
        "detector": {k: v.detach().clone() for k, v in detector.state_dict().items()},
        "detector_trained": True,
        "calibration": calibration,
        "metrics": metrics,
        "train_config": {
            **ck.extra.get("train_config", {}),
            **settings,
        },
    }
    save_checkpoint(replace(ck, extra=extra, training_state=None), out)
    return calibration


__all__ = ["DETECTOR_KEYS", "retrain_detector"]
