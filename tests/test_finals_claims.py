"""Final receipts in a cluster (router.finals on a store the nodes share): claimed first (a
compare-and-set with a report lease), reported to the client only by the node that won,
settled once the client has it — and tried again, not lost, while another node reports it.

Built with real Redis stores, one per node; the sink is the one fake (a port smsc
implements). Every wait has a deadline and waits on the store or the sink, never a sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from loops import Run
from redis_server import redis_server, redis_url  # noqa: F401
from router_parts import (
    RETRY_LATER,
    T0,
    Answers,
    Sink,
    carrier,
    message,
    metrics_for,
    router_config,
)

from router.carriers import Carriers
from router.config import StoreConfig
from router.finals import Finals
from router.metrics import RouterMetrics
from router.model import DeliveryReport
from router.queue import MessageQueue
from router.receipts import Receipts
from router.stores.redis import RedisStore
from smppcore.constants import MessageState

DEADLINE = 20.0


def receipt(id: str = "m1") -> DeliveryReport:
    return DeliveryReport(
        message_id=id,
        state=MessageState.DELIVERED,
        done_at=T0,
        carrier="uk",
        carrier_message_id="C1",
    )


def finals(store: RedisStore, sink: Sink) -> Finals:
    return Finals(store=store, sink=sink, metrics=RouterMetrics(["uk"]), durable=False)


@contextlib.asynccontextmanager
async def opened(url: str, node_id: str) -> AsyncIterator[RedisStore]:
    store = RedisStore(StoreConfig(), url=url, node_id=node_id)
    await store.open()
    try:
        yield store
    finally:
        await store.close(5.0)


async def settled(f: Finals, message_id: str) -> None:
    """Until ``message_id``'s final receipt is done with here (its claim settled, or
    found a duplicate), its retries included."""
    async with asyncio.timeout(DEADLINE):
        while message_id in f.finishing or f.tasks:
            await asyncio.gather(*f.tasks)
            await f.store.flush()
            await asyncio.sleep(0)  # a turn of the loop (done callbacks run), not a wait


def test_a_final_receipt_is_claimed_reported_once_and_settled(
    run: Run,
    redis_url: str,  # noqa: F811
) -> None:
    async def main() -> None:
        async with opened(redis_url, "a") as store:
            sink = Sink()
            f = finals(store, sink)
            msg = message("m1")
            assert store.add(msg)
            f.report(msg, receipt(), True, None)
            await sink.wait_for(1)
            await settled(f, "m1")
            [(stored, report)] = sink.reports
            assert (stored.message.id, report.state) == ("m1", MessageState.DELIVERED)
            assert f.metrics.final[("acme", "DELIVERED")] == 1
            # Settled: the same receipt again (at any node) is a duplicate.
            assert await store.claim_final("m1", receipt()) is False
            got = await store.get("m1")
            assert got is not None
            assert (got.state, got.done_at) == (MessageState.DELIVERED, T0)

    run(main())


def test_many_final_receipts_at_once_are_each_reported_once(
    run: Run,
    redis_url: str,  # noqa: F811
) -> None:
    """Claims of one loop turn go out in one batch and are answered together."""
    n = 500

    async def main() -> None:
        async with opened(redis_url, "a") as store:
            sink = Sink()
            f = finals(store, sink)
            msgs = [message(f"m{i:04d}") for i in range(n)]
            for msg in msgs:
                assert store.add(msg)
            batches = store.transactions
            for msg in msgs:
                f.report(msg, receipt(msg.id), True, None)
            await sink.wait_for(n)
            for msg in msgs:
                await settled(f, msg.id)
            assert sorted(s.message.id for s, _ in sink.reports) == [m.id for m in msgs]
            assert f.metrics.final[("acme", "DELIVERED")] == n
            assert store.transactions - batches <= 6  # adds, claims, settles: few batches
            assert f.finishing == {}

    run(main())


def test_a_receipt_another_node_is_reporting_is_claimed_again_once_it_settles(
    run: Run,
    redis_url: str,  # noqa: F811
) -> None:
    """No carrier waits (``ack_after: enqueue``): the claim is tried again, with back-off,
    until the other node's report settles — then it is a duplicate, not reported twice."""

    async def main() -> None:
        async with opened(redis_url, "a") as a, opened(redis_url, "b") as b:
            msg = message("m1")
            assert a.add(msg)
            await a.flush()
            assert await a.claim_final("m1", receipt()) is True  # a reports it
            sink = Sink()
            f = finals(b, sink)
            f.report(msg, receipt(), True, None)
            await b.flush()  # b's claim was answered: "being reported"
            assert f.tasks  # tried again later
            assert "m1" in f.finishing
            await a.settle_final("m1")
            await settled(f, "m1")
            assert sink.reports == []
            assert f.metrics.events[("receipt_duplicate", "uk")] == 1
            assert f.metrics.final == {}  # counted by the node that reported it

    run(main())


def test_a_carrier_waiting_on_a_receipt_another_node_reports_is_asked_to_send_it_again(
    run: Run,
    redis_url: str,  # noqa: F811
) -> None:
    async def main() -> None:
        async with opened(redis_url, "a") as a, opened(redis_url, "b") as b:
            msg = message("m1")
            assert a.add(msg)
            await a.flush()
            assert await a.claim_final("m1", receipt()) is True
            sink = Sink()
            f = finals(b, sink)
            respond = Answers()
            f.report(msg, receipt(), True, respond)
            assert await respond.wait_for(1) == [RETRY_LATER]
            assert sink.reports == []
            assert f.finishing == {}

    run(main())


class HoldingSink(Sink):
    """What smsc's sink does for an account bound nowhere: holds the receipt in the store
    (a write that a closed store refuses)."""

    def __init__(self, store: RedisStore) -> None:
        super().__init__()
        self.store = store
        self.held = 0
        self.refused = 0

    def report(self, stored, report, settled=None):  # type: ignore[no-untyped-def]
        try:
            self.store.hold(stored.message.account, b"receipt", time.time() + 3600, None)
        except Exception:
            self.refused += 1
            if settled is not None:
                settled(False)
            return
        self.held += 1
        super().report(stored, report, settled)


def test_at_shutdown_the_receipts_being_claimed_are_held_before_the_store_closes(
    run: Run,
    redis_url: str,  # noqa: F811
) -> None:
    """A router that stops waits (Receipts.settle, within its deadline) for the final
    receipts whose claims are still queued in the store: answered after the store closed,
    they could neither be delivered nor held — and their carriers were answered already
    (``ack_after: enqueue``), so nobody would send them again."""

    async def main() -> None:
        async with opened(redis_url, "a") as store:
            sink = HoldingSink(store)
            f = finals(store, sink)
            cfg = router_config(carrier("uk"))
            metrics = metrics_for(cfg)
            carriers = Carriers(
                cfg,
                queue=MessageQueue(cfg.queue_max),
                metrics=metrics,
                on_deliver=lambda *_: None,
                wake=lambda: None,
            )
            receipts = Receipts(cfg, store=store, carriers=carriers, finals=f, metrics=metrics)
            msgs = [message(f"m{i:04d}") for i in range(200)]
            for msg in msgs:
                assert store.add(msg)
            await store.flush()
            for msg in msgs:
                f.report(msg, receipt(msg.id), True, None)
            assert f.claiming == 200
            assert await receipts.settle(DEADLINE)
            assert (sink.held, sink.refused) == (200, 0)
            assert f.claiming == 0
        # Every one held, and the store written before it closed.
        async with opened(redis_url, "b") as again:
            assert (await again.held_counts()).get("acme") == 200

    run(main())
