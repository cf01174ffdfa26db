"""The `cosmogan` command line: data, datasets, train, generate, emulate, evaluate, serve, api,
worker."""

from __future__ import annotations

import argparse
import logging
import sys
from importlib import metadata
from typing import Any

from launcher import datasets_cli
from training import commands as training_commands
from training.presets import PresetError


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default after its meaning, unless there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        d = action.default
        if d is None or d is False or d is argparse.SUPPRESS or d == []:
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """Every (sub-)command's parser: sub-parsers are built with the parent's class."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def version() -> str:
    try:
        return metadata.version("cosmogan")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown (not installed)"


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
    from launcher.service import serve

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
    p = Parser(prog="cosmogan", description=__doc__)
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    p.add_argument("-q", "--quiet", action="store_true", help="less logging, no progress bar")
    sub = p.add_subparsers(required=True, metavar="COMMAND")

    training_commands.add_commands(sub)
    datasets_cli.add_commands(sub)

    host_help = "address to listen on (default: COSMOGAN_HOST, else 127.0.0.1)"
    port_help = "port to listen on (default: COSMOGAN_PORT, else 8000)"
    workers_help = "API processes (default: one per 4 cores, 1 to 8)"
    text = "Redis (embedded if needed) + worker + API on one machine"
    se = sub.add_parser("serve", help=text, description=text + "; Ctrl-C stops all three.")
    se.add_argument("--host", default=None, help=host_help)
    se.add_argument("--port", type=int, default=None, help=port_help)
    se.add_argument("--concurrency", type=int, default=1, help="training processes")
    se.add_argument("--api-workers", type=int, default=None, help=workers_help)
    se.set_defaults(func=_cmd_serve)
    ap = sub.add_parser("api", help="the HTTP API alone", description="The HTTP API alone.")
    ap.add_argument("--host", default=None, help=host_help)
    ap.add_argument("--port", type=int, default=None, help=port_help)
    ap.add_argument("--workers", type=int, default=None, help=workers_help)
    ap.set_defaults(func=_cmd_api)
    text = "a Celery worker alone (training jobs, inference, dataset builds)"
    wo = sub.add_parser("worker", help=text, description=text[0].upper() + text[1:] + ".")
    wo.add_argument(
        "--queues",
        default="training,inference,data",
        help="comma-separated queues to take work from (training, inference, data)",
    )
    wo.add_argument("--concurrency", type=int, default=1, help="training processes")
    wo.set_defaults(func=_cmd_worker)
    return p


if __name__ == "__main__":
    raise SystemExit(main())
