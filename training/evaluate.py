"""`cosmogan evaluate`: dispatch a checkpoint to the metrics of its model family."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models.checkpoint import load_checkpoint
from models.kinds import EMULATOR, family_of


def evaluate(
    checkpoint: str | Path,
    *,
    data: str | Path | None = None,
    out_dir: str | Path | None = None,
    seed: int = 0,
    device: str = "auto",
    baseline: str | Path | None = None,
    floor_data: str | Path | None = None,
    train_data: str | Path | None = None,
    split: str | None = None,
    compare: dict[str, str | Path] | None = None,
    bootstrap: int = 20,
) -> dict[str, Any]:
    """Quality figures for an image generator or an emulator, as plain JSON."""
    kind = load_checkpoint(checkpoint).kind
    if family_of(kind) == EMULATOR:
        from training.emulator.evaluate import evaluate_emulator

        return evaluate_emulator(
            checkpoint,
            data=data,
            out_dir=out_dir,
            seed=seed,
            device=device,
            baseline_checkpoint=baseline,
            compare_checkpoints=compare,
            floor_data=floor_data,
            train_data=train_data,
            split=split,
            bootstrap=bootstrap,
        )
    from training.image.metrics import evaluate_image_generator

    return evaluate_image_generator(checkpoint, data=data, seed=seed, device=device)
