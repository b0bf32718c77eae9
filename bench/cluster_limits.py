"""What the cluster's shared limits cost per message: an account's throughput bucket taken
(a) by one node alone (smppcore's TokenBucket, in memory: the single-node path), (b) by a
node of a cluster through a local lease of tokens (router.cluster.tokens.LeasedBucket:
one Lua script call per batch), and (c) naively, one script call per message — plus the
cost of a bind's cluster session slot (acquire + release) and of a heartbeat.

Run from the repository root:  .venv/bin/python bench/cluster_limits.py [--messages N]

A redis-server is started for the run on a free port (no persistence). The bucket's rate
is set high so that nothing is throttled: what is measured is the bookkeeping. Printed:
per mode ``takes_per_s``, ``cpu_us_per_msg`` (this process: the node's share) and, on
Redis, ``cmds_per_msg`` (commands the server processed, from INFO: the commands a script
runs count, each script call is one round trip and runs 3-4 of them) and
``redis_cpu_us_per_msg``. Last line: one JSON object with ``leased_vs_naive`` (messages/s
of the leased bucket over the naive one, same run) and ``leased_vs_local``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# bench/ itself off the path: bench/queue.py would shadow the standard library's queue
sys.path[0] = str(ROOT)
sys.path.insert(1, str(ROOT / "tests"))

import redis  # noqa: E402
from redis_server import RedisServer  # noqa: E402

from router.cluster.config import ClusterConfig  # noqa: E402
from router.cluster.redis import RedisCoordinator  # noqa: E402
from router.cluster.tokens import LeasedBucket  # noqa: E402
from router.ports import NodeReport  # noqa: E402
from smppcore.throttle import TokenBucket  # noqa: E402

RATE = 1e9  # nothing throttled: the bookkeeping is what is measured
BATCH = 100  # tokens per lease: 50 ms of a 2,000/s account


def _server_stats(url: str) -> tuple[int, float]:
    client = redis.Redis.from_url(url)
    stats = client.info("stats")
    cpu = client.info("cpu")
    client.close()
    return int(stats["total_commands_processed"]), float(cpu["used_cpu_sys"]) + float(
        cpu["used_cpu_user"]
    )


class _Measure:
    def __init__(self, url: str | None, n: int) -> None:
        self.url, self.n = url, n

    def __enter__(self) -> _Measure:
        if self.url is not None:
            self.cmds, self.rcpu = _server_stats(self.url)
        self.cpu = time.process_time()
        self.t = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        elapsed = time.perf_counter() - self.t
        cpu = time.process_time() - self.cpu
        self.result: dict[str, float] = {
            "takes_per_s": round(self.n / elapsed),
            "cpu_us_per_msg": round(cpu / self.n * 1e6, 2),
        }
        if self.url is not None:
            cmds, rcpu = _server_stats(self.url)
            self.result["cmds_per_msg"] = round((cmds - self.cmds - 2) / self.n, 4)
            self.result["redis_cpu_us_per_msg"] = round((rcpu - self.rcpu) / self.n * 1e6, 2)


async def local(n: int) -> dict[str, float]:
    bucket = TokenBucket(RATE, RATE, time.monotonic())
    with _Measure(None, n) as m:
        for _ in range(n):
            if not bucket.take(time.monotonic()):
                raise RuntimeError("throttled")
    return m.result


async def leased(node: RedisCoordinator, url: str, n: int) -> dict[str, float]:
    bucket = LeasedBucket(node, "acct:bench-leased", RATE, RATE, batch=BATCH)
    with _Measure(url, n) as m:
        taken = 0
        while taken < n:
            if bucket.take():
                taken += 1
            elif not await bucket.refill():
                raise RuntimeError("throttled")
    await bucket.close()
    return m.result


async def naive(node: RedisCoordinator, url: str, n: int) -> dict[str, float]:
    with _Measure(url, n) as m:
        for _ in range(n):
            if not await node.take_tokens("acct:bench-naive", RATE, RATE, 1, time.time()):
                raise RuntimeError("throttled")
    return m.result


async def sessions(node: RedisCoordinator, url: str, n: int) -> dict[str, float]:
    with _Measure(url, n) as m:
        for _ in range(n):
            slot = await node.acquire_session("bench", 1_000_000, time.time())
            assert slot is not None
            await node.release_session("bench", slot)
    return m.result


async def heartbeats(node: RedisCoordinator, url: str, n: int) -> dict[str, float]:
    for carrier in ("a", "b", "c"):
        await node.claim_binds(carrier, 4, 4, time.time())
    report = NodeReport(address="127.0.0.1", ports=(2775, 0, 9775), config_hash="x" * 16)
    with _Measure(url, n) as m:
        for _ in range(n):
            await node.heartbeat(report, time.time())
    return m.result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=50_000)
    args = parser.parse_args()
    n = args.messages
    with tempfile.TemporaryDirectory(prefix="smsc-bench-cluster-") as tmp:
        server = RedisServer(Path(tmp))
        server.start()
        try:
            node = RedisCoordinator.from_config(ClusterConfig(redis=server.url), "1")
            await node.open(time.time())
            results = {"local": await local(n)}
            print(f"local:   {results['local']}", flush=True)
            results["leased"] = await leased(node, server.url, n)
            print(f"leased:  {results['leased']}", flush=True)
            results["naive"] = await naive(node, server.url, n // 10)
            print(f"naive:   {results['naive']}", flush=True)
            results["session_slot"] = await sessions(node, server.url, n // 50)
            print(f"session acquire+release: {results['session_slot']}", flush=True)
            results["heartbeat"] = await heartbeats(node, server.url, n // 50)
            print(f"heartbeat (3 carriers): {results['heartbeat']}", flush=True)
            await node.close()
        finally:
            server.stop()
    leased_rate, naive_rate = results["leased"]["takes_per_s"], results["naive"]["takes_per_s"]
    print(
        json.dumps(
            {
                "messages": n,
                "batch": BATCH,
                **{f"{k}": v for k, v in results.items()},
                "leased_cmds_per_msg": results["leased"]["cmds_per_msg"],
                "leased_vs_naive": round(leased_rate / naive_rate, 1),
                "leased_vs_local": round(leased_rate / results["local"]["takes_per_s"], 3),
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
