"""The `cosmogan` commands that work on data and models: data, train, generate, emulate, evaluate.

`launcher.cli` builds the whole command line and adds these with `add_commands`.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.settings import get_settings
from training.presets import PRESETS, PresetError, build_config, default_data

if TYPE_CHECKING:
    from training.scaffold import RunFolder


def _finite(obj: Any) -> Any:
    """`obj` with every NaN or infinity replaced by None: JSON has no NaN."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def print_json(obj: Any) -> None:
    """A command's result on stdout as strict JSON (a NaN figure is null)."""
    print(json.dumps(_finite(obj), indent=2, allow_nan=False))


# --------------------------------------------------------------------------------------------
# data
def _cmd_data_nebulae(args: argparse.Namespace) -> int:
    from training.image.nebulae import build_nebula_dataset

    out = Path(args.out or get_settings().data_dir / "nebulae")
    summary = build_nebula_dataset(out, deb=args.deb)
    print_json(summary)
    return 0


def _cmd_data_balrog(args: argparse.Namespace) -> int:
    from training.emulator.balrog import build_catalog

    if args.submit:
        spec = {
            "name": args.name,
            "simulator": args.simulator,
            "rows": args.rows,
            "seed": args.seed,
            "draw_seed": args.draw_seed,
            "chunk_rows": args.chunk_rows,
        }
        spec = {k: v for k, v in spec.items() if v is not None}
        print(json.dumps(submit_build(args.submit, api_key(args), spec, args.quiet), indent=2))
        return 0
    out = Path(args.out or get_settings().data_dir / "balrog.parquet")
    summary = build_catalog(
        out,
        rows=args.rows,
        simulator=args.simulator,
        seed=args.seed,
        workers=args.workers,
        chunk_rows=args.chunk_rows or 2000,
        draw_seed=args.draw_seed,
        progress=not args.quiet,
    )
    print_json(summary)
    return 0


def api_key(args: argparse.Namespace) -> str:
    """--api-key, else COSMOGAN_API_KEY, else the development key."""
    return args.api_key or get_settings().api_key or "dev"


def submit_build(url: str, key: str, spec: dict[str, Any], quiet: bool = False) -> dict[str, Any]:
    """POST a build to a running service and follow its progress until the dataset is ready:
    the same chunks, fanned out over the service's `data` workers (same rows as a local build
    of the same seeds and chunk size)."""
    import time

    import httpx
    from tqdm import tqdm

    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as client:
        r = client.post("/datasets", json=spec)
        if r.status_code != 202:
            raise ValueError(f"{url} refused the build ({r.status_code}): {r.text[:500]}")
        job_url = r.json()["job"]
        bar = tqdm(total=spec["rows"], unit="obj", disable=quiet)
        try:
            while True:
                rec = client.get(job_url).json()
                bar.update((rec.get("rows_done") or 0) - bar.n)
                if rec["state"] in ("failed", "cancelled"):
                    raise ValueError(f"build {rec['job_id']} {rec['state']}: {rec.get('error')}")
                if rec["state"] == "succeeded":
                    return client.get(f"/datasets/{spec['name']}").json()
                time.sleep(1.0)
        finally:
            bar.close()


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


class StepBar:
    """A tqdm bar over generator steps, opened at the first progress event.

    Opening it then keeps data loading, model building and (on --resume) the steps done
    before out of its rate, and so is time spent before the first step (the emulator's
    detector phase reports progress without steps): the ETA is right from the first update
    instead of settling only after many steps.
    """

    def __init__(self, disable: bool = False) -> None:
        self.disable = disable
        self.bar: Any = None
        self.start = 0

    def __call__(self, event: dict[str, Any]) -> None:
        from tqdm import tqdm

        step = int(event.get("step") or 0)
        total = event.get("total_steps")
        if self.bar is None:
            self.bar = tqdm(
                total=total, initial=step, unit="step", dynamic_ncols=True, disable=self.disable
            )
            self.start = step
        if total and self.bar.total != total:
            self.bar.total = total
        if step > self.bar.n:
            self.bar.update(step - self.bar.n)
        elif self.bar.n == self.start:
            self.bar.unpause()  # no step run yet: this wait stays out of the rate
        self.bar.set_description(f"epoch {event.get('epoch', 0)}/{event.get('epochs', '?')}")
        losses = event.get("losses") or {}
        self.bar.set_postfix({k: f"{v:.3g}" for k, v in losses.items()}, refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class StopOnInterrupt:
    """Ctrl-C asks the training loop to stop; it writes a checkpoint at its next step.

    A flag, not an exception: raised in the middle of a step or of `torch.save`, an
    exception would lose the work since the last checkpoint. A second Ctrl-C quits at once
    (checkpoint writes are atomic, so the previous checkpoint survives that too).
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __call__(self) -> bool:
        return self.requested

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(
            "\ncosmogan: stopping after this step and saving a checkpoint "
            "(Ctrl-C again to quit at once)",
            file=sys.stderr,
        )

    def __enter__(self) -> StopOnInterrupt:
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self._previous)


def _cmd_train(args: argparse.Namespace) -> int:
    from training.runner import run_training
    from training.scaffold import RunFolder

    settings = get_settings()
    out = Path(args.out or settings.runs_dir / f"local-{args.preset}")
    folder = RunFolder(out)
    overrides = _train_overrides(args)
    if args.resume:
        config, data = _resumed(args, folder, overrides)
    else:
        if folder.checkpoint.exists():
            raise PresetError(f"{out} already holds a run; pass --resume to continue it or --out")
        config = build_config(args.preset, overrides)
        data = None if config.dry_run else _data_path(args.data, args.preset)

    bar = StepBar(disable=args.quiet)
    try:
        with StopOnInterrupt() as stop:
            result = run_training(
                config, data, out, resume=args.resume, progress=bar, should_stop=stop
            )
    finally:
        bar.close()
    print_json(result)
    if result["status"] == "cancelled":
        # the run folder's config.json holds the data and settings: --out is all resume needs
        again = f"cosmogan train {args.preset} --resume --out {shlex.quote(str(out))}"
        print(
            f"cosmogan: interrupted at step {result['step']}; checkpoint saved in "
            f"{result['checkpoint']}; continue with: {again}",
            file=sys.stderr,
        )
        return 130
    return 0


def _train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line (`--set`, `--epochs`, ...), nothing else."""
    overrides = _parse_overrides(args.set)
    for key in ("epochs", "batch_size", "max_steps", "device"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if args.dry_run:
        overrides["dry_run"] = True
    return overrides


def _data_path(data: str | None, preset: str) -> Path:
    return Path(data or get_settings().data_dir / default_data(preset))


def _resumed(
    args: argparse.Namespace, folder: RunFolder, overrides: dict[str, Any]
) -> tuple[Any, Path | None]:
    """The config and data of the run in `folder`, as saved in its `config.json`.

    Settings given with `--resume` change the saved ones (`--epochs` to train longer,
    `--device`); `--data` replaces the saved path (a moved catalog). Nothing is written here:
    a resume that fails leaves the run folder as it was.
    """
    from training.presets import config_from_dict

    if not folder.checkpoint.exists():
        raise PresetError(
            f"nothing to resume: no checkpoint at {folder.checkpoint}; "
            "drop --resume to start a new run, or pass the run's --out"
        )
    if not folder.config.exists():
        raise PresetError(f"{folder.root} has a checkpoint but no config.json to resume with")
    saved, saved_data = folder.saved()
    preset = saved.get("preset")
    if preset != args.preset:
        raise PresetError(
            f"{folder.root} holds a {preset} run, not {args.preset}; continue it with: "
            f"cosmogan train {preset} --resume --out {shlex.quote(str(folder.root))}"
        )
    config = build_config(args.preset, overrides, base=config_from_dict(saved))
    if args.data:
        return config, Path(args.data)
    if saved_data is not None:
        return config, Path(saved_data)
    # a run folder from before config.json recorded its data: the preset's default
    return config, None if config.dry_run else _data_path(None, args.preset)


# --------------------------------------------------------------------------------------------
# inference and evaluation
def _resolve_model(ref: str | None, checkpoint: str | None, default: str) -> Path:
    """A checkpoint path from `--checkpoint PATH` or a registry reference `NAME[@VERSION]`."""
    if checkpoint:
        return Path(checkpoint)
    from models.registry import Registry

    return Registry(get_settings().registry_dir).resolve(ref or default).path


def _cmd_generate(args: argparse.Namespace) -> int:
    from models.image_sampler import generate_png

    path = _resolve_model(args.model, args.checkpoint, "nebula")
    png = generate_png(path, seed=args.seed, n=args.n, nrow=args.nrow, device=args.device)
    Path(args.output).write_bytes(png)
    print(f"wrote {args.output} ({len(png)} bytes)")
    return 0


def _cmd_emulate(args: argparse.Namespace) -> int:
    from training.emulator.files import emulate_file

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
    print_json(summary)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from training.evaluate import evaluate

    path = _resolve_model(args.model, args.checkpoint, "nebula")
    compare = {}
    for item in args.compare:
        name, sep, ref = item.partition("=")
        if not sep:
            raise PresetError(f"--compare expects NAME=CHECKPOINT, got {item!r}")
        compare[name] = ref
    report = evaluate(
        path,
        data=args.data,
        out_dir=args.out,
        seed=args.seed,
        device=args.device,
        baseline=args.baseline_checkpoint,
        floor_data=args.floor_data,
        train_data=args.train_data,
        split=args.split,
        compare=compare,
        bootstrap=args.bootstrap,
    )
    print_json(report)
    return 0


def _cmd_retrain_detector(args: argparse.Namespace) -> int:
    from training.emulator.redetect import retrain_detector

    path = _resolve_model(args.model, args.checkpoint, "balrog")
    overrides = _parse_overrides(args.set)
    calibration = retrain_detector(path, args.data, args.out, overrides=overrides)
    print_json({"checkpoint": str(args.out), "calibration": calibration})
    return 0


# --------------------------------------------------------------------------------------------
def add_commands(sub: Any) -> None:
    """Add the data/train/generate/emulate/evaluate sub-commands to `sub`."""

    def command(parent: Any, name: str, text: str) -> Any:
        return parent.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")

    data = command(sub, "data", "build a training dataset")
    dsub = data.add_subparsers(required=True, metavar="DATASET")
    neb = command(dsub, "nebulae", "real nebula photographs from stellarium-data")
    neb.add_argument("--out", help="output folder (default: $COSMOGAN_HOME/data/nebulae)")
    neb.add_argument(
        "--deb",
        help="a downloaded stellarium-data .deb to unpack "
        "(default: the installed package, else `apt-get download`)",
    )
    neb.set_defaults(func=_cmd_data_nebulae)
    bal = command(dsub, "balrog", "mini-Balrog truth catalog for the emulator")
    bal.add_argument("--out", help="output Parquet (default: $COSMOGAN_HOME/data/balrog.parquet)")
    bal.add_argument("--rows", type=int, default=100_000, help="galaxies in the catalog")
    bal.add_argument(
        "--simulator",
        choices=["galsim", "analytic"],
        default="galsim",
        help="galsim: draw and measure each galaxy; analytic: a fast noise model for tests",
    )
    bal.add_argument("--seed", type=int, default=0, help="fixes the objects and conditions")
    bal.add_argument(
        "--draw-seed",
        type=int,
        default=None,
        help="the simulator's noise and shapes (default: --seed); another value gives an "
        "independent draw of the same objects",
    )
    bal.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    bal.add_argument(
        "--chunk-rows",
        type=int,
        default=None,
        help="rows per resumable chunk written to disk (default: 2000; with --submit, the "
        "service's)",
    )
    bal.add_argument(
        "--submit",
        metavar="URL",
        help="build on a running service instead, fanned out over its data workers "
        "(e.g. http://127.0.0.1:8000); the result is the dataset --name",
    )
    bal.add_argument("--name", default="balrog", help="with --submit: the dataset's name")
    bal.add_argument("--api-key", help="with --submit: the API key (default: COSMOGAN_API_KEY)")
    bal.set_defaults(func=_cmd_data_balrog)

    tr = command(sub, "train", "train a preset locally (Ctrl-C saves a checkpoint; --resume)")
    tr.add_argument("preset", choices=sorted(PRESETS), help="the training recipe")
    tr.add_argument("--data", help="image folder or catalog (default: under $COSMOGAN_HOME/data)")
    tr.add_argument("--epochs", type=int, help="passes over the data (default: the preset's)")
    tr.add_argument("--batch-size", type=int, help="examples per step (default: the preset's)")
    tr.add_argument("--max-steps", type=int, help="stop after N generator steps (default: all)")
    tr.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: the preset's, auto)")
    tr.add_argument("--out", help="run folder (default: $COSMOGAN_HOME/runs/local-PRESET)")
    tr.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its checkpoint, with the data and settings it "
        "saved (options given with it change them, e.g. --epochs to train longer)",
    )
    tr.add_argument("--dry-run", action="store_true", help="two steps on generated data")
    tr.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any preset setting (repeatable; VALUE is read as JSON, else a string)",
    )
    tr.set_defaults(func=_cmd_train)

    ge = command(sub, "generate", "a PNG grid of generated images")
    ge.add_argument("--checkpoint", help="a checkpoint file (default: the registry's model)")
    ge.add_argument("--model", help="registry reference NAME[@VERSION] (default: nebula, active)")
    ge.add_argument("--seed", type=int, default=0, help="same seed, same images")
    ge.add_argument("-n", type=int, default=16, help="images in the grid")
    ge.add_argument("--nrow", type=int, default=None, help="images per row (default: √n)")
    ge.add_argument("--device", default="cpu", help="auto | cpu | cuda | cuda:N")
    ge.add_argument("-o", "--output", default="grid.png", help="PNG file to write")
    ge.set_defaults(func=_cmd_generate)

    em = command(sub, "emulate", "emulate observed magnitudes for a catalog")
    em.add_argument("input", help="CSV, Parquet or FITS catalog")
    em.add_argument("-o", "--output", required=True, help="CSV, Parquet or FITS (by suffix)")
    em.add_argument("--checkpoint", help="a checkpoint file (default: the registry's model)")
    em.add_argument("--model", help="registry reference NAME[@VERSION] (default: balrog, active)")
    em.add_argument("--samples", type=int, default=1, help="realizations per input row")
    em.add_argument("--seed", type=int, default=0, help="same seed, same output")
    em.add_argument("--chunk-rows", type=int, default=100_000, help="rows read and written at once")
    em.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    em.set_defaults(func=_cmd_emulate)

    ev = command(sub, "evaluate", "quality metrics as JSON")
    ev.add_argument("model", nargs="?", help="NAME[@VERSION] (default: nebula, active)")
    ev.add_argument("--checkpoint", help="a checkpoint file instead of a registry reference")
    ev.add_argument(
        "--data", help="held-out images folder or catalog (default: the model's dataset)"
    )
    ev.add_argument("--out", help="folder for plots (emulator; default: no plots)")
    ev.add_argument(
        "--baseline-checkpoint",
        help="emulator: the seed-variant (MSE) model to compare with "
        "(default: a sibling run folder named <run>-mse, if any)",
    )
    ev.add_argument(
        "--floor-data",
        help="emulator: a second simulator draw of the same objects (--draw-seed): the floor "
        "(default: simulated here when the service's simulator built --data, else none)",
    )
    ev.add_argument(
        "--train-data", help="emulator: catalog whose train split fits the Gaussian baseline"
    )
    ev.add_argument(
        "--split",
        choices=["train", "val", "test", "all"],
        help="emulator: rows of --data to score (default: all with --floor-data, else test)",
    )
    ev.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="NAME=CHECKPOINT",
        help="emulator: another model to score side by side (repeatable)",
    )
    ev.add_argument("--bootstrap", type=int, default=20, help="emulator: resamples for noise")
    ev.add_argument("--seed", type=int, default=0, help="seed of the generated samples")
    ev.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ev.set_defaults(func=_cmd_evaluate)

    rd = command(
        sub,
        "retrain-detector",
        "train an emulator's detection classifier again by today's recipe (the rest is kept)",
    )
    rd.add_argument("model", nargs="?", help="NAME[@VERSION] (default: balrog, active)")
    rd.add_argument("--checkpoint", help="a checkpoint file instead of a registry reference")
    rd.add_argument("--data", required=True, help="the catalog the model was trained on")
    rd.add_argument("--out", required=True, help="the checkpoint file to write")
    rd.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a detector setting instead of the preset's (detector_epochs, detector_batch_size, "
        "detector_lr, detector_platt)",
    )
    rd.set_defaults(func=_cmd_retrain_detector)
