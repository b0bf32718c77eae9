"""Command-line entry: ``smsc serve | carrier | carrier-mo | load``.

The only place that configures logging handlers and picks the event loop (uvloop when
installed). Exit status: 0 done, 1 runtime failure (port in use, simulator unreachable),
2 usage or configuration error — printed as ``smsc: <file>: <key path>: <reason>``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from simulator.config import CarrierConfig
from smppcore.config import ConfigError
from smsc import __version__
from smsc.configfile import load_yaml_config

if TYPE_CHECKING:
    from simulator.admin import Admin

log = logging.getLogger(__name__)

_PENDING = {
    "serve": "run the SMPP server and router",
    "load": "run the load-test harness against an SMPP server",
}

_CARRIER_HELP = """\
Without --config, runs the embedded default: 127.0.0.1:2776, one account test/test
(transmitter, receiver, transceiver; up to 100 sessions), receipts on, a realistic
latency and delivery-state profile. conf/carrier.example.yaml documents every key.

With --metrics-port (or admin_port in the file) an HTTP admin endpoint listens on
admin_host (default 127.0.0.1):
  GET  /metrics   Prometheus metrics (smsc_carrier_*)
  POST /mo        inject an MO message, JSON:
                  {"system_id": "test", "text": "Hi", "source": "447700900123",
                   "destination": "1234", "data_coding": null}
                  -> 202 {"system_id": "test", "parts": 1}
See also: smsc carrier-mo --help.

Prints "smsc carrier: listening on HOST:PORT" once ready. SIGINT/SIGTERM unbind every
session and exit 0; a second signal exits at once."""

_MO_HELP = """\
Example:
  smsc carrier --metrics-port 9776 &
  smsc carrier-mo --port 9776 --system-id test --source 447700900123 \\
      --destination 1234 --text "Hello from a phone"
A missing source or destination is drawn from the account profile's mo ranges; the
coding is GSM when the text fits, else UCS-2 (or --data-coding); long texts go as UDH
parts. Exit status 0 when queued, 1 when refused or unreachable."""


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not in 0..65535")
    return port


def _octet(value: str) -> int:
    try:
        number = int(value, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not 0 <= number <= 255:
        raise argparse.ArgumentTypeError(f"{number} is not in 0..255")
    return number


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smsc",
        description="SMPP 3.4 server, carrier simulator and least-cost router.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    fmt = argparse.RawDescriptionHelpFormatter

    commands.add_parser("serve", help=_PENDING["serve"], description=_PENDING["serve"])

    summary = "run a standalone carrier simulator"
    carrier = commands.add_parser(
        "carrier", help=summary, description=summary, epilog=_CARRIER_HELP, formatter_class=fmt
    )
    carrier.add_argument("--config", metavar="FILE", help="YAML configuration file")
    carrier.add_argument("--host", help="SMPP listen address (overrides the file)")
    carrier.add_argument(
        "--port", type=_port, help="SMPP listen port; 0 picks a free one (overrides the file)"
    )
    carrier.add_argument(
        "--metrics-port",
        type=_port,
        metavar="PORT",
        help="admin HTTP port for /metrics and POST /mo; 0 picks a free one (default: off)",
    )
    carrier.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="default: info",
    )

    summary = "inject an MO message into a running carrier simulator (via its admin port)"
    mo = commands.add_parser(
        "carrier-mo", help=summary, description=summary, epilog=_MO_HELP, formatter_class=fmt
    )
    mo.add_argument("--host", default="127.0.0.1", help="admin host (default: 127.0.0.1)")
    mo.add_argument("--port", type=_port, required=True, help="admin port (--metrics-port)")
    mo.add_argument("--system-id", default="test", help="account to deliver to (default: test)")
    mo.add_argument("--source", help="originating number (default: drawn from the profile)")
    mo.add_argument("--destination", help="short code or number (default: from the profile)")
    mo.add_argument("--text", required=True, help="message text")
    mo.add_argument("--data-coding", type=_octet, help="0 GSM, 8 UCS-2, ... (default: auto)")
    mo.add_argument("--timeout", type=float, default=10.0, help="seconds (default: 10)")

    commands.add_parser("load", help=_PENDING["load"], description=_PENDING["load"])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the command and return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    if args.command == "carrier":
        return _carrier(args)
    if args.command == "carrier-mo":
        return _carrier_mo(args)
    print(f"smsc {args.command}: not yet available in smsc {__version__}", file=sys.stderr)
    return 2


# --- smsc carrier ---------------------------------------------------------------------------


def carrier_config(args: argparse.Namespace) -> CarrierConfig:
    """The configuration: the file (or the embedded default) with command-line overrides."""
    config = CarrierConfig()
    if args.config is not None:
        config = load_yaml_config(args.config, CarrierConfig)
    changes: dict[str, Any] = {}
    if args.host is not None:
        changes["host"] = args.host
    if args.port is not None:
        changes["port"] = args.port
    if args.metrics_port is not None:
        changes["admin_port"] = args.metrics_port
    return msgspec.structs.replace(config, **changes) if changes else config


def _carrier(args: argparse.Namespace) -> int:
    try:
        config = carrier_config(args)
    except ConfigError as exc:
        print(f"smsc: {exc}", file=sys.stderr)
        return 2
    _setup_logging(args.log_level)
    try:
        return _run(run_carrier(config))
    except OSError as exc:  # the port is taken, the address does not exist, ...
        print(f"smsc carrier: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a signal before the handlers were in place
        return 130


async def run_carrier(config: CarrierConfig) -> int:
    """Run a carrier (and its admin endpoint and MO generators) until SIGINT/SIGTERM."""
    # Imported here so that `smsc --help` and `smsc carrier-mo` do not load aiohttp.
    from prometheus_client import CollectorRegistry

    from simulator.admin import Admin
    from simulator.carrier import Carrier
    from simulator.mo import start_mo_generators, stop_mo_generators

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals: list[int] = []

    def on_signal(signum: int) -> None:
        signals.append(signum)
        if len(signals) == 1:
            log.info("%s: shutting down (again to force)", signal.Signals(signum).name)
            stop.set()
        else:
            print("smsc carrier: second signal, exiting at once", file=sys.stderr, flush=True)
            os._exit(128 + signum)

    installed = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, on_signal, signum)
            installed.append(signum)
        except (NotImplementedError, RuntimeError):  # not the main thread, or no support
            pass
    registry = CollectorRegistry()
    carrier = Carrier(config, registry=registry)
    admin: Admin | None = None
    generators: list[asyncio.Task[None]] = []
    try:
        await carrier.start()
        generators = start_mo_generators(carrier)
        if config.admin_port is not None:
            admin = Admin(carrier, registry, rng=random.Random(f"{config.system_id}:admin-mo"))
            await admin.start(config.admin_host, config.admin_port)
            where = _where(config.admin_host, admin.port)
            print(f"smsc carrier: admin (GET /metrics, POST /mo) on http://{where}", flush=True)
        print(f"smsc carrier: listening on {_where(config.host, carrier.port)}", flush=True)
        await stop.wait()
    finally:
        # Listeners first (admin), then the traffic we originate, then unbind every session.
        if admin is not None:
            await admin.stop()
        await stop_mo_generators(generators)
        await carrier.stop()
        for signum in installed:
            loop.remove_signal_handler(signum)
    log.info("carrier stopped")
    return 0


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _run(coro: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop when it is installed, on the standard loop otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


# --- smsc carrier-mo ------------------------------------------------------------------------


def _carrier_mo(args: argparse.Namespace) -> int:
    url = f"http://{_where(args.host, args.port)}/mo"
    body = {
        "system_id": args.system_id,
        "text": args.text,
        "source": args.source,
        "destination": args.destination,
        "data_coding": args.data_coding,
    }
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            reply = json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            error = json.loads(exc.read()).get("error", exc.reason)
        except (ValueError, AttributeError):
            error = exc.reason
        print(f"smsc carrier-mo: refused ({exc.code}): {error}", file=sys.stderr)
        return 1
    except urllib.error.URLError as exc:
        print(f"smsc carrier-mo: cannot reach {url}: {exc.reason}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:  # timeouts, resets, a reply that is not JSON
        print(f"smsc carrier-mo: {url}: {exc}", file=sys.stderr)
        return 1
    print(f"queued {reply.get('parts', '?')} part(s) for {reply.get('system_id', args.system_id)}")
    return 0
