"""The image-GAN training loop: WGAN-GP 128² (`nebula`) and DCGAN 64² (`nebula-dcgan`)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchvision.utils import make_grid, save_image

from models.atomic import atomic_write
from models.checkpoint import Checkpoint, CheckpointError
from models.device import resolve_device
from models.image import build_critic, build_generator
from models.kinds import IMAGE_KINDS
from training.image.augment import diff_augment
from training.image.images import EmptyDatasetError, ImageFolder, is_heldout, list_images
from training.image.metrics import run_figures
from training.losses import (
    bce_discriminator_loss,
    bce_generator_loss,
    gradient_penalty,
    wgan_critic_loss,
    wgan_generator_loss,
)
from training.presets import ImageTrainConfig, config_to_dict
from training.progress import ProgressFn, Schedule, StopFn, TrainResult
from training.scaffold import (
    Pace,
    Run,
    RunFolder,
    ema_copy,
    restore_rng,
    rng_state,
    update_ema,
    use_deterministic_kernels,
)

log = logging.getLogger(__name__)

DRY_RUN_STEPS = 2
DRY_RUN_BATCH = 4
MIN_HELDOUT = 4  # held-out images below which the end-of-run figures say too little


class FakeImages:
    """Random smooth colour images in [-1, 1] with the `ImageFolder` batch interface."""

    def __init__(self, n: int, image_size: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        coarse = torch.randn(n, 3, 8, 8, generator=g)
        up = torch.nn.functional.interpolate(coarse, size=(image_size,) * 2, mode="bilinear")
        self.data = torch.tanh(up)
        self.image_size = image_size
        self.skipped_count = 0

    def __len__(self) -> int:
        return self.data.shape[0]

    def batch(self, indices: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.data[indices].clone()


def preprocessing(config: ImageTrainConfig) -> dict[str, Any]:
    """What a checkpoint records about the pixels: size, Normalize(0.5, 0.5), FITS stretch."""
    return {
        "image_size": config.image_size,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "stretch": config.stretch,
    }


def network_config(config: ImageTrainConfig) -> dict[str, Any]:
    return {"latent_dim": config.latent_dim, "width": config.width}


def save_grid(images: Tensor, path: Path, nrow: int) -> None:
    """Write a PNG grid of [-1, 1] images atomically (a reader never sees half a file)."""
    grid = make_grid(images.float().cpu(), nrow=nrow, normalize=True, value_range=(-1, 1))
    with atomic_write(path, "wb") as f:
        save_image(grid, f, format="png")


def heldout_figures(
    model: str, data: Path | str, config: ImageTrainConfig, device: torch.device
) -> dict[str, Any]:
    """`{"figures", "floor", "ratio", "evaluated_on"}` of a finished model, on at most
    `config.eval_images` generated images; `{}` when too few images are held out to say.
    """
    root = Path(data)
    held = sum(
        is_heldout(p.relative_to(root).as_posix(), config.heldout_fraction)
        for p in list_images(root)
    )
    if held < MIN_HELDOUT:
        log.info("no figures for %s: %d held-out images (fewer than %d)", model, held, MIN_HELDOUT)
        return {}
    try:
        out = run_figures(
            model, root, max_images=config.eval_images, seed=config.seed, device=str(device)
        )
    except (EmptyDatasetError, OSError, ValueError) as exc:  # the model itself is fine
        log.warning("could not evaluate %s: %s", model, exc)
        return {}
    counts = {"images": out.pop("images"), "heldout_images": out.pop("heldout_images")}
    return {**out, "evaluated_on": counts}


def train_image_gan(
    config: ImageTrainConfig,
    data: Path | str | None,
    out_dir: Path | str,
    *,
    resume: bool = True,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> TrainResult:
    """Train the image GAN of `config` on the images in `data`, writing the run to `out_dir`."""
    if config.kind not in IMAGE_KINDS:
        raise ValueError(f"image training does not know model kind {config.kind!r}")
    wgan = config.kind == "wgan-gp-128"
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    use_deterministic_kernels(device, config.deterministic)

    # ---------------------------------------------------------------------------------------
    # Load data: decoded once into memory (the sets are small); fake images for a dry run.
    batch_size = min(config.batch_size, DRY_RUN_BATCH) if config.dry_run else config.batch_size
    if config.dry_run:
        dataset: ImageFolder | FakeImages = FakeImages(8, config.image_size, config.seed)
    elif data is None:
        raise ValueError("no image folder given (pass --data DIR, or use --dry-run)")
    else:
        dataset = ImageFolder(
            data,
            config.image_size,
            split="train",
            heldout_fraction=config.heldout_fraction,
            stretch=config.stretch,
            augment=config.augment,
        )
    n_images = len(dataset)
    # One epoch = one pass of the critic over the real images (each critic step draws a fresh
    # batch), so it is n_critic · batch_size images per generator step.
    schedule = Schedule.of(
        math.ceil(n_images / (batch_size * config.n_critic)),
        config.epochs,
        max_steps=config.max_steps,
        dry_run_steps=DRY_RUN_STEPS if config.dry_run else None,
    )

    # ---------------------------------------------------------------------------------------
    # Build networks: generator, critic (WGAN-GP) or discriminator (DCGAN), EMA generator.
    net_cfg = network_config(config)
    gen = build_generator(config.kind, net_cfg).to(device)
    critic = build_critic(config.kind, net_cfg).to(device)
    ema = ema_copy(gen)

    # ---------------------------------------------------------------------------------------
    # Optimizers (Adam with the preset's betas; WGAN-GP uses β1 = 0).
    betas = (float(config.beta1), float(config.beta2))
    opt_g = torch.optim.Adam(gen.parameters(), lr=config.lr, betas=betas)
    opt_d = torch.optim.Adam(critic.parameters(), lr=config.lr, betas=betas)

    # All randomness of data order, augmentation, latents and the penalty's mixing weights
    # comes from one CPU generator, so a resumed run draws exactly what an uninterrupted one
    # would, on any device (no draw depends on a CUDA generator's state).
    rng = torch.Generator().manual_seed(config.seed)
    fixed_z = torch.randn(
        min(config.sample_count, 16) if config.dry_run else config.sample_count,
        config.latent_dim,
        generator=torch.Generator().manual_seed(config.seed + 1),
    ).to(device)
    perm = torch.randperm(n_images, generator=rng)
    cursor = 0
    step = 0
    losses: dict[str, float] = {}
    latest_grid: str | None = None

    # ---------------------------------------------------------------------------------------
    # Resume: networks, EMA, optimizers, RNG states and the position in the data order.
    folder = RunFolder(Path(out_dir))
    previous = folder.previous(resume, config.kind, net_cfg)
    if previous is not None:
        state = previous.training_state
        gen.load_state_dict(state["generator"])
        critic.load_state_dict(state["critic"])
        ema.load_state_dict(previous.ema)
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        restore_rng(state, device, rng)
        perm, cursor = state["perm"], int(state["cursor"])
        if len(perm) != n_images:
            raise CheckpointError(
                f"{folder.checkpoint} was trained on {len(perm)} images, the data now has "
                f"{n_images}"
            )
        step = previous.step
        losses = dict(state.get("losses", {}))
        latest_grid = state.get("latest_grid")
        log.info("resumed %s at step %d", folder.root, step)
    run = Run.start(
        folder, config, data, schedule, previous, progress=progress, should_stop=should_stop
    )

    def next_real() -> Tensor:
        """A fresh real batch, walking a shuffled order and reshuffling when it runs out."""
        nonlocal perm, cursor
        if n_images < batch_size:
            idx = torch.randint(0, n_images, (batch_size,), generator=rng)
        else:
            if cursor + batch_size > n_images:
                perm, cursor = torch.randperm(n_images, generator=rng), 0
            idx = perm[cursor : cursor + batch_size]
            cursor += batch_size
        return dataset.batch(idx, rng).to(device)

    def latents(n: int) -> Tensor:
        return torch.randn(n, config.latent_dim, generator=rng).to(device)

    def augment(x: Tensor) -> Tensor:
        return diff_augment(x, generator=rng) if config.diffaugment else x

    def checkpoint() -> Checkpoint:
        return run.save(
            Checkpoint(
                kind=config.kind,
                config=net_cfg,
                preprocessing=preprocessing(config),
                ema={k: v.detach().cpu() for k, v in ema.state_dict().items()},
                step=step,
                epoch=schedule.epoch(step),
                extra={
                    "preset": config.preset,
                    "latent_dim": config.latent_dim,
                    "heldout_fraction": config.heldout_fraction,
                },
                training_state={
                    "generator": gen.state_dict(),
                    "critic": critic.state_dict(),
                    "opt_g": opt_g.state_dict(),
                    "opt_d": opt_d.state_dict(),
                    "rng": rng_state(device, rng),
                    "perm": perm,
                    "cursor": cursor,
                    "losses": losses,
                    "latest_grid": latest_grid,
                    "train_config": config_to_dict(config),
                },
            )
        )

    log.info(
        "training %s on %d images (%d skipped), %d steps of %d, %d steps/epoch, device %s",
        config.preset,
        n_images,
        dataset.skipped_count,
        step,
        schedule.total_steps,
        schedule.steps_per_epoch,
        device,
    )
    pace = Pace(step)
    stats: dict[str, Any] = {}
    while run.more(step):
        gen.train()
        critic.train()

        # -----------------------------------------------------------------------------------
        # Critic steps: each on a fresh real batch and fresh latents.
        for _ in range(config.n_critic):
            real = next_real()
            with torch.no_grad():
                fake = gen(latents(batch_size))
            real_a, fake_a = augment(real), augment(fake)
            real_s, fake_s = critic(real_a), critic(fake_a)
            if wgan:
                gp = gradient_penalty(critic, real_a, fake_a, generator=rng)
                d_loss = wgan_critic_loss(real_s, fake_s) + config.gp_lambda * gp
            else:
                d_loss = bce_discriminator_loss(real_s, fake_s)
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()

        # -----------------------------------------------------------------------------------
        # Generator step.
        fake_s_g = critic(augment(gen(latents(batch_size))))
        g_loss = wgan_generator_loss(fake_s_g) if wgan else bce_generator_loss(fake_s_g)
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        step += 1

        # -----------------------------------------------------------------------------------
        # EMA of the generator weights.
        update_ema(ema, gen, step, config.ema_decay)

        # -----------------------------------------------------------------------------------
        # Log: losses of this step, pace and ETA.
        if wgan:
            losses = {
                "critic": d_loss.item(),
                "gp": gp.item(),
                "wasserstein": (real_s.mean() - fake_s.mean()).item(),
                "generator": g_loss.item(),
            }
        else:
            losses = {
                "discriminator": d_loss.item(),
                "generator": g_loss.item(),
                "d_real": torch.sigmoid(real_s).mean().item(),
                "d_fake": torch.sigmoid(fake_s).mean().item(),
            }
        stats = {
            **pace.stats(step, schedule.total_steps),
            "images_seen": step * batch_size * config.n_critic,
        }
        epoch = schedule.epoch(step)
        run.log.write(step, epoch, **losses, **stats)
        run.report(
            "step", step, losses=losses, eta_s=stats["eta_s"], samples=latest_grid, metrics=stats
        )

        # -----------------------------------------------------------------------------------
        # Epoch end: sample grid of the fixed latents from the EMA generator.
        epoch_end = schedule.epoch_end(step)
        if epoch_end and (epoch % config.samples_every == 0 or schedule.done(step)):
            with torch.no_grad():
                images = ema(fixed_z)
            latest_grid = folder.sample_grid(epoch)
            save_grid(images, folder.root / latest_grid, nrow=int(math.sqrt(len(fixed_z))) or 1)

        # -----------------------------------------------------------------------------------
        # Checkpoint: every `checkpoint_every` steps and at every epoch end.
        if epoch_end or step % config.checkpoint_every == 0:
            checkpoint()
        if epoch_end:
            run.report(
                "epoch",
                step,
                losses=losses,
                eta_s=stats["eta_s"],
                samples=latest_grid,
                metrics=stats,
            )

    # ---------------------------------------------------------------------------------------
    # Finish: a full checkpoint always; the inference-only model.pt when the run completed.
    model_path = run.finish(checkpoint(), train_seconds=pace.elapsed)
    summary = {**stats, "steps": step, "images": n_images, "skipped_images": dataset.skipped_count}

    # ---------------------------------------------------------------------------------------
    # Evaluate the finished model: SWD, power spectrum and colour against the real floor.
    if model_path is not None and data is not None and config.eval_images > 0:
        summary.update(heldout_figures(model_path, data, config, device))
    return run.result(
        step,
        losses=losses,
        eta_s=stats.get("eta_s"),
        metrics=summary,
        model=model_path,
        samples=latest_grid,
    )
