"""``smsc carrier`` with receipts against a minimal node ``smpp`` SMSC, in the same run.

Run from the repository root:  .venv/bin/python bench/carrier.py [--quick] [--rounds N]

Servers (each its own process, started once, measured in alternating order):

- ours: ``python -m smsc carrier --config bench/conf/carrier-bench.yaml`` — the bench
  profile: no submit latency, an immediate DELIVRD receipt per message, large windows;
- peer: ``node bench/peers/node_smsc.js`` — a minimal SMSC on node's ``smpp`` package
  (0.5.1) doing the same work: submit_sm_resp with a hex id, then at once a receipt
  deliver_sm (Appendix B text, receipted_message_id, message_state); TCP_NODELAY on.

Load: ``python -m simulator.load`` (``smsc load``) in a subprocess, closed loop, B
transceiver binds x window W, registered_delivery on (a receipt per message), the same
for both servers. ``msgs_per_s`` = receipts received per second in the steady state: the
per-second series of the harness's JSON report, without its first second (binding,
filling the windows) and the last, partial one with receipts. Every receipt must arrive
(missing = 0).

Who saturates: the machine has 2 cores, shared by the server and the generator. The bench
samples utime+stime (/proc/<pid>/stat) of the server process and of the generator process
tree every 0.2 s and reports each one's CPU share over the steady state (1.0 = one core).
A single-threaded server at ~1.0 is the limit; a generator tree at ~1.0 per worker is. The
whole machine's busy share (/proc/stat, other jobs included) is reported too: all cores
busy with neither at a core means the CPU itself is the limit, shared three ways.

Window 1: a ``smpplib`` client with its default socket options (Nagle on, delayed ACKs)
sends one submit_sm at a time with registered_delivery=1 and answers the receipts as they
arrive (``read_once``); the clock stops when every receipt is in. Run in two styles:
``next after resp`` (the next submit as soon as submit_sm_resp is in) and ``next after
receipt`` (the next only once this message's receipt is in). A server that relies on the
client's traffic to ACK stalls here on the client's Nagle + its own 40 ms delayed ACK.

``--carrier-entry FILE.py`` runs the carrier through a script (a patch under trial).

Last output line: one JSON object with ``msgs_per_s`` (ours), ``peer_msgs_per_s`` (node),
``ratio_vs_node_smpp`` (target >= 3: the best round of each side), ``paired_median_ratio``
(the median over rounds of the two sides' ratio within a round: the machine's speed drifts
by tens of percent within a minute, so this is the noise check), ``window1_msgs_per_s``
(the slower style; target >= 1,000) and the CPU shares that say which side saturates.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NODE_MODULES = ROOT / "tests" / "interop" / "node" / "node_modules"
NODE_SMSC = ROOT / "bench" / "peers" / "node_smsc.js"
CARRIER_CONF = ROOT / "bench" / "conf" / "carrier-bench.yaml"
_spec = importlib.util.spec_from_file_location("bench_procs", ROOT / "bench" / "procs.py")
assert _spec is not None
assert _spec.loader is not None
procs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(procs)
# The names the benches have used as cb.<name> (bench/http_api.py, bench/soak.py still do).
CARRIER_ARGS = procs.CARRIER_ARGS
cpu_seconds, machine_busy, tree = procs.cpu_seconds, procs.machine_busy, procs.tree
start_server, stop_server = procs.start_server, procs.stop_server


class Sampler:
    """Samples the CPU seconds of some server processes and of the generator's process
    tree every ``every`` seconds, in a thread."""

    def __init__(self, servers: dict[str, int], generator: int, every: float = 0.2) -> None:
        self.servers, self.generator, self.every = servers, generator, every
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._seen: dict[int, float] = {}  # generator pids -> last CPU seen (exits keep it)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _gen_cpu(self) -> float:
        for pid in tree(self.generator):
            cpu = cpu_seconds(pid)
            if cpu:
                self._seen[pid] = cpu
        return sum(self._seen.values())

    def _run(self) -> None:
        while not self._stop.is_set():
            cpu = {name: cpu_seconds(pid) for name, pid in self.servers.items()}
            cpu["generator"] = self._gen_cpu()
            cpu["machine"] = machine_busy()
            self.samples.append((time.monotonic(), cpu))
            self._stop.wait(self.every)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def steady(self) -> tuple[dict[str, float], float]:
        """CPU share of each process (1.0 = one core; "machine": all processes on the
        machine, others' included, out of nproc) while the first server was busy,
        trimmed by 0.4 s at both ends (binding, unbinding); and that window's length."""
        s = self.samples
        first_server = next(iter(self.servers))
        busy = [
            i for i in range(1, len(s))
            if s[i][1][first_server] - s[i - 1][1][first_server] > 0.05 * self.every
        ]  # fmt: skip
        if len(busy) < 2:
            return {k: 0.0 for k in (*self.servers, "generator", "machine")}, 0.0
        first, last = s[busy[0] - 1][0] + 0.4, s[busy[-1]][0] - 0.4
        window = [x for x in s if first <= x[0] <= last]
        if len(window) < 2:
            window = [s[busy[0] - 1], s[busy[-1]]]
        (t0, c0), (t1, c1) = window[0], window[-1]
        dt = t1 - t0
        return {k: round((c1[k] - c0[k]) / dt, 2) for k in c0}, dt


# --- the windowed load -----------------------------------------------------------------------


def steady_rate(report: dict[str, Any], key: str) -> float:
    """Mean of ``key`` (a per-second rate in the harness's series) over the seconds from
    the second one (the first binds and fills the windows) up to, not including, the last
    second that has any of it (partial). For receipts this spans the drain after sending
    stopped too, so a server that queues submits and delivers later is measured at the
    rate it really delivers."""
    series = report["series"]
    active = [p["t"] for p in series if p.get(key, 0.0) > 0]
    if not active:
        return 0.0
    pts = [p for p in series if 1 <= p["t"] < active[-1]]
    if not pts:  # a very short run: everything
        pts = series
    seconds = sum(p["seconds"] for p in pts)
    return sum(p.get(key, 0.0) * p["seconds"] for p in pts) / seconds if seconds else 0.0


def run_load(
    name: str,
    servers: dict[str, int],
    port: int,
    args: argparse.Namespace,
    extra: tuple[str, ...] = (),
    duration: float | None = None,
) -> dict[str, Any]:
    """One ``smsc load`` run against ``port`` with receipts; CPU of ``servers`` (name →
    pid, the first is the one under test) and of the generator sampled meanwhile."""
    duration = args.duration if duration is None else duration
    with tempfile.TemporaryDirectory() as tmp:
        out_json = Path(tmp) / "load.json"
        cmd = [
            sys.executable, "-m", "simulator.load", "--port", str(port),
            "--system-id", "test", "--password", "test",
            "--binds", str(args.binds), "--window", str(args.window),
            "--duration", str(duration), "--workers", str(args.workers),
            "--registered-delivery", "--grace", "20", "--progress", "never",
            "--json", str(out_json), *extra,
        ]  # fmt: skip
        gen = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        with Sampler(servers, gen.pid) as sampler:
            stdout, _ = gen.communicate(timeout=duration + 90)
        if gen.returncode != 0:
            raise SystemExit(f"bench: smsc load against {name} failed:\n{stdout}")
        report = json.loads(out_json.read_text())
    s = report["summary"]
    cpu, cpu_window = sampler.steady()
    return {
        "msgs_per_s": round(steady_rate(report, "receipts_per_s"), 1),
        "submits_per_s": round(steady_rate(report, "accepted_per_s"), 1),
        "messages": s["messages"],
        "accepted": s["accepted"],
        "rejected": s["rejected"],
        "receipts": s["receipts"]["received"],
        "missing": s["receipts"]["missing"],
        "sending_s": s["sending_s"],
        "submit_p50_ms": s["latency"].get("p50_ms"),
        "submit_p99_ms": s["latency"].get("p99_ms"),
        "submit_max_ms": s["latency"].get("max_ms"),
        "receipt_p50_ms": s["receipts"]["latency"].get("p50_ms"),
        "receipt_p99_ms": s["receipts"]["latency"].get("p99_ms"),
        **({"service_p99_ms": s["service_time"].get("p99_ms"),
            "send_lag_p99_ms": s["send_lag"].get("p99_ms")} if "service_time" in s else {}),
        "cpu": cpu,
        "cpu_window_s": round(cpu_window, 1),
    }  # fmt: skip


# --- window 1 (smpplib) -------------------------------------------------------------------


def window1(port: int, seconds: float, after_receipt: bool) -> dict[str, Any]:
    import logging

    import smpplib.client

    logging.getLogger("smpplib").setLevel(logging.ERROR)
    client = smpplib.client.Client("127.0.0.1", port, timeout=10, allow_unknown_opt_params=True)
    counts = {"resp": 0, "receipts": 0}

    def sent(pdu: Any, **_: Any) -> None:
        counts["resp"] += 1

    def received(pdu: Any, **_: Any) -> None:
        counts["receipts"] += 1

    client.set_message_sent_handler(sent)
    client.set_message_received_handler(received)
    client.connect()
    try:
        client.bind_transceiver(system_id="test", password="test")
        t0 = time.monotonic()
        n = 0
        while time.monotonic() - t0 < seconds:
            client.send_message(
                source_addr_ton=1, source_addr_npi=1, source_addr="447700900123",
                dest_addr_ton=1, dest_addr_npi=1, destination_addr="447912345678",
                short_message=b"hello your code is 4711 please confirm", registered_delivery=1,
            )  # fmt: skip
            n += 1
            while counts["resp"] < n or (after_receipt and counts["receipts"] < n):
                client.read_once()
        while counts["receipts"] < n:
            client.read_once()
        elapsed = time.monotonic() - t0
        client.unbind()
    finally:
        client.disconnect()
    return {"messages": n, "msgs_per_s": round(n / elapsed, 1)}


# --- report ---------------------------------------------------------------------------------


def last_line(result: dict[str, Any], args: argparse.Namespace) -> None:
    """A bench's last output line: ``result`` with the load's shape (``--binds``,
    ``--window``, ``--duration``) and the machine, as one JSON object."""
    shape = {"binds": args.binds, "window": args.window, "duration_s": args.duration}
    print(json.dumps({**result, **shape, "machine": machine()}, separators=(",", ":")))


def machine() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    node = shutil.which("node")
    run = subprocess.run([node, "--version"], capture_output=True, text=True) if node else None
    try:
        from importlib.metadata import version

        loop = f"uvloop {version('uvloop')}"
    except ImportError:
        loop = "asyncio"
    return {
        "cpu": model,
        "cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "node": run.stdout.strip() if run else "",
        "loop": loop,
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def saturation(cpu: dict[str, float], server: str, workers: int) -> str:
    """Which side is the limit, from the CPU shares of one run."""
    cores = len(os.sched_getaffinity(0))
    others = max(0.0, cpu["machine"] - sum(v for k, v in cpu.items() if k != "machine"))
    if cpu[server] >= 0.85:
        return f"server ({server} {cpu[server]:.2f} core)"
    if cpu["generator"] >= 0.85 * workers:
        return f"generator ({cpu['generator']:.2f} core for {workers} worker(s))"
    if cpu["machine"] >= 0.9 * cores:
        return (
            f"machine: all {cores} cores busy ({server} {cpu[server]:.2f}, generator"
            f" {cpu['generator']:.2f}, other processes {others:.2f})"
        )
    return "neither: latency-bound"


def line(r: int, name: str, x: dict[str, Any]) -> str:
    return (
        f"round {r} {name:5s}: {x['msgs_per_s']:>9,.0f} receipts/s"
        f"  (submits {x['submits_per_s']:,.0f}/s;"
        f" {x['receipts']:,} receipts, {x['missing']} missing; submit p99 {x['submit_p99_ms']} ms;"
        f" CPU server {x['cpu'][name]:.2f} / generator {x['cpu']['generator']:.2f}"
        f" / machine {x['cpu']['machine']:.2f} cores)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s, window-1 2 s")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per server (default 3)")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of sending per run")
    parser.add_argument("--binds", type=int, default=4)
    parser.add_argument("--window", type=int, default=200)
    parser.add_argument("--workers", type=int, default=1, help="generator processes (default 1)")
    parser.add_argument("--w1-seconds", type=float, default=4.0, help="window-1 run length")
    parser.add_argument(
        "--carrier-entry",
        metavar="FILE.py",
        help="start the carrier as `python FILE.py carrier ...` instead of `python -m smsc"
        " carrier ...` (to measure a patch kept outside the tree; FILE calls smsc.cli.main)",
    )
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.duration, args.w1_seconds = 1, 3.0, 2.0
    node = shutil.which("node")
    if not node:
        raise SystemExit("bench/carrier.py: node not found")
    started = time.monotonic()
    print(
        f"smsc bench/carrier.py: {args.binds} transceivers x window {args.window}, receipts on,"
        f" {args.duration:g} s x {args.rounds} round(s) per server, generator: smsc load"
        f" --workers {args.workers}; nproc={len(os.sched_getaffinity(0))}",
        flush=True,
    )
    entry = [args.carrier_entry] if args.carrier_entry else ["-m", "smsc"]
    ours_proc, ours_port = start_server([sys.executable, *entry, *CARRIER_ARGS])
    env = dict(os.environ, NODE_PATH=str(NODE_MODULES))
    node_proc, node_port = start_server([node, str(NODE_SMSC), "--port", "0"], env)
    servers = {"smsc": (ours_proc, ours_port), "node": (node_proc, node_port)}
    results: dict[str, list[dict[str, Any]]] = {"smsc": [], "node": []}
    w1: dict[str, dict[str, Any]] = {}
    try:
        for r in range(args.rounds):
            order = ["smsc", "node"] if r % 2 == 0 else ["node", "smsc"]
            for name in order:
                proc, port = servers[name]
                x = run_load(name, {name: proc.pid}, port, args)
                results[name].append(x)
                print(line(r + 1, name, x), flush=True)
        for name in ("smsc", "node"):
            for style, after_receipt in (("after_resp", False), ("after_receipt", True)):
                x = window1(servers[name][1], args.w1_seconds, after_receipt)
                w1[f"{name}_{style}"] = x
                print(
                    f"window 1 {name:5s} next {style.replace('_', ' '):14s}:"
                    f" {x['msgs_per_s']:>8,.0f} msg/s ({x['messages']:,} with receipts)",
                    flush=True,
                )
    finally:
        stop_server(ours_proc)
        stop_server(node_proc)
    best = {k: max(v, key=lambda x: x["msgs_per_s"]) for k, v in results.items()}
    ratio = best["smsc"]["msgs_per_s"] / best["node"]["msgs_per_s"]
    # A noise check: the two sides of one round run back to back, on the same machine state.
    paired = sorted(
        a["msgs_per_s"] / b["msgs_per_s"]
        for a, b in zip(results["smsc"], results["node"], strict=True)
        if b["msgs_per_s"]
    )
    paired_median = paired[len(paired) // 2] if paired else 0.0
    w1_ours = min(w1["smsc_after_resp"]["msgs_per_s"], w1["smsc_after_receipt"]["msgs_per_s"])
    saturates = saturation(best["smsc"]["cpu"], "smsc", args.workers)
    print(
        f"best: smsc {best['smsc']['msgs_per_s']:,.0f} vs node {best['node']['msgs_per_s']:,.0f}"
        f" receipts/s = {ratio:.2f}x (target 3; paired rounds: median {paired_median:.2f}x of"
        f" {', '.join(f'{x:.2f}' for x in paired)}); window 1: {w1_ours:,.0f} msg/s"
        " (target 1,000);"
        f" saturates with smsc: {saturates}; {time.monotonic() - started:.0f} s"
    )
    last_line(
        {
            "bench": "carrier",
            "msgs_per_s": best["smsc"]["msgs_per_s"],
            "peer_msgs_per_s": best["node"]["msgs_per_s"],
            "ratio_vs_node_smpp": round(ratio, 2),
            "paired_median_ratio": round(paired_median, 2),
            "paired_ratios": [round(x, 2) for x in paired],
            "window1_msgs_per_s": w1_ours,
            "peer_window1_msgs_per_s": min(
                w1["node_after_resp"]["msgs_per_s"], w1["node_after_receipt"]["msgs_per_s"]
            ),
            "targets": {"ratio_vs_node_smpp": 3, "window1_msgs_per_s": 1000},
            "targets_met": ratio >= 3 and w1_ours >= 1000,
            "saturates": saturates,
            "smsc": best["smsc"],
            "node": best["node"],
            "window1": w1,
            "workers": args.workers,
            "rounds": args.rounds,
        },
        args,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
