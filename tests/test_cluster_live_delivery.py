"""A receiver bound on a node of the cluster gets its deliveries straight from memory, not
through Redis: a drain that is only looking for held items (a node's sweep, another
node's signal, a bind) does not hold live deliveries up while Redis is slow to answer
it; only what this node knows to be held goes first.

Redis is made slow here by pausing its clients' writes (``CLIENT PAUSE ... WRITE``: scripts
wait too): the drain's read of held items (a script that claims them) waits until the
pause is lifted. Every wait is for a condition under a
deadline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import redis.asyncio as aioredis
from carrier_fixtures import ESME_SESSION, Esme
from loops import Run
from redis_server import redis_server, redis_url  # noqa: F401
from smsc_fixtures import (
    DEADLINE,
    PASSWORD,
    SYSTEM_ID,
    app_config,
    bind_client,
    receipt_id,
    running_app,
)

from smppcore.aio import Connection
from smppcore.pdu import BindReceiver, DeliverSm, DeliverSmResp, EnquireLink, Pdu
from smppcore.session import Role
from smsc.app import App
from smsc.config import SmscConfig

#: No node dies here: a lease (and a Redis pause) far longer than the test's waits.
LEASE = 30.0
#: Redis paused this long at most (ms): lifted by the test as soon as it has looked.
PAUSE_MS = int(3 * DEADLINE * 1000)
#: More than a look's worth: enough that, held up, they would be seen to wait.
N = 50


def one_node(tmp_path: Path, url: str) -> SmscConfig:
    return app_config(
        tmp_path,
        {"sim": {}},
        node_id=1,
        cluster={"redis": url, "lease": LEASE, "heartbeat": 0.1},
    )


@asynccontextmanager
async def paused(url: str) -> AsyncIterator[None]:
    """Redis runs no write or script (a slow Redis, stretched) until the block ends."""
    client = aioredis.from_url(url)
    try:
        await client.execute_command("CLIENT", "PAUSE", PAUSE_MS, "WRITE")
        try:
            yield
        finally:
            await client.execute_command("CLIENT", "UNPAUSE")
    finally:
        await client.aclose()


def mo(i: int) -> DeliverSm:
    return DeliverSm(source_addr=f"4477009{i:05d}", destination_addr="1234", short_message=b"hi")


def test_a_sweep_waiting_on_a_slow_redis_does_not_hold_up_deliveries_to_a_bound_receiver(
    run1: Run,
    redis_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with running_app(one_node(tmp_path, redis_url)) as app:
            rx = await bind_client(app, "rx")
            try:
                delivery = app.delivery
                assert delivery is not None
                async with paused(redis_url):
                    delivery.sweep()  # a drain starts; its look at Redis waits
                    for i in range(N):
                        assert delivery.deliver(SYSTEM_ID, mo(i))
                    got = await rx.receipts(N)  # while Redis still has not answered
                assert [pdu.source_addr for pdu in got] == [mo(i).source_addr for i in range(N)]
                assert delivery.held == 0  # none took the trip through Redis
                assert delivery.sent == N
            finally:
                await rx.close()

    run1(main())


def test_deliveries_waiting_behind_held_ones_are_kept_when_redis_refuses_more(
    run1: Run,
    redis_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A node that knows of held items (a restart found some) makes new deliveries wait
    behind them, in memory up to a bound; past it the store takes what it will (here:
    its writer's queue is small and Redis is not answering) — what it refuses stays in
    memory, and the next delivery is refused (its sender is answered a temporary error
    and sends it again). None that was taken is dropped, and they arrive in order."""

    async def main() -> None:
        config = app_config(
            tmp_path,
            {"sim": {}},
            router={"store": {"path": str(tmp_path / "smsc.db"), "queue_max": 50}},
            node_id=1,
            cluster={"redis": redis_url, "lease": LEASE, "heartbeat": 0.1},
        )
        async with running_app(config) as app:
            rx = await bind_client(app, "rx")
            try:
                delivery = app.delivery
                assert delivery is not None
                taken: list[str] = []
                async with paused(redis_url):
                    delivery.found_held(SYSTEM_ID, 1)  # as a restart that found one held
                    delivery.sweep()  # its drain's read of the held ones waits
                    for i in range(100_000):
                        if not delivery.deliver(SYSTEM_ID, mo(i)):
                            break  # refused: the sender sends it again later
                        taken.append(mo(i).source_addr)
                    else:
                        raise AssertionError("nothing was ever refused")
                assert delivery.dropped == {}
                got = await rx.receipts(len(taken), timeout=3 * DEADLINE)
                assert [pdu.source_addr for pdu in got] == taken
            finally:
                await rx.close()

    run1(main())


class LateReceiver(Esme):
    """A receiver that answers its deliver_sm only when told (:meth:`answer`)."""

    def __init__(self) -> None:
        super().__init__()
        self.unanswered: list[int] = []

    def request_received(self, conn: Connection, pdu: Pdu) -> None:
        if not isinstance(pdu, DeliverSm):
            super().request_received(conn, pdu)
            return
        self.delivered.append(pdu)
        self.unanswered.append(pdu.sequence_number)
        self._changed.set()

    def answer(self) -> None:
        for sequence_number in self.unanswered:
            self.c.respond(DeliverSmResp(sequence_number=sequence_number))
        self.unanswered.clear()


async def bind_late(app: App) -> LateReceiver:
    esme = LateReceiver()
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(DEADLINE):
        _, esme.conn = await loop.create_connection(
            lambda: Connection(Role.ESME, ESME_SESSION, esme), "127.0.0.1", app.port
        )
        await esme.c.bind(BindReceiver(system_id=SYSTEM_ID, password=PASSWORD))
    return esme


async def until(esme: Esme, condition: Callable[[], bool]) -> None:
    """Wait for ``condition`` of the node's state, an enquire_link round trip per look."""
    async with asyncio.timeout(DEADLINE):
        while not condition():
            await esme.c.request(EnquireLink())


def test_in_ack_after_enqueue_a_receipt_that_comes_during_a_drain_waits_in_memory(
    run1: Run,
    redis_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    """``ack_after: enqueue``: a final receipt that comes while the account's held ones are
    being sent waits behind them in memory (its carrier was answered already), not in
    Redis — sent through Redis, every receipt would take that trip while the drain lasts,
    and under load it would last for ever. The client gets both, in order."""

    async def main() -> None:
        async with running_app(one_node(tmp_path, redis_url)) as app:
            delivery = app.delivery
            assert delivery is not None
            tx = await bind_client(app, "tx")
            rx: LateReceiver | None = None
            try:
                first = await tx.submit_ok("447700900001")
                await until(tx, lambda: delivery.held == 1)  # nobody to receive it
                rx = await bind_late(app)
                await rx.wait_for(lambda: len(rx.delivered) == 1)  # drained, unanswered
                second = await tx.submit_ok("447700900002")
                finals = app.router.metrics.final
                await until(tx, lambda: sum(finals.values()) == 2)  # reported meanwhile
                assert delivery.held == 1  # the second waits in memory, not in Redis
                rx.answer()
                await rx.wait_for(lambda: len(rx.delivered) == 2)
                rx.answer()
                assert [receipt_id(pdu) for pdu in rx.delivered] == [first, second]
            finally:
                await tx.close()
                if rx is not None:
                    await rx.close()

    run1(main())
