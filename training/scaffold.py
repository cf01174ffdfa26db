"""The run scaffold all three training loops stand on: run folder, one run's life, pace, EMA, RNG.

A run folder holds

    config.json          the training config and the data it trains on (written once the run
                         has passed its checks: a run that fails to start or resume changes
                         nothing on disk)
    checkpoints/last.pt  full state: networks, optimizers, RNG states, position (resume from it)
    samples/             sample grids (image runs)
    metrics.jsonl        one JSON object per logged step: {"step", "epoch", "time", ...}
    model.pt             inference-only checkpoint, written when the run finished

Every loop follows one convention, so that they read alike and behave alike:

1. load data, build networks and optimizers, and, when resuming, load
   `RunFolder.previous` (checked to be a run of the same kind and network) into them;
2. `Run.start` writes `config.json` and opens the metrics log, cut back to the checkpoint's
   step, so that after any kill and resume its steps are strictly increasing;
3. `while run.more(step)`: the one place a loop asks its stop flag, before each step (and
   the emulators' detector phase before each of its epochs); a stop ends the loop, and the
   run is cancelled;
4. the loop's one `checkpoint()` builds its `Checkpoint` and saves it with `Run.save`:
   every `checkpoint_every` steps, at each epoch end, when the run ends (also when cancelled),
   and at the start of the emulators' detector phase (a cancel there resumes at that start);
5. `Run.finish` writes `model.pt` when the run completed, and `Run.result` reports "done"
   and returns the `TrainResult`.

`epoch` means epochs completed (see `training.progress`).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.atomic import atomic_write
from models.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from training.presets import config_to_dict
from training.progress import (
    EventKind,
    ProgressFn,
    Schedule,
    StopFn,
    TrainResult,
    never_stop,
    progress_event,
)

log = logging.getLogger(__name__)


SUCCEEDED, CANCELLED = "succeeded", "cancelled"


@dataclass(frozen=True)
class RunFolder:
    """The files of one run under `root`."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoints" / "last.pt"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def model(self) -> Path:
        return self.root / "model.pt"

    def write_config(self, config: Any, data: str | Path | None) -> None:
        """Write `config.json`: the config and the data path (atomically: never half a file)."""
        self.root.mkdir(parents=True, exist_ok=True)
        saved = {**config_to_dict(config), "data": None if data is None else str(Path(data))}
        with atomic_write(self.config, "w", encoding="utf-8") as f:
            json.dump(saved, f, indent=2)

    def saved(self) -> tuple[dict[str, Any], str | None]:
        """The config fields and the data path that `config.json` holds (for a resume).

        Run folders written before the data path was recorded give None for it.
        """
        fields = json.loads(self.config.read_text(encoding="utf-8"))
        data = fields.pop("data", None)
        return fields, data

    def resumable(self, resume: bool) -> bool:
        """Whether this run continues from its last checkpoint."""
        return resume and self.checkpoint.is_file()

    def previous(
        self, resume: bool, kind: str, config: dict[str, Any] | None = None
    ) -> Checkpoint | None:
        """The full-state checkpoint this run resumes from, or None for a fresh start.

        It must hold a run of model `kind` (and, when given, of network `config`) with its
        training state; anything else is refused before the run writes a byte. Loaded on the
        CPU: `load_state_dict` moves each tensor to its network's device.
        """
        if not self.resumable(resume):
            return None
        ckpt = load_checkpoint(self.checkpoint, map_location="cpu")
        if (
            ckpt.kind != kind
            or (config is not None and ckpt.config != config)
            or ckpt.training_state is None
        ):
            wanted = kind if config is None else f"{kind} {config}"
            raise CheckpointError(
                f"{self.checkpoint} holds a {ckpt.kind} {ckpt.config} run, not a resumable "
                f"{wanted} run; use another --out"
            )
        return ckpt

    def sample_grid(self, epoch: int) -> str:
        """The run-relative path of the grid written after `epoch` completed epochs."""
        return f"samples/epoch_{epoch:04d}.png"


class MetricsLog:
    """`metrics.jsonl`: appended one line per logged step, steps strictly increasing.

    Opening it for a resumed run drops the lines logged after the checkpoint's `resume_step`
    (the run logs those steps again) and lines a kill cut short; a fresh run (`None`) starts
    an empty log.
    """

    def __init__(self, path: Path, resume_step: int | None) -> None:
        self.path = path
        self.truncate(resume_step)

    def truncate(self, resume_step: int | None) -> None:
        keep: list[str] = []
        if resume_step is not None and self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    step = json.loads(line).get("step")
                except (json.JSONDecodeError, AttributeError):  # a line cut short by a kill
                    continue
                if isinstance(step, int) and step <= resume_step:
                    keep.append(line)
        if self.path.exists():
            with atomic_write(self.path, "w", encoding="utf-8") as f:
                f.write("".join(f"{line}\n" for line in keep))

    def write(self, step: int, epoch: int, **fields: Any) -> None:
        """Append `{"step", "epoch", "time", **fields}` (flushed: a kill loses no whole line)."""
        record = {"step": step, "epoch": epoch, "time": time.time(), **fields}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


class Reporter:
    """Sends a run's progress events, built on its schedule, to the callback (if any)."""

    def __init__(self, callback: ProgressFn | None, schedule: Schedule) -> None:
        self.callback, self.schedule = callback, schedule

    def __call__(
        self,
        event: EventKind,
        step: int,
        *,
        losses: dict[str, float],
        eta_s: float | None,
        samples: str | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> None:
        if self.callback is not None:
            self.callback(
                progress_event(
                    event,
                    self.schedule,
                    step,
                    losses=losses,
                    eta_s=eta_s,
                    samples=samples,
                    metrics=metrics,
                )
            )


class Pace:
    """Seconds per generator step and the time left, over this process's steps."""

    def __init__(self, start_step: int) -> None:
        self.start_step = start_step
        self.t0 = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def stats(self, step: int, total_steps: int) -> dict[str, float]:
        rate = self.elapsed / max(step - self.start_step, 1)
        return {"seconds_per_step": rate, "eta_s": rate * max(total_steps - step, 0)}


class Run:
    """One training run under way: its folder, schedule, metrics log, progress and stop flag.

    Made by `Run.start` once the loop has loaded its data and its resume checkpoint; see the
    module docstring for the convention the loops follow with it.
    """

    def __init__(
        self,
        folder: RunFolder,
        schedule: Schedule,
        metrics_log: MetricsLog,
        report: Reporter,
        stop: StopFn,
    ) -> None:
        self.folder, self.schedule, self.log, self.report = folder, schedule, metrics_log, report
        self.stop = stop
        self.status = SUCCEEDED

    @classmethod
    def start(
        cls,
        folder: RunFolder,
        config: Any,
        data: str | Path | None,
        schedule: Schedule,
        previous: Checkpoint | None,
        *,
        progress: ProgressFn | None,
        should_stop: StopFn | None,
    ) -> Run:
        """Write `config.json` and open the metrics log, cut back to `previous`'s step."""
        folder.write_config(config, data)
        resume_step = None if previous is None else previous.step
        return cls(
            folder,
            schedule,
            MetricsLog(folder.metrics, resume_step),
            Reporter(progress, schedule),
            should_stop or never_stop,
        )

    def stopped(self) -> bool:
        """Ask the stop flag; once it says stop, the run ends cancelled."""
        if self.status == SUCCEEDED and self.stop():
            self.status = CANCELLED
        return self.status == CANCELLED

    def more(self, step: int) -> bool:
        """Whether to run another step: the schedule has one left and nobody asked to stop."""
        return not self.schedule.done(step) and not self.stopped()

    def save(self, ckpt: Checkpoint) -> Checkpoint:
        """Write `ckpt` as the run's full-state checkpoint (atomically) and return it."""
        save_checkpoint(ckpt, self.folder.checkpoint)
        return ckpt

    def finish(self, final: Checkpoint, **extra: Any) -> str | None:
        """The inference-only `model.pt` of `final` (with `extra`), written when the run
        completed; None when it was cancelled."""
        if self.status != SUCCEEDED:
            log.info("cancelled; checkpoint %s", self.folder.checkpoint)
            return None
        model = final.inference_only()
        model.extra = {**model.extra, **extra}
        return str(save_checkpoint(model, self.folder.model))

    def result(
        self,
        step: int,
        *,
        losses: dict[str, float],
        eta_s: float | None,
        metrics: dict[str, Any],
        model: str | None,
        samples: str | None = None,
    ) -> TrainResult:
        """Report "done" and return what the loop returns; `metrics` gain the last `losses`."""
        metrics = {**metrics, "losses": dict(losses)}
        self.report("done", step, losses=losses, eta_s=eta_s, samples=samples, metrics=metrics)
        log.info("%s at step %d/%d", self.status, step, self.schedule.total_steps)
        return TrainResult(
            status=self.status,
            step=step,
            epoch=self.schedule.epoch(step),
            checkpoint=str(self.folder.checkpoint),
            model=model,
            metrics=metrics,
        )


def epoch_order(seed: int, epoch: int, n: int, rows: int, device: torch.device) -> torch.Tensor:
    """The row order of `epoch`: permutations of `n` rows from (seed, epoch), enough to cover
    `rows` draws. A pure function of the position, so an exact resume needs no saved order."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    reps = max(1, math.ceil(rows / n))
    return torch.cat([torch.randperm(n, generator=g) for _ in range(reps)]).to(device)


# --------------------------------------------------------------------------------------------
# EMA of the generator weights


def ema_copy(net: nn.Module) -> nn.Module:
    """A frozen copy of `net` in eval mode, to hold its exponential moving average."""
    return copy.deepcopy(net).eval().requires_grad_(False)


@torch.no_grad()
def update_ema(ema: nn.Module, net: nn.Module, step: int, decay: float) -> None:
    """Move `ema` towards `net` after generator step `step` (1-based); copy the buffers.

    The decay warms up as (1 + step) / (10 + step), so that short runs are not dominated by
    the initial weights; buffers (BatchNorm statistics) are copied, not averaged.
    """
    d = min(decay, (1 + step) / (10 + step))
    for p_ema, p in zip(ema.parameters(), net.parameters(), strict=True):
        p_ema.lerp_(p, 1.0 - d)
    for b_ema, b in zip(ema.buffers(), net.buffers(), strict=True):
        b_ema.copy_(b)


# --------------------------------------------------------------------------------------------
# determinism on CUDA


def use_deterministic_kernels(device: torch.device, enabled: bool) -> None:
    """On CUDA, make a training step give the same bits every time it is run (when `enabled`).

    The CPU kernels are deterministic already. On CUDA, cuDNN picks by default among
    convolution algorithms of which some accumulate with atomics (backward-filter algorithms
    0 and 3, backward-data 0): the sum's order, hence its rounding, then changes from run to
    run, and a resumed run drifts from the uninterrupted one within a step even with every
    state restored. Deterministic cuDNN algorithms (and no autotuning, which may pick another
    algorithm in another process) fix that; `use_deterministic_algorithms` with `warn_only`
    logs any remaining non-deterministic kernel instead of failing the run. cuBLAS needs
    `CUBLAS_WORKSPACE_CONFIG` before its first call in the process: set here if still unset.

    This is process-wide; inference gains from it too (same seed, same bytes). A run with
    `deterministic=False` leaves the settings as they are.
    """
    if device.type != "cuda" or not enabled:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


# --------------------------------------------------------------------------------------------
# random number generator states (saved in every checkpoint, restored on resume)


def rng_state(device: torch.device, data: torch.Generator | None = None) -> dict[str, Any]:
    """The global CPU and CUDA generator states, and the loop's own `data` generator."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
        "data": data.get_state() if data is not None else None,
    }


def restore_rng(
    training_state: dict[str, Any], device: torch.device, data: torch.Generator | None = None
) -> None:
    """Put back the states `rng_state` saved into `training_state["rng"]`.

    Also reads the emulator's earlier layout (`rng_cpu`, `rng_cuda`), so that runs
    checkpointed before this format resume too.
    """
    state = training_state.get("rng") or {
        "torch": training_state["rng_cpu"],
        "cuda": training_state.get("rng_cuda"),
    }
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if device.type == "cuda" and cuda is not None:
        if isinstance(cuda, torch.Tensor):  # one device's state (earlier checkpoints)
            torch.cuda.set_rng_state(cuda.cpu(), device)
        else:
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
    if data is not None and state.get("data") is not None:
        data.set_state(state["data"].cpu())
