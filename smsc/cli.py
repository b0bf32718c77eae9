"""Command-line entry: ``smsc serve | carrier | load``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from smsc import __version__

_COMMANDS = {
    "serve": "run the SMPP server and router",
    "carrier": "run a standalone carrier simulator",
    "load": "run the load-test harness against an SMPP server",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smsc",
        description="SMPP 3.4 server, carrier simulator and least-cost router.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, summary in _COMMANDS.items():
        commands.add_parser(name, help=summary, description=summary)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the command and return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    print(f"smsc {args.command}: not yet available in smsc {__version__}", file=sys.stderr)
    return 2
