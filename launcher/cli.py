"""The `cosmogan` command line: data, train, generate, emulate, evaluate, serve, api, worker."""

from __future__ import annotations

import argparse
import logging
import sys

from training import cli as training_cli
from training.presets import PresetError


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if not getattr(args, "quiet", False) else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except (PresetError, FileNotFoundError, ValueError, LookupError) as exc:
        print(f"cosmogan: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cosmogan: interrupted", file=sys.stderr)
        return 130


# --------------------------------------------------------------------------------------------
# service
def _cmd_serve(args: argparse.Namespace) -> int:
    from launcher.supervisor import serve

    return serve(
        host=args.host,
        port=args.port,
        concurrency=args.concurrency,
        api_processes=args.api_workers,
    )


def _cmd_api(args: argparse.Namespace) -> int:
    from launcher.supervisor import run_api

    return run_api(host=args.host, port=args.port, workers=args.workers)


def _cmd_worker(args: argparse.Namespace) -> int:
    from launcher.supervisor import run_worker

    return run_worker(queues=args.queues, concurrency=args.concurrency)


# --------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cosmogan", description=__doc__)
    p.add_argument("-q", "--quiet", action="store_true", help="less logging, no progress bar")
    sub = p.add_subparsers(required=True, metavar="COMMAND")

    training_cli.add_commands(sub)

    settings_help = "(default: COSMOGAN_HOST/COSMOGAN_PORT)"
    workers_help = "API processes (default: one per 4 cores, 1 to 8)"
    se = sub.add_parser("serve", help="Redis (embedded if needed) + worker + API on one machine")
    se.add_argument("--host", default=None, help=settings_help)
    se.add_argument("--port", type=int, default=None)
    se.add_argument("--concurrency", type=int, default=1, help="training processes")
    se.add_argument("--api-workers", type=int, default=None, help=workers_help)
    se.set_defaults(func=_cmd_serve)
    ap = sub.add_parser("api", help="the HTTP API alone")
    ap.add_argument("--host", default=None, help=settings_help)
    ap.add_argument("--port", type=int, default=None)
    ap.add_argument("--workers", type=int, default=None, help=workers_help)
    ap.set_defaults(func=_cmd_api)
    wo = sub.add_parser("worker", help="a Celery worker alone")
    wo.add_argument("--queues", default="training,inference")
    wo.add_argument("--concurrency", type=int, default=1, help="training processes")
    wo.set_defaults(func=_cmd_worker)
    return p


if __name__ == "__main__":
    raise SystemExit(main())
