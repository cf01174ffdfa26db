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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

from models.checkpoint import Checkpoint
from models.device import resolve_device
from models.emulator import (
    Critic,
    Detector,
    EmulatorConfig,
    EmulatorScalers,
    Generator,
    GeneratorMixture,
    generator_conditions,
)
from training.emulator.data import Split, noise_share, target_tensors
from training.emulator.metrics import Bins, Output, figures
from training.emulator.shared import DetectorPhase, finish, load_splits, preprocessing, run_scalers
from training.losses import gradient_penalty, wgan_critic_loss, wgan_generator_loss
from training.presets import EmulatorTrainConfig
from training.progress import ProgressFn, Schedule, StopFn, TrainResult
from training.scaffold import (
    Pace,
    Run,
    RunFolder,
    ema_copy,
    epoch_order,
    restore_rng,
    rng_state,
    update_ema,
    use_deterministic_kernels,
)

log = logging.getLogger(__name__)

MONITOR_ROWS = 5000  # validation objects used for the per-epoch KS/W1 monitor
VAL_DRAWS = 4  # generated realizations per validation object in the epoch's figure


# --------------------------------------------------------------------------------------------
# monitoring


@torch.no_grad()
def magnitude_distances(
    generator: Generator | GeneratorMixture,
    scalers: EmulatorScalers,
    split: Split,
    device: torch.device,
    seed: int = 0,
    *,
    detector: Detector | None = None,
) -> dict[str, float]:
    """Per-band KS and W1 between generated and true observed magnitudes of detected rows.
    `detector`: the run's, for a generator that takes its logit (`detection_input`)."""
    if len(split) == 0:
        return {}
    x = torch.from_numpy(split.x).to(device)
    cond, true = scalers.split_inputs(x)
    cond = generator_conditions(generator.cfg, detector, cond, true)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(len(split), generator.cfg.draw_dim, generator=g).to(device)
    fake = scalers.observed(generator(z, cond, true), x).cpu().numpy()
    out: dict[str, float] = {}
    for j, band in enumerate("riz"):
        out[f"ks_{band}"] = float(stats.ks_2samp(fake[:, j], split.observed[:, j]).statistic)
        out[f"w1_{band}"] = float(stats.wasserstein_distance(fake[:, j], split.observed[:, j]))
    out["ks_mean"] = float(np.mean([out[f"ks_{b}"] for b in "riz"]))
    out["w1_mean"] = float(np.mean([out[f"w1_{b}"] for b in "riz"]))
    return out


def decayed_lr(lr: float, step: int, start: int, total: int) -> float:
    """The learning rate of generator step `step` (0-based): `lr` until step `start`, then
    falling linearly to zero at step `total`."""
    if step < start or total <= start:
        return lr
    return lr * max(0.0, (total - step) / (total - start))


@torch.no_grad()
def validation_figure(
    generator: Generator | GeneratorMixture,
    scalers: EmulatorScalers,
    split: Split,
    device: torch.device,
    seed: int = 0,
    draws: int = VAL_DRAWS,
    *,
    detector: Detector | None = None,
) -> dict[str, float]:
    """The epoch's figure of merit on the validation split's detected objects (lower is better).

    `val_score` is the mean of these KS figures of `cosmogan evaluate`: per band, colours,
    within bins of true magnitude, within quartiles of each condition, and of the log errors
    when the model draws them. The per-band marginals alone miss what magnitude and
    conditions do to the scatter, which is where a GAN that looks converged still drifts.
    Each object gets `draws` realizations, so that the generated side adds little noise.
    `detector`: the run's, for a generator that takes its logit (`detection_input`).
    """
    if len(split) == 0:
        return {}
    rows = split.take(np.tile(np.arange(len(split)), draws))
    x = torch.from_numpy(rows.x).to(device)
    # each object's conditions (and detector logit) once, then repeated as its rows are
    cond, true = scalers.split_inputs(torch.from_numpy(split.x).to(device))
    cond = generator_conditions(generator.cfg, detector, cond, true).repeat(draws, 1)
    true = true.repeat(draws, 1)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(len(rows), generator.cfg.draw_dim, generator=g).to(device)
    fake = scalers.observed(generator(z, cond, true), x).cpu().numpy().astype(np.float64)
    err = fake[:, 3:] if fake.shape[1] == 6 else None
    out = Output(fake[:, :3], np.ones(len(rows), dtype=bool), err)
    figs = figures(rows, out, Bins.from_inputs(rows.x.astype(np.float64)))
    parts = {
        "val_ks_bands": np.mean([figs[f"ks_{b}"] for b in "riz"]),
        "val_ks_colours": np.mean([figs["ks_r-i"], figs["ks_i-z"]]),
        "val_ks_mag_bins": figs["ks_mag_bins_mean"],
        "val_ks_cond_bins": figs["ks_cond_bins_mean"],
    }
    if err is not None and rows.magerr is not None:
        parts["val_ks_magerr"] = np.mean([figs[f"ks_magerr_{b}"] for b in "riz"])
    out_figs = {k: float(v) for k, v in parts.items() if v is not None and np.isfinite(v)}
    out_figs["val_score"] = float(np.mean(list(out_figs.values())))
    return out_figs


SPREAD_ROWS = 100_000  # detected training objects that the served generator's spread is matched on


@torch.no_grad()
def match_spread(
    generator: Generator,
    scalers: EmulatorScalers,
    rows: Split,
    device: torch.device,
    *,
    seed: int,
    detector: Detector | None = None,
) -> dict[str, list[float]] | None:
    """Give the generator's samples the median and the central-68 % width of `rows`' targets,
    column by column, by folding an affine map into its output layer and the skip's matrix.

    For a generator with the mixed noise skip only, i.e. on a catalog whose scaled offsets
    are close to a unit normal per object: there the EMA of a generator that keeps moving
    comes out narrow and off-centre by a few hundredths in some columns. Matched on the
    training split (the largest), six analytic runs' condition-binned KS on 600,000 test
    objects went from 0.41× to 0.37× the Gaussian's on average, the worst from 0.56× to
    0.43×. On the GalSim catalog, without the skip, it made 13 figures worse (AUC 0.639 →
    0.664): a per-column map over all objects is the wrong correction where the target is
    not one shape. Returns the factors and shifts, or None where it does not apply.
    `detector`: the run's, for a generator that takes its logit (`detection_input`).
    """
    cfg = generator.cfg
    det = rows.only_detected().head(SPREAD_ROWS)
    if len(det) < 100 or not (cfg.noise_skip and cfg.noise_mix):
        return None
    cond, true, target = target_tensors(scalers, det, device)
    cond = generator_conditions(cfg, detector, cond, true)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(len(det), cfg.noise_dim, generator=g).to(device)
    fake = generator(z, cond, true)  # (N, D)
    q = torch.tensor([0.16, 0.5, 0.84], device=device, dtype=target.dtype)
    want, have = torch.quantile(target, q, dim=0), torch.quantile(fake, q, dim=0)  # (3, D)
    factor = ((want[2] - want[0]) / (have[2] - have[0]).clamp_min(1e-6)).clamp(0.8, 1.25)
    # out' = factor · (out − have median) + want median
    last = generator.trunk.net[-1]
    last.weight.mul_(factor[:, None])
    last.bias.copy_(factor * (last.bias - have[1]) + want[1])
    k = generator.k  # row i of the skip's matrix makes output i
    generator.mix.weight.view(k, k, -1).mul_(factor[:k, None, None])
    generator.mix.bias.view(k, k).mul_(factor[:k, None])
    return {"spread_factor": factor.tolist(), "median_shift": (want[1] - have[1]).tolist()}


# --------------------------------------------------------------------------------------------
# the training loop


@dataclass
class Member:
    """One generator of a run, with its own critic, optimizers, EMA and served weights; a run
    trains `members` of them side by side on the same detector and serves their best EMAs
    as one mixture (`models.emulator.GeneratorMixture`).

    Each member keeps the EMA of its own best validation epoch, as a run of one does. Chosen
    by the mixture's figure instead, all three members of a 200k analytic run were served at
    the last epoch, and each scored 0.29–0.37× the Gaussian's condition-binned KS on 600,000
    test objects, against 0.23–0.24× for runs of one (MODEL_CARD.md).
    """

    generator: Generator
    critic: Critic
    opt_g: torch.optim.Adam
    opt_c: torch.optim.Adam
    ema: Generator
    best: Generator  # the served weights: the EMA of the best validation epoch
    best_score: float = math.inf
    best_epoch: int = 0

    @classmethod
    def new(cls, cfg: EmulatorConfig, config: EmulatorTrainConfig, device: torch.device) -> Member:
        generator, critic = Generator(cfg).to(device), Critic(cfg).to(device)
        betas = (config.beta1, config.beta2)
        return cls(
            generator,
            critic,
            torch.optim.Adam(generator.parameters(), lr=config.lr, betas=betas),
            torch.optim.Adam(critic.parameters(), lr=config.lr, betas=betas),
            ema_copy(generator),
            ema_copy(generator),
        )

    def state(self) -> dict[str, Any]:
        return {
            "generator": self.generator.state_dict(),
            "critic": self.critic.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_c": self.opt_c.state_dict(),
            "ema": self.ema.state_dict(),
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Load this member's part of a checkpoint's training state; its served weights
        (`best`) are loaded first, with the checkpoint's."""
        self.generator.load_state_dict(state["generator"])
        self.critic.load_state_dict(state["critic"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_c.load_state_dict(state["opt_c"])
        # a checkpoint from before the best-epoch rule serves its last EMA
        self.ema.load_state_dict(state.get("ema", self.best.state_dict()))
        self.best_score = state.get("best_score", math.inf)
        self.best_epoch = state.get("best_epoch", 0)

    def keep_if_best(self, score: float, epoch: int, candidate: bool) -> None:
        """After `epoch`, whose validation figure is `score`: keep the EMA as the served
        weights if it is the best of the candidates (`candidate`: past the burn-in, during
        which the latest EMA is kept and no score is)."""
        if not candidate or score <= self.best_score or not math.isfinite(self.best_score):
            self.best_score = score if candidate else math.inf
            self.best_epoch = epoch
            self.best.load_state_dict(self.ema.state_dict())

    def step(
        self,
        config: EmulatorTrainConfig,
        order: torch.Tensor,
        k: int,
        batch: int,
        tensors: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    ) -> dict[str, float]:
        """Generator step `k` of the epoch whose row `order` is given: `n_critic` critic
        steps, each on a fresh real batch, then one generator step. Returns its losses."""
        target_all, cond_all, true_all = tensors  # (N, D) (N, given_dim) (N, 3)
        generator, critic, noise_dim = self.generator, self.critic, self.generator.cfg.noise_dim
        for j in range(config.n_critic):
            idx = order[(k * config.n_critic + j) * batch : (k * config.n_critic + j + 1) * batch]
            real, cond, true = target_all[idx], cond_all[idx], true_all[idx]  # (B,D) (B,C) (B,3)
            z = torch.randn(batch, noise_dim, device=real.device)
            with torch.no_grad():
                fake = generator(z, cond, true)  # (B, D)
            w_loss = wgan_critic_loss(critic(real, cond, true), critic(fake, cond, true))
            gp = gradient_penalty(critic, real, fake, cond, true)
            loss_c = w_loss + config.gp_lambda * gp
            self.opt_c.zero_grad(set_to_none=True)
            loss_c.backward()
            self.opt_c.step()

        # generator step on the last critic batch's conditions, fresh noise
        z = torch.randn(batch, noise_dim, device=real.device)
        fake = generator(z, cond, true)
        loss_g = wgan_generator_loss(critic(fake, cond, true))
        mse = F.mse_loss(fake, real)  # logged always; in the loss only for the seed variant
        if config.mse_weight > 0:
            loss_g = loss_g + config.mse_weight * mse
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        return {
            "critic": loss_c.item(),
            "wasserstein": -w_loss.item(),
            "gp": gp.item(),
            "generator": loss_g.item(),
            "mse": mse.item(),
        }


def mean_figures(figs: list[dict[str, float]]) -> dict[str, float]:
    """The members' validation figures averaged, with each member's `val_score_{j}` when
    there are several."""
    out = {k: float(np.mean([f[k] for f in figs])) for k in figs[0]}
    if len(figs) > 1:
        out.update(
            {f"val_score_{j}": f["val_score"] for j, f in enumerate(figs) if "val_score" in f}
        )
    return out


def served_generator(generators: list[Generator]) -> Generator | GeneratorMixture:
    """`generators` as the served model sees them: one, or a mixture holding them."""
    return generators[0] if len(generators) == 1 else GeneratorMixture.of(generators)


def generators_of(served: Generator | GeneratorMixture) -> list[Generator]:
    """The generators of a served model (`served_generator`'s inverse)."""
    return list(served.members) if isinstance(served, GeneratorMixture) else [served]


def member_states(state: dict[str, Any]) -> list[dict[str, Any]]:
    """Each member's part of a checkpoint's training state (a single generator's sits at its
    top level, as in checkpoints from before mixtures)."""
    return state.get("members", [state])


# `noise_skip="auto"` adds the noise to the offsets when at least this share of their scaled
# variance is measurement noise in every band: 1.00 on the analytic catalogs, 0.86 on GalSim's
NOISE_SKIP_SHARE = 0.98


def use_noise_skip(config: EmulatorTrainConfig, scalers: EmulatorScalers, train: Split) -> bool:
    """`config.noise_skip`, with "auto" decided on the training split (`noise_share`)."""
    if config.noise_skip != "auto":
        return bool(config.noise_skip)
    share = noise_share(scalers, train)
    on = bool(share.min() >= NOISE_SKIP_SHARE)
    log.info(
        "noise skip %s: the noise explains %s of the scaled offsets' variance in r, i, z",
        "on" if on else "off",
        " / ".join(f"{v:.2f}" for v in share),
    )
    return on


def use_flux_offsets(config: EmulatorTrainConfig, noise_skip: bool) -> bool:
    """`config.flux_offsets`, "auto" being on with the noise skip: where the noise is the
    whole scatter, an offset in units of its own flux error is a unit normal before
    selection. On the GalSim catalog (skip off) it gave the generator's z band twice the
    catalog's tail beyond +1.5 mag, 0.4 % of its draws below 1 % of the true flux (kept at
    +5 mag), and three 1-Wasserstein figures worse than the Gaussian's (MODEL_CARD.md)."""
    return noise_skip if config.flux_offsets == "auto" else bool(config.flux_offsets)


def use_detection_input(config: EmulatorTrainConfig, noise_skip: bool) -> bool:
    """`config.detection_input`, "auto" being on with the noise skip. Over nine analytic
    runs it lowered the mean per-band, magnitude-bin and condition-binned KS and the AUC,
    though not the number of runs beating the Gaussian in every band; on GalSim's catalog
    (skip off) one run with it was mixed and a second worse (MODEL_CARD.md)."""
    return noise_skip if config.detection_input == "auto" else bool(config.detection_input)


# `members="auto"`: this many generators with the noise skip
AUTO_MEMBERS = 3


def use_members(config: EmulatorTrainConfig, noise_skip: bool) -> int:
    """`config.members`, "auto" being `AUTO_MEMBERS` with the noise skip and 1 without. On
    the analytic catalogs three seeds' generators drawn as one mixture beat the Gaussian in
    every band where single runs tied in one band in three or four of nine; on GalSim's
    catalog (skip off) a two-seed mixture fell between its members on the AUC and the
    condition-binned KS and was worse than both on `ks_i` (MODEL_CARD.md)."""
    if config.members == "auto":
        return AUTO_MEMBERS if noise_skip else 1
    return int(config.members)


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
    step draws a fresh batch, so a generator step consumes `n_critic × batch_size` rows. The
    run lasts `epochs`, or more when that is under `min_steps` generator steps; the weights
    served (`model.pt`) are the EMA of the epoch with the best `validation_figure` in the
    second half of the run, over which the learning rates decay to zero (`lr_decay`), with
    the mixed noise skip then matched to the training targets' spread (`match_spread`).
    """
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    use_deterministic_kernels(device, config.deterministic)

    # ---- data, and the checkpoint a resumed run continues from --------------------------------
    folder = RunFolder(Path(out_dir))
    train, val = load_splits(config, data)
    previous = folder.previous(resume, config.kind)
    scalers = run_scalers(config, train, previous)

    # ---- networks and optimizers (restored when resuming) ----------------------------------
    if previous is not None:
        net_cfg = EmulatorConfig.from_dict(previous.config)
    else:
        skip = use_noise_skip(config, scalers, train)
        if use_flux_offsets(config, skip):  # the same fit, the offsets as flux deviations
            scalers = run_scalers(config, train, None, flux_offsets=True)
        kind = "flux deviations" if scalers.flux_offsets else "magnitude offsets"
        log.info("offsets drawn as %s", kind)  # a catalog without errors has no flux errors
        net_cfg = EmulatorConfig(
            noise_dim=config.noise_dim,
            hidden=config.hidden,
            out_dim=scalers.out_dim,
            noise_skip=skip,
            noise_mix=config.noise_mix,
            detection_input=use_detection_input(config, skip),
            members=use_members(config, skip),
        )
        given = "given" if net_cfg.detection_input else "not given"
        log.info("the generator and the critic are %s the detector's logit", given)
    one = replace(net_cfg, members=1)  # each member's own shapes
    members = [Member.new(one, config, device)]
    detection = DetectorPhase(Detector(net_cfg).to(device), previous)
    members += [Member.new(one, config, device) for _ in range(net_cfg.members - 1)]
    served = served_generator([m.best for m in members])  # each member's best EMA, as served
    step, metrics = 0, {}
    if previous is not None:
        state = previous.training_state
        served.load_state_dict(previous.ema)  # each member's `best`
        for member, member_state in zip(members, member_states(state), strict=True):
            member.restore(member_state)
        metrics = dict(previous.extra.get("metrics", {}))
        step = previous.step
        restore_rng(state, device)
        log.info("resuming %s at step %d", folder.root, step)
    if len(members) > 1:
        log.info("%d generators, each with its own critic, served as one mixture", len(members))

    # ---- schedule ------------------------------------------------------------------------
    cond_all, true_all, target_all = target_tensors(scalers, train, device)  # (N,6) (N,3) (N,D)
    n_det = len(target_all)
    batch = min(config.batch_size, n_det)
    rows_per_step = batch * config.n_critic
    steps_per_epoch = max(1, n_det // rows_per_step)
    schedule = Schedule.of(
        steps_per_epoch,
        max(config.epochs, math.ceil(config.min_steps / steps_per_epoch)),
        max_steps=config.max_steps,
        dry_run_steps=2 if config.dry_run else None,
    )
    steps_per_epoch = schedule.steps_per_epoch
    # the first half is a burn-in: the figure's noise on a small validation split exceeds
    # what separates the later epochs, and an early epoch that scored low by chance would
    # otherwise be served (the best follows the latest EMA meanwhile)
    burn_in = schedule.epochs // 2
    for member in members:
        if member.best_epoch <= burn_in:  # also a resumed run made longer: now burn-in
            member.best_score = math.inf
    run = Run.start(
        folder, config, data, schedule, previous, progress=progress, should_stop=should_stop
    )

    def checkpoint() -> Checkpoint:
        states = [m.state() for m in members]
        return run.save(
            Checkpoint(
                kind="cwgan-gp",
                config=net_cfg.to_dict(),
                preprocessing=preprocessing(scalers),
                ema={k: v.detach().clone() for k, v in served.state_dict().items()},
                step=step,
                epoch=schedule.epoch(step),
                extra=detection.checkpoint_extra(config, metrics),
                training_state={
                    **(states[0] if len(states) == 1 else {"members": states}),
                    "rng": rng_state(device),
                },
            )
        )

    # ---- detection classifier (all training rows), its calibration on the val split -------
    losses: dict[str, float] = {}
    eta: float | None = None
    if not detection.run(run, step, checkpoint, scalers, (train, val), config, device, metrics):
        return run.result(step, losses=losses, eta_s=eta, metrics=metrics, model=None)

    # ---- the cWGAN-GP ------------------------------------------------------------------------
    detector = detection.detector.requires_grad_(False)  # trained: an input from here on
    with torch.no_grad():  # (N, given_dim): with `detection_input`, the detector's logit too
        cond_all = generator_conditions(net_cfg, detector, cond_all, true_all)
    val_det = val.only_detected().head(MONITOR_ROWS)
    if len(val_det) == 0:  # no validation objects to choose by: the last epoch is served
        log.warning("no detected validation objects: the last epoch's weights are served")
    orders: list[torch.Tensor] = []
    tensors = (target_all, cond_all, true_all)
    pace = Pace(step)
    for member in members:
        member.generator.train()
        member.critic.train()
    while run.more(step):
        e, k = divmod(step, steps_per_epoch)
        if config.lr_decay:
            rate = decayed_lr(config.lr, step, burn_in * steps_per_epoch, schedule.total_steps)
            for member in members:
                for group in (*member.opt_g.param_groups, *member.opt_c.param_groups):
                    group["lr"] = rate
        if not orders or k == 0:  # each member its own row order (member 0: the run's seed)
            rows = steps_per_epoch * rows_per_step
            seeds = range(config.seed, config.seed + len(members))
            orders = [epoch_order(seed, e, n_det, rows, device) for seed in seeds]
        parts = [
            m.step(config, order, k, batch, tensors)
            for m, order in zip(members, orders, strict=True)
        ]
        step += 1
        for member in members:  # the EMA of each generator
            update_ema(member.ema, member.generator, step, config.ema_decay)

        # log: every `log_every` steps and at each epoch end, with the validation monitor
        losses = {key: float(np.mean([p[key] for p in parts])) for key in parts[0]}
        stats = pace.stats(step, schedule.total_steps)
        eta = stats["eta_s"]
        epoch_end = schedule.epoch_end(step)
        monitor: dict[str, float] = {}
        if epoch_end:
            epoch, candidate = schedule.epoch(step), schedule.epoch(step) > burn_in
            figs = []
            for member in members:
                fig = magnitude_distances(
                    member.ema, scalers, val_det, device, config.seed, detector=detector
                )
                fig.update(
                    validation_figure(
                        member.ema, scalers, val_det, device, config.seed, detector=detector
                    )
                )
                # no figure: the latest epoch is the best
                member.keep_if_best(fig.get("val_score", -math.inf), epoch, candidate)
                figs.append(fig)
            monitor = mean_figures(figs)
            best_score = float(np.mean([m.best_score for m in members]))
            if math.isfinite(best_score):
                monitor.update(best_val_score=best_score)
            else:  # burn-in (or no validation figure): no score to show
                metrics.pop("best_val_score", None)
            monitor.update(best_epoch=max(m.best_epoch for m in members))
        metrics.update(monitor)
        if epoch_end or step % config.log_every == 0:
            run.log.write(step, schedule.epoch(step), **losses, **stats, **monitor)
        run.report("step", step, losses=losses, eta_s=eta, metrics=metrics)

        # checkpoint: every `checkpoint_every` steps and at each epoch end
        if epoch_end or step % config.checkpoint_every == 0:
            checkpoint()
        if epoch_end:
            run.report("epoch", step, losses=losses, eta_s=eta, metrics=metrics)

    # ---- end: a full checkpoint always; model.pt and its figures when the run completed ------
    if schedule.done(step) and config.match_spread:
        for j, generator in enumerate(generators_of(served)):
            seed = config.seed + j
            matched = match_spread(generator, scalers, train, device, seed=seed, detector=detector)
            if matched is not None:
                log.info("served generator %d matched to the training split: %s", j, matched)
    model = finish(run, checkpoint(), config, data, metrics)
    return run.result(step, losses=losses, eta_s=eta, metrics=metrics, model=model)


__all__ = [
    "Member",
    "decayed_lr",
    "generators_of",
    "magnitude_distances",
    "match_spread",
    "member_states",
    "served_generator",
    "train_emulator_gan",
    "use_detection_input",
    "use_members",
    "validation_figure",
]
