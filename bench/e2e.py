"""End to end with receipts: windowed clients → ``smsc serve`` → ``smsc carrier`` → back.

Run from the repository root:  .venv/bin/python bench/e2e.py [--quick] [--profile FILE]

Processes (each its own): the carrier ``python -m smsc carrier --config
bench/conf/carrier-bench.yaml`` (no latency, an immediate DELIVRD receipt per message);
``python -m smsc serve`` on a copy of bench/conf/smsc-bench.yaml pointing its one router
carrier (4 binds x window 500) at that process, route "" → it, ack_after enqueue, the
store in a temporary directory; and the generator ``python -m simulator.load`` (``smsc
load``, B transceivers x window W, a receipt asked for every message).

Runs, in this order:

1. reference — the same closed-loop load straight at the carrier: the ceiling this
   machine gives one Python SMSC hop with receipts (the "peer"; ratio = e2e / that);
2. closed loop at ``smsc serve``: ``msgs_per_s`` = receipts returned to the client per
   second (steady state from the harness's per-second series: without the first second,
   through the drain, without the last partial second); submits/s besides;
3. open loop at half of (2)'s ``msgs_per_s``: ``p99_submit_ms`` = submit_sm →
   submit_sm_resp p99 counted from each message's intended send time (no coordinated
   omission), the service time (from the actual send) besides.

The machine has 2 cores for 3 busy processes (serve, carrier, generator) — and whatever
else runs. The CPU share of each (utime+stime from /proc, 1.0 = one core) and of the
whole machine is reported for every run, so the line says what saturated.

``--serve-entry FILE.py`` runs ``smsc serve`` through a script (a patch under trial).

``--profile FILE``: after the measured runs, one more closed-loop run with ``smsc serve``
under cProfile (its own process, stopped with SIGTERM so the profile is written); the top
entries by tottime are printed and FILE keeps the pstats data. Profiled figures are slower
(cProfile's overhead) and are not the measurement.

Last output line: one JSON object with ``msgs_per_s``, ``p99_submit_ms``,
``ratio_vs_carrier_direct`` and the details. Targets: msgs_per_s >= 20,000 and
p99_submit_ms < 5 at half that rate.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("bench_carrier", ROOT / "bench" / "carrier.py")
assert _spec is not None
assert _spec.loader is not None
cb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cb)

procs = cb.procs


def start_serve(
    tmp: Path,
    carrier_port: int,
    profile: Path | None = None,
    wrapper: str | None = None,
    store_settings: dict[str, Any] | None = None,
) -> tuple[subprocess.Popen[str], int]:
    """``store_settings``: more ``router.store`` keys (bench/soak.py: a short keep_days)."""
    data = procs.serve_config(carrier_port, tmp / ("profiled.db" if profile else "smsc.db"))
    data["router"]["store"].update(store_settings or {})
    pre = ("-m", "cProfile", "-o", str(profile)) if profile is not None else ()
    return procs.start_serve(data, tmp, pre, wrapper)


def wait_bound(seconds: float = 1.0) -> None:
    # The router binds its carrier pool after "listening"; give it a moment (no API to await).
    time.sleep(seconds)


def show(label: str, x: dict[str, Any], names: tuple[str, ...]) -> str:
    cpu = " / ".join(f"{n} {x['cpu'][n]:.2f}" for n in (*names, "generator", "machine"))
    extra = (
        f"; service p99 {x['service_p99_ms']} ms, send lag p99 {x['send_lag_p99_ms']} ms"
        if "service_p99_ms" in x
        else ""
    )
    return (
        f"{label}: {x['msgs_per_s']:>9,.0f} receipts/s  (submits {x['submits_per_s']:,.0f}/s;"
        f" {x['receipts']:,}/{x['accepted']:,} receipts, {x['missing']} missing,"
        f" {x['rejected']} rejected; submit p50 {x['submit_p50_ms']} p99 {x['submit_p99_ms']} ms"
        f"{extra}; receipt p99 {x['receipt_p99_ms']} ms; CPU {cpu} cores)"
    )


def top_entries(profile: Path, n: int) -> list[str]:
    out = io.StringIO()
    stats = pstats.Stats(str(profile), stream=out)
    stats.sort_stats("tottime").print_stats(n)
    lines = out.getvalue().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("ncalls"))
    return [line.replace(str(ROOT) + "/", "") for line in lines[start:] if line.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="runs of 3 s")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of sending per run")
    parser.add_argument("--binds", type=int, default=4)
    parser.add_argument("--window", type=int, default=200)
    parser.add_argument("--workers", type=int, default=1, help="generator processes (default 1)")
    parser.add_argument("--rate", type=float, help="open-loop rate (default: half the max)")
    parser.add_argument("--profile", metavar="FILE", help="also profile smsc serve (cProfile)")
    parser.add_argument("--top", type=int, default=20, help="profile entries to print")
    parser.add_argument(
        "--serve-entry",
        metavar="FILE.py",
        help="start smsc serve as `python FILE.py serve ...` instead of `python -m smsc serve"
        " ...` (to measure a patch kept outside the tree; FILE ends by calling smsc.cli.main)",
    )
    args = parser.parse_args()
    if args.quick:
        args.duration = 3.0
    started = time.monotonic()
    print(
        f"smsc bench/e2e.py: {args.binds} transceivers x window {args.window}, receipts on,"
        f" {args.duration:g} s per run, generator smsc load --workers {args.workers};"
        f" serve -> carrier (4 binds x window 500); nproc={len(os.sched_getaffinity(0))}",
        flush=True,
    )
    carrier, carrier_port = procs.start_carrier()
    results: dict[str, Any] = {}
    profile_top: list[str] = []
    try:
        with tempfile.TemporaryDirectory(prefix="smsc-e2e-") as tmpdir:
            tmp = Path(tmpdir)
            ref = cb.run_load("carrier", {"carrier": carrier.pid}, carrier_port, args)
            results["carrier_direct"] = ref
            print(show("reference: load -> carrier      ", ref, ("carrier",)), flush=True)
            serve, port = start_serve(tmp, carrier_port, wrapper=args.serve_entry)
            try:
                wait_bound()
                pids = {"serve": serve.pid, "carrier": carrier.pid}
                closed = cb.run_load("serve", pids, port, args)
                results["closed_loop"] = closed
                print(show("closed loop: load -> serve -> carrier", closed, ("serve", "carrier")))
                rate = args.rate or max(100.0, round(closed["msgs_per_s"] / 2, -2))
                opened = cb.run_load("serve", pids, port, args, ("--rate", str(rate)))
                opened["target_rate"] = rate
                results["open_loop"] = opened
                label = f"open loop at {rate:,.0f}/s".ljust(31)
                print(show(label, opened, ("serve", "carrier")), flush=True)
            finally:
                procs.stop_server(serve)
            if args.profile:
                prof = Path(args.profile).resolve()
                serve, port = start_serve(tmp, carrier_port, prof, args.serve_entry)
                try:
                    wait_bound()
                    profiled = cb.run_load(
                        "serve (cProfile)", {"serve": serve.pid, "carrier": carrier.pid}, port, args
                    )
                finally:
                    serve.send_signal(signal.SIGTERM)
                    serve.wait(30)
                results["profiled_closed_loop"] = profiled
                print(show("profiled closed loop (cProfile)", profiled, ("serve", "carrier")))
                profile_top = top_entries(prof, args.top)
                print(f"smsc serve under cProfile, top {args.top} by tottime:")
                for line in profile_top:
                    print("  " + line)
    finally:
        procs.stop_server(carrier)
    closed, opened, ref = results["closed_loop"], results["open_loop"], results["carrier_direct"]
    ratio = closed["msgs_per_s"] / ref["msgs_per_s"] if ref["msgs_per_s"] else 0.0
    saturates = cb.saturation(closed["cpu"], "serve", args.workers)
    if closed["cpu"]["carrier"] >= 0.85:
        saturates = f"carrier ({closed['cpu']['carrier']:.2f} core)"
    met = closed["msgs_per_s"] >= 20_000 and (opened["submit_p99_ms"] or 1e9) < 5
    print(
        f"e2e {closed['msgs_per_s']:,.0f} receipts/s (target 20,000) = {ratio:.2f}x the carrier"
        f" alone ({ref['msgs_per_s']:,.0f}); p99 submit {opened['submit_p99_ms']} ms at"
        f" {opened['target_rate']:,.0f}/s (target < 5); saturates: {saturates};"
        f" {time.monotonic() - started:.0f} s"
    )
    cb.last_line(
        {
            "bench": "e2e",
            "msgs_per_s": closed["msgs_per_s"],
            "p99_submit_ms": opened["submit_p99_ms"],
            "open_loop_rate": opened["target_rate"],
            "peer": "the same load straight at smsc carrier (one hop, the ceiling)",
            "peer_msgs_per_s": ref["msgs_per_s"],
            "ratio_vs_carrier_direct": round(ratio, 2),
            "targets": {"msgs_per_s": 20_000, "p99_submit_ms": 5},
            "targets_met": met,
            "saturates": saturates,
            **results,
            "workers": args.workers,
        },
        args,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
