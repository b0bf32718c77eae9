"""Soak: steady load with receipts through ``smsc serve`` for minutes; does memory grow?

Run from the repository root:  .venv/bin/python bench/soak.py [--minutes 10] [--rate 500]

Processes, as bench/e2e.py starts them (its helpers): the carrier ``smsc carrier --config
bench/conf/carrier-bench.yaml``; ``smsc serve`` on a copy of bench/conf/smsc-bench.yaml
pointing at it (store in a temporary directory); the generator ``smsc load`` (open loop at
``--rate`` msg/s, ``--binds`` transceivers, a receipt asked for every message).

Every ``--every`` seconds the VmRSS of serve and of the carrier (the peer, side by side:
the same traffic through one hop) is read from /proc/<pid>/status, and the size of serve's
store (the SQLite file plus its WAL). Reported: RSS and store size over time (a line a
minute), both at the end of warm-up (``--warmup`` seconds, default a quarter of the run up
to 120 s) and at the end of sending, growth after warm-up in % and as a least-squares slope
(MB per minute), throughput and receipts. Target: serve's RSS growth after warm-up under
5 %. The store keeps final messages ``--keep`` seconds (``store.keep_days``) and purges every
``--purge-every`` seconds, so once the run is longer than the keep its size should be flat:
what purge deletes, new messages reuse. Last output line: one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("bench_e2e", ROOT / "bench" / "e2e.py")
assert _spec is not None
assert _spec.loader is not None
e2e = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(e2e)
cb = e2e.cb


def rss_mb(pid: int) -> float:
    return float(cb.procs.rss_bytes(pid) / 2**20)


def store_mb(db: Path) -> float:
    """The store's size on disk: the SQLite file and its WAL, MB."""
    total = 0
    for path in (db, Path(f"{db}-wal")):
        try:
            total += os.stat(path).st_size
        except OSError:
            pass
    return total / 1024 / 1024


class RssSampler(threading.Thread):
    """VmRSS of each pid (and the store's size, as "store") every ``every`` seconds until
    stopped: [(t, {name: MB})]."""

    def __init__(self, pids: dict[str, int], every: float, store: Path) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.store = store
        self.every = every
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.start_time = time.monotonic()
        self._done = threading.Event()

    def run(self) -> None:
        while True:
            t = time.monotonic() - self.start_time
            sample = {n: rss_mb(p) for n, p in self.pids.items()}
            sample["store"] = store_mb(self.store)
            self.samples.append((t, sample))
            if self._done.wait(self.every):
                return

    def stop(self) -> None:
        self._done.set()
        self.join()


def at(samples: list[tuple[float, dict[str, float]]], t: float, name: str) -> float:
    """The sample of ``name`` nearest to time ``t``."""
    return min(samples, key=lambda s: abs(s[0] - t))[1][name]


def slope_mb_per_min(samples: list[tuple[float, dict[str, float]]], name: str) -> float:
    pts = [(t, v[name]) for t, v in samples]
    if len(pts) < 2:
        return 0.0
    n = len(pts)
    mt = sum(t for t, _ in pts) / n
    mv = sum(v for _, v in pts) / n
    var = sum((t - mt) ** 2 for t, _ in pts)
    return 60 * sum((t - mt) * (v - mv) for t, v in pts) / var if var else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="sending time (default 10)")
    parser.add_argument("--rate", type=float, default=500.0, help="msg/s (default 500)")
    parser.add_argument("--binds", type=int, default=2)
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--every", type=float, default=5.0, help="RSS sample period, s")
    parser.add_argument("--warmup", type=float, help="s (default: min(120, run / 4))")
    parser.add_argument(
        "--keep", type=float, default=60.0, help="s final messages are kept (default 60)"
    )
    parser.add_argument(
        "--purge-every",
        type=float,
        default=10.0,
        help="s between purges; 0: none, to see the growth (default 10)",
    )
    args = parser.parse_args()
    duration = args.minutes * 60
    warmup = args.warmup if args.warmup is not None else min(120.0, duration / 4)
    started = time.monotonic()
    print(
        f"smsc bench/soak.py: {args.minutes:g} min at {args.rate:g} msg/s with receipts,"
        f" {args.binds} transceivers x window {args.window}; warm-up {warmup:g} s;"
        f" RSS every {args.every:g} s; serve -> carrier (4 binds x window 500);"
        f" store keeps final messages {args.keep:g} s, "
        + (f"purged every {args.purge_every:g} s" if args.purge_every else "never purged"),
        flush=True,
    )
    carrier, carrier_port = cb.start_server([sys.executable, "-m", "smsc", *cb.CARRIER_ARGS])
    try:
        with tempfile.TemporaryDirectory(prefix="smsc-soak-") as tmpdir:
            tmp = Path(tmpdir)
            store_settings = {"keep_days": args.keep / 86_400, "purge_interval": args.purge_every}
            serve, port = e2e.start_serve(tmp, carrier_port, store_settings=store_settings)
            try:
                e2e.wait_bound()
                out_json = tmp / "load.json"
                cmd = [
                    sys.executable, "-m", "simulator.load", "--port", str(port),
                    "--system-id", "test", "--password", "test",
                    "--binds", str(args.binds), "--window", str(args.window),
                    "--rate", str(args.rate), "--duration", str(duration),
                    "--registered-delivery", "--grace", "30", "--progress", "never",
                    "--json", str(out_json),
                ]  # fmt: skip
                sampler = RssSampler(
                    {"serve": serve.pid, "carrier": carrier.pid}, args.every, tmp / "smsc.db"
                )
                sampler.start()
                gen = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
                next_line = 60.0
                while gen.poll() is None:
                    time.sleep(1.0)  # pacing the progress lines, not waiting for an event
                    if sampler.samples and sampler.samples[-1][0] >= next_line:
                        t, v = sampler.samples[-1]
                        print(
                            f"  t={t:5.0f} s  RSS serve {v['serve']:7.1f} MB"
                            f"  carrier {v['carrier']:7.1f} MB  store {v['store']:7.1f} MB",
                            flush=True,
                        )
                        next_line += 60.0
                stdout = gen.stdout.read() if gen.stdout else ""
                sampler.stop()
                if gen.returncode != 0:
                    raise SystemExit(f"bench/soak.py: smsc load failed:\n{stdout}")
                report = json.loads(out_json.read_text())
            finally:
                cb.stop_server(serve)
    finally:
        cb.stop_server(carrier)

    samples = sampler.samples
    sending = [s for s in samples if s[0] <= duration + args.every]
    steady = [s for s in sending if s[0] >= warmup]
    figures: dict[str, Any] = {}
    store_start = at(samples, warmup, "store")
    store_end = sending[-1][1]["store"]
    store_f = {
        "start_mb": round(store_start, 2),
        "end_mb": round(store_end, 2),
        "peak_mb": round(max(v["store"] for _, v in samples), 2),
        "growth_pct": round(100 * (store_end - store_start) / store_start, 2)
        if store_start
        else 0.0,
        "slope_mb_per_min": round(slope_mb_per_min(steady, "store"), 3),
        "keep_s": args.keep,
        "purge_every_s": args.purge_every,
    }
    for name in ("serve", "carrier"):
        start_mb = at(samples, warmup, name)
        end_mb = sending[-1][1][name]
        figures[name] = {
            "rss_first_mb": round(samples[0][1][name], 1),
            "rss_start_mb": round(start_mb, 1),
            "rss_end_mb": round(end_mb, 1),
            "rss_peak_mb": round(max(v[name] for _, v in samples), 1),
            "growth_pct": round(100 * (end_mb - start_mb) / start_mb, 2) if start_mb else 0.0,
            "slope_mb_per_min": round(slope_mb_per_min(steady, name), 3),
        }
    s = report["summary"]
    serve_f = figures["serve"]
    result = {
        "bench": "soak",
        "rss_start_mb": serve_f["rss_start_mb"],
        "rss_end_mb": serve_f["rss_end_mb"],
        "growth_pct": serve_f["growth_pct"],
        "slope_mb_per_min": serve_f["slope_mb_per_min"],
        "target_growth_pct": 5.0,
        "target_met": serve_f["growth_pct"] < 5.0,
        "msgs": s["accepted"],
        "submitted": s["messages"],
        "rejected": s["rejected"],
        "receipts": s["receipts"]["received"],
        "missing": s["receipts"]["missing"],
        "msgs_per_s": round(s["accepted"] / duration, 1) if duration else 0.0,
        "rate": args.rate,
        "duration_s": duration,
        "warmup_s": warmup,
        "submit_p99_ms": s["latency"].get("p99_ms"),
        "receipt_p99_ms": s["receipts"]["latency"].get("p99_ms"),
        "serve": serve_f,
        "peer": "smsc carrier, the same traffic through one hop",
        "carrier": figures["carrier"],
        "store": store_f,
        "rss_series": [
            [round(t), round(v["serve"], 1), round(v["carrier"], 1)] for t, v in samples
        ],
        "store_series": [[round(t), round(v["store"], 2)] for t, v in samples],
        "machine": cb.machine(),
    }
    c = figures["carrier"]
    print(
        f"serve RSS {serve_f['rss_first_mb']} MB at start, {serve_f['rss_start_mb']} MB after"
        f" warm-up, {serve_f['rss_end_mb']} MB at the end (peak {serve_f['rss_peak_mb']}):"
        f" growth {serve_f['growth_pct']} % (target < 5), slope {serve_f['slope_mb_per_min']}"
        f" MB/min; carrier (peer) {c['rss_start_mb']} -> {c['rss_end_mb']} MB,"
        f" {c['growth_pct']} %"
    )
    print(
        f"store (db + WAL) {store_f['start_mb']} MB after warm-up, {store_f['end_mb']} MB at"
        f" the end (peak {store_f['peak_mb']}): growth {store_f['growth_pct']} %, slope"
        f" {store_f['slope_mb_per_min']} MB/min (keep {args.keep:g} s, "
        + (f"purge every {args.purge_every:g} s)" if args.purge_every else "no purge)")
    )
    print(
        f"{result['msgs']:,} accepted of {result['submitted']:,} ({result['msgs_per_s']:,}/s),"
        f" {result['receipts']:,} receipts, {result['missing']} missing, {result['rejected']}"
        f" rejected; submit p99 {result['submit_p99_ms']} ms, receipt p99"
        f" {result['receipt_p99_ms']} ms; {time.monotonic() - started:.0f} s"
    )
    print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
