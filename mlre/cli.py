"""The `mlre` command line: a thin layer over the core (`mlre.platform` and friends).

Add a subcommand by decorating a handler `(args, settings) -> exit code` with `@command(...)`,
optionally passing `configure=` to add its arguments:

    @command("demo", help="run the whole pipeline", configure=lambda p: p.add_argument("--fast"))
    def _demo(args: argparse.Namespace, settings: Settings) -> int: ...
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pydantic import ValidationError

from mlre import platform
from mlre.errors import MlreError
from mlre.platform import ServiceStatus
from mlre.settings import Settings, apply_runtime_env, get_settings

Handler = Callable[[argparse.Namespace, Settings], int]
Configure = Callable[[argparse.ArgumentParser], None]


@dataclass(frozen=True)
class Subcommand:
    """One `mlre <name>` entry: its help line, its arguments and what it runs."""

    help: str
    handler: Handler
    configure: Configure | None = None


SUBCOMMANDS: dict[str, Subcommand] = {}


def command(
    name: str, *, help: str, configure: Configure | None = None
) -> Callable[[Handler], Handler]:
    """Register `handler` as `mlre <name>`."""

    def register(handler: Handler) -> Handler:
        SUBCOMMANDS[name] = Subcommand(help=help, handler=handler, configure=configure)
        return handler

    return register


def _echo(message: str) -> None:
    print(message, flush=True)


@command("up", help="start the local Prefect and MLflow servers (reuses running ones)")
def _up(args: argparse.Namespace, settings: Settings) -> int:
    rows = platform.up(settings, echo=_echo)
    _print_table(rows)
    print(f"\nexport PREFECT_API_URL={settings.prefect_api_url}")
    print(f"export MLFLOW_TRACKING_URI={settings.mlflow_tracking_uri}")
    return 0


@command("down", help="stop workers, then the servers (idempotent)")
def _down(args: argparse.Namespace, settings: Settings) -> int:
    platform.down(settings, echo=_echo)
    return 0


@command("status", help="show each service's URL, PID and health (exit 1 unless all healthy)")
def _status(args: argparse.Namespace, settings: Settings) -> int:
    rows = platform.status(settings)
    _print_table(rows)
    return 0 if platform.services_healthy(rows, settings) else 1


def _print_table(rows: Sequence[ServiceStatus]) -> None:
    """Print status rows as an aligned table."""
    header = ("SERVICE", "URL", "PID", "HEALTH", "LOG")
    lines = [header] + [(r.name, r.url, str(r.pid or "-"), r.health, str(r.log_path)) for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    for line in lines:
        cells = [cell.ljust(width) for cell, width in zip(line, widths, strict=False)]
        print("  ".join([*cells, line[-1]]))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one subparser per registered subcommand."""
    parser = argparse.ArgumentParser(prog="mlre", description="ML reliability platform.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, sub in SUBCOMMANDS.items():
        child = subparsers.add_parser(name, help=sub.help, description=sub.help)
        if sub.configure is not None:
            sub.configure(child)
        child.set_defaults(handler=sub.handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point `mlre`: parse, export the runtime environment, run, map errors."""
    args = build_parser().parse_args(argv)
    try:
        settings = get_settings()
    except ValidationError as exc:
        bad = ", ".join(f"MLRE_{str(e['loc'][0]).upper()}: {e['msg']}" for e in exc.errors())
        print(f"mlre {args.command}: error: invalid setting ({bad}).", file=sys.stderr)
        return 2
    try:
        apply_runtime_env(settings)
        return int(args.handler(args, settings))
    except MlreError as exc:
        # A user-fixable problem: the message names the input and what to do; no traceback.
        print(f"mlre {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mlre {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
