"""What reaches clients across the nodes of a cluster: two ``smsc serve`` nodes (Apps) on
loopback sharing a real redis-server, each with its simulated carrier ``sim`` (one bind for
the whole cluster: the first node to start holds it, so every receipt and MO arrives on
node A).

A receipt or MO for an account with no receiver on the node where it arrives is held in
Redis and the nodes with a receiver of the account are told; they drain it, each held item
sent once in all (the store's claims); with no receiver anywhere it waits in Redis for the
next bind, on any node. query_sm, cancel_sm and replace_sm work on any node: the message
record is shared, and a cancel or replace is asked of the node that queues the message.
Every wait is for a condition under a deadline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from carrier_fixtures import ESME_SESSION, Esme, wait_any
from loops import Run
from minimal_mc import MinimalMC
from redis_server import redis_server, redis_url  # noqa: F401
from smsc_fixtures import (
    DEADLINE,
    PASSWORD,
    SYSTEM_ID,
    UPSTREAM_ID,
    UPSTREAM_PASSWORD,
    app_config,
    assert_one_final_receipt_each,
    bind_client,
    final_receipts,
    running_app,
    upstream,
    wait_final_receipts,
)

from smppcore.aio import Connection
from smppcore.constants import CommandStatus, MessageState
from smppcore.pdu import (
    BindTransceiver,
    CancelSm,
    CancelSmResp,
    DeliverSm,
    DeliverSmResp,
    Pdu,
    ReplaceSm,
    ReplaceSmResp,
)
from smppcore.session import Role
from smsc.app import App
from smsc.config import SmscConfig

#: No node dies here: a lease long enough that no live node's lapses on a slow, loaded
#: machine. It is also how long a node's claim on the held items it drains and its report
#: lease on a receipt last (store.claim_seconds): one lapsed while its node still delivers
#: lets the other node send the same item again (a receipt twice). Heartbeats stay quick.
LEASE = 5.0
HEARTBEAT = 0.1
#: schedule_delivery_time an hour from now (relative, §7.1.1.2): the message waits queued.
IN_AN_HOUR = "000000010000000R"


def node_config(tmp_path: Path, url: str, node_id: int) -> SmscConfig:
    where = tmp_path / f"node{node_id}"
    where.mkdir(exist_ok=True)
    return app_config(
        where,
        {"sim": {}},
        upstreams={"sim": {"mo_account": SYSTEM_ID}},
        node_id=node_id,
        cluster={"redis": url, "lease": LEASE, "heartbeat": HEARTBEAT},
    )


@asynccontextmanager
async def two_nodes(tmp_path: Path, url: str) -> AsyncIterator[tuple[App, App]]:
    """Node A (holds sim's one bind: receipts and MO arrive there) and node B."""
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(running_app(node_config(tmp_path, url, 1)))
        b = await stack.enter_async_context(running_app(node_config(tmp_path, url, 2), wait_for=[]))
        assert a.cluster.bind_slots.get("sim") == 1
        assert b.cluster.bind_slots.get("sim", 0) == 0
        yield a, b


async def held_in_redis(app: App, n: int) -> None:
    """Wait until the shared store holds ``n`` items for the account (each look a round
    trip to Redis)."""
    async with asyncio.timeout(DEADLINE):
        while (await app.store.held_counts()).get(SYSTEM_ID, 0) != n:
            pass


async def submit_some(esme: Esme, n: int, **kw: Any) -> list[str]:
    return [await esme.submit_ok(f"44770090{i:04d}", **kw) for i in range(n)]


def test_a_receipt_reaches_the_receiver_on_the_other_node_once(
    run1: Run,
    redis_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with two_nodes(tmp_path, redis_url) as (a, b):
            tx = await bind_client(a, "tx")
            rx = await bind_client(b, "rx")
            try:
                ids = await submit_some(tx, 20)
                await wait_final_receipts(rx, ids)
                await held_in_redis(a, 0)  # all drained
                assert_one_final_receipt_each(rx, ids)
                assert len(final_receipts(rx)) == len(ids)
                assert tx.delivered == []
                assert a.peers is not None
                assert a.peers.sent.get("held", 0) >= 1  # told B, not found by its sweep
            finally:
                await tx.close()
                await rx.close()

    run1(main())


@pytest.mark.parametrize("where", ["A", "B"])
def test_receipts_wait_in_redis_for_a_receiver_on_either_node(
    run1: Run,
    redis_url: str,  # noqa: F811
    tmp_path: Path,
    where: str,
) -> None:
    async def main() -> None:
        async with two_nodes(tmp_path, redis_url) as (a, b):
            tx = await bind_client(a, "tx")
            try:
                ids = await submit_some(tx, 5)
                await held_in_redis(b, len(ids))  # final on A, held in Redis
                rx = await bind_client(a if where == "A" else b, "rx")
                try:
                    await wait_final_receipts(rx, ids)
                    await held_in_redis(a, 0)
                    assert_one_final_receipt_each(rx, ids)
                finally:
                    await rx.close()
            finally:
                await tx.close()

    run1(main())


def test_two_receivers_on_two_nodes_get_each_receipt_once_in_all(
    run1: Run,
    redis_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Held first (no receiver anywhere), then a receiver binds on each node: both drain
    the account at once, and the store's claims give each held item to one of them."""

    async def main() -> None:
        async with two_nodes(tmp_path, redis_url) as (a, b):
            tx = await bind_client(a, "tx")
            try:
                held = await submit_some(tx, 200)
                await held_in_redis(a, len(held))
                on_a, on_b = await asyncio.gather(bind_client(a, "rx"), bind_client(b, "rx"))
                try:
                    live = await submit_some(tx, 20)  # and while they are bound
                    ids = held + live

                    def all_in() -> bool:
                        return set(ids) <= final_receipts(on_a).keys() | final_receipts(on_b).keys()

                    await wait_any(all_in, on_a, on_b, timeout=DEADLINE)  # 220 receipts, two nodes
                    await held_in_redis(b, 0)
                    got_a, got_b = final_receipts(on_a), final_receipts(on_b)
                    for message_id in ids:
                        assert len(got_a.get(message_id, [])) + len(got_b.get(message_id, [])) == 1
                finally:
                    await on_a.close()
                    await on_b.close()
            finally:
                await tx.close()

    run1(main())


def test_mo_from_a_carrier_on_one_node_reaches_the_account_on_the_other(
    run1: Run,
    redis_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with two_nodes(tmp_path, redis_url) as (a, b):
            rx = await bind_client(b, "rx")
            try:
                for n in range(3):
                    a.inject_mo("sim", text=f"STOP {n}", source="447700900099")
                await rx.receipts(3, DEADLINE)
                texts = [p.short_message for p in rx.delivered]
                assert texts == [b"STOP 0", b"STOP 1", b"STOP 2"]  # in order
                await held_in_redis(a, 0)
            finally:
                await rx.close()

    run1(main())


def test_query_cancel_and_replace_on_one_node_for_a_message_accepted_on_the_other(
    run1: Run,
    redis_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with two_nodes(tmp_path, redis_url) as (a, b):
            on_a, on_b = await bind_client(a, "trx"), await bind_client(b, "trx")
            try:
                kept = await on_a.submit_ok(
                    schedule_delivery_time=IN_AN_HOUR, registered_delivery=0
                )
                gone = await on_a.submit_ok(
                    schedule_delivery_time=IN_AN_HOUR, registered_delivery=0
                )
                sent = await on_a.submit_ok()
                await wait_final_receipts(on_a, [sent])

                await a.store.flush()  # (ack_after: enqueue: acknowledged before it is shared)
                assert (await on_b.query(kept)).message_state == MessageState.ENROUTE
                done = await on_b.query(sent)
                assert done.message_state == MessageState.DELIVERED
                assert done.final_date

                cancel = await on_b.request(CancelSm(message_id=gone))
                assert isinstance(cancel, CancelSmResp)
                assert cancel.command_status == CommandStatus.ESME_ROK
                assert (await on_b.query(gone)).message_state == MessageState.DELETED
                assert (await on_a.query(gone)).message_state == MessageState.DELETED
                again = await on_b.request(CancelSm(message_id=gone))
                assert again.command_status == CommandStatus.ESME_RCANCELFAIL
                sent_cancel = await on_b.request(CancelSm(message_id=sent))  # it left already
                assert sent_cancel.command_status == CommandStatus.ESME_RCANCELFAIL

                replace = await on_b.request(ReplaceSm(message_id=kept, short_message=b"new text"))
                assert isinstance(replace, ReplaceSmResp)
                assert replace.command_status == CommandStatus.ESME_ROK
                stored = await b.store.get(kept)
                assert stored is not None
                assert stored.message.short_message == b"new text"
                assert stored.owner == "1"
            finally:
                await on_a.close()
                await on_b.close()

    run1(main())


# --- receipts over any node's bind of a carrier ------------------------------------------


class HoldingEsme(Esme):
    """An ESME that stops answering deliver_sm while ``answering`` is False (it records
    them), until :meth:`answer_all`."""

    def __init__(self) -> None:
        super().__init__()
        self.answering = True
        self._unanswered: list[tuple[Connection, int]] = []

    def request_received(self, conn: Connection, pdu: Pdu) -> None:
        if self.answering or not isinstance(pdu, DeliverSm):
            super().request_received(conn, pdu)
            return
        self.delivered.append(pdu)
        self._unanswered.append((conn, pdu.sequence_number))
        self._changed.set()

    def answer_all(self) -> None:
        self.answering = True
        for conn, sequence_number in self._unanswered:
            conn.respond(DeliverSmResp(sequence_number=sequence_number))
        self._unanswered.clear()


async def bind_holding(app: App) -> HoldingEsme:
    """A HoldingEsme bound as a transceiver of the test account."""
    esme = HoldingEsme()
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(DEADLINE):
        _, esme.conn = await loop.create_connection(
            lambda: Connection(Role.ESME, ESME_SESSION, esme), "127.0.0.1", app.port
        )
        await esme.c.bind(BindTransceiver(system_id=SYSTEM_ID, password=PASSWORD))
    return esme


def shared_carrier_config(
    tmp_path: Path, url: str, node_id: int, port: int, **carrier: Any
) -> SmscConfig:
    """A node of a cluster whose carrier ``ext`` (a scripted MC) has two binds: one each."""
    where = tmp_path / f"node{node_id}"
    where.mkdir(exist_ok=True)
    return app_config(
        where,
        {},
        node_id=node_id,
        cluster={"redis": url, "lease": LEASE, "heartbeat": HEARTBEAT},
        router={
            "carriers": [upstream("ext", host="127.0.0.1", port=port, binds=2, **carrier)],
            "routes": [{"prefix": "", "carriers": [{"carrier": "ext", "price": "0.001"}]}],
            "store": {"path": str(where / "smsc.db")},
            "ack_after": "store",
        },
    )


@asynccontextmanager
async def two_nodes_one_carrier(
    tmp_path: Path, url: str, **carrier: Any
) -> AsyncIterator[tuple[App, App, MinimalMC]]:
    """Nodes A and B, each with one bind of the same carrier (a MinimalMC that sends
    receipts only when told to, over the bind the test picks)."""
    async with AsyncExitStack() as stack:
        mc = await stack.enter_async_context(
            MinimalMC({UPSTREAM_ID: UPSTREAM_PASSWORD}, auto_receipt=False)
        )
        a = await stack.enter_async_context(
            running_app(shared_carrier_config(tmp_path, url, 1, mc.port, **carrier))
        )
        b = await stack.enter_async_context(
            running_app(shared_carrier_config(tmp_path, url, 2, mc.port, **carrier), wait_for=[])
        )
        assert a.router is not None
        assert b.router is not None
        async with asyncio.timeout(DEADLINE):  # A gives up its second bind to B
            while (a.router.pools["ext"].bound, b.router.pools["ext"].bound) != (1, 1):
                await b.router.binds_changed(HEARTBEAT)
        await mc.wait_for(lambda: len(mc.bound(UPSTREAM_ID)) == 2)
        yield a, b, mc


def test_a_receipt_that_comes_to_the_other_node_before_its_submit_sm_resp_is_not_lost(
    run1: Run,
    redis_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The carrier sends the receipt over node B's bind before it answers node A's
    submit_sm: B finds no message for it yet, looks again until A has committed the
    carrier's id, then finishes the message; the client on A gets the receipt once — also
    after A's own receipt deadline for the message has passed (A never saw the receipt:
    the store tells it the message is final)."""

    async def main() -> None:
        # A's receipt deadline (3 s) outlasts B's look-ups and claim on a loaded machine.
        async with two_nodes_one_carrier(tmp_path, redis_url, receipt_timeout=3.0) as (a, _, mc):
            esme = await bind_client(a, "trx")
            try:
                mc.hold = True
                submit = asyncio.ensure_future(esme.submit_ok())
                await mc.wait_for(lambda: len(mc.submits) == 1)
                over_a = mc._held[0][0]
                (over_b,) = [c for c in mc.bound(UPSTREAM_ID) if c is not over_a]
                carrier_id = str(mc._next_id)  # what the held submit will be answered
                answered = mc.push_receipt(over_b, carrier_id)  # B has no such id yet
                mc.hold = False
                assert mc.release() == 1
                our_id = await submit
                async with asyncio.timeout(DEADLINE):
                    ack = await answered
                assert isinstance(ack, DeliverSmResp)
                assert ack.command_status == CommandStatus.ESME_ROK  # delivered or held, final
                await wait_final_receipts(esme, [our_id])
                await held_in_redis(a, 0)
                assert_one_final_receipt_each(esme, [our_id])
                assert (await esme.query(our_id)).message_state == MessageState.DELIVERED
                assert a.router is not None
                timeouts = a.router.metrics.events
                async with asyncio.timeout(DEADLINE):  # each look a query_sm round trip
                    while not timeouts.get(("receipt_timeout", "ext")):
                        await esme.query(our_id)
                assert await a.router.receipts.settle(DEADLINE)
                await held_in_redis(a, 0)
                assert_one_final_receipt_each(esme, [our_id])
                assert (await esme.query(our_id)).message_state == MessageState.DELIVERED
            finally:
                await esme.close()

    run1(main())


def test_a_receipt_sent_to_both_nodes_reaches_the_client_once(
    run1: Run,
    redis_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A carrier that sends one receipt over both nodes' binds (a resend after a lost
    answer, say): both nodes match it; the final state's compare-and-set lets one report
    it. The other copy is answered ESME_ROK once the first is delivered or held, or
    ESME_RX_T_APPN while it is being reported (the carrier sends it again: then ESME_ROK,
    a duplicate); the client gets each receipt once."""

    async def main() -> None:
        async with two_nodes_one_carrier(tmp_path, redis_url) as (a, b, mc):
            esme = await bind_holding(b)  # the client on B; messages sent from A or B
            try:
                ids = [await esme.submit_ok(f"4477009000{i:02d}") for i in range(10)]
                await mc.wait_for(lambda: len(mc.message_ids) == len(ids))
                # The client answers no deliver_sm for now: a node that reported a receipt
                # waits for it, so both would deliver if both reported.
                esme.answering = False
                binds = mc.bound(UPSTREAM_ID)
                sent = [(conn, carrier_id) for carrier_id in mc.message_ids for conn in binds]
                answers = [mc.push_receipt(conn, carrier_id) for conn, carrier_id in sent]
                await esme.wait_for(lambda: set(ids) <= final_receipts(esme).keys(), DEADLINE)
                # One of each pair is the other's copy: answered while the client holds the
                # first — ESME_RX_T_APPN, to be sent again: the first is being reported.
                await mc.wait_for(lambda: len(mc.receipt_acks) == len(ids), DEADLINE)
                early = [x.result().command_status for x in answers if x.done()]
                assert early == [CommandStatus.ESME_RX_T_APPN] * len(ids), early
                esme.answer_all()
                async with asyncio.timeout(DEADLINE):
                    acks = await asyncio.gather(*answers)
                statuses = [x.command_status for x in acks]
                assert statuses.count(CommandStatus.ESME_ROK) == len(ids), statuses
                again = [
                    mc.push_receipt(conn, carrier_id)
                    for (conn, carrier_id), status in zip(sent, statuses, strict=True)
                    if status == CommandStatus.ESME_RX_T_APPN
                ]
                assert len(again) + statuses.count(CommandStatus.ESME_ROK) == len(sent)
                async with asyncio.timeout(DEADLINE):
                    resent = await asyncio.gather(*again)
                assert [x.command_status for x in resent] == [CommandStatus.ESME_ROK] * len(again)
                await wait_final_receipts(esme, ids)
                await held_in_redis(a, 0)  # every answer came after the delivery or hold
                assert_one_final_receipt_each(esme, ids)
                assert len(esme.delivered) == len(ids)
                duplicates = sum(
                    app.router.metrics.events.get(("receipt_duplicate", "ext"), 0)
                    for app in (a, b)
                    if app.router is not None
                )
                assert duplicates == len(ids)
                finals = sum(
                    app.router.metrics.final.get((SYSTEM_ID, "DELIVERED"), 0)
                    for app in (a, b)
                    if app.router is not None
                )
                assert finals == len(ids)  # each message's final state counted (and logged) once
            finally:
                await esme.close()

    run1(main())
