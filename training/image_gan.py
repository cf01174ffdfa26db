"""The image-GAN training loop: WGAN-GP 128² (`nebula`) and DCGAN 64² (`nebula-dcgan`)."""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.utils import make_grid, save_image

from models.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from models.device import resolve_device
from models.image import build_critic, build_generator
from models.registry import write_json_atomic
from training.data.augment import diff_augment
from training.data.images import ImageFolder
from training.losses import (
    bce_discriminator_loss,
    bce_generator_loss,
    gradient_penalty,
    wgan_critic_loss,
    wgan_generator_loss,
)
from training.presets import ImageTrainConfig, config_to_dict
from training.runner import ProgressFn, StopFn, TrainResult

log = logging.getLogger(__name__)

DRY_RUN_STEPS = 2
DRY_RUN_BATCH = 4


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


@torch.no_grad()
def update_ema(ema: nn.Module, net: nn.Module, decay: float) -> None:
    """Exponential moving average of the weights; buffers (BatchNorm statistics) are copied."""
    for p_ema, p in zip(ema.parameters(), net.parameters(), strict=True):
        p_ema.lerp_(p, 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), net.buffers(), strict=True):
        b_ema.copy_(b)


def save_grid(images: Tensor, path: Path, nrow: int) -> None:
    """Write a PNG grid of [-1, 1] images atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = make_grid(images.float().cpu(), nrow=nrow, normalize=True, value_range=(-1, 1))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_image(grid, tmp, format="png")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop lines logged after the checkpoint we resume from (they will be logged again)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("".join(f"{line}\n" for line in keep))
    os.replace(tmp, path)


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
    out_dir = Path(out_dir)
    ckpt_path = out_dir / "checkpoints" / "last.pt"
    device = resolve_device(config.device)
    wgan = config.kind == "wgan-gp-128"
    if config.kind not in ("wgan-gp-128", "dcgan-64"):
        raise ValueError(f"image training does not know model kind {config.kind!r}")
    torch.manual_seed(config.seed)

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
    steps_per_epoch = max(1, math.ceil(n_images / (batch_size * config.n_critic)))
    total_steps = DRY_RUN_STEPS if config.dry_run else config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "config.json", config_to_dict(config))

    # ---------------------------------------------------------------------------------------
    # Build networks: generator, critic (WGAN-GP) or discriminator (DCGAN), EMA generator.
    net_cfg = network_config(config)
    gen = build_generator(config.kind, net_cfg).to(device)
    critic = build_critic(config.kind, net_cfg).to(device)
    ema = copy.deepcopy(gen).eval().requires_grad_(False)

    # ---------------------------------------------------------------------------------------
    # Optimizers (Adam with the preset's betas; WGAN-GP uses β1 = 0).
    betas = (float(config.beta1), float(config.beta2))
    opt_g = torch.optim.Adam(gen.parameters(), lr=config.lr, betas=betas)
    opt_d = torch.optim.Adam(critic.parameters(), lr=config.lr, betas=betas)

    # All randomness of data order, augmentation and latents comes from one CPU generator, so
    # a resumed run draws exactly what an uninterrupted one would, on any device.
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
    if resume and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, map_location="cpu")
        if ckpt.kind != config.kind or ckpt.config != net_cfg or ckpt.training_state is None:
            raise CheckpointError(
                f"{ckpt_path} holds a {ckpt.kind} {ckpt.config} run, not a resumable "
                f"{config.kind} {net_cfg} run; use another --out"
            )
        state = ckpt.training_state
        gen.load_state_dict(state["generator"])
        critic.load_state_dict(state["critic"])
        ema.load_state_dict(ckpt.ema)
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        rng.set_state(state["rng"]["data"])
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"], device)
        perm, cursor = state["perm"], int(state["cursor"])
        if len(perm) != n_images:
            raise CheckpointError(
                f"{ckpt_path} was trained on {len(perm)} images, the data now has {n_images}"
            )
        step = ckpt.step
        losses = dict(state.get("losses", {}))
        latest_grid = state.get("latest_grid")
        _truncate_metrics(out_dir / "metrics.jsonl", step)
        log.info("resumed %s at step %d", out_dir, step)
    else:  # a fresh run in a used folder: forget the old run's log lines
        _truncate_metrics(out_dir / "metrics.jsonl", 0)

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

    def checkpoint() -> Path:
        cuda_state = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        return save_checkpoint(
            Checkpoint(
                kind=config.kind,
                config=net_cfg,
                preprocessing=preprocessing(config),
                ema={k: v.detach().cpu() for k, v in ema.state_dict().items()},
                step=step,
                epoch=step // steps_per_epoch,
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
                    "rng": {
                        "data": rng.get_state(),
                        "torch": torch.get_rng_state(),
                        "cuda": cuda_state,
                    },
                    "perm": perm,
                    "cursor": cursor,
                    "losses": losses,
                    "latest_grid": latest_grid,
                    "train_config": config_to_dict(config),
                },
            ),
            ckpt_path,
        )

    def emit(event: str, metrics: dict[str, Any]) -> None:
        if progress is not None:
            progress(
                {
                    "event": event,
                    "epoch": step // steps_per_epoch,
                    "epochs": math.ceil(total_steps / steps_per_epoch),
                    "step": step,
                    "total_steps": total_steps,
                    "losses": dict(losses),
                    "eta_s": metrics.get("eta_s"),
                    "samples": latest_grid,
                    "metrics": metrics,
                }
            )

    log.info(
        "training %s on %d images (%d skipped), %d steps of %d, %d steps/epoch, device %s",
        config.preset,
        n_images,
        dataset.skipped_count,
        step,
        total_steps,
        steps_per_epoch,
        device,
    )
    metrics_file = (out_dir / "metrics.jsonl").open("a", encoding="utf-8")
    start_step, t0 = step, time.perf_counter()
    status = "succeeded"
    stats: dict[str, Any] = {}
    try:
        while step < total_steps:
            if should_stop is not None and should_stop():
                status = "cancelled"
                break
            gen.train()
            critic.train()

            # -------------------------------------------------------------------------------
            # Critic steps: each on a fresh real batch and fresh latents.
            for _ in range(config.n_critic):
                real = next_real()
                with torch.no_grad():
                    fake = gen(latents(batch_size))
                real_a, fake_a = augment(real), augment(fake)
                real_s, fake_s = critic(real_a), critic(fake_a)
                if wgan:
                    gp = gradient_penalty(critic, real_a, fake_a)
                    d_loss = wgan_critic_loss(real_s, fake_s) + config.gp_lambda * gp
                else:
                    d_loss = bce_discriminator_loss(real_s, fake_s)
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                opt_d.step()

            # -------------------------------------------------------------------------------
            # Generator step.
            fake_s_g = critic(augment(gen(latents(batch_size))))
            g_loss = wgan_generator_loss(fake_s_g) if wgan else bce_generator_loss(fake_s_g)
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
            step += 1

            # -------------------------------------------------------------------------------
            # EMA of the generator weights (warm-up: short runs are not dominated by init).
            update_ema(ema, gen, min(config.ema_decay, (1 + step) / (10 + step)))

            # -------------------------------------------------------------------------------
            # Log: losses of this step, rate and ETA.
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
            elapsed = time.perf_counter() - t0
            rate = elapsed / (step - start_step)
            stats = {
                "seconds_per_step": rate,
                "eta_s": rate * (total_steps - step),
                "images_seen": step * batch_size * config.n_critic,
            }
            epoch_end = step % steps_per_epoch == 0 or step == total_steps
            epoch = math.ceil(step / steps_per_epoch)
            metrics_file.write(
                json.dumps({"step": step, "epoch": epoch, "time": time.time(), **losses, **stats})
                + "\n"
            )
            metrics_file.flush()
            emit("step", stats)

            # -------------------------------------------------------------------------------
            # Epoch end: sample grid of the fixed latents from the EMA generator.
            if epoch_end and (epoch % config.samples_every == 0 or step == total_steps):
                with torch.no_grad():
                    images = ema(fixed_z)
                rel = f"samples/epoch_{epoch:04d}.png"
                save_grid(images, out_dir / rel, nrow=int(math.sqrt(len(fixed_z))) or 1)
                latest_grid = rel

            # -------------------------------------------------------------------------------
            # Checkpoint: every `checkpoint_every` steps and at every epoch end.
            if epoch_end or step % config.checkpoint_every == 0:
                checkpoint()
            if epoch_end:
                emit("epoch", stats)
    finally:
        metrics_file.close()

    # -------------------------------------------------------------------------------------------
    # Finish: a full checkpoint always; the inference-only model.pt when the run completed.
    checkpoint()
    model_path: str | None = None
    if status == "succeeded":
        model = load_checkpoint(ckpt_path).inference_only()
        model.extra = {**model.extra, "train_seconds": time.perf_counter() - t0}
        model_path = str(save_checkpoint(model, out_dir / "model.pt"))
    final = {**stats, "steps": step, "images": n_images, "skipped_images": dataset.skipped_count}
    emit("done", final)
    log.info("%s at step %d/%d", status, step, total_steps)
    return TrainResult(
        status=status,
        step=step,
        epoch=step // steps_per_epoch,
        checkpoint=str(ckpt_path),
        model=model_path,
        metrics={**final, "losses": losses},
    )
