"""``smsc load``: the command line of the load-test harness.

``smsc/cli.py`` wires it with :func:`add_arguments` and :func:`run`; ``python -m
simulator.load`` runs the same thing on its own. Exit status: 0 done, 1 the run failed
(nothing to bind to, a worker died), 2 bad arguments or configuration (printed as
``smsc load: <file>: <key path>: <reason>``), 130 stopped by Ctrl-C (the partial report is
still written and printed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from simulator.load.config import LoadConfig, decode_config, set_path
from smppcore.config import ConfigError
from smppcore.configfile import read_yaml_mapping

DESCRIPTION = "run the load-test harness against an SMPP server"

EPILOG = """\
Examples:
  smsc load --host 127.0.0.1 --port 2776 --system-id test --password test --duration 30
  smsc load conf/scenarios/carrier-smoke.yaml --json run.json --html run.html
  smsc load conf/scenarios/open-loop.yaml --rate 5000 --ramp 10

Flags override the scenario file; conf/scenarios/README.md documents every key. Without
--rate the run is closed-loop: every bind keeps its window full (the server's maximum).
With --rate it is open-loop: messages go out on schedule and latency counts from the
intended send time, so a stalling server cannot hide its stall (coordinated omission).

A live progress line goes to stderr on a terminal. stdout gets a short summary whose last
line is the summary as one JSON object. Ctrl-C stops sending and still reports (exit 130);
a second Ctrl-C exits at once."""

#: flag dest → key path in the scenario data.
_FLAGS: dict[str, str] = {
    "host": "target.host",
    "port": "target.port",
    "system_id": "target.system_id",
    "password": "target.password",
    "system_type": "target.system_type",
    "binds": "binds.count",
    "bind_type": "binds.type",
    "window": "binds.window",
    "response_timeout": "binds.response_timeout",
    "rate": "load.rate",
    "ramp": "load.ramp",
    "duration": "load.duration",
    "messages": "load.messages",
    "workers": "load.workers",
    "registered_delivery": "traffic.registered_delivery",
    "grace": "receipts.grace",
    "json": "report.json",
    "html": "report.html",
    "png": "report.png",
    "progress": "report.progress",
    "seed": "seed",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``smsc load`` arguments to ``parser`` (a subcommand's parser)."""
    parser.description = DESCRIPTION
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("scenario", nargs="?", metavar="SCENARIO.yaml", help="scenario file")
    target = parser.add_argument_group("target")
    target.add_argument("--host", help="SMPP server address (default 127.0.0.1)")
    target.add_argument("--port", type=int, help="SMPP server port (default 2776)")
    target.add_argument("--system-id", help="system_id to bind with (default test)")
    target.add_argument("--password", help="password (default test)")
    target.add_argument("--system-type", help="system_type (default empty)")
    binds = parser.add_argument_group("binds")
    binds.add_argument("--binds", type=int, metavar="N", help="transceivers or tx+rx pairs")
    binds.add_argument(
        "--bind-type",
        choices=["transceiver", "transmitter+receiver", "trx", "tx+rx"],
        help="default transceiver",
    )
    binds.add_argument("--window", type=int, metavar="N", help="submits in flight per bind")
    binds.add_argument("--response-timeout", type=float, metavar="S", help="seconds")
    load = parser.add_argument_group("load")
    load.add_argument(
        "--rate", type=float, metavar="MSG/S", help="open-loop rate; 0 or absent: closed loop"
    )
    load.add_argument("--ramp", type=float, metavar="S", help="seconds to reach --rate")
    load.add_argument("--duration", type=float, metavar="S", help="seconds of sending")
    load.add_argument("--messages", type=int, metavar="N", help="messages to send in all")
    load.add_argument("--workers", type=int, metavar="N", help="processes (default: cores)")
    load.add_argument(
        "--registered-delivery",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="ask for receipts and measure them (default on)",
    )
    load.add_argument("--grace", type=float, metavar="S", help="seconds to wait for receipts")
    load.add_argument("--seed", type=int, help="seed of addresses, texts and mix")
    out = parser.add_argument_group("output")
    out.add_argument("--json", metavar="FILE", help="write the full JSON report")
    out.add_argument("--html", metavar="FILE", help="write the HTML report (needs smsc[report])")
    out.add_argument("--png", metavar="FILE", help="write the charts as one PNG picture")
    out.add_argument(
        "--progress", choices=["auto", "always", "never"], help="progress line (default auto)"
    )
    out.add_argument(
        "--log-level", default="warning", choices=["debug", "info", "warning", "error"]
    )


def build_config(args: argparse.Namespace) -> LoadConfig:
    """The scenario file (if any) with the flags laid over it. Raises ConfigError."""
    source = args.scenario or ""
    data: dict[str, Any] = read_yaml_mapping(args.scenario) if args.scenario else {}
    for dest, path in _FLAGS.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if dest == "bind_type":
            value = {"trx": "transceiver", "tx+rx": "transmitter+receiver"}.get(value, value)
        if dest == "rate" and value == 0:
            value = None
        set_path(data, path, value)
    try:
        return decode_config(data, source=source)
    except ConfigError as exc:
        flag = next((d for d, p in _FLAGS.items() if exc.path == "$." + p), None)
        if flag is not None and getattr(args, flag, None) is not None:
            raise ConfigError("--" + flag.replace("_", "-"), exc.reason, source="") from None
        raise


def run(args: argparse.Namespace) -> int:
    """Run ``smsc load`` with parsed ``args``; returns the exit status."""
    try:
        config = build_config(args)
    except ConfigError as exc:
        print(f"smsc load: {exc}", file=sys.stderr)
        return 2
    if config.report.html is not None or config.report.png is not None:
        from simulator.load import html

        missing = html.missing_dependency()
        if missing:
            flag = "--html" if config.report.html is not None else "--png"
            print(f"smsc load: {flag}: {missing}", file=sys.stderr)
            return 2
    logging.basicConfig(
        level=getattr(args, "log_level", "warning").upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from simulator.load.run import Progress, run_load

    mode = config.report.progress
    progress = Progress(mode == "always" or (mode == "auto" and sys.stderr.isatty()))
    try:
        report = _run_loop(run_load(config, progress=progress, install_signals=True))
    except KeyboardInterrupt:  # before the handlers were in place
        return 130
    summary = report["summary"]
    status = 0
    if summary.get("error"):
        print(f"smsc load: {summary['error']}", file=sys.stderr)
        status = 1
    elif summary["interrupted"]:
        status = 130
    try:
        if config.report.json is not None:
            Path(config.report.json).write_text(json.dumps(report, indent=1) + "\n")
        if config.report.html is not None:
            from simulator.load import html

            Path(config.report.html).write_text(html.render(report), encoding="utf-8")
        if config.report.png is not None:
            from simulator.load import html

            html.save_png(report, config.report.png)
    except OSError as exc:
        print(f"smsc load: cannot write the report: {exc}", file=sys.stderr)
        status = status or 1
    for line in human_summary(summary):
        print(line)
    print(json.dumps(summary, separators=(",", ":")), flush=True)
    return status


def _run_loop(coro: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def _ms(figures: dict[str, Any]) -> str:
    if not figures.get("count"):
        return "none"
    keys = ("p50", "p90", "p99", "p999", "max")
    labels = ("p50", "p90", "p99", "p99.9", "max")
    return "  ".join(
        f"{label} {figures[k + '_ms']:g}" for k, label in zip(keys, labels, strict=True)
    )


def human_summary(s: dict[str, Any]) -> list[str]:
    """A few readable lines of the summary."""
    state = " (INTERRUPTED: partial)" if s["interrupted"] else ""
    lines = [
        f"smsc load: {s['target']}, {s['mode']}"
        + (f" at {s['target_rate']:g} msg/s" if s["target_rate"] else "")
        + f", {s['binds']} {s['bind_type']} x window {s['window']}, {s['workers']} worker(s),"
        f" {s['sending_s']:.1f} s of sending{state}",
        f"  messages {s['messages']:,} ({s['msgs_per_s']:,.0f}/s)  submits {s['submitted']:,}"
        f"  accepted {s['accepted']:,}  rejected {s['rejected']:,}  throttled"
        f" {s['throttled'] + s['queue_full']:,}  timeouts {s['timeouts']:,}  lost {s['lost']:,}",
        f"  submit->resp latency ms: {_ms(s['latency'])}",
    ]
    if s["rejected_by_status"]:
        lines.append(
            "  rejected: " + ", ".join(f"{k} {v:,}" for k, v in s["rejected_by_status"].items())
        )
    r = s["receipts"]
    if r["requested"]:
        states = ", ".join(f"{k} {v:,}" for k, v in r["by_state"].items()) or "none"
        lines.append(
            f"  receipts {r['received']:,} ({states})  missing {r['missing']:,}"
            f"  unmatched {r['unmatched']:,}  latency ms: {_ms(r['latency'])}"
        )
    conn = s["connections"]
    if conn["drops"] or conn["reconnects"] or s["mo"]:
        lines.append(f"  drops {conn['drops']}  reconnects {conn['reconnects']}  MO {s['mo']:,}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="smsc load")
    add_arguments(parser)
    return run(parser.parse_args(argv))
