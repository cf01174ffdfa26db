"""`python -m bench.emulator_cost`: each emulator's cost per object against GalSim, one run.

Every model and the GalSim mini-Balrog are timed in the same process on the same inputs
(DES-like conditions on Buzzard truth), with one torch thread and one simulator process, so
the ratios hold on a shared machine even where the absolute times do not.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from bench.common import machine, time_calls

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "models" / "weights"
DEFAULT_MODELS = {
    "distilled flow (balrog@default)": WEIGHTS / "balrog.pt",
    "flow (balrog-flow@default)": WEIGHTS / "balrog-flow.pt",
    "cWGAN-GP (baselines/balrog-cwgan-gp.pt)": WEIGHTS / "baselines" / "balrog-cwgan-gp.pt",
}


def costs(
    models: dict[str, Path], rows: int, galsim_rows: int, repeats: int = 3
) -> dict[str, dict[str, float]]:
    """Seconds per object of each model (best of `repeats` on `rows`), GalSim and the ratios."""
    from models.columns import INPUTS
    from models.emulator_sampler import EmulatorSampler
    from training.emulator.balrog import sample_inputs
    from training.emulator.minibalrog import simulate

    torch.set_num_threads(1)
    frame = sample_inputs(rows, seed=11)[list(INPUTS)]
    x = frame.to_numpy()
    per: dict[str, float] = {}
    for name, path in models.items():
        em = EmulatorSampler.load(path, device="cpu")
        em.sample(x[:1000], 1, 0)  # warm up
        per[name] = min(time_calls(lambda em=em: em.sample(x, 1, 1), repeats)) / len(x)
    small = frame.iloc[:galsim_rows]
    simulate(frame.iloc[-2:], "galsim", 1)  # GalSim's lazy set-up stays out of the figure
    galsim = time_calls(lambda: simulate(small, "galsim", 1), 1)[0] / len(small)
    return {
        name: {"us_per_object": 1e6 * s, "times_faster_than_galsim": galsim / s}
        for name, s in per.items()
    } | {"GalSim mini-Balrog": {"us_per_object": 1e6 * galsim, "times_faster_than_galsim": 1.0}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.emulator_cost", description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000, help="objects per emulator call")
    parser.add_argument("--galsim-rows", type=int, default=200, help="objects GalSim measures")
    parser.add_argument(
        "--model", action="append", default=[], metavar="NAME=CHECKPOINT",
        help="a model to time (repeatable; default: the shipped flow and cWGAN-GP)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    models = dict(DEFAULT_MODELS)
    if args.model:
        models = {k: Path(v) for k, _, v in (m.partition("=") for m in args.model)}
    figures = costs(models, args.rows, args.galsim_rows)  # sets one torch thread first
    out = {"machine": machine(), "rows": args.rows, "galsim_rows": args.galsim_rows}
    out["models"] = figures
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
