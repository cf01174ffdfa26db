"""Distillation of a trained flow into its one-pass student (`balrog-fast`).

Sampling the flow inverts a masked autoregressive transform: one network pass per dimension
and transform. The student (`models.flow.FlowStudent`) learns the flow's sampling map
`(z, inputs) → flow⁻¹(z | inputs)` by regression on a pool of the flow's own samples, so it
needs no data beyond the catalog's inputs and gives, for the same `z`, nearly the flow's
sample. The pool's inputs are the training split's rows drawn in proportion to their
calibrated detection probability: the rows the sampler sends to the offset network are the
detected ones. The pool is a pure function of (seed, teacher, catalog), so a resumed phase
rebuilds the same pool; each step's batch is a pure function of (seed, step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from models.checkpoint import Checkpoint, load_checkpoint
from models.emulator import Detector, EmulatorScalers
from models.flow import FlowStudent, OffsetFlow
from training.emulator.data import Split
from training.presets import TEACHER_REF, FlowTrainConfig

VAL_ROWS = 20_000  # pool rows held out to score the student
POOL_FORWARD_ROWS = 8192  # teacher rows per forward pass while the pool is drawn
FORWARD_ROWS = 65_536  # detector rows per forward pass (bounds memory on large catalogs)


@dataclass
class Pool:
    """Student inputs `(z, cond, true)` concatenated, and the teacher's targets."""

    inputs: Tensor  # (N, out_dim + 9)
    targets: Tensor  # (N, out_dim)

    @property
    def held_out(self) -> int:
        """The first rows, kept for `val`."""
        return min(VAL_ROWS, len(self.inputs) // 5)

    def train_batch(self, seed: int, step: int, batch: int) -> tuple[Tensor, Tensor]:
        """The batch of step `step`: a pure function of (seed, step)."""
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        idx = torch.randint(self.held_out, len(self.inputs), (batch,), generator=g)
        idx = idx.to(self.inputs.device)
        return self.inputs[idx], self.targets[idx]

    def val(self) -> tuple[Tensor, Tensor]:
        return self.inputs[: self.held_out], self.targets[: self.held_out]


@torch.no_grad()
def draw_pool(
    teacher: OffsetFlow,
    detector: Detector,
    scalers: EmulatorScalers,
    train: Split,
    rows: int,
    seed: int,
    device: torch.device,
) -> Pool:
    """`rows` teacher samples on inputs drawn from `train` in proportion to P(detected)."""
    x = torch.from_numpy(train.x).to(device)
    cond, true = scalers.split_inputs(x)
    weights = (
        torch.cat(
            [
                detector.calibrated_prob(cond[i : i + FORWARD_ROWS], true[i : i + FORWARD_ROWS])
                for i in range(0, len(x), FORWARD_ROWS)
            ]
        )
        .double()
        .cpu()
        .numpy()
    )
    rng = np.random.default_rng([seed, 17])
    pick = torch.from_numpy(rng.choice(len(weights), size=rows, p=weights / weights.sum()))
    cond, true = cond[pick.to(device)], true[pick.to(device)]
    g = torch.Generator().manual_seed(seed * 1_000_003 + 17)
    z = torch.randn(rows, teacher.cfg.out_dim, generator=g).to(device)
    teacher.eval()
    targets = torch.cat(
        [
            teacher(z[i : i + POOL_FORWARD_ROWS], cond[i : i + POOL_FORWARD_ROWS],
                    true[i : i + POOL_FORWARD_ROWS])
            for i in range(0, rows, POOL_FORWARD_ROWS)
        ]
    )  # fmt: skip
    return Pool(torch.cat([z, cond, true], dim=1), targets)


def load_teacher(ref: str) -> Checkpoint:
    """The flow checkpoint to distil: a registered model `NAME[@VERSION]`, else a file."""
    from models.registry import Registry
    from models.settings import get_settings

    if TEACHER_REF.match(ref) and not Path(ref).is_file():
        path = Registry(get_settings().registry_dir).resolve(ref).path
    else:
        path = Path(ref)
    ckpt = load_checkpoint(path)
    if ckpt.kind != "cflow":
        raise ValueError(f"teacher {ref!r} is a {ckpt.kind!r} model; only a flow (cflow) distils")
    return ckpt


def lr_at(config: FlowTrainConfig, step: int) -> float:
    """The cosine learning rate of distillation step `step`."""
    return config.distill_lr * 0.5 * (1 + math.cos(math.pi * step / config.distill_steps))


def distill_step(
    student: FlowStudent,
    opt: torch.optim.Optimizer,
    pool: Pool,
    config: FlowTrainConfig,
    step: int,
) -> float:
    """One regression step of the student on the teacher's samples; returns the MSE."""
    for group in opt.param_groups:
        group["lr"] = lr_at(config, step)
    inputs, targets = pool.train_batch(config.seed, step, config.distill_batch_size)
    loss = (student.net(inputs) - targets).square().mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


@torch.no_grad()
def val_mse(student: FlowStudent, pool: Pool) -> dict[str, float]:
    """The student's error on the held-out pool rows: mean squared, and the 99th percentile
    of the absolute error (standardized target units)."""
    inputs, targets = pool.val()
    student.eval()
    err = student.net(inputs) - targets
    student.train()
    return {
        "distill_val_mse": float(err.square().mean()),
        "distill_val_p99": float(err.abs().flatten().quantile(0.99)) if len(err) else 0.0,
    }


__all__ = ["Pool", "distill_step", "draw_pool", "load_teacher", "lr_at", "val_mse"]
