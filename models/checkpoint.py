"""The one checkpoint format: config, preprocessing, EMA weights and optional training state."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from models.atomic import atomic_write
from models.kinds import KINDS

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a readable cosmogan checkpoint (corrupt, foreign or too new)."""


@dataclass
class Checkpoint:
    """Everything needed to rebuild a model without the flags that trained it."""

    kind: str  # one of KINDS: which network family `config` builds
    config: dict[str, Any]  # the network config dataclass as a plain dict
    preprocessing: dict[str, Any]  # image size/normalization, or scalers as plain lists
    ema: dict[str, torch.Tensor]  # EMA generator weights: all that inference needs
    step: int = 0  # generator steps done
    epoch: int = 0  # epochs completed
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. preset, detector weights, metrics
    training_state: dict[str, Any] | None = None  # nets, optimizers, RNG: only for resuming
    format_version: int = FORMAT_VERSION

    def inference_only(self) -> Checkpoint:
        """A copy without the training state (what the registry and shipped weights keep)."""
        return Checkpoint(**{**self.__dict__, "training_state": None})


def save_checkpoint(ckpt: Checkpoint, path: str | Path) -> Path:
    """Write atomically: a temp file in the same folder, fsync, then rename over `path`."""
    payload = {"cosmogan_checkpoint": True, **asdict_shallow(ckpt)}
    with atomic_write(path, "wb") as f:
        torch.save(payload, f)
    return Path(path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load with `weights_only=True`; a corrupt, foreign or newer file raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"{path} is not a readable checkpoint: {exc}") from exc
    if not isinstance(payload, dict) or not payload.get("cosmogan_checkpoint"):
        raise CheckpointError(f"{path} is not a cosmogan checkpoint")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {version!r}; this version reads up to {FORMAT_VERSION}"
        )
    if payload.get("kind") not in KINDS:
        raise CheckpointError(f"{path} holds an unknown model kind {payload.get('kind')!r}")
    fields = {k: payload[k] for k in Checkpoint.__dataclass_fields__ if k in payload}
    try:
        return Checkpoint(**fields)
    except TypeError as exc:
        raise CheckpointError(f"{path} is missing checkpoint fields: {exc}") from exc


def asdict_shallow(ckpt: Checkpoint) -> dict[str, Any]:
    """Like `dataclasses.asdict` but without deep-copying the tensors."""
    return {name: getattr(ckpt, name) for name in Checkpoint.__dataclass_fields__}


__all__ = [
    "FORMAT_VERSION",
    "KINDS",
    "Checkpoint",
    "CheckpointError",
    "load_checkpoint",
    "save_checkpoint",
]
