"""Load generator speed: ``smsc load`` against node's ``smpp`` client, in the same run.

Run from the repository root:  .venv/bin/python bench/load.py [--quick] [--rounds N]

Both generators drive the same trivial responder: a separate process (raw asyncio Protocol
on uvloop) that answers every bind with a bind_resp and every submit_sm with a
header-only submit_sm_resp (16 octets: status 0, no message_id) by patching the request's
header bytes — no decoding, no receipts. Each side runs closed-loop (every window kept
full) with the same binds, window, duration and message (60 GSM characters, random
12-digit addresses, registered_delivery off):

- ``smsc load``: ``python -m simulator.load`` in a subprocess with ``--workers`` processes
  (default 2: "≥ 50,000 submits/s on 2 cores"); its figure is its own JSON summary's
  ``msgs_per_s`` (messages sent over the sending time; every one was answered).
- node: ``bench/peers/node_load.js`` (one node process, as node-smpp is used), figure =
  responses per second.

Rounds alternate the order (harness first, then node first, ...); the best round per side
is reported. The responder's CPU use (from /proc) over each measurement says which side
saturates: near 100 % of one core means the responder is the limit, not the generator.

The last line of output is one JSON object with ``msgs_per_s`` (harness),
``node_msgs_per_s``, ``ratio_vs_node_smpp_client`` (harness / node; target ≥ 3) and the
responder's CPU share in each run. Target: ``msgs_per_s`` ≥ 50,000 on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NODE_MODULES = ROOT / "tests" / "interop" / "node" / "node_modules"
NODE_CLIENT = ROOT / "bench" / "peers" / "node_load.js"

_HEADER = struct.Struct(">IIII")
_BIND_IDS = {0x00000001, 0x00000002, 0x00000009}


# --- the responder (its own process) ------------------------------------------------------


class Responder(asyncio.Protocol):
    """Answers binds, submit_sm (header only), enquire_link and unbind; nothing else."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        import socket

        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        if buf:
            buf += data
            src: bytes | bytearray = buf
        else:
            src = data
        size = len(src)
        pos = 0
        out = bytearray()
        unpack = _HEADER.unpack_from
        pack_into = _HEADER.pack_into
        while size - pos >= 16:
            length, cid, _, seq = unpack(src, pos)
            if length < 16 or size - pos < length:
                break
            if cid == 0x00000004:  # submit_sm → 16-octet submit_sm_resp
                at = len(out)
                out += b"\0" * 16
                pack_into(out, at, 16, 0x80000004, 0, seq)
            elif cid in _BIND_IDS:
                out += _HEADER.pack(22, cid | 0x80000000, 0, seq) + b"bench\0"
            elif cid == 0x00000015 or cid == 0x00000006:  # enquire_link, unbind
                out += _HEADER.pack(16, cid | 0x80000000, 0, seq)
            pos += length
        if src is buf:
            del buf[:pos]
        elif pos < size:
            self.buf = bytearray(data[pos:])
        if out and self.transport is not None:
            self.transport.write(out)


def serve() -> None:
    """Listen on a free loopback port, print it on stdout, serve until terminated."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Responder, "127.0.0.1", 0, backlog=1024)
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Event().wait()

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


# --- measuring --------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_harness(port: int, args: argparse.Namespace) -> dict[str, float]:
    cmd = [
        sys.executable, "-m", "simulator.load",
        "--port", str(port), "--binds", str(args.binds), "--window", str(args.window),
        "--duration", str(args.duration), "--workers", str(args.workers),
        "--no-registered-delivery", "--progress", "never", "--grace", "0",
    ]  # fmt: skip
    out = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.duration + 60, check=True
    )
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["accepted"] == summary["submitted"], summary
    return {
        "msgs_per_s": summary["msgs_per_s"],
        "messages": summary["messages"],
        "p50_ms": summary["latency"].get("p50_ms", 0.0),
        "p99_ms": summary["latency"].get("p99_ms", 0.0),
        "seconds": summary["sending_s"],
    }


def run_node(port: int, args: argparse.Namespace) -> dict[str, float]:
    node = shutil.which("node")
    assert node, "node not found"
    env = dict(os.environ, NODE_PATH=str(NODE_MODULES))
    cmd = [
        node, str(NODE_CLIENT), "--port", str(port), "--binds", str(args.binds),
        "--window", str(args.window), "--duration-ms", str(int(args.duration * 1000)),
    ]  # fmt: skip
    out = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=args.duration + 60, check=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["errors"] == 0, result
    return {"msgs_per_s": result["msgs_per_s"], "messages": result["responses"],
            "seconds": result["seconds"]}  # fmt: skip


def measured(pid: int, fn: object, *a: object) -> tuple[dict[str, float], float]:
    """Run ``fn(*a)``; also return the responder's CPU share (1.0 = one core) meanwhile."""
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    result = fn(*a)  # type: ignore[operator]
    cpu1, t1 = cpu_seconds(pid), time.monotonic()
    return result, (cpu1 - cpu0) / (t1 - t0)


def machine() -> dict[str, object]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    node = shutil.which("node")
    node_version = (
        subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
        if node
        else ""
    )
    return {
        "cpu": model,
        "cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "node": node_version,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s per side")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per side (default 2)")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measurement")
    parser.add_argument("--binds", type=int, default=4)
    parser.add_argument("--window", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return 0
    if args.quick:
        args.rounds, args.duration = 1, 3.0
    responder = subprocess.Popen(
        [sys.executable, __file__, "--serve"], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert responder.stdout is not None
        line = responder.stdout.readline()  # its port, once it listens
        if not line.strip().isdigit():
            raise SystemExit("bench/load.py: the responder did not start")
        port = int(line)
        ours: list[tuple[dict[str, float], float]] = []
        theirs: list[tuple[dict[str, float], float]] = []
        for r in range(args.rounds):
            order = [("smsc", run_harness, ours), ("node", run_node, theirs)]
            if r % 2:
                order.reverse()
            for name, fn, results in order:
                result, cpu = measured(responder.pid, fn, port, args)
                results.append((result, cpu))
                print(
                    f"round {r + 1} {name:5s}: {result['msgs_per_s']:>10,.0f} msg/s"
                    f"  ({result['messages']:,} in {result['seconds']:.2f} s;"
                    f" responder CPU {cpu:.0%} of a core)",
                    flush=True,
                )
    finally:
        responder.terminate()
        responder.wait(10)
    best_ours = max(ours, key=lambda x: x[0]["msgs_per_s"])
    best_theirs = max(theirs, key=lambda x: x[0]["msgs_per_s"])
    ratio = best_ours[0]["msgs_per_s"] / best_theirs[0]["msgs_per_s"]
    print(
        json.dumps(
            {
                "bench": "load",
                "msgs_per_s": round(best_ours[0]["msgs_per_s"], 1),
                "node_msgs_per_s": round(best_theirs[0]["msgs_per_s"], 1),
                "ratio_vs_node_smpp_client": round(ratio, 2),
                "harness_p50_ms": best_ours[0].get("p50_ms"),
                "harness_p99_ms": best_ours[0].get("p99_ms"),
                "responder_cpu_with_harness": round(best_ours[1], 2),
                "responder_cpu_with_node": round(best_theirs[1], 2),
                "workers": args.workers,
                "binds": args.binds,
                "window": args.window,
                "duration_s": args.duration,
                "rounds": args.rounds,
                "machine": machine(),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
