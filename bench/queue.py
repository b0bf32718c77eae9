"""A carrier outage with a deep queue (issue 13, section 2): intake as the queue deepens,
bytes per queued message, idle CPU with the deep queue, then the drain.

Run from the repository root:  .venv/bin/python bench/queue.py [--quick] [--depth N]

Processes (each its own): ``python -m smsc serve`` on a copy of bench/conf/smsc-bench.yaml
whose one carrier points at a loopback port where nothing listens yet (its binds cannot
connect), ``queue_max`` = depth + 2 windows, the store in a temporary directory; the
generator ``python -m simulator.load`` (``smsc load``, 4 transceivers x window 200,
``--no-registered-delivery``, closed loop, texts of 160 GSM characters, a refused submit
not retried).

Steps, in this order:

1. idle CPU of serve with the queue empty (the peer of step 5), RSS empty;
2. intake windows of W messages (default 50,000) at depths 0, depth/4 and depth, the
   queue filled in between by unmeasured runs: accepted/s and submit p99 of each window.
   The peer is the window at depth 0: the ratios deep/empty are printed;
3. RSS with the deep queue, once serve is idle (the store has written what it was given):
   bytes per queued message = (RSS deep - RSS empty) / queued;
4. the queue filled up to ``queue_max``; then 20,000 submits more must all be answered
   ESME_RMSGQFUL at once (their p99);
5. idle CPU of serve over 10 s with the deep queue and no traffic (target < 2 % of a core);
6. (unless --no-drain) ``smsc carrier`` (bench/conf/carrier-bench.yaml) starts on the port:
   the backlog drains — seconds until the queue is empty, from the metrics endpoint, and
   the rate; its peer: W messages more through serve to the carrier with the queue empty
   (submitted and sent, the same path at the carrier's speed).

The queue depth is read from serve's metrics endpoint (``smsc_queue_depth``) on loopback.
Last output line: one JSON object.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("bench_carrier", ROOT / "bench" / "carrier.py")
assert _spec is not None
assert _spec.loader is not None
cb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cb)

procs = cb.procs

TEXT_LENGTH = 160
IDLE_SECONDS = 10.0
FULL_MESSAGES = 20_000


def start_serve(tmp: Path, carrier_port: int, metrics_port: int, queue_max: int) -> Any:
    data = procs.serve_config(carrier_port, tmp / "smsc.db")
    data["router"]["queue_max"] = queue_max
    data["metrics"] = {"host": "127.0.0.1", "port": metrics_port}
    return procs.start_serve(data, tmp)


def depth(metrics_port: int) -> dict[str, float]:
    """smsc_queue_depth by kind, from the metrics endpoint."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for m in re.finditer(r'^smsc_queue_depth\{kind="(\w+)"\} (\S+)$', text, re.M):
        out[m.group(1)] = float(m.group(2))
    return out


def load(port: int, messages: int, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One closed-loop ``smsc load`` run of ``messages`` submits; its summary."""
    scenario = tmp / "scenario.yaml"
    scenario.write_text(
        yaml.safe_dump(
            {
                "traffic": {"mix": [{"length": TEXT_LENGTH}], "registered_delivery": False},
                "throttling": {"retry": False},
            }
        )
    )
    out_json = tmp / "load.json"
    cmd = [
        sys.executable, "-m", "simulator.load", str(scenario), "--port", str(port),
        "--system-id", "test", "--password", "test",
        "--binds", str(args.binds), "--window", str(args.window), "--workers", "1",
        "--messages", str(messages), "--duration", "600", "--no-registered-delivery",
        "--grace", "0",
        "--progress", "never", "--json", str(out_json),
    ]  # fmt: skip
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if run.returncode != 0:
        raise SystemExit(f"bench/queue.py: smsc load failed:\n{run.stdout}\n{run.stderr}")
    s: dict[str, Any] = json.loads(out_json.read_text())["summary"]
    return s


def window(s: dict[str, Any], at: int) -> dict[str, Any]:
    sending = s["sending_s"] or 1e-9
    return {
        "depth_before": at,
        "messages": s["messages"],
        "accepted": s["accepted"],
        "queue_full": s["queue_full"],
        "accepted_per_s": round(s["accepted"] / sending, 1),
        "submit_p50_ms": s["latency"].get("p50_ms"),
        "submit_p99_ms": s["latency"].get("p99_ms"),
        "submit_max_ms": s["latency"].get("max_ms"),
    }


def unsent(s: dict[str, Any]) -> str:
    keys = ("rejected", "queue_full", "throttled", "timeouts", "lost", "abandoned", "unsent")
    return ", ".join(f"{k} {s[k]:,}" for k in keys if s.get(k)) or "none refused"


def settle(pid: int, limit: float = 60.0) -> None:
    """Wait (at most ``limit`` s) until serve is idle: the store has written the backlog of
    the last submits (a record holds its message until written)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and idle_cpu(pid, 0.5) > 5:
        pass


def idle_cpu(pid: int, seconds: float) -> float:
    """Share of one core serve used over ``seconds`` of no traffic, in %."""
    return round(100 * procs.cpu_share(pid, time.sleep, seconds), 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=1_000_000, help="deepest queue measured")
    parser.add_argument("--window-messages", type=int, default=50_000, help="W, per window")
    parser.add_argument("--quick", action="store_true", help="--depth 200000, W 20000")
    parser.add_argument("--no-drain", action="store_true", help="skip step 6")
    parser.add_argument("--binds", type=int, default=4)
    parser.add_argument("--window", type=int, default=200)
    args = parser.parse_args()
    if args.quick:
        args.depth, args.window_messages = 200_000, 20_000
    w = args.window_messages
    depths = [0, args.depth // 4, args.depth]
    queue_max = args.depth + 2 * w
    started = time.monotonic()
    print(
        f"smsc bench/queue.py: carrier down, queue_max {queue_max:,}; windows of {w:,} at"
        f" depths {', '.join(f'{d:,}' for d in depths)}; smsc load {args.binds} transceivers"
        f" x window {args.window}, closed loop, no receipts, {TEXT_LENGTH}-character texts;"
        f" nproc={len(cb.os.sched_getaffinity(0))}",
        flush=True,
    )
    carrier_port, metrics_port = procs.free_port(), procs.free_port()
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="smsc-queue-") as tmpdir:
        tmp = Path(tmpdir)
        serve, port = start_serve(tmp, carrier_port, metrics_port, queue_max)
        carrier = None
        try:
            pid = serve.pid
            time.sleep(1.0)  # settle after start-up (imports, first bind attempts)
            idle_empty = idle_cpu(pid, IDLE_SECONDS / 2)
            rss_empty = procs.rss_bytes(pid)
            print(f"empty: idle CPU {idle_empty} % of a core, RSS {rss_empty / 2**20:.1f} MiB")
            windows: list[dict[str, Any]] = []
            queued = 0
            for at in depths:
                if at > queued:
                    fill = load(port, at - queued, tmp, args)
                    queued += fill["accepted"]
                    print(
                        f"  fill to {queued:,}: {fill['accepted'] / (fill['sending_s'] or 1):,.0f}"
                        f"/s, p99 {fill['latency'].get('p99_ms')} ms ({fill['accepted']:,} of"
                        f" {fill['messages']:,} accepted; {unsent(fill)})",
                        flush=True,
                    )
                x = window(load(port, w, tmp, args), queued)
                queued += x["accepted"]
                windows.append(x)
                print(
                    f"window at depth {at:>9,}: {x['accepted_per_s']:>8,.0f} accepted/s, submit"
                    f" p50 {x['submit_p50_ms']} p99 {x['submit_p99_ms']} max"
                    f" {x['submit_max_ms']} ms ({x['accepted']:,}/{x['messages']:,} accepted)",
                    flush=True,
                )
            settle(pid)
            kinds = depth(metrics_port)
            rss_deep = procs.rss_bytes(pid)
            per_msg = (rss_deep - rss_empty) / max(1, queued)
            print(
                f"deep: {queued:,} queued (metrics: {kinds}); RSS {rss_deep / 2**20:.1f} MiB"
                f" = {per_msg:,.0f} bytes per queued message"
            )
            if queue_max > queued:  # up to queue_max, then every submit is refused
                queued += load(port, queue_max - queued, tmp, args)["accepted"]
            full = load(port, FULL_MESSAGES, tmp, args)
            fullw = window(full, queued)
            print(
                f"full at {queued:,}: {full['queue_full']:,} of {full['messages']:,} answered"
                f" ESME_RMSGQFUL ({full['accepted']:,} accepted), p50"
                f" {fullw['submit_p50_ms']} p99 {fullw['submit_p99_ms']} ms"
            )
            queued += full["accepted"]
            settle(pid)
            idle_deep = idle_cpu(pid, IDLE_SECONDS)
            print(f"deep and idle: {idle_deep} % of a core over {IDLE_SECONDS:g} s (target < 2)")
            drain: dict[str, Any] = {}
            if not args.no_drain:
                t0 = time.monotonic()
                carrier_cmd = [
                    sys.executable, "-m", "smsc", "carrier", "--config",
                    str(procs.CARRIER_CONF), "--port", str(carrier_port), "--log-level", "warning",
                ]  # fmt: skip
                carrier, _ = procs.start_server(carrier_cmd)
                left = sum(depth(metrics_port).values())
                deadline = t0 + 600
                while left > 0 and time.monotonic() < deadline:
                    time.sleep(0.5)
                    left = sum(depth(metrics_port).values())
                took = time.monotonic() - t0
                # The peer: serve -> carrier with the queue empty, W messages closed loop
                # (intake pacing holds the client to the rate messages leave), once the
                # drain's receipts and store writes are done.
                settle(pid, 180.0)
                t1 = time.monotonic()
                steady = load(port, w, tmp, args)
                left_after = sum(depth(metrics_port).values())
                while left_after > 0 and time.monotonic() < t1 + 300:
                    time.sleep(0.2)
                    left_after = sum(depth(metrics_port).values())
                peer_rate = steady["accepted"] / (time.monotonic() - t1)
                drain = {
                    "messages": queued,
                    "left": left,
                    "seconds": round(took, 1),
                    "msgs_per_s": round(queued / took, 1),
                    "peer_msgs_per_s": round(peer_rate, 1),
                    "ratio_vs_peer": round(queued / took / peer_rate, 2),
                }
                print(
                    f"carrier back: {queued:,} drained in {took:.1f} s = {queued / took:,.0f}/s"
                    f" ({left:.0f} left) = {drain['ratio_vs_peer']:.2f}x serve -> carrier with"
                    f" the queue empty ({peer_rate:,.0f}/s, {w:,} messages)"
                )
        finally:
            if carrier is not None:
                procs.stop_server(carrier)
            procs.stop_server(serve)
    empty_w, deep_w = windows[0], windows[-1]
    rate_ratio = deep_w["accepted_per_s"] / (empty_w["accepted_per_s"] or 1)
    p99_ratio = (deep_w["submit_p99_ms"] or 0) / (empty_w["submit_p99_ms"] or 1)
    rss_at = rss_empty + per_msg * args.depth
    print(
        f"queue {args.depth:,} deep, carrier down: intake {deep_w['accepted_per_s']:,.0f}/s ="
        f" {rate_ratio:.2f}x the empty queue's ({empty_w['accepted_per_s']:,.0f}/s), p99"
        f" {deep_w['submit_p99_ms']} ms = {p99_ratio:.2f}x ({empty_w['submit_p99_ms']} ms);"
        f" {per_msg:,.0f} bytes per queued message ({rss_at / 2**30:.2f} GiB at"
        f" {args.depth:,}, target <= 1); idle {idle_deep} % of a core (empty {idle_empty} %,"
        f" target < 2); {time.monotonic() - started:.0f} s"
    )
    result = {
        "bench": "queue",
        "depth": args.depth,
        "bytes_per_queued_message": round(per_msg, 1),
        "rss_empty_mb": round(rss_empty / 2**20, 1),
        "rss_deep_mb": round(rss_deep / 2**20, 1),
        "queued": queued,
        "idle_cpu_pct_deep": idle_deep,
        "idle_cpu_pct_empty": idle_empty,
        "peer": "the same intake window with the queue empty",
        "intake_ratio_deep_vs_empty": round(rate_ratio, 2),
        "p99_ratio_deep_vs_empty": round(p99_ratio, 2),
        "windows": windows,
        "full": fullw,
        "drain": drain,
        "targets": {"idle_cpu_pct": 2, "rss_gib_at_1m": 1},
        "targets_met": idle_deep < 2 and rss_at <= 2**30,
        "machine": cb.machine(),
    }
    print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
