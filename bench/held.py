"""Held receipts written by the store while messages flow: as fast as the traffic making them?

Run from the repository root:  .venv/bin/python bench/held.py [--messages N] [--rate R]

A receiver-less account: each message is added, sent and finished in the store, and its
receipt held (``SqliteStore.hold``) — four records, as smsc writes them — offered at
``--rate`` messages per second (0: as fast as the loop goes) while a task keeps the event
loop busy in 2 ms slices (as serving does: the writer's thread then competes for the
GIL). The peer, measured in the same run: the same messages without receipts held.

Last output line: one JSON object with ``held_per_s`` (held records written per second,
first record offered to the last committed), ``backlog_max`` (records waiting for the
writer at most), the same for the peer, and ``ratio_vs_no_holds`` (time with holds / time
without; 1.0 = holds cost nothing; the writer keeps up when held_per_s matches the rate).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from router.config import StoreConfig
from router.model import Address, DeliveryReport, Message
from router.ports import StoreTimeout
from router.stores.sqlite import SqliteStore
from smppcore.constants import MessageState

#: A receipt deliver_sm's size, roughly (header, addresses, text, three TLVs).
RECEIPT = b"\x00" * 16 + b"r" * 150
STEP = 100  # messages offered per loop turn


async def _busy(stop: asyncio.Event) -> None:
    while not stop.is_set():
        end = time.perf_counter() + 0.002
        while time.perf_counter() < end:
            pass
        await asyncio.sleep(0)


async def run(path: Path, n: int, rate: float, hold: bool) -> dict[str, float]:
    store = SqliteStore(StoreConfig(path=str(path)))
    await store.open()
    stop = asyncio.Event()
    busy = asyncio.create_task(_busy(stop))
    src, dst = Address(5, 0, "Brand"), Address(1, 1, "447700900001")
    expires = time.time() + 3600
    backlog = 0
    started = time.perf_counter()
    try:
        for first in range(0, n, STEP):
            for i in range(first, min(n, first + STEP)):
                mid = f"m{i:09d}"
                now = time.time()
                store.add(
                    Message(
                        id=mid,
                        account="acme",
                        source=src,
                        destination=dst,
                        short_message=b"hello",
                        registered_delivery=1,
                        submitted_at=now,
                    )
                )
                store.set_sent(mid, "sim", f"c{i}")
                store.set_final(mid, DeliveryReport(mid, MessageState.DELIVERED, done_at=now))
                if hold:
                    store.hold("acme", RECEIPT, expires)
            backlog = max(backlog, store.queued)
            due = started + (first + STEP) / rate if rate else 0.0
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
        offered = time.perf_counter() - started
        while True:
            try:
                await store.flush()  # bounded by store.read_timeout: wait on past it
                break
            except StoreTimeout:
                continue
        took = time.perf_counter() - started
    finally:
        stop.set()
        await busy
        await store.close()
    return {
        "seconds": round(took, 3),
        "offered_s": round(offered, 3),
        "messages_per_s": round(n / took),
        "backlog_max": backlog,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=1000.0, help="messages/s; 0: flat out")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        peer = await run(Path(tmp) / "plain.db", args.messages, args.rate, hold=False)
        print(f"without holds: {peer}", flush=True)
        held = await run(Path(tmp) / "held.db", args.messages, args.rate, hold=True)
        print(f"with holds:    {held}", flush=True)
    print(
        json.dumps(
            {
                "messages": args.messages,
                "rate": args.rate,
                "held_per_s": held["messages_per_s"],
                "backlog_max": held["backlog_max"],
                "no_holds": peer,
                "with_holds": held,
                "ratio_vs_no_holds": round(held["seconds"] / peer["seconds"], 2),
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
