"""Training loop of the flow emulator: detection classifier, then the conditional spline flow.

The flow learns the same target as the cWGAN-GP (standardized observed − true offsets and,
when the catalog has them, log magnitude errors) by maximum likelihood. A likelihood gives
what the adversarial game does not: a validation figure that falls as the model improves,
so the served weights are those of the best validation epoch and the run stops when the
validation likelihood has not improved for `patience` epochs.

With kind `cflow-distilled` (preset `balrog-fast`) a third phase follows: the best flow is
distilled into its one-pass student (`training.emulator.distill`), which the checkpoint
serves; the distillation's progress rides on the flow's last step, in `metrics`. Given a
`teacher` (a trained flow), the run takes its scalers, detector and flow and only distils.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from pathlib import Path

import torch

from models.checkpoint import Checkpoint
from models.device import resolve_device
from models.emulator import Detector, EmulatorScalers
from models.flow import FlowConfig, FlowStudent, OffsetFlow
from training.emulator import distill
from training.emulator.data import target_tensors
from training.emulator.shared import DetectorPhase, finish, load_splits, preprocessing, run_scalers
from training.presets import FlowTrainConfig
from training.progress import ProgressFn, Schedule, StopFn, TrainResult
from training.scaffold import (
    Pace,
    Run,
    RunFolder,
    ema_copy,
    epoch_order,
    restore_rng,
    rng_state,
    use_deterministic_kernels,
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
    device = resolve_device(config.device)
    distilled = config.kind == "cflow-distilled"
    torch.manual_seed(config.seed)
    use_deterministic_kernels(device, config.deterministic)

    # ---- data, and the checkpoint a resumed run continues from --------------------------------
    folder = RunFolder(Path(out_dir))
    train, val = load_splits(config, data)
    previous = folder.previous(resume, config.kind)
    # a given teacher replaces the detector and flow phases: its scalers, detector and flow
    teacher = distill.load_teacher(config.teacher) if config.teacher and not previous else None
    scalers = (
        EmulatorScalers.from_dict(teacher.preprocessing)
        if teacher is not None
        else run_scalers(config, train, previous)
    )

    # ---- networks and optimizer (restored when resuming) ------------------------------------
    if previous is not None:
        net_cfg = FlowConfig.from_dict(previous.config)
    elif teacher is not None:
        net_cfg = replace(
            FlowConfig.from_dict(teacher.config),
            student_hidden=config.student_hidden,
            student_depth=config.student_depth,
        )
    else:
        net_cfg = FlowConfig(
            out_dim=scalers.out_dim,
            hidden=config.hidden,
            transforms=config.transforms,
            bins=config.bins,
            student_hidden=config.student_hidden,
            student_depth=config.student_depth,
        )
    flow = OffsetFlow(net_cfg).to(device)
    student = FlowStudent(net_cfg).to(device) if distilled else None
    dopt = (
        torch.optim.Adam(student.parameters(), lr=config.distill_lr)
        if student is not None
        else None
    )
    detection = DetectorPhase(Detector(net_cfg).to(device), previous)
    best = ema_copy(flow)  # the served weights: those of the best validation epoch
    opt = torch.optim.Adam(flow.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    step, metrics = 0, {}
    best_nll, stale = math.inf, 0
    phase, dstep = "flow", 0
    if previous is not None:
        state = previous.training_state
        flow.load_state_dict(state["flow"])
        opt.load_state_dict(state["opt"])
        best.load_state_dict(state["best_flow"] if student is not None else previous.ema)
        if student is not None and dopt is not None:
            student.load_state_dict(previous.ema)
            dopt.load_state_dict(state["dopt"])
            phase, dstep = state["phase"], state["dstep"]
        metrics = dict(previous.extra.get("metrics", {}))
        best_nll, stale = state["best_nll"], state["stale"]
        step = previous.step
        restore_rng(state, device)
        log.info("resuming %s at step %d", folder.root, step)
    elif teacher is not None:
        flow.load_state_dict(teacher.ema)
        best.load_state_dict(teacher.ema)
        detection.detector.load_state_dict(teacher.extra["detector"])
        detection.calibration = dict(teacher.extra.get("calibration", {}))
        detection.trained = True
        metrics = {"teacher": config.teacher, **detection.calibration}
        phase = "distill"

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
    run = Run.start(
        folder, config, data, schedule, previous, progress=progress, should_stop=should_stop
    )
    if teacher is not None:
        step = schedule.total_steps  # the flow's phases were the teacher's run

    def checkpoint() -> Checkpoint:
        served = student if student is not None else best
        distill_state = {}
        if student is not None and dopt is not None:
            distill_state = {
                "best_flow": {k: v.detach().clone() for k, v in best.state_dict().items()},
                "dopt": dopt.state_dict(),
                "phase": phase,
                "dstep": dstep,
            }
        return run.save(
            Checkpoint(
                kind=config.kind,
                config=net_cfg.to_dict(),
                preprocessing=preprocessing(scalers),
                ema={k: v.detach().clone() for k, v in served.state_dict().items()},
                step=step,
                epoch=schedule.epoch(step),
                extra=detection.checkpoint_extra(config, metrics),
                training_state={
                    "flow": flow.state_dict(),
                    "opt": opt.state_dict(),
                    "best_nll": best_nll,
                    "stale": stale,
                    "rng": rng_state(device),
                    **distill_state,
                },
            )
        )

    # ---- detection classifier (all training rows), its calibration on the val split -------
    losses: dict[str, float] = {}
    eta: float | None = None
    if not detection.run(run, step, checkpoint, scalers, (train, val), config, device, metrics):
        return run.result(step, losses=losses, eta_s=eta, metrics=metrics, model=None)

    # ---- the flow: maximum likelihood, cosine schedule, best validation epoch kept ------------
    order: torch.Tensor | None = None
    pace = Pace(step)
    flow.train()
    while phase == "flow" and stale < config.patience and run.more(step):
        e, k = divmod(step, schedule.steps_per_epoch)
        if order is None or k == 0:
            order = epoch_order(config.seed, e, n_det, schedule.steps_per_epoch * batch, device)
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
            run.log.write(step, schedule.epoch(step), **losses, **stats)
        run.report("step", step, losses=losses, eta_s=eta, metrics=metrics)

        # checkpoint: every `checkpoint_every` steps and at each epoch end
        if epoch_end or step % config.checkpoint_every == 0:
            checkpoint()
        if epoch_end:
            run.report("epoch", step, losses=losses, eta_s=eta, metrics=metrics)

    # ---- `cflow-distilled`: the best flow's one-pass student ---------------------------------
    if student is not None and dopt is not None and not run.stopped():
        if phase == "flow":
            phase = "distill"
            checkpoint()  # the flow is done: a resume goes on from here
        rows = 2048 if config.dry_run else config.distill_rows
        steps = 2 if config.dry_run else config.distill_steps
        pool = distill.draw_pool(
            best, detection.detector, scalers, train, rows, config.seed, device
        )
        dpace = Pace(dstep)
        while dstep < steps and not run.stopped():
            mse = distill.distill_step(student, dopt, pool, config, dstep)
            dstep += 1
            losses = {"distill_mse": mse}
            eta = dpace.stats(dstep, steps)["eta_s"]
            if dstep % config.log_every == 0 or dstep == steps:
                metrics.update(distill_step=dstep, distill_steps=steps)
                run.log.write(step, schedule.epoch(step), **losses, distill_step=dstep)
                run.report("step", step, losses=losses, eta_s=eta, metrics=metrics)
            if dstep % config.checkpoint_every == 0 and dstep < steps:
                checkpoint()
        if dstep >= steps:
            metrics.update(distill.val_mse(student, pool))

    # ---- end: a full checkpoint always; model.pt and its figures when the run completed ------
    if stale >= config.patience:
        log.info("early stop at step %d: best validation NLL %.4f", step, best_nll)
        metrics["early_stopped"] = True
    model = finish(run, checkpoint(), config, data, metrics)
    return run.result(step, losses=losses, eta_s=eta, metrics=metrics, model=model)


__all__ = ["train_emulator_flow"]
