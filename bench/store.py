"""The store backends side by side: SQLite (a file in a temporary directory) and Redis (a
redis-server started for the run on a free port, no persistence), same messages, same
write-behind core.

Run from the repository root:  .venv/bin/python bench/store.py [--messages N] [--ack store]

Each message goes through what smsc writes for it: ``add``, then (``--ack store``)
``set_sending``, then ``set_sent`` with the carrier's id, then ``set_final``, in three
phases (all adds, all sends, all final states), each flushed before the next: a message's
records never meet in one batch, the most commands per message (smsc under load folds some
of them, and does fewer). ``--ack store``: every add and send waits for its commit, at most
``--window`` of them outstanding (a client's window).

Printed per backend: ``adds_per_s`` (the add phase), ``msgs_per_s`` (all three phases),
``cpu_us_per_msg`` (this process's CPU: the node's share), and for Redis
``cmds_per_msg`` (commands sent, scripts counted one each) and ``redis_cpu_us_per_msg``
(the server's CPU, from INFO). Last output line: one JSON object with both and
``redis_vs_sqlite`` (Redis messages/s over SQLite's, measured in the same run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# bench/ itself off the path: bench/queue.py would shadow the standard library's queue
sys.path[0] = str(ROOT)
sys.path.insert(1, str(ROOT / "tests"))

import redis  # noqa: E402
from redis_server import RedisServer  # noqa: E402

from router.config import StoreConfig  # noqa: E402
from router.model import Address, DeliveryReport, Message  # noqa: E402
from router.stores import create_store  # noqa: E402
from router.stores.redis import RedisStore  # noqa: E402
from smppcore.constants import MessageState  # noqa: E402

STEP = 200  # records offered per loop turn


def _redis_cpu(url: str) -> float:
    info = redis.Redis.from_url(url).info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


class _Window:
    """At most ``size`` writes waiting for their commit."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.waiting = 0
        self.failed = 0
        self._free = asyncio.Event()

    def callback(self) -> Callable[[bool], None]:
        self.waiting += 1

        def done(ok: bool) -> None:
            self.waiting -= 1
            self.failed += not ok
            self._free.set()

        return done

    async def room(self, need: int) -> None:
        while self.waiting + need > self.size:
            self._free.clear()
            async with asyncio.timeout(30):
                await self._free.wait()


async def run(
    config: StoreConfig, n: int, ack_store: bool, window: int, url: str | None
) -> dict[str, float]:
    store = create_store(config, redis_url=url, node_id="bench")
    await store.open()
    src, dst = Address(5, 0, "Brand"), Address(1, 1, "447700900001")
    ids = [f"m{i:09d}" for i in range(n)]
    now = time.time()
    messages = [
        Message(id=mid, account="acme", source=src, destination=dst, short_message=b"hello",
                registered_delivery=1, submitted_at=now)
        for mid in ids
    ]  # fmt: skip
    acks = _Window(window)
    redis_cpu = _redis_cpu(url) if url else 0.0
    commands = store.commands if isinstance(store, RedisStore) else 0
    cpu = time.process_time()
    started = time.perf_counter()
    try:
        for first in range(0, n, STEP):
            part = messages[first : first + STEP]
            if ack_store:
                await acks.room(len(part))
            for m in part:
                if not store.add(m, acks.callback() if ack_store else None):
                    raise RuntimeError("add refused")
            await asyncio.sleep(0)
        await store.flush(timeout=60)
        added = time.perf_counter()
        for first in range(0, n, STEP):
            part = ids[first : first + STEP]
            if ack_store:
                await acks.room(len(part))
                for mid in part:
                    store.set_sending(mid, "sim", acks.callback())
            for mid in part:
                store.set_sent(mid, "sim", "c" + mid)
            await asyncio.sleep(0)
        await store.flush(timeout=60)
        for first in range(0, n, STEP):
            for mid in ids[first : first + STEP]:
                store.set_final(mid, DeliveryReport(mid, MessageState.DELIVERED, done_at=now))
            await asyncio.sleep(0)
        await store.flush(timeout=60)
        took = time.perf_counter() - started
        cpu = time.process_time() - cpu
    finally:
        await store.close(60)
    if acks.failed:
        raise RuntimeError(f"{acks.failed} writes failed")
    out = {
        "adds_per_s": round(n / (added - started)),
        "msgs_per_s": round(n / took),
        "cpu_us_per_msg": round(cpu / n * 1e6, 1),
        "batches": store.transactions,
    }
    if isinstance(store, RedisStore) and url:
        out["cmds_per_msg"] = round((store.commands - commands) / n, 2)
        out["redis_cpu_us_per_msg"] = round((_redis_cpu(url) - redis_cpu) / n * 1e6, 1)
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--ack", choices=("enqueue", "store"), default="enqueue")
    parser.add_argument("--window", type=int, default=2_000, help="acks outstanding at most")
    args = parser.parse_args()
    ack_store = args.ack == "store"
    with tempfile.TemporaryDirectory(prefix="smsc-bench-store-") as tmp:
        server = RedisServer(Path(tmp))
        server.start()
        try:
            sqlite = await run(
                StoreConfig(path=str(Path(tmp) / "smsc.db")),
                args.messages,
                ack_store,
                args.window,
                None,
            )
            print(f"sqlite: {sqlite}", flush=True)
            on_redis = await run(StoreConfig(), args.messages, ack_store, args.window, server.url)
            print(f"redis:  {on_redis}", flush=True)
        finally:
            server.stop()
    print(
        json.dumps(
            {
                "messages": args.messages,
                "ack_after": args.ack,
                "sqlite": sqlite,
                "redis": on_redis,
                "sqlite_adds_per_s": sqlite["adds_per_s"],
                "redis_adds_per_s": on_redis["adds_per_s"],
                "redis_cmds_per_msg": on_redis["cmds_per_msg"],
                "redis_vs_sqlite": round(on_redis["msgs_per_s"] / sqlite["msgs_per_s"], 2),
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
