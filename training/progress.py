"""What a training run reports: one progress event type, one schedule, one meaning of `epoch`.

Torch-free, so that the API can import the contract it serves. All three training loops build
their events with `progress_event`, the worker stores `record_fields(event)` in the job
record, the SSE stream relays those fields and `app.schemas.JobOut` declares them.

`epoch` means **epochs completed**, everywhere: in progress events, metrics.jsonl lines,
checkpoints and results. It is 0 during the first epoch, and a run that reached its last
step has completed all of `epochs` (also when `max_steps` ended its last epoch early).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

EventKind = Literal["step", "epoch", "done"]


class ProgressEvent(TypedDict):
    """One progress report of a run (JSON-able: numbers, strings, lists and dicts only)."""

    event: EventKind  # "step" after each generator step (and each detector epoch), "epoch"
    # once an epoch's checkpoint (and sample grid) is written, "done" when the loop returns
    epoch: int  # epochs completed
    epochs: int  # epochs this run will complete
    step: int  # generator steps done
    total_steps: int  # generator steps this run will do
    losses: dict[str, float]  # of the latest step
    eta_s: float | None  # seconds left, from the pace of this process's steps so far
    samples: str | None  # the latest sample grid, relative to the run folder
    metrics: dict[str, Any]  # pace, monitor figures (family-specific)


# The fields of an event that a job record keeps (the API serves them as `JobOut` fields).
RECORD_FIELDS = ("epoch", "epochs", "step", "total_steps", "losses", "eta_s")

ProgressFn = Callable[[ProgressEvent], None]
StopFn = Callable[[], bool]


class TrainResult(TypedDict):
    """What a training loop returns."""

    status: str  # "succeeded" | "cancelled"
    step: int  # generator steps done
    epoch: int  # epochs completed (== the schedule's `epochs` when succeeded)
    checkpoint: str  # full-state checkpoint (resume from it)
    model: str | None  # inference-only checkpoint, written when the run finished
    metrics: dict[str, Any]


@dataclass(frozen=True)
class Schedule:
    """Generator steps and epochs of one run; the one place that turns steps into epochs."""

    steps_per_epoch: int
    total_steps: int

    @classmethod
    def of(
        cls,
        steps_per_epoch: int,
        epochs: int,
        *,
        max_steps: int | None = None,
        dry_run_steps: int | None = None,
    ) -> Schedule:
        """`epochs` of `steps_per_epoch`, or `dry_run_steps` when given, capped at `max_steps`."""
        steps_per_epoch = max(1, steps_per_epoch)
        total = dry_run_steps if dry_run_steps is not None else epochs * steps_per_epoch
        if max_steps is not None:
            total = min(total, max_steps)
        return cls(steps_per_epoch, max(0, total))

    @property
    def epochs(self) -> int:
        """Epochs this run completes (the last one possibly cut short by `max_steps`)."""
        return math.ceil(self.total_steps / self.steps_per_epoch)

    def epoch(self, step: int) -> int:
        """Epochs completed after `step` generator steps."""
        return self.epochs if step >= self.total_steps else step // self.steps_per_epoch

    def epoch_end(self, step: int) -> bool:
        """Whether `step` completes an epoch (the run's last step always does)."""
        return step % self.steps_per_epoch == 0 or step == self.total_steps

    def done(self, step: int) -> bool:
        return step >= self.total_steps


def progress_event(
    event: EventKind,
    schedule: Schedule,
    step: int,
    *,
    losses: dict[str, float],
    eta_s: float | None,
    samples: str | None = None,
    metrics: dict[str, Any] | None = None,
) -> ProgressEvent:
    """The event of a run at `step` of `schedule` (copies the dicts: the loop keeps its own)."""
    return ProgressEvent(
        event=event,
        epoch=schedule.epoch(step),
        epochs=schedule.epochs,
        step=step,
        total_steps=schedule.total_steps,
        losses=dict(losses),
        eta_s=eta_s,
        samples=samples,
        metrics=dict(metrics or {}),
    )


def record_fields(event: ProgressEvent | dict[str, Any]) -> dict[str, Any]:
    """The fields of `event` a job record stores (`metrics` only when the event has some)."""
    fields = {k: event[k] for k in RECORD_FIELDS if k in event}
    if event.get("metrics"):
        fields["metrics"] = event["metrics"]
    return fields


def never_stop() -> bool:
    """The stop flag of a run nobody cancels."""
    return False
