"""`python -m bench`: every benchmark in one run; tables to stdout, var/bench/latest.{md,json}."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import scaling, serving, training
from bench.common import Table, device_label, machine

ROOT = Path(__file__).resolve().parents[1]
SUITES = ("training", "serving", "scaling")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke run: check the scripts work")
    parser.add_argument(
        "--only", default=",".join(SUITES), help=f"comma-separated suites of {list(SUITES)}"
    )
    parser.add_argument("--budget", type=float, default=None, help="training budget, seconds")
    parser.add_argument("--data", type=Path, default=None, help="nebula image folder")
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "bench")
    parser.add_argument(
        "--device", default="auto", help="serving suite: auto | cpu | cuda | cuda:N (training: CPU)"
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="serving suite: also measure the service of the code in this checkout (before/after)",
    )
    args = parser.parse_args(argv)
    suites = [s.strip() for s in args.only.split(",") if s.strip()]
    if bad := [s for s in suites if s not in SUITES]:
        parser.error(f"unknown suite(s) {bad}; choose from {list(SUITES)}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    command = shlex.join(["python", "-m", "bench", *(argv if argv is not None else sys.argv[1:])])
    report: dict[str, Any] = {
        "command": command,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "device": args.device,
        "seconds": {},
        "tables": [],
        "raw": {},
    }
    tables: list[Table] = []
    for suite in suites:
        t0 = time.perf_counter()
        if suite == "training":
            got, raw = training.run(args.quick, command, args.data, args.budget)
            for t in got:
                t.device = device_label("cpu", raw["threads"])
        elif suite == "scaling":
            got, raw = scaling.run(args.quick, command)
            for t in got:
                t.device = device_label("cpu", 1)
        else:
            got, raw = serving.run(args.quick, command, args.data, args.device, args.baseline)
        report["seconds"][suite] = time.perf_counter() - t0
        report["raw"][suite] = raw
        tables += got
        for t in got:
            print(t.markdown(), flush=True)
    report["tables"] = [t.to_dict() for t in tables]

    m = report["machine"]
    header = (
        f"Measured {report['started']} on {m['cpu']}, {m['cores']} cores, "
        f"{m['memory_gib']} GiB, GPU: {m['gpu'] or 'none'}; Python {m['python']}, "
        f"torch {m['torch']}. Command: `{command}`; "
        + ", ".join(f"{k} {v:.0f} s" for k, v in report["seconds"].items())
        + ".\n"
    )
    print(header)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(report, indent=2, default=str))
    (args.out / "latest.md").write_text(header + "\n" + "\n".join(t.markdown() for t in tables))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
