"""The `cosmogan` commands that work on data and models: data, train, generate, emulate, evaluate.

`launcher.cli` builds the whole command line and adds these with `add_commands`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from models.settings import get_settings
from training.presets import PRESETS, PresetError, build_config, default_data


# --------------------------------------------------------------------------------------------
# data
def _cmd_data_nebulae(args: argparse.Namespace) -> int:
    from training.data.nebulae import build_nebula_dataset

    out = Path(args.out or get_settings().data_dir / "nebulae")
    summary = build_nebula_dataset(out, deb=args.deb)
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_data_balrog(args: argparse.Namespace) -> int:
    from training.data.balrog import build_catalog

    out = Path(args.out or get_settings().data_dir / "balrog.parquet")
    summary = build_catalog(
        out,
        rows=args.rows,
        simulator=args.simulator,
        seed=args.seed,
        workers=args.workers,
        chunk_rows=args.chunk_rows,
    )
    print(json.dumps(summary, indent=2))
    return 0


# --------------------------------------------------------------------------------------------
# train
def _parse_overrides(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise PresetError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def _cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from training.runner import run_training

    overrides = _parse_overrides(args.set)
    for key in ("epochs", "batch_size", "max_steps", "device"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if args.dry_run:
        overrides["dry_run"] = True
    config = build_config(args.preset, overrides)
    settings = get_settings()
    data = (
        None if args.dry_run else Path(args.data or settings.data_dir / default_data(args.preset))
    )
    out = Path(args.out or settings.runs_dir / f"local-{args.preset}")
    if not args.resume and (out / "checkpoints" / "last.pt").exists():
        raise PresetError(f"{out} already holds a run; pass --resume to continue it or --out")

    bar = tqdm(total=None, unit="step", dynamic_ncols=True, disable=args.quiet)

    def progress(event: dict[str, Any]) -> None:
        if event.get("total_steps") and bar.total != event["total_steps"]:
            bar.total = event["total_steps"]
        bar.n = event.get("step", bar.n)
        losses = event.get("losses") or {}
        bar.set_description(f"epoch {event.get('epoch', 0)}/{event.get('epochs', '?')}")
        bar.set_postfix({k: f"{v:.3g}" for k, v in losses.items()}, refresh=False)
        bar.refresh()

    try:
        result = run_training(config, data, out, resume=args.resume, progress=progress)
    finally:
        bar.close()
    print(json.dumps(result, indent=2))
    return 0


# --------------------------------------------------------------------------------------------
# inference and evaluation
def _resolve_model(ref: str | None, checkpoint: str | None, default: str) -> Path:
    """A checkpoint path from `--checkpoint PATH` or a registry reference `NAME[@VERSION]`."""
    if checkpoint:
        return Path(checkpoint)
    from models.registry import Registry

    settings = get_settings()
    reg = Registry(settings.registry_dir)
    reg.ensure_defaults()
    name, _, version = (ref or default).partition("@")
    return reg.get(name, version or None).path


def _cmd_generate(args: argparse.Namespace) -> int:
    from models.image_sampler import generate_png

    path = _resolve_model(args.model, args.checkpoint, "nebula")
    png = generate_png(path, seed=args.seed, n=args.n, nrow=args.nrow, device=args.device)
    Path(args.output).write_bytes(png)
    print(f"wrote {args.output} ({len(png)} bytes)")
    return 0


def _cmd_emulate(args: argparse.Namespace) -> int:
    from training.emulate import emulate_file

    path = _resolve_model(args.model, args.checkpoint, "balrog")
    summary = emulate_file(
        path,
        args.input,
        args.output,
        samples=args.samples,
        seed=args.seed,
        chunk_rows=args.chunk_rows,
        device=args.device,
    )
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from training.evaluate import evaluate

    path = _resolve_model(args.model, args.checkpoint, "nebula")
    report = evaluate(
        path,
        data=args.data,
        out_dir=args.out,
        seed=args.seed,
        device=args.device,
        baseline=args.baseline_checkpoint,
    )
    print(json.dumps(report, indent=2))
    return 0


# --------------------------------------------------------------------------------------------
def add_commands(sub: Any) -> None:
    """Add the data/train/generate/emulate/evaluate sub-commands to `sub`."""
    data = sub.add_parser("data", help="build a training dataset")
    dsub = data.add_subparsers(required=True, metavar="DATASET")
    neb = dsub.add_parser("nebulae", help="real nebula photographs from stellarium-data")
    neb.add_argument("--out", help="output folder (default: $COSMOGAN_HOME/data/nebulae)")
    neb.add_argument("--deb", help="a downloaded stellarium-data .deb to unpack")
    neb.set_defaults(func=_cmd_data_nebulae)
    bal = dsub.add_parser("balrog", help="mini-Balrog truth catalog for the emulator")
    bal.add_argument("--out", help="output Parquet (default: $COSMOGAN_HOME/data/balrog.parquet)")
    bal.add_argument("--rows", type=int, default=100_000)
    bal.add_argument("--simulator", choices=["galsim", "analytic"], default="galsim")
    bal.add_argument("--seed", type=int, default=0)
    bal.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    bal.add_argument("--chunk-rows", type=int, default=2000)
    bal.set_defaults(func=_cmd_data_balrog)

    tr = sub.add_parser("train", help="train a preset locally (resumable)")
    tr.add_argument("preset", choices=sorted(PRESETS))
    tr.add_argument("--data", help="image folder or catalog (default: under $COSMOGAN_HOME/data)")
    tr.add_argument("--epochs", type=int)
    tr.add_argument("--batch-size", type=int)
    tr.add_argument("--max-steps", type=int, help="stop after N generator steps")
    tr.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    tr.add_argument("--out", help="run folder (default: $COSMOGAN_HOME/runs/local-PRESET)")
    tr.add_argument("--resume", action="store_true", help="continue the run in --out")
    tr.add_argument("--dry-run", action="store_true", help="two steps on generated data")
    tr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override")
    tr.set_defaults(func=_cmd_train)

    ge = sub.add_parser("generate", help="a PNG grid of generated images")
    ge.add_argument("--checkpoint", help="a checkpoint file (default: the registry's model)")
    ge.add_argument("--model", help="registry reference NAME[@VERSION] (default: nebula)")
    ge.add_argument("--seed", type=int, default=0)
    ge.add_argument("-n", type=int, default=16)
    ge.add_argument("--nrow", type=int, default=None)
    ge.add_argument("--device", default="cpu")
    ge.add_argument("-o", "--output", default="grid.png")
    ge.set_defaults(func=_cmd_generate)

    em = sub.add_parser("emulate", help="emulate observed magnitudes for a catalog")
    em.add_argument("input", help="CSV, Parquet or FITS catalog")
    em.add_argument("-o", "--output", required=True, help="CSV, Parquet or FITS (by suffix)")
    em.add_argument("--checkpoint")
    em.add_argument("--model", help="registry reference NAME[@VERSION] (default: balrog)")
    em.add_argument("--samples", type=int, default=1)
    em.add_argument("--seed", type=int, default=0)
    em.add_argument("--chunk-rows", type=int, default=100_000)
    em.add_argument("--device", default="auto")
    em.set_defaults(func=_cmd_emulate)

    ev = sub.add_parser("evaluate", help="quality metrics as JSON")
    ev.add_argument("model", nargs="?", help="NAME[@VERSION] (default: nebula)")
    ev.add_argument("--checkpoint")
    ev.add_argument("--data", help="held-out images folder or catalog")
    ev.add_argument("--out", help="folder for plots (emulator)")
    ev.add_argument(
        "--baseline-checkpoint",
        help="emulator: the seed-variant (MSE) model to compare with "
        "(default: a sibling run folder named <run>-mse, if any)",
    )
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--device", default="auto")
    ev.set_defaults(func=_cmd_evaluate)
