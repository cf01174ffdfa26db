"""Training loop of the flow emulator: detection classifier, then the conditional spline flow.

The flow learns the same target as the cWGAN-GP (standardized observed − true offsets and,
when the catalog has them, log magnitude errors) by maximum likelihood. A likelihood gives
what the adversarial game does not: a validation figure that falls as the model improves,
so the served weights are those of the best validation epoch and the run stops when the
validation likelihood has not improved for `patience` epochs.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch

from models.checkpoint import Checkpoint, save_checkpoint
from models.columns import INPUTS
from models.device import resolve_device
from models.emulator import Detector, EmulatorScalers
from models.flow import FlowConfig, OffsetFlow
from training.emulator.data import (
    fit_scalers,
    target_tensors,
    training_splits,
)
from training.emulator.detector import train_detector
from training.presets import FlowTrainConfig, config_to_dict
from training.progress import ProgressFn, Schedule, StopFn, TrainResult, never_stop
from training.scaffold import (
    MetricsLog,
    Pace,
    Reporter,
    RunFolder,
    ema_copy,
    restore_rng,
    rng_state,
)

log = logging.getLogger(__name__)

VAL_ROWS = 20_000  # validation objects scored for the likelihood each epoch


@torch.no_grad()
def _nll(flow: OffsetFlow, data: tuple[torch.Tensor, ...], chunk: int = 8192) -> float:
    cond, true, target = data
    total = 0.0
    for i in range(0, len(target), chunk):
        sl = slice(i, i + chunk)
        total -= float(flow.log_prob(target[sl], cond[sl], true[sl]).sum())
    return total / max(len(target), 1)


def train_emulator_flow(
    config: FlowTrainConfig,
    data: Path | str | None,
    out_dir: Path | str,
    *,
    resume: bool = True,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> TrainResult:
    """Train the detection classifier, then the flow, into the run folder `out_dir`.

    One epoch is one pass over the detected training objects in batches of `batch_size`.
    """
    run = RunFolder.create(out_dir, config)
    device = resolve_device(config.device)
    stop = should_stop or never_stop
    torch.manual_seed(config.seed)

    # ---- data ------------------------------------------------------------------------------
    train, val = training_splits(
        data, seed=config.seed, dry_run=config.dry_run, max_rows=config.max_rows
    )
    if len(train.only_detected()) < 2:
        raise ValueError(f"{data} has fewer than 2 detected objects in its 'train' split")

    # ---- resume or start -----------------------------------------------------------------------
    previous = run.previous(resume, map_location=device)
    if previous is not None:
        scalers = EmulatorScalers.from_dict(previous.preprocessing)
        net_cfg = FlowConfig.from_dict(previous.config)
    else:
        scalers = fit_scalers(
            train, log_conditions=config.log_conditions, with_errors=config.emulate_errors
        )
        net_cfg = FlowConfig(
            out_dim=scalers.out_dim,
            hidden=config.hidden,
            transforms=config.transforms,
            bins=config.bins,
        )
    flow = OffsetFlow(net_cfg).to(device)
    detector = Detector(net_cfg).to(device)
    best = ema_copy(flow)  # the served weights: those of the best validation epoch
    opt = torch.optim.Adam(flow.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    step, metrics = 0, {}
    calibration: dict[str, Any] = {}
    best_nll, stale = math.inf, 0
    if previous is not None:
        state = previous.training_state
        flow.load_state_dict(state["flow"])
        opt.load_state_dict(state["opt"])
        best.load_state_dict(previous.ema)
        detector.load_state_dict(previous.extra["detector"])
        calibration = dict(previous.extra.get("calibration", {}))
        metrics = dict(previous.extra.get("metrics", {}))
        best_nll, stale = state["best_nll"], state["stale"]
        step = previous.step
        restore_rng(state, device)
        log.info("resuming %s at step %d", run.root, step)
    metrics_log = MetricsLog(run.metrics, step if calibration else None)

    # ---- schedule ------------------------------------------------------------------------
    train_t = target_tensors(scalers, train, device)
    val_t = tuple(t[:VAL_ROWS] for t in target_tensors(scalers, val, device))
    n_det = len(train_t[2])
    batch = min(config.batch_size, n_det)
    schedule = Schedule.of(
        n_det // batch,
        config.epochs,
        max_steps=config.max_steps,
        dry_run_steps=2 if config.dry_run else None,
    )
    report = Reporter(progress, schedule)

    def make_checkpoint() -> Checkpoint:
        return Checkpoint(
            kind="cflow",
            config=net_cfg.to_dict(),
            preprocessing={**scalers.to_dict(), "inputs": list(INPUTS), "target": "mag - true"},
            ema={k: v.detach().clone() for k, v in best.state_dict().items()},
            step=step,
            epoch=schedule.epoch(step),
            extra={
                "preset": config.preset,
                "train_config": config_to_dict(config),
                "detector": {k: v.detach().clone() for k, v in detector.state_dict().items()},
                "detector_trained": bool(calibration),
                "calibration": calibration,
                "metrics": metrics,
            },
            training_state={
                "flow": flow.state_dict(),
                "opt": opt.state_dict(),
                "best_nll": best_nll,
                "stale": stale,
                "rng": rng_state(device),
            },
        )

    losses: dict[str, float] = {}
    eta: float | None = None

    def result(status: str, model: str | None) -> TrainResult:
        report("done", step, losses=losses, eta_s=eta, metrics=metrics)
        return TrainResult(
            status=status,
            step=step,
            epoch=schedule.epoch(step),
            checkpoint=str(run.checkpoint),
            model=model,
            metrics=dict(metrics),
        )

    # ---- detection classifier (all training rows), then Platt scaling on the val split -----
    if not calibration:
        fitted = train_detector(
            detector, scalers, train, val, config, device, report=report, step=step, stop=stop
        )
        if fitted is None:  # cancelled: the detector restarts from scratch on resume
            return result("cancelled", None)
        calibration = fitted
        metrics.update({k: v for k, v in calibration.items() if k.startswith("val_")})
        metrics_log.write(step, 0, event="detector", **calibration)
        save_checkpoint(make_checkpoint(), run.checkpoint)

    # ---- the flow: maximum likelihood, cosine schedule, best validation epoch kept ------------
    order: torch.Tensor | None = None
    pace = Pace(step)
    status = "succeeded"
    flow.train()
    while not schedule.done(step) and stale < config.patience:
        e, k = divmod(step, schedule.steps_per_epoch)
        if order is None or k == 0:  # a permutation per epoch from (seed, epoch): exact resume
            g = torch.Generator().manual_seed(config.seed * 1_000_003 + e)
            order = torch.randperm(n_det, generator=g).to(device)
        idx = order[k * batch : (k + 1) * batch]
        cond, true, target = (t[idx] for t in train_t)
        for group in opt.param_groups:  # a pure function of the step: nothing to save
            group["lr"] = config.lr * 0.5 * (1 + math.cos(math.pi * step / schedule.total_steps))
        loss = -flow.log_prob(target, cond, true).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(flow.parameters(), 10.0)
        opt.step()
        step += 1

        losses = {"nll": loss.item()}
        stats = pace.stats(step, schedule.total_steps)
        eta = stats["eta_s"]
        epoch_end = schedule.epoch_end(step)
        if epoch_end:
            flow.eval()
            val_nll = _nll(flow, val_t) if len(val_t[2]) else losses["nll"]
            flow.train()
            if val_nll < best_nll - 1e-4:
                best_nll, stale = val_nll, 0
                best.load_state_dict(flow.state_dict())
            else:
                stale += 1
            epoch = schedule.epoch(step)
            metrics.update(val_nll=val_nll, best_val_nll=best_nll, best_epoch=epoch - stale)
        if epoch_end or step % config.log_every == 0:
            metrics_log.write(step, schedule.epoch(step), **losses, **stats)
        report("step", step, losses=losses, eta_s=eta, metrics=metrics)

        cancelled = stop()
        if cancelled or epoch_end or step % config.checkpoint_every == 0:
            save_checkpoint(make_checkpoint(), run.checkpoint)
        if epoch_end:
            report("epoch", step, losses=losses, eta_s=eta, metrics=metrics)
        if cancelled and not schedule.done(step):
            status = "cancelled"
            break

    if status == "cancelled":
        return result(status, None)
    if stale >= config.patience:
        log.info("early stop at step %d: best validation NLL %.4f", step, best_nll)
        metrics["early_stopped"] = True
    final = make_checkpoint()
    save_checkpoint(final, run.checkpoint)
    model = run.save_model(final)
    if data is not None and not config.dry_run:
        from training.emulator.evaluate import job_figures

        metrics.update(job_figures(model, data, run.root))  # = `cosmogan evaluate`
    return result(status, model)


__all__ = ["train_emulator_flow"]
