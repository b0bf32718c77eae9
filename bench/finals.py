"""A node's store and final-receipt work alone, Redis against SQLite: CPU per message.

Run from the repository root:  .venv/bin/python bench/finals.py [--messages N] [--rounds R]

What one node does for each message of bench/cluster.py's load, without the SMPP around
it (so that its CPU can be judged on a busy machine, where the whole bench's per-message
figures move by ±10 % from run to run): ``add``, a loop turn later ``set_sent``, a turn
after that the carrier's final receipt through ``router.finals.Finals.report``
(``ack_after: enqueue``), STEP messages a turn. On SQLite (one node: the final state is
written behind); on Redis (a cluster's node: the final state is claimed first, the receipt
reported once the claim is won, the claim settled once the sink has it — the sink answers
at the next loop turn, as a client's deliver_sm_resp would). The process runs as ``smsc
serve`` does: uvloop, the GC tuned by ``smsc.cli.tune_gc``.

Measured per round: this process's CPU (all threads: the SQLite writer's too) per message,
and the cyclic GC's share of it (``gc.callbacks``). Rounds alternate the backends; each
figure is the median over rounds. Redis runs on a redis-server started for the run
(tests/redis_server.py, no persistence): its CPU is not the node's and is not counted.

Last output line: one JSON object with ``sqlite_cpu_us_per_msg``, ``redis_cpu_us_per_msg``
and ``ratio_redis_vs_sqlite`` (the peer: SQLite, measured in the same run).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# bench/ itself off the path: bench/queue.py would shadow the standard library's queue
sys.path[0] = str(ROOT)
sys.path.insert(1, str(ROOT / "tests"))

import uvloop  # noqa: E402
from redis_server import RedisServer  # noqa: E402

from router.config import StoreConfig  # noqa: E402
from router.finals import Finals  # noqa: E402
from router.metrics import RouterMetrics  # noqa: E402
from router.model import Address, DeliveryReport, Message, StoredMessage  # noqa: E402
from router.ports import SettledCallback  # noqa: E402
from router.stores import create_store  # noqa: E402
from smppcore.constants import MessageState  # noqa: E402
from smsc.cli import tune_gc  # noqa: E402

STEP = 100  # messages a loop turn


class Sink:
    """Takes every receipt; settles it at the next loop turn (a client's answer)."""

    def __init__(self) -> None:
        self.reports = 0
        self.loop = asyncio.get_running_loop()

    def report(
        self, stored: StoredMessage, report: DeliveryReport, settled: SettledCallback | None = None
    ) -> None:
        self.reports += 1
        if settled is not None:
            self.loop.call_soon(settled, True)

    def mobile_originated(
        self, account: str, message: Message, settled: SettledCallback | None = None
    ) -> bool:
        return True


class GcClock:
    """CPU seconds the cyclic GC took (its callbacks, this thread)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.thread_time()
        else:
            self.seconds += time.thread_time() - self._started


async def one(
    n: int, url: str | None, path: str, prefix: str, gc_clock: GcClock
) -> dict[str, float]:
    """One backend's run: ``path`` a new SQLite file, ``prefix`` new Redis keys."""
    store = create_store(
        StoreConfig(path=path), redis_url=url, node_id="n1" if url else "", prefix=prefix
    )
    await store.open()
    sink = Sink()
    finals = Finals(store=store, sink=sink, metrics=RouterMetrics(["sim"]), durable=False)
    src, dst = Address(5, 0, "Brand"), Address(1, 1, "447700900001")
    now = time.time()
    messages = [
        Message(id=f"m{i:09d}", account="acme", source=src, destination=dst,
                short_message=b"hello", registered_delivery=1, submitted_at=now)
        for i in range(n)
    ]  # fmt: skip
    gc_before = gc_clock.seconds
    cpu = time.process_time()
    try:
        sent: list[Message] = []
        receipted: list[Message] = []
        for first in range(0, n + 2 * STEP, STEP):
            part = messages[first : first + STEP]
            for m in part:
                if not store.add(m):
                    raise RuntimeError("add refused")
            for m in sent:
                store.set_sent(m.id, "sim", "c" + m.id)
            for m in receipted:
                report = DeliveryReport(
                    m.id, MessageState.DELIVERED, done_at=now, carrier="sim",
                    carrier_message_id="c" + m.id,
                )  # fmt: skip
                finals.report(m, report, True, None)
            receipted, sent = sent, part
            await asyncio.sleep(0)
        async with asyncio.timeout(120):
            await store.flush(60)  # every write committed (its CPU counts)
            while sink.reports < n or finals.finishing:  # the claims' and settles' turns
                await asyncio.sleep(0.005)  # a poll, with the deadline above
                await store.flush(60)
        cpu = time.process_time() - cpu
    finally:
        await store.close(30)
    return {
        "cpu_us_per_msg": cpu / n * 1e6,
        "gc_us_per_msg": (gc_clock.seconds - gc_before) / n * 1e6,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    tune_gc()
    gc_clock = GcClock()
    runs: dict[str, list[dict[str, float]]] = {"sqlite": [], "redis": []}
    with tempfile.TemporaryDirectory(prefix="smsc-bench-finals-") as tmp:
        server = RedisServer(Path(tmp))
        server.start()
        try:
            for r in range(args.rounds):
                order = ("sqlite", "redis") if r % 2 == 0 else ("redis", "sqlite")
                for name in order:
                    url = server.url if name == "redis" else None
                    path, prefix = str(Path(tmp) / f"r{r}.db"), f"bench{r}"
                    got = await one(args.messages, url, path, prefix, gc_clock)
                    runs[name].append(got)
                    print(
                        f"round {r + 1} {name:6}: {got['cpu_us_per_msg']:6.1f} µs CPU/msg"
                        f" (GC {got['gc_us_per_msg']:.1f})",
                        flush=True,
                    )
        finally:
            server.stop()
    med = {
        name: {k: round(statistics.median(x[k] for x in xs), 1) for k in xs[0]}
        for name, xs in runs.items()
    }
    ratio = med["redis"]["cpu_us_per_msg"] / med["sqlite"]["cpu_us_per_msg"]
    print(
        f"median over {args.rounds} rounds: SQLite {med['sqlite']['cpu_us_per_msg']} µs/msg"
        f" (GC {med['sqlite']['gc_us_per_msg']}), Redis {med['redis']['cpu_us_per_msg']} µs/msg"
        f" (GC {med['redis']['gc_us_per_msg']}): {ratio:.2f}x"
    )
    print(
        json.dumps(
            {
                "bench": "finals",
                "messages": args.messages,
                "rounds": args.rounds,
                "peer": "SQLite (one node), same run",
                "sqlite_cpu_us_per_msg": med["sqlite"]["cpu_us_per_msg"],
                "redis_cpu_us_per_msg": med["redis"]["cpu_us_per_msg"],
                "sqlite_gc_us_per_msg": med["sqlite"]["gc_us_per_msg"],
                "redis_gc_us_per_msg": med["redis"]["gc_us_per_msg"],
                "ratio_redis_vs_sqlite": round(ratio, 2),
            },
            separators=(",", ":"),
        )
    )


if __name__ == "__main__":
    uvloop.run(main())
