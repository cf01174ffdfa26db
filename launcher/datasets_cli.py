"""`cosmogan datasets …`: the dataset registry of a running service, from the command line."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

CONTENT_TYPES = {
    ".csv": "text/csv",
    ".parquet": "application/vnd.apache.parquet",
    ".pq": "application/vnd.apache.parquet",
    ".fits": "application/fits",
    ".fit": "application/fits",
    ".zip": "application/zip",
    ".tar": "application/x-tar",
    ".tgz": "application/gzip",
    ".gz": "application/gzip",
}


def _client(args: argparse.Namespace) -> Any:
    import httpx

    from training.commands import api_key

    headers = {"Authorization": f"Bearer {api_key(args)}"}
    return httpx.Client(base_url=args.url, headers=headers, timeout=None)


def _answer(r: Any, ok: int) -> Any:
    if r.status_code != ok:
        try:
            detail = r.json().get("detail", r.text)
        except ValueError:
            detail = r.text
        raise ValueError(f"{r.request.method} {r.request.url.path}: {r.status_code}: {detail}")
    return r.json() if r.content else None


def _print(value: Any) -> int:
    print(json.dumps(value, indent=2))
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    with _client(args) as c:
        got = _answer(c.get("/datasets"), 200)
    for d in got["datasets"]:
        rows = "?" if d.get("rows") is None else f"{d['rows']:,}"
        print(f"{d['name']:<32} {d['state']:<10} {d.get('kind') or '':<8} {rows:>12} rows  "
              f"{d.get('source') or ''}")  # fmt: skip
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    with _client(args) as c:
        return _print(_answer(c.get(f"/datasets/{args.name}"), 200))


def _cmd_upload(args: argparse.Namespace) -> int:
    path = Path(args.file)
    suffix = path.suffix.lower()
    if suffix not in CONTENT_TYPES:
        raise ValueError(f"{path}: use .csv, .parquet, .fits, .zip, .tar or .tar.gz")

    def body() -> Any:
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                yield block

    with _client(args) as c:
        r = c.put(
            f"/datasets/{args.name}",
            content=body(),
            headers={"content-type": CONTENT_TYPES[suffix]},
        )
        return _print(_answer(r, 201))


def _cmd_build(args: argparse.Namespace) -> int:
    from training.commands import api_key, submit_build

    spec = {"name": args.name, "simulator": args.simulator, "rows": args.rows, "seed": args.seed}
    if args.draw_seed is not None:
        spec["draw_seed"] = args.draw_seed
    return _print(submit_build(args.url, api_key(args), spec, args.quiet))


def _cmd_delete(args: argparse.Namespace) -> int:
    with _client(args) as c:
        _answer(c.delete(f"/datasets/{args.name}"), 204)
    print(f"deleted {args.name}")
    return 0


def _cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as c:
        return _print(_answer(c.delete(f"/datasets/jobs/{args.job_id}"), 202))


def add_commands(sub: Any) -> None:
    text = "datasets of a running service: list, show, upload, build, delete, cancel"
    ds = sub.add_parser("datasets", help=text, description=text[0].upper() + text[1:] + ".")
    ds.add_argument(
        "--url",
        default=os.environ.get("COSMOGAN_URL", "http://127.0.0.1:8000"),
        help="the service (default: COSMOGAN_URL, else http://127.0.0.1:8000)",
    )
    ds.add_argument("--api-key", help="the API key (default: COSMOGAN_API_KEY)")
    dsub = ds.add_subparsers(required=True, metavar="ACTION")
    dsub.add_parser("list", help="every dataset").set_defaults(func=_cmd_list)
    p = dsub.add_parser("show", help="one dataset's description")
    p.add_argument("name", help="the dataset")
    p.set_defaults(func=_cmd_show)
    p = dsub.add_parser("upload", help="a catalog (CSV/Parquet/FITS) or image archive (zip/tar)")
    p.add_argument("name", help="the new dataset's name")
    p.add_argument("file", help=".csv, .parquet, .fits, .zip, .tar or .tar.gz")
    p.set_defaults(func=_cmd_upload)
    p = dsub.add_parser("build", help="a mini-Balrog catalog, fanned out over the data workers")
    p.add_argument("name", help="the new dataset's name")
    p.add_argument("--rows", type=int, default=100_000, help="galaxies in the catalog")
    p.add_argument(
        "--simulator", choices=["galsim", "analytic"], default="galsim", help="the simulator"
    )
    p.add_argument("--seed", type=int, default=0, help="fixes the objects and conditions")
    p.add_argument("--draw-seed", type=int, default=None, help="the simulator's draws")
    p.set_defaults(func=_cmd_build)
    p = dsub.add_parser("delete", help="delete a dataset (refused while a job uses it)")
    p.add_argument("name", help="the dataset")
    p.set_defaults(func=_cmd_delete)
    p = dsub.add_parser("cancel", help="cancel a build (its finished chunks are kept)")
    p.add_argument("job_id", help="the build's job id")
    p.set_defaults(func=_cmd_cancel)
