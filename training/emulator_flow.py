"""Training loop of the flow emulator: detection classifier, then the conditional spline flow.

The flow learns the same target as the cWGAN-GP (standardized observed − true offsets and,
when the catalog has them, log magnitude errors) by maximum likelihood. A likelihood gives
what the adversarial game does not: a validation figure that falls as the model improves,
so the served weights are those of the best validation epoch and the run stops when the
validation likelihood has not improved for `patience` epochs.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from models.atomic import atomic_write
from models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from models.columns import INPUTS
from models.device import resolve_device
from models.emulator import Detector
from models.flow import FlowConfig, OffsetFlow
from training.emulator_data import Split, fake_catalog, fit_scalers, load_emulator_catalog
from training.emulator_detector import train_detector
from training.presets import FlowTrainConfig, config_to_dict
from training.runner import ProgressFn, StopFn, TrainResult

log = logging.getLogger(__name__)

VAL_ROWS = 20_000  # validation objects scored for the likelihood each epoch


def _targets(scalers: Any, s: Split, device: torch.device) -> tuple[torch.Tensor, ...]:
    """(cond, true, target) tensors of the detected, fully measured rows of `s`."""
    det = s.only_detected()
    x = torch.from_numpy(det.x).to(device)
    cond, true = scalers.split_inputs(x)
    magerr = None if det.magerr is None else torch.from_numpy(det.magerr).to(device)
    obs = torch.from_numpy(det.observed).to(device)
    return cond, true, scalers.target(obs, x[:, :3], magerr if scalers.out_dim == 6 else None)


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
    """Train the detection classifier, then the flow, into the run folder `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / "checkpoints" / "last.pt"
    device = resolve_device(config.device)
    emit: ProgressFn = progress or (lambda event: None)
    stop: StopFn = should_stop or (lambda: False)
    torch.manual_seed(config.seed)
    with atomic_write(out_dir / "config.json", "w") as f:
        json.dump(config_to_dict(config), f, indent=2)

    # ---- data ------------------------------------------------------------------------------
    if config.dry_run or data is None:
        if not config.dry_run:
            raise ValueError("no training catalog given (pass data, or use a dry run)")
        splits = fake_catalog(3000, seed=config.seed)
    else:
        splits = load_emulator_catalog(data, seed=config.seed)
    train = splits["train"] if config.max_rows is None else splits["train"].head(config.max_rows)
    val = splits["val"]
    if len(train.only_detected()) < 2:
        raise ValueError(f"{data} has fewer than 2 detected objects in its 'train' split")

    # ---- resume or start ---------------------------------------------------------------------
    previous: Checkpoint | None = None
    if resume and ckpt_path.is_file():
        previous = load_checkpoint(ckpt_path, map_location=device)
        if previous.training_state is None:
            raise ValueError(f"{ckpt_path} holds no training state to resume from")
    if previous is not None:
        from models.emulator import EmulatorScalers

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
    best = copy.deepcopy(flow).eval().requires_grad_(False)  # the served weights
    opt = torch.optim.Adam(flow.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    step, epoch, metrics = 0, 0, {}
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
        step, epoch = previous.step, previous.epoch
        torch.set_rng_state(state["rng_cpu"].cpu())
        log.info("resuming %s at step %d (epoch %d)", out_dir, step, epoch)

    def make_checkpoint(with_state: bool = True) -> Checkpoint:
        return Checkpoint(
            kind="cflow",
            config=net_cfg.to_dict(),
            preprocessing={**scalers.to_dict(), "inputs": list(INPUTS), "target": "mag - true"},
            ema={k: v.detach().clone() for k, v in best.state_dict().items()},
            step=step,
            epoch=epoch,
            extra={
                "preset": config.preset,
                "train_config": config_to_dict(config),
                "detector": {k: v.detach().clone() for k, v in detector.state_dict().items()},
                "detector_trained": bool(calibration),
                "calibration": calibration,
                "metrics": metrics,
            },
            training_state=(
                {
                    "flow": flow.state_dict(),
                    "opt": opt.state_dict(),
                    "best_nll": best_nll,
                    "stale": stale,
                    "rng_cpu": torch.get_rng_state(),
                }
                if with_state
                else None
            ),
        )

    metrics_path = out_dir / "metrics.jsonl"
    if previous is None:
        metrics_path.unlink(missing_ok=True)

    def write_metrics(record: dict[str, Any]) -> None:
        with open(metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    # ---- schedule ------------------------------------------------------------------------
    train_t = _targets(scalers, train, device)
    val_t = tuple(t[:VAL_ROWS] for t in _targets(scalers, val, device))
    n_det = len(train_t[2])
    batch = min(config.batch_size, n_det)
    steps_per_epoch = max(1, n_det // batch)
    total_steps = 2 if config.dry_run else config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    epochs = math.ceil(total_steps / steps_per_epoch)

    def event(kind: str, losses: dict[str, float], eta: float | None) -> dict[str, Any]:
        return {
            "event": kind,
            "epoch": epoch,
            "epochs": epochs,
            "step": step,
            "total_steps": total_steps,
            "losses": losses,
            "eta_s": eta,
            "samples": None,
            "metrics": dict(metrics),
        }

    # ---- detection classifier ------------------------------------------------------------------
    if not calibration:

        def on_detector_epoch(det_epoch: int, bce: float) -> bool:
            emit(event("step", {"detector_bce": bce}, None) | {"metrics": {"detector": det_epoch}})
            return stop()

        result = train_detector(
            detector,
            scalers,
            train,
            val,
            epochs=1 if config.dry_run else config.detector_epochs,
            batch_size=config.detector_batch_size,
            lr=config.detector_lr,
            seed=config.seed,
            device=device,
            on_epoch=on_detector_epoch,
        )
        if result is None:  # cancelled: nothing worth keeping yet
            return _result("cancelled", step, epoch, ckpt_path, None, metrics)
        calibration = result
        metrics.update({k: v for k, v in calibration.items() if k.startswith("val_")})
        write_metrics({"event": "detector", **calibration})
        save_checkpoint(make_checkpoint(), ckpt_path)

    # ---- the flow --------------------------------------------------------------------------------
    t0, s0 = time.monotonic(), step
    status, losses = "succeeded", {}
    order: torch.Tensor | None = None
    flow.train()
    while step < total_steps and stale < config.patience:
        e, k = divmod(step, steps_per_epoch)
        if order is None or k == 0:  # a permutation per epoch from (seed, epoch): exact resume
            g = torch.Generator().manual_seed(config.seed * 1_000_003 + e)
            order = torch.randperm(n_det, generator=g).to(device)
        idx = order[k * batch : (k + 1) * batch]
        cond, true, target = (t[idx] for t in train_t)
        for group in opt.param_groups:  # cosine schedule, a pure function of the step
            group["lr"] = config.lr * 0.5 * (1 + math.cos(math.pi * step / total_steps))
        loss = -flow.log_prob(target, cond, true).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(flow.parameters(), 10.0)
        opt.step()
        step += 1
        losses = {"nll": loss.item()}

        end_of_epoch = k + 1 == steps_per_epoch or step == total_steps
        if end_of_epoch:
            epoch = e + 1
            flow.eval()
            val_nll = _nll(flow, val_t) if len(val_t[2]) else float(losses["nll"])
            flow.train()
            if val_nll < best_nll - 1e-4:
                best_nll, stale = val_nll, 0
                best.load_state_dict(flow.state_dict())
            else:
                stale += 1
            metrics.update(val_nll=val_nll, best_val_nll=best_nll, best_epoch=epoch - stale)
        rate = (time.monotonic() - t0) / max(step - s0, 1)
        record = event("epoch" if end_of_epoch else "step", losses, rate * (total_steps - step))
        if end_of_epoch or step % config.log_every == 0:
            write_metrics({k_: v for k_, v in record.items() if k_ != "samples"})
        emit(record)
        cancelled = stop()
        if cancelled or end_of_epoch or step % config.checkpoint_every == 0:
            save_checkpoint(make_checkpoint(), ckpt_path)
        if cancelled and step < total_steps:
            status = "cancelled"
            break

    if status == "cancelled":
        return _result(status, step, epoch, ckpt_path, None, metrics)
    if stale >= config.patience:
        log.info("early stop at epoch %d: best validation NLL %.4f", epoch, best_nll)
        metrics["early_stopped"] = True
    save_checkpoint(make_checkpoint(), ckpt_path)
    model_path = save_checkpoint(make_checkpoint(with_state=False), out_dir / "model.pt")
    if data is not None and not config.dry_run:
        from training.emulator_eval import job_figures

        metrics.update(job_figures(model_path, data, out_dir))  # = `cosmogan evaluate`
    emit(event("done", losses, 0.0))
    return _result(status, step, epoch, ckpt_path, model_path, metrics)


def _result(
    status: str, step: int, epoch: int, ckpt: Path, model: Path | None, metrics: dict[str, Any]
) -> TrainResult:
    return TrainResult(
        status=status,
        step=step,
        epoch=epoch,
        checkpoint=str(ckpt),
        model=str(model) if model else None,
        metrics={k: v for k, v in metrics.items() if isinstance(v, int | float | bool)},
    )


__all__ = ["train_emulator_flow"]
