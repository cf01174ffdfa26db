"""Training loop of the Balrog emulator: detection classifier, then the conditional WGAN-GP.

The generator models the observed − true magnitude offset per band rather than the observed
magnitude itself. The offset is the measurement error we want to emulate: it is centred near
zero with a scatter from ~0.01 mag (bright) to ~1 mag (faint), whereas the magnitudes span
~10 mag. Asked for the magnitude, the network would have to reproduce the identity map to far
better than 0.01 mag before it could express the bright objects' scatter; asked for the
offset, the identity is built in and all its capacity goes into the error distribution.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

from models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from models.columns import DETECTED, INPUTS, OBSERVED, SPLIT
from models.device import resolve_device
from models.emulator import Critic, Detector, EmulatorConfig, EmulatorScalers, Generator
from training.losses import gradient_penalty, wgan_critic_loss, wgan_generator_loss
from training.presets import EmulatorTrainConfig, config_to_dict
from training.progress import ProgressFn, Schedule, StopFn, TrainResult, never_stop
from training.scaffold import (
    MetricsLog,
    Pace,
    Reporter,
    RunFolder,
    ema_copy,
    restore_rng,
    rng_state,
    update_ema,
    use_deterministic_kernels,
)

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
MONITOR_ROWS = 5000  # validation objects used for the per-epoch KS/W1 monitor


@dataclass
class Split:
    """One split of an emulator catalog as arrays."""

    x: np.ndarray  # (N, 9) float32, columns.INPUTS order
    observed: np.ndarray  # (N, 3) float32, NaN where not detected
    detected: np.ndarray  # (N,) bool

    def __len__(self) -> int:
        return len(self.x)

    def head(self, n: int) -> Split:
        return Split(self.x[:n], self.observed[:n], self.detected[:n])

    def only_detected(self) -> Split:
        # a detected row without finite magnitudes is unusable for the magnitude model
        keep = self.detected & np.isfinite(self.observed).all(axis=1)
        return Split(self.x[keep], self.observed[keep], self.detected[keep])


# --------------------------------------------------------------------------------------------
# data


def load_emulator_catalog(path: str | Path, *, seed: int = 0) -> dict[str, Split]:
    """Read a built catalog into train/val/test arrays.

    Catalogs without a `split` column (e.g. a real DES Balrog table) get a reproducible
    80/10/10 split drawn from `seed`.
    """
    from training.data.catalog import read_catalog, validate_inputs

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"emulator catalog not found: {path}")
    df = read_catalog(path)
    x = validate_inputs(df)  # (N, 9) float32; raises CatalogError naming the bad rows
    missing = [c for c in (*OBSERVED, DETECTED) if c not in df.columns]
    if missing:
        raise ValueError(f"{path} has no column(s) {missing}: it cannot train an emulator")
    observed = df[list(OBSERVED)].to_numpy(dtype=np.float32, na_value=np.nan)
    detected = df[DETECTED].to_numpy(dtype=bool)
    if SPLIT in df.columns:
        split = df[SPLIT].astype(str).to_numpy()
    else:
        u = np.random.default_rng(seed).random(len(df))
        split = np.where(u < 0.8, "train", np.where(u < 0.9, "val", "test"))
    return {s: Split(x[split == s], observed[split == s], detected[split == s]) for s in SPLITS}


def fake_catalog(rows: int = 3000, seed: int = 0) -> dict[str, Split]:
    """Generated rows with the catalog's shape, for dry runs (not a physical model)."""
    rng = np.random.default_rng(seed)
    true = rng.uniform(18.0, 25.0, (rows, 3))
    sky = rng.uniform(0.5, 2.0, (rows, 3))
    psf = rng.uniform(0.8, 1.5, (rows, 3))
    sigma = 0.02 * 10 ** (0.4 * (true - 20.0)) * sky * psf
    observed = true + sigma * rng.standard_normal((rows, 3))
    detected = rng.random(rows) < 1.0 / (1.0 + np.exp(2.0 * (true[:, 1] - 24.0)))
    observed[~detected] = np.nan
    x = np.concatenate([true, sky, psf], axis=1).astype(np.float32)
    split = rng.choice(np.array(SPLITS), size=rows, p=[0.8, 0.1, 0.1])
    return {
        s: Split(x[split == s], observed[split == s].astype(np.float32), detected[split == s])
        for s in SPLITS
    }


def fit_scalers(train: Split) -> EmulatorScalers:
    """Train-split standardization of inputs (all rows) and offsets (detected rows)."""
    det = train.only_detected()
    if len(det) < 2:
        raise ValueError("the training split has fewer than 2 detected objects")
    delta = det.observed.astype(np.float64) - det.x[:, :3]

    def std(a: np.ndarray) -> list[float]:
        return np.maximum(a.std(axis=0), 1e-6).tolist()  # a constant column must not give 0

    x = train.x.astype(np.float64)
    return EmulatorScalers(
        true_mean=tuple(x[:, :3].mean(axis=0)),
        true_std=tuple(std(x[:, :3])),
        cond_mean=tuple(x[:, 3:].mean(axis=0)),
        cond_std=tuple(std(x[:, 3:])),
        delta_mean=tuple(delta.mean(axis=0)),
        delta_std=tuple(std(delta)),
    )


# --------------------------------------------------------------------------------------------
# detection classifier and its calibration


def calibration_report(prob: np.ndarray, label: np.ndarray, bins: int = 15) -> dict[str, float]:
    """Expected calibration error (equal-width bins) and Brier score of `prob` against `label`."""
    prob = np.asarray(prob, dtype=np.float64)
    label = np.asarray(label, dtype=np.float64)
    which = np.minimum((prob * bins).astype(int), bins - 1)
    ece = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            ece += m.mean() * abs(prob[m].mean() - label[m].mean())
    return {"ece": float(ece), "brier": float(np.mean((prob - label) ** 2))}


def fit_platt(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Platt scaling `sigmoid(a · logit + b)`: minimize the validation BCE over (a, b)."""
    ab = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    z = logits.detach().double().cpu()
    y = labels.double().cpu()
    opt = torch.optim.LBFGS([ab], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(ab[0] * z + ab[1], y)
        loss.backward()
        return loss

    opt.step(closure)
    a, b = (float(v) for v in ab.detach())
    if not (math.isfinite(a) and math.isfinite(b)):
        return 1.0, 0.0
    return a, b


# --------------------------------------------------------------------------------------------
# monitoring


@torch.no_grad()
def magnitude_distances(
    generator: Generator,
    scalers: EmulatorScalers,
    split: Split,
    device: torch.device,
    seed: int = 0,
) -> dict[str, float]:
    """Per-band KS and W1 between generated and true observed magnitudes of detected rows."""
    if len(split) == 0:
        return {}
    x = torch.from_numpy(split.x).to(device)
    cond, true = scalers.split_inputs(x)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(len(split), generator.cfg.noise_dim, generator=g).to(device)
    fake = scalers.observed(generator(z, cond, true), x[:, :3]).cpu().numpy()
    out: dict[str, float] = {}
    for j, band in enumerate("riz"):
        out[f"ks_{band}"] = float(stats.ks_2samp(fake[:, j], split.observed[:, j]).statistic)
        out[f"w1_{band}"] = float(stats.wasserstein_distance(fake[:, j], split.observed[:, j]))
    out["ks_mean"] = float(np.mean([out[f"ks_{b}"] for b in "riz"]))
    out["w1_mean"] = float(np.mean([out[f"w1_{b}"] for b in "riz"]))
    return out


# --------------------------------------------------------------------------------------------
# the training loop


def train_emulator_gan(
    config: EmulatorTrainConfig,
    data: Path | str | None,
    out_dir: Path | str,
    *,
    resume: bool = True,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> TrainResult:
    """Train the detection classifier, then the cWGAN-GP, into the run folder `out_dir`.

    One epoch is one pass of the critic over the detected training objects: every critic
    step draws a fresh batch, so a generator step consumes `n_critic × batch_size` rows.
    """
    run = RunFolder.create(out_dir, config)
    device = resolve_device(config.device)
    stop = should_stop or never_stop
    torch.manual_seed(config.seed)
    use_deterministic_kernels(device, config.deterministic)

    # ---------------------------------------------------------------------------------------
    # Load data: the catalog's splits (generated rows for a dry run).
    if config.dry_run or data is None:
        if not config.dry_run:
            raise ValueError("no training catalog given (pass data, or use a dry run)")
        splits = fake_catalog(3000, seed=config.seed)
    else:
        splits = load_emulator_catalog(data, seed=config.seed)
    train = splits["train"] if config.max_rows is None else splits["train"].head(config.max_rows)
    if len(train) == 0:
        raise ValueError(f"{data} has no rows in the 'train' split")
    val = splits["val"]

    # ---------------------------------------------------------------------------------------
    # Build networks and optimizers; on resume, their states and the scalers they were fit with.
    previous: Checkpoint | None = None
    if run.resumable(resume):
        previous = load_checkpoint(run.checkpoint, map_location=device)
        if previous.training_state is None:
            raise ValueError(f"{run.checkpoint} holds no training state to resume from")
    scalers = EmulatorScalers.from_dict(previous.preprocessing) if previous else fit_scalers(train)
    net_cfg = (
        EmulatorConfig.from_dict(previous.config)
        if previous
        else EmulatorConfig(noise_dim=config.noise_dim, hidden=config.hidden)
    )
    generator = Generator(net_cfg).to(device)
    critic = Critic(net_cfg).to(device)
    detector = Detector(net_cfg).to(device)
    ema = ema_copy(generator)
    opt_g = torch.optim.Adam(
        generator.parameters(), lr=config.lr, betas=(config.beta1, config.beta2)
    )
    opt_c = torch.optim.Adam(critic.parameters(), lr=config.lr, betas=(config.beta1, config.beta2))

    def to_device(s: Split) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(s.x).to(device)
        cond, true = scalers.split_inputs(x)  # (N, 6), (N, 3) standardized
        return cond, true, x

    step, metrics = 0, {}
    calibration: dict[str, float] = {}
    detector_done = False
    if previous is not None:
        state = previous.training_state
        generator.load_state_dict(state["generator"])
        critic.load_state_dict(state["critic"])
        opt_g.load_state_dict(state["opt_g"])
        opt_c.load_state_dict(state["opt_c"])
        ema.load_state_dict(previous.ema)
        detector.load_state_dict(previous.extra["detector"])
        calibration = dict(previous.extra.get("calibration", {}))
        detector_done = bool(previous.extra.get("detector_trained", False))
        metrics = dict(previous.extra.get("metrics", {}))
        step = previous.step
        restore_rng(state, device)
        log.info("resuming %s at step %d", run.root, step)
    # a detector cut short is trained again from scratch: its log line too
    metrics_log = MetricsLog(run.metrics, step if detector_done else None)

    # ---------------------------------------------------------------------------------------
    # Schedule: the detected training rows on the device, steps per epoch.
    train_det = train.only_detected()
    cond_all, true_all, x_all = to_device(train_det)
    target_all = scalers.target(torch.from_numpy(train_det.observed).to(device), x_all[:, :3])
    n_det = len(train_det)
    batch = min(config.batch_size, n_det)
    rows_per_step = batch * config.n_critic
    schedule = Schedule.of(
        n_det // rows_per_step,
        config.epochs,
        max_steps=config.max_steps,
        dry_run_steps=2 if config.dry_run else None,
    )
    steps_per_epoch = schedule.steps_per_epoch
    report = Reporter(progress, schedule)

    def make_checkpoint() -> Checkpoint:
        return Checkpoint(
            kind="cwgan-gp",
            config=net_cfg.to_dict(),
            preprocessing={**scalers.to_dict(), "inputs": list(INPUTS), "target": "mag - true"},
            ema={k: v.detach().clone() for k, v in ema.state_dict().items()},
            step=step,
            epoch=schedule.epoch(step),
            extra={
                "preset": config.preset,
                "train_config": config_to_dict(config),
                "detector": {k: v.detach().clone() for k, v in detector.state_dict().items()},
                "detector_trained": detector_done,
                "calibration": calibration,
                "metrics": metrics,
            },
            training_state={
                "generator": generator.state_dict(),
                "critic": critic.state_dict(),
                "opt_g": opt_g.state_dict(),
                "opt_c": opt_c.state_dict(),
                "rng": rng_state(device),
            },
        )

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

    # ---------------------------------------------------------------------------------------
    # Detection classifier (all training rows), then Platt scaling on the val split.
    losses: dict[str, float] = {}
    eta: float | None = None
    if not detector_done:
        det_epochs = 1 if config.dry_run else config.detector_epochs
        d_cond, d_true, _ = to_device(train)
        d_label = torch.from_numpy(train.detected.astype(np.float32)).to(device)
        opt_det = torch.optim.Adam(detector.parameters(), lr=config.detector_lr)
        g = torch.Generator().manual_seed(config.seed + 1)
        bs = min(config.detector_batch_size, len(train))
        for det_epoch in range(det_epochs):
            order = torch.randperm(len(train), generator=g).to(device)
            total = 0.0
            for i in range(0, len(train), bs):
                idx = order[i : i + bs]
                loss = F.binary_cross_entropy_with_logits(
                    detector(d_cond[idx], d_true[idx]), d_label[idx]
                )
                opt_det.zero_grad(set_to_none=True)
                loss.backward()
                opt_det.step()
                total += loss.item() * len(idx)
            bce = total / len(train)
            losses = {"detector_bce": bce}
            report(
                "step", step, losses=losses, eta_s=None, metrics={"detector_epoch": det_epoch + 1}
            )
            if stop():
                break  # the detector restarts from scratch on resume: it takes seconds
        else:
            with torch.no_grad():
                v_cond, v_true, _ = to_device(val)
                logits = detector(v_cond, v_true) if len(val) else torch.zeros(0, device=device)
            if len(val) and 0 < val.detected.sum() < len(val):
                labels = torch.from_numpy(val.detected.astype(np.float32))
                raw = calibration_report(torch.sigmoid(logits).cpu().numpy(), val.detected)
                a, b = fit_platt(logits, labels)
                cal = calibration_report(
                    torch.sigmoid(a * logits.double().cpu() + b).numpy(), val.detected
                )
                calibration = {
                    "platt_a": a,
                    "platt_b": b,
                    "val_ece_raw": raw["ece"],
                    "val_brier_raw": raw["brier"],
                    "val_ece": cal["ece"],
                    "val_brier": cal["brier"],
                }
                detector.platt_a.fill_(a)
                detector.platt_b.fill_(b)
            detector_done = True
            log.info("detector trained: bce %.4f, calibration %s", bce, calibration)
            metrics_log.write(step, 0, event="detector", train_bce=bce, **calibration)
            metrics.update(calibration)
            save_checkpoint(make_checkpoint(), run.checkpoint)
    if not detector_done:  # cancelled while the detector trained
        save_checkpoint(make_checkpoint(), run.checkpoint)
        return result("cancelled", None)

    # ---------------------------------------------------------------------------------------
    # The cWGAN-GP.
    val_det = val.only_detected().head(MONITOR_ROWS)
    perm: torch.Tensor | None = None
    pace = Pace(step)
    status = "succeeded"

    def epoch_order(e: int) -> torch.Tensor:
        # a permutation per epoch from (seed, epoch): exact resume needs no saved order
        g = torch.Generator().manual_seed(config.seed * 1_000_003 + e)
        reps = math.ceil(steps_per_epoch * rows_per_step / n_det)
        return torch.cat([torch.randperm(n_det, generator=g) for _ in range(reps)]).to(device)

    generator.train()
    critic.train()
    while not schedule.done(step):
        e, k = divmod(step, steps_per_epoch)
        if perm is None or k == 0:
            perm = epoch_order(e)

        # -----------------------------------------------------------------------------------
        # Critic steps, each on a fresh real batch.
        for j in range(config.n_critic):
            idx = perm[(k * config.n_critic + j) * batch : (k * config.n_critic + j + 1) * batch]
            real, cond, true = target_all[idx], cond_all[idx], true_all[idx]  # (B,3) (B,6) (B,3)
            z = torch.randn(batch, net_cfg.noise_dim, device=device)
            with torch.no_grad():
                fake = generator(z, cond, true)  # (B, 3)
            w_loss = wgan_critic_loss(critic(real, cond, true), critic(fake, cond, true))
            gp = gradient_penalty(critic, real, fake, cond, true)
            loss_c = w_loss + config.gp_lambda * gp
            opt_c.zero_grad(set_to_none=True)
            loss_c.backward()
            opt_c.step()

        # -----------------------------------------------------------------------------------
        # Generator step on the last critic batch's conditions, fresh noise.
        z = torch.randn(batch, net_cfg.noise_dim, device=device)
        fake = generator(z, cond, true)
        loss_g = wgan_generator_loss(critic(fake, cond, true))
        mse = F.mse_loss(fake, real)  # logged always; in the loss only for the seed variant
        if config.mse_weight > 0:
            loss_g = loss_g + config.mse_weight * mse
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        step += 1

        # -----------------------------------------------------------------------------------
        # EMA of the generator weights.
        update_ema(ema, generator, step, config.ema_decay)

        # -----------------------------------------------------------------------------------
        # Log: every `log_every` steps and at each epoch end, with the validation monitor.
        losses = {
            "critic": loss_c.item(),
            "wasserstein": -w_loss.item(),
            "gp": gp.item(),
            "generator": loss_g.item(),
            "mse": mse.item(),
        }
        stats = pace.stats(step, schedule.total_steps)
        eta = stats["eta_s"]
        epoch_end = schedule.epoch_end(step)
        monitor = (
            magnitude_distances(ema, scalers, val_det, device, seed=config.seed)
            if epoch_end
            else {}
        )
        metrics.update(monitor)
        if epoch_end or step % config.log_every == 0:
            metrics_log.write(step, schedule.epoch(step), **losses, **stats, **monitor)
        report("step", step, losses=losses, eta_s=eta, metrics=metrics)

        # -----------------------------------------------------------------------------------
        # Checkpoint: every `checkpoint_every` steps, at each epoch end and when cancelled.
        cancelled = stop()
        if cancelled or epoch_end or step % config.checkpoint_every == 0:
            save_checkpoint(make_checkpoint(), run.checkpoint)
        if epoch_end:
            report("epoch", step, losses=losses, eta_s=eta, metrics=metrics)
        if cancelled and not schedule.done(step):
            status = "cancelled"
            break

    if status == "cancelled":
        log.info("cancelled at step %d; checkpoint %s", step, run.checkpoint)
        return result(status, None)

    # ---------------------------------------------------------------------------------------
    # Finish: a full checkpoint and the inference-only model.pt.
    final = make_checkpoint()
    save_checkpoint(final, run.checkpoint)
    return result(status, run.save_model(final))


__all__ = [
    "Split",
    "calibration_report",
    "fake_catalog",
    "fit_platt",
    "fit_scalers",
    "load_emulator_catalog",
    "magnitude_distances",
    "train_emulator_gan",
]
