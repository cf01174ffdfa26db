"""Training benchmark: ours vs the seed notebook's WGAN-GP for one wall-clock budget, and scaling.

Every trial runs in a fresh process (`python -m bench.training trial ...`), so trials do not
share allocator state and each reports its own peak memory. The parent measures the
machine's matmul peak once and turns each trial's counted FLOPs into a fraction of it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import Table, peak_rss_mib

ROOT = Path(__file__).resolve().parents[1]
WARMUP_STEPS = 4  # the first steps of a run are slower (allocator, oneDNN primitive caches)
FLOP_BATCH = 4  # FLOPs are counted on a small batch and scaled: they are linear in the batch
HELDOUT_FRACTION = 0.1

QUICK_NOTE = (
    "--quick smoke run: networks of width 8, batch 4, synthetic images; the figures only show "
    "that the script works"
)

# The recipes compared for one budget. `ours` is the `nebula` preset as shipped (width 32);
# `ours-w16` is the recipe of the shipped default weights. Sample grids are left out of the
# timed loop: the reference makes none either.
RECIPES: dict[str, dict[str, Any]] = {
    "seed": {},
    "ours": {},
    "ours-w16": {"width": 16, "batch_size": 16, "lr": 2e-4, "diffaugment": True},
}
LABELS = {
    "seed": "seed notebook (reference)",
    "ours": "ours, `nebula` preset (width 32)",
    "ours-w16": "ours, shipped-weights recipe (width 16, batch 16, DiffAugment)",
}


# --------------------------------------------------------------------------------------------
# Measurements inside one process


def matmul_peak_gflops(threads: int, quick: bool = False) -> dict[str, float]:
    """Best fp32 GEMM rate of this machine with `threads` torch threads, GFLOP/s.

    Two GEMM paths: `torch.mm` (the BLAS torch was built with) and oneDNN's (a 1×1
    convolution is a GEMM); their CPU dispatch differs, so the peak is the faster of the two.
    """
    import torch

    torch.set_num_threads(threads)
    n, seconds = (256, 0.3) if quick else (1024, 2.0)
    a, b = torch.randn(n, n), torch.randn(n, n)
    conv = torch.nn.Conv2d(n, n, 1, bias=False).requires_grad_(False)
    x = torch.randn(1, n, 32, 32)
    rates = {
        "torch_mm": best_rate(lambda: a @ b, 2 * n**3, seconds),
        "onednn_gemm": best_rate(lambda: conv(x), 2 * n * n * 32 * 32, seconds),
    }
    return {**rates, "peak": max(rates.values())}


def best_rate(fn: Any, flops: float, seconds: float) -> float:
    for _ in range(3):  # warm-up
        fn()
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t = time.perf_counter()
        fn()
        best = max(best, flops / (time.perf_counter() - t))
    return best / 1e9


def count_flops(fn: Any) -> int:
    """Matmul and convolution FLOPs (forward, backward, double backward) of calling `fn`.

    The formulas are `torch.utils.flop_counter`'s; its `FlopCounterMode` is not used because
    its module tracker fails inside `autograd.grad` (the gradient penalty).
    """
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class Counter(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                self.total += formula(*args, **kwargs, out_val=out)
            return out

    with Counter() as counter:
        fn()
    return int(counter.total)


def own_peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited on exec)."""
    return peak_rss_mib(os.getpid()) or float("nan")


def real_images(data: Path, split: str, augment: bool = False) -> Any:
    from training.image.images import ImageFolder

    return ImageFolder(data, 128, split=split, heldout_fraction=HELDOUT_FRACTION, augment=augment)


def quality(fake01: Any, data: Path) -> dict[str, float]:
    """SWD (and PSD, colour) of generated images in [0, 1] against the held-out real ones."""
    from training.image.metrics import image_distances

    held = (real_images(data, "heldout").center() + 1) / 2
    return image_distances(fake01.double(), held.double(), seed=0)


def ours_config(recipe: str, overrides: dict[str, Any]) -> Any:
    from training.presets import build_config

    # the bench measures quality itself (`quality`), on every generated image
    base = {"heldout_fraction": HELDOUT_FRACTION, "samples_every": 10**6, "epochs": 10**5}
    base["eval_images"] = 0
    return build_config("nebula", {**base, **RECIPES[recipe], **overrides})


def trial_ours(recipe: str, data: Path, budget_s: float, epochs: int | None, **over: Any) -> dict:
    """Ours through the real training loop; stopped by its `should_stop` flag at the budget.

    With `epochs`, it runs that many epochs instead and reports the time of each.
    """
    import torch

    from models.image_sampler import ImageSampler
    from training.image.gan import train_image_gan

    def run(config: Any, **kw: Any) -> Any:
        with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
            result = train_image_gan(config, data, tmp, resume=False, **kw)
            sampler = ImageSampler.load(result["checkpoint"], "cpu")
            return result, sampler

    config = ours_config(recipe, over if epochs is None else {**over, "epochs": epochs})
    flops_per_step = None
    if epochs is None:
        small = ours_config(recipe, {**over, "batch_size": FLOP_BATCH, "sample_count": 1})
        one = count_flops(lambda: run(replace(small, max_steps=1)))
        two = count_flops(lambda: run(replace(small, max_steps=2)))
        flops_per_step = (two - one) * config.batch_size / FLOP_BATCH

    clock: dict[str, float] = {}
    epoch_ends: list[float] = []

    def should_stop() -> bool:
        now = time.perf_counter()
        clock.setdefault("start", now)
        return epochs is None and now - clock["start"] >= budget_s

    def progress(event: dict[str, Any]) -> None:
        if event["event"] == "step":
            clock["last_step"] = time.perf_counter()
        elif event["event"] == "epoch":
            epoch_ends.append(time.perf_counter())

    result, sampler = run(config, should_stop=should_stop, progress=progress)
    out = {
        "steps": result["step"],
        "seconds": clock["last_step"] - clock["start"],
        "epoch_seconds": np.diff([clock["start"], *epoch_ends]).tolist(),
        "batch_size": config.batch_size,
        "n_critic": config.n_critic,
        "fresh_real_per_step": config.batch_size * config.n_critic,
        "flops_per_step": flops_per_step,
        "params": sum(p.numel() for p in sampler.generator.parameters()),
        "images": result["metrics"]["images"],
        "peak_rss_mib": own_peak_rss_mib(),
        "threads": torch.get_num_threads(),
    }
    if epochs is None:
        fake = sampler.images(sampler.latents(0, out["images"])).double() / 255
        out["quality"] = quality(fake, data)
    return out


def trial_seed(data: Path, budget_s: float, batch_size: int | None = None) -> dict:
    """The seed notebook's loop on the same training images (centre crops, no augmentation)."""
    import torch

    from bench.reference.seed_wgan import SeedConfig, train_seed_wgan

    images = real_images(data, "train").data
    config = SeedConfig() if batch_size is None else SeedConfig(batch_size=batch_size)
    small = SeedConfig(batch_size=FLOP_BATCH)
    one = count_flops(lambda: train_seed_wgan(images, small, max_steps=1))
    two = count_flops(lambda: train_seed_wgan(images, small, max_steps=2))
    flops_per_step = (two - one) * config.batch_size / FLOP_BATCH

    run = train_seed_wgan(images, config, budget_s=budget_s)
    peak = own_peak_rss_mib()
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        z = torch.randn(len(images), config.latent_dim, generator=g)
        fake = torch.cat([(run.generator(c) + 1) / 2 for c in z.split(64)]).clamp(0, 1)
    return {
        "steps": run.steps,
        "seconds": run.seconds,
        "batch_size": config.batch_size,
        "n_critic": config.n_critic,
        "fresh_real_per_step": config.batch_size,  # one real batch for all critic steps
        "flops_per_step": flops_per_step,
        "params": sum(p.numel() for p in run.generator.parameters()),
        "images": len(images),
        "peak_rss_mib": peak,
        "threads": torch.get_num_threads(),
        "quality": quality(fake, data),
    }


# --------------------------------------------------------------------------------------------
# The parent: trials in fresh processes, then the tables


def run_trial(args: list[str], threads: int) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "bench.training", "trial", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def floor_quality(data: Path) -> dict[str, float]:
    """Training images vs held-out images: what a perfect generator would score."""
    train = (real_images(data, "train").center() + 1) / 2
    return quality(train, data)


def synthetic_folder(root: Path, n: int = 24, size: int = 96) -> Path:
    """Colourful blobs on black, for a smoke run on a machine without the nebula set."""
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = np.zeros((size, size, 3))
        for _ in range(3):
            cy, cx, r = *rng.uniform(0, size, 2).tolist(), rng.uniform(5, 25)
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))
            img += blob[..., None] * rng.uniform(0.2, 1.0, 3)
        Image.fromarray((255 * img.clip(0, 1)).astype(np.uint8)).save(root / f"blob{i:03d}.png")
    return root


def train_files(data: Path) -> list[Path]:
    from training.image.images import is_heldout, list_images

    rel = lambda p: p.relative_to(data).as_posix()  # noqa: E731
    return [p for p in list_images(data) if not is_heldout(rel(p), HELDOUT_FRACTION)]


def subset_folder(data: Path, root: Path, n: int) -> Path:
    """The first `n` training images of `data` as a folder of links (for image-count scaling)."""
    from training.image.images import list_images

    root.mkdir(parents=True, exist_ok=True)
    files = train_files(data)
    for p in files[:n]:
        (root / p.name).symlink_to(p.resolve())
    # a few held-out images keep the split non-empty for the quality figure
    for p in [p for p in list_images(data) if p not in files][:4]:
        (root / p.name).symlink_to(p.resolve())
    return root


def run(
    quick: bool, command: str, data: Path | None = None, budget_s: float | None = None
) -> tuple[list[Table], dict[str, Any]]:
    """The training tables: one budget for every recipe, then epoch time vs batch and count."""
    threads = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        if data is None:
            data = ROOT / "var" / "data" / "nebulae"
        if quick:  # a smoke run checks the scripts work, on a tiny set that needs no download
            data = synthetic_folder(Path(tmp) / "blobs")
        elif not data.is_dir() or not any(data.iterdir()):
            raise SystemExit(
                f"no images in {data}: run `cosmogan data nebulae` first (or pass --data)"
            )
        budget = budget_s if budget_s is not None else (2.0 if quick else 60.0)
        rates = matmul_peak_gflops(threads, quick)
        floor = floor_quality(data)

        trials: dict[str, dict[str, Any]] = {}
        for name in RECIPES:
            args = ["--recipe", name, "--data", str(data), "--budget", str(budget)]
            trials[name] = run_trial([*args, *(["--quick"] if quick else [])], threads)
        budget_table = budget_tables(trials, floor, rates, budget, threads, command)

        scaling = scaling_trials(data, Path(tmp), quick, threads)
        scale_table = scaling_table(scaling, command, threads)
    if quick:
        for t in [*budget_table, scale_table]:
            t.notes.insert(0, QUICK_NOTE)

    raw = {"matmul_gflops": rates, "threads": threads, "budget_s": budget, "floor": floor}
    raw |= {f"train_{k}": v for k, v in trials.items()}
    raw["train_scaling"] = scaling
    return [*budget_table, scale_table], raw


def budget_tables(
    trials: dict[str, dict[str, Any]],
    floor: dict[str, float],
    rates: dict[str, float],
    budget: float,
    threads: int,
    command: str,
) -> list[Table]:
    speed = Table(
        f"Training for the same wall-clock budget ({budget:.0f} s, {threads} CPU threads)",
        command,
        [
            "recipe",
            "generator params",
            "gen. steps",
            "gen. it/s",
            "critic images/s",
            "fresh real images/s",
            "GFLOP/step",
            "GFLOP/s",
            "of matmul peak",
            "peak RSS (MiB)",
        ],
    )
    quality_t = Table(
        "Quality at the end of the budget (generated vs held-out, floor = real vs real)",
        command,
        ["recipe", "SWD avg (×10³)", "× floor", "PSD dist.", "× floor", "colour dist.", "× floor"],
    )
    peak, base = rates["peak"], trials["seed"]
    for name, t in trials.items():
        its = t["steps"] / t["seconds"]
        critic_images = (3 * t["n_critic"] + 1) * t["batch_size"]  # real+fake+mixed, then G step
        gflops = t["flops_per_step"] * its / 1e9
        t |= {"it_per_s": its, "gflop_per_s": gflops, "peak_fraction": gflops / peak}
        speed.rows.append(
            [
                LABELS[name],
                f"{t['params'] / 1e6:.2f} M",
                t["steps"],
                its,
                its * critic_images,
                its * t["fresh_real_per_step"],
                t["flops_per_step"] / 1e9,
                gflops,
                f"{100 * gflops / peak:.1f} %",
                t["peak_rss_mib"],
            ]
        )
        q = t["quality"]
        quality_t.rows.append(
            [
                LABELS[name],
                q["swd_avg"],
                q["swd_avg"] / floor["swd_avg"],
                q["psd"],
                q["psd"] / floor["psd"],
                q["color"],
                q["color"] / floor["color"],
            ]
        )
    quality_t.rows.append(["real training images (floor)", floor["swd_avg"], 1.0, floor["psd"]])
    quality_t.rows[-1] += [1.0, floor["color"], 1.0]
    ours = trials["ours"]
    real_ratio = (ours["it_per_s"] * ours["fresh_real_per_step"]) / (
        base["it_per_s"] * base["fresh_real_per_step"]
    )
    speed.notes = [
        f"matmul peak: {peak:.0f} GFLOP/s, the best fp32 1024² GEMM in this run with {threads} "
        f"threads (torch.mm {rates['torch_mm']:.0f}, oneDNN {rates['onednn_gemm']:.0f})",
        "GFLOP/step: matmul and convolution FLOPs of one generator step (its critic steps "
        "included, gradient penalty's double backward too), counted by "
        "`torch.utils.flop_counter` on a batch of 4 and scaled to the recipe's batch",
        "critic images/s: images through the critic per second (real, fake and interpolated "
        "per critic step, fakes in the generator step); fresh real images/s: distinct real "
        "images drawn per second (the seed reuses one real batch for its 5 critic steps)",
        f"ours vs seed: {ours['it_per_s'] / base['it_per_s']:.2f}× generator it/s, "
        f"{real_ratio:.2f}× fresh real images/s",
    ]
    return [speed, quality_t]


# --------------------------------------------------------------------------------------------
# Scaling: time per epoch vs batch size and image count (ours, `nebula` preset)


def scaling_trials(data: Path, tmp: Path, quick: bool, threads: int) -> list[dict[str, Any]]:
    from training.image.images import is_heldout, list_images

    n_train = sum(
        1 for p in list_images(data) if not is_heldout(p.relative_to(data).as_posix(), 0.1)
    )
    batches = [4, 8] if quick else [8, 16, 32]
    counts = [8, n_train] if quick else [n_train // 4, n_train // 2, n_train]
    # image count at the smallest batch, where an epoch spans several generator steps
    cases = [(b, n_train) for b in batches] + [(batches[0], n) for n in counts[:-1]]
    out = []
    for b, n in cases:
        folder = data if n == n_train else subset_folder(data, tmp / f"subset{n}", n)
        # enough epochs that the timed last one starts after the first steps' warm-up
        epochs = max(2, math.ceil(WARMUP_STEPS / math.ceil(n / (b * 5))) + 1)
        args = ["--recipe", "ours", "--data", str(folder), "--epochs", str(epochs)]
        args += ["--batch-size", str(b)]
        t = run_trial([*args, *(["--quick"] if quick else [])], threads)
        out.append({"batch_size": b, "images": t["images"], **t})
    return out


def scaling_table(rows: list[dict[str, Any]], command: str, threads: int) -> Table:
    table = Table(
        f"Training time per epoch (ours, `nebula` preset, {threads} CPU threads)",
        command,
        ["batch", "images", "gen. steps/epoch", "s/epoch", "s/step", "real images/s", "peak MiB"],
    )
    for r in sorted(rows, key=lambda r: (r["batch_size"], r["images"])):
        epoch_s = r["epoch_seconds"][-1]  # the last epoch: after the first steps' warm-up
        steps = r["steps"] / len(r["epoch_seconds"])
        table.rows.append(
            [
                r["batch_size"],
                r["images"],
                int(steps),
                epoch_s,
                epoch_s / steps,
                steps * r["fresh_real_per_step"] / epoch_s,
                r["peak_rss_mib"],
            ]
        )
    table.notes = [
        "one epoch = every training image once through the critic (each critic step draws a "
        "fresh batch), so steps/epoch = ceil(images / (batch · 5)); the last of several epochs "
        "is timed, its end-of-epoch checkpoint included",
    ]
    return table


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.training", description=__doc__)
    sub = parser.add_subparsers(dest="cmd")
    trial = sub.add_parser("trial", help="one trial in this process; prints one JSON line")
    trial.add_argument("--recipe", choices=list(RECIPES), required=True)
    trial.add_argument("--data", type=Path, required=True)
    trial.add_argument("--budget", type=float, default=60.0)
    trial.add_argument("--epochs", type=int, default=None)
    trial.add_argument("--batch-size", type=int, default=None)
    trial.add_argument("--quick", action="store_true")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--budget", type=float, default=None)
    args = parser.parse_args(argv)
    if args.cmd == "trial":
        over: dict[str, Any] = {}
        if args.quick:  # a smoke run: the smallest networks that still exercise every path
            over["width"] = 8
            args.batch_size = args.batch_size or FLOP_BATCH
        if args.batch_size:
            over["batch_size"] = args.batch_size
        if args.recipe == "seed":
            result = trial_seed(args.data, args.budget, args.batch_size)
        else:
            result = trial_ours(args.recipe, args.data, args.budget, args.epochs, **over)
        print(json.dumps(result))
        return 0
    cmd = "python -m bench.training" + (" --quick" if args.quick else "")
    tables, _ = run(args.quick, cmd, args.data, args.budget)
    for t in tables:
        print(t.markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
