"""Acknowledged means kept (issue 13 §1): what ``ack_after: store`` promises for receipts,
MO and sends, and the receipt deadline.

The carrier is :class:`MinimalMC` (tests/minimal_mc.py): the test decides when it answers
submits and sends receipts, and sees how its deliver_sm are answered. A wait for something
that must NOT have happened is closed by a marker that must come after it: an
enquire_link round trip on the same connection (answers go out in order).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import msgspec
import pytest
from carrier_fixtures import ESME_SESSION, Esme
from loops import Run
from minimal_mc import MinimalMC
from smsc_fixtures import (
    DEADLINE,
    FAST,
    PASSWORD,
    SYSTEM_ID,
    UPSTREAM_ID,
    UPSTREAM_PASSWORD,
    app_config,
    bind_client,
    final_receipts,
    running_app,
)

from router.config import StoreConfig
from router.model import Address, DeliveryReport, Message
from router.stores.sqlite import SqliteStore
from smppcore.aio import Connection
from smppcore.constants import CommandStatus, MessageState
from smppcore.pdu import (
    BindTransceiver,
    DeliverSm,
    DeliverSmResp,
    EnquireLink,
    Pdu,
)
from smppcore.session import Role
from smppcore.tlv import Tag
from smsc.app import App
from smsc.config import SmscConfig


def mc_config(
    tmp_path: Path, mc: MinimalMC, *, ack_after: str = "store", **carrier: Any
) -> SmscConfig:
    """smsc with one router carrier, "mc", bound to the MinimalMC (no simulators)."""
    config = app_config(
        tmp_path,
        {"mc": FAST},
        upstreams={"mc": {"host": mc.host, "port": mc.port, **carrier}},
        router={"ack_after": ack_after},
    )
    return msgspec.structs.replace(config, simulated_carriers=())


class SlowEsme(Esme):
    """An ESME that answers deliver_sm only when the test says (:meth:`answer`)."""

    def __init__(self) -> None:
        super().__init__()
        self.unanswered: list[DeliverSm] = []

    def request_received(self, conn: Connection, pdu: Pdu) -> None:
        if isinstance(pdu, DeliverSm):
            self.delivered.append(pdu)
            self.unanswered.append(pdu)
            self._changed.set()
            return
        super().request_received(conn, pdu)

    def answer(self) -> None:
        for pdu in self.unanswered:
            self.c.respond(DeliverSmResp(sequence_number=pdu.sequence_number))
        self.unanswered.clear()


async def bind_slow(app: App) -> SlowEsme:
    esme = SlowEsme()
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(DEADLINE):
        _, esme.conn = await loop.create_connection(
            lambda: Connection(Role.ESME, ESME_SESSION, esme), "127.0.0.1", app.port
        )
        await esme.c.bind(BindTransceiver(system_id=SYSTEM_ID, password=PASSWORD))
    return esme


async def round_trip(conn: Connection) -> None:
    """An enquire_link answered on ``conn``: whatever it answered before is in."""
    async with asyncio.timeout(DEADLINE):
        await conn.request(EnquireLink())


def status_of(answer: asyncio.Future[Pdu]) -> int:
    return answer.result().command_status


def test_a_receipt_is_answered_only_once_the_client_has_it(run1: Run, tmp_path: Path) -> None:
    """``ack_after: store``: the carrier's receipt is answered ESME_ROK after the client
    answered its deliver_sm and the final state is committed; not before."""

    async def main() -> None:
        async with (
            MinimalMC({UPSTREAM_ID: UPSTREAM_PASSWORD}, auto_receipt=False) as mc,
            running_app(mc_config(tmp_path, mc)) as app,
        ):
            esme = await bind_slow(app)
            our_id = (await esme.submit()).message_id
            await mc.wait_for(lambda: len(mc.message_ids) == 1)
            [carrier] = mc.bound(UPSTREAM_ID)
            answer = mc.push_receipt(carrier, mc.message_ids[0])
            await esme.wait_for(lambda: len(esme.unanswered) == 1)
            await round_trip(carrier)
            assert not answer.done()  # the client has not answered yet
            stored = await app.store.get(our_id)
            assert stored is not None
            assert stored.done_at is None
            esme.answer()
            async with asyncio.timeout(DEADLINE):
                await answer
            assert status_of(answer) == CommandStatus.ESME_ROK
            stored = await app.store.get(our_id)
            assert stored is not None
            assert stored.state == MessageState.DELIVERED
            assert stored.done_at is not None
            await esme.close()

    run1(main())


def test_a_receipt_for_an_account_with_no_receiver_is_answered_once_held(
    run1: Run, tmp_path: Path
) -> None:
    """No receive-capable bind: the receipt is held in the store, then answered; the next
    receiver gets it."""

    async def main() -> None:
        async with (
            MinimalMC({UPSTREAM_ID: UPSTREAM_PASSWORD}, auto_receipt=False) as mc,
            running_app(mc_config(tmp_path, mc)) as app,
        ):
            tx = await bind_client(app, "tx")
            our_id = (await tx.submit()).message_id
            await mc.wait_for(lambda: len(mc.message_ids) == 1)
            [carrier] = mc.bound(UPSTREAM_ID)
            answer = mc.push_receipt(carrier, mc.message_ids[0])
            async with asyncio.timeout(DEADLINE):
                await answer
            assert status_of(answer) == CommandStatus.ESME_ROK
            rx = await bind_client(app, "rx")
            await rx.receipt_for(our_id)
            await tx.close()
            await rx.close()

    run1(main())


def test_mo_is_answered_only_once_the_client_has_it(run1: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with MinimalMC({UPSTREAM_ID: UPSTREAM_PASSWORD}, auto_receipt=False) as mc:
            config = mc_config(tmp_path, mc, mo_account=SYSTEM_ID)
            async with running_app(config) as app:
                esme = await bind_slow(app)
                [carrier] = mc.bound(UPSTREAM_ID)
                mo = DeliverSm(
                    source_addr="447700900123", destination_addr="MyBrand", short_message=b"stop"
                )
                answer = carrier.send_request(mo)
                await esme.wait_for(lambda: len(esme.unanswered) == 1)
                await round_trip(carrier)
                assert not answer.done()
                esme.answer()
                async with asyncio.timeout(DEADLINE):
                    await answer
                assert status_of(answer) == CommandStatus.ESME_ROK
                assert esme.delivered[0].short_message == b"stop"
                await esme.close()

    run1(main())


def test_a_long_drain_does_not_keep_the_carrier_waiting_for_new_mo(
    run1: Run, tmp_path: Path
) -> None:
    """An MO held while nobody was bound is being drained to a receiver that has not
    answered it yet; a second MO that comes meanwhile is held behind it at once and its
    carrier answered, instead of waiting in memory for the drain (and the client) to
    finish — carriers' windows would fill with such answers. The client gets both, in
    order."""

    async def main() -> None:
        async with MinimalMC({UPSTREAM_ID: UPSTREAM_PASSWORD}, auto_receipt=False) as mc:
            config = mc_config(tmp_path, mc, mo_account=SYSTEM_ID)
            async with running_app(config) as app:
                [carrier] = mc.bound(UPSTREAM_ID)

                def mo(text: bytes) -> asyncio.Future[Pdu]:
                    return carrier.send_request(
                        DeliverSm(
                            source_addr="447700900123",
                            destination_addr="MyBrand",
                            short_message=text,
                        )
                    )

                first = mo(b"first")
                async with asyncio.timeout(DEADLINE):
                    await first  # held: nobody is bound
                esme = await bind_slow(app)
                await esme.wait_for(lambda: len(esme.unanswered) == 1)  # drained, unanswered
                second = mo(b"second")
                async with asyncio.timeout(DEADLINE):
                    await second
                assert status_of(second) == CommandStatus.ESME_ROK
                # ... while the client had still not answered the first (the drain may
                # already have sent the second behind it: it is pipelined).
                assert esme.unanswered[0].short_message == b"first"

                def texts() -> list[bytes]:
                    return [p.short_message for p in esme.delivered]

                esme.answer()
                await esme.wait_for(lambda: len(texts()) == 2)
                esme.answer()
                assert texts() == [b"first", b"second"]  # in order, each once
                await esme.close()

    run1(main())


def test_enqueue_mode_answers_a_receipt_at_once(run1: Run, tmp_path: Path) -> None:
    """``ack_after: enqueue`` keeps the fast path: the carrier is answered before the
    client has the receipt."""

    async def main() -> None:
        async with (
            MinimalMC({UPSTREAM_ID: UPSTREAM_PASSWORD}, auto_receipt=False) as mc,
            running_app(mc_config(tmp_path, mc, ack_after="enqueue")) as app,
        ):
            esme = await bind_slow(app)
            await esme.submit()
            await mc.wait_for(lambda: len(mc.message_ids) == 1)
            [carrier] = mc.bound(UPSTREAM_ID)
            answer = mc.push_receipt(carrier, mc.message_ids[0])
            async with asyncio.timeout(DEADLINE):
                await answer
            assert status_of(answer) == CommandStatus.ESME_ROK
            await esme.wait_for(lambda: bool(esme.unanswered))
            esme.answer()
            await esme.close()

    run1(main())


def test_the_carrier_is_recorded_before_the_submit_and_a_restart_resends_counted(
    run1: Run, tmp_path: Path
) -> None:
    """Write-ahead: the store names the carrier a message went to before the carrier
    answered. A restart sends such a message again (the carrier may not have it, and we
    cannot ask it without its id), counted as ``resent``; the client gets one receipt."""

    async def main() -> None:
        async with MinimalMC({UPSTREAM_ID: UPSTREAM_PASSWORD}) as mc:
            mc.hold = True  # submits recorded, not answered
            # The held submit must not time out (upstream() gives 2 s) and go again before
            # the stop abandons it (0.5 s, plus the unbind's grace, plus a slow machine):
            # the one resend counted here is the restart's.
            config = mc_config(tmp_path, mc, response_timeout=60.0)
            async with running_app(config, stop_timeout=0.5) as app:
                tx = await bind_client(app, "tx")
                our_id = (await tx.submit()).message_id
                await mc.wait_for(lambda: len(mc.submits) == 1)
                stored = await app.store.get(our_id)
                assert stored is not None
                assert (stored.carrier, stored.carrier_message_id) == ("mc", "")
                await tx.close()
            mc.hold = False
            async with running_app(config) as again:
                assert again.router is not None
                rx = await bind_client(again, "rx")
                await rx.receipt_for(our_id)
                assert len(mc.submits) == 2
                assert again.router.metrics.events.get(("resent", "mc")) == 1
                await round_trip(rx.c)
                assert [len(v) for v in final_receipts(rx).values()] == [1]
                await rx.close()

    run1(main())


@pytest.mark.parametrize("ack_after", ["store", "enqueue"])
def test_no_receipt_within_the_deadline_is_final_unknown(
    run1: Run, tmp_path: Path, ack_after: str
) -> None:
    """``receipt_timeout``: the message becomes final (UNKNOWN) and the client gets that
    receipt; the carrier's late receipt is a duplicate, answered and not reported."""

    async def main() -> None:
        async with MinimalMC({UPSTREAM_ID: UPSTREAM_PASSWORD}, auto_receipt=False) as mc:
            config = mc_config(tmp_path, mc, ack_after=ack_after, receipt_timeout=0.3)
            async with running_app(config) as app:
                assert app.router is not None
                esme = await bind_client(app)
                our_id = (await esme.submit()).message_id
                receipt = await esme.receipt_for(our_id)
                assert receipt.tlv(Tag.MESSAGE_STATE) == MessageState.UNKNOWN
                assert app.router.metrics.events.get(("receipt_timeout", "mc")) == 1
                [carrier] = mc.bound(UPSTREAM_ID)
                answer = mc.push_receipt(carrier, mc.message_ids[0])
                async with asyncio.timeout(DEADLINE):
                    await answer
                assert status_of(answer) == CommandStatus.ESME_ROK
                assert await app.router.settle(DEADLINE)
                await round_trip(esme.c)
                assert [len(v) for v in final_receipts(esme).values()] == [1]
                assert app.router.metrics.events.get(("receipt_duplicate", "mc")) == 1
                await esme.close()

    run1(main())


def test_the_receipt_deadline_is_never_past_the_validity(run1: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with MinimalMC({UPSTREAM_ID: UPSTREAM_PASSWORD}, auto_receipt=False) as mc:
            config = mc_config(tmp_path, mc, receipt_timeout=3600)
            async with running_app(config) as app:
                esme = await bind_client(app)
                # relative validity: 1 s
                resp = await esme.submit(validity_period="000000000001000R")
                receipt = await esme.receipt_for(resp.message_id)
                assert receipt.tlv(Tag.MESSAGE_STATE) == MessageState.EXPIRED
                await esme.close()

    run1(main())


def test_a_receipt_that_matches_nothing_is_counted_and_logged_once(
    run1: Run, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with (
            MinimalMC({UPSTREAM_ID: UPSTREAM_PASSWORD}, auto_receipt=False) as mc,
            running_app(mc_config(tmp_path, mc)) as app,
        ):
            assert app.router is not None
            [carrier] = mc.bound(UPSTREAM_ID)
            answer = mc.push_receipt(carrier, "no-such-id")
            async with asyncio.timeout(DEADLINE):
                await answer
            assert status_of(answer) == CommandStatus.ESME_ROK
            assert app.router.metrics.events.get(("receipt_unmatched", "mc")) == 1

    with caplog.at_level(logging.WARNING, logger="router.router"):
        run1(main())
    lines = [r.getMessage() for r in caplog.records if "no-such-id" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "mc" in lines[0]


def test_an_unmatched_receipt_in_enqueue_mode_is_counted(run1: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            MinimalMC({UPSTREAM_ID: UPSTREAM_PASSWORD}, auto_receipt=False) as mc,
            running_app(mc_config(tmp_path, mc, ack_after="enqueue")) as app,
        ):
            assert app.router is not None
            [carrier] = mc.bound(UPSTREAM_ID)
            answer = mc.push_receipt(carrier, "no-such-id")
            async with asyncio.timeout(DEADLINE):
                await answer
            assert await app.router.settle(DEADLINE)
            for _ in range(4):  # looked for in memory for 3 loop turns, then the store
                await asyncio.sleep(0)
            assert await app.router.settle(DEADLINE)
            assert app.router.metrics.events.get(("receipt_unmatched", "mc")) == 1

    run1(main())


# --- the store's part: set_sending, and on_durable on final states and holds ----------


def stored_message(i: int) -> Message:
    return Message(
        id=f"m{i:06d}",
        account="acme",
        source=Address(5, 0, "MyBrand"),
        destination=Address(1, 1, "447700900001"),
        short_message=b"hi",
        submitted_at=1.0 + i,
    )


@pytest.mark.parametrize("flushed_first", [False, True])
def test_store_sending_then_sent_then_final_in_any_batch(
    run1: Run, tmp_path: Path, flushed_first: bool
) -> None:
    """``set_sending`` (carrier, no id), then ``set_sent`` and ``set_final``: the last
    send wins whether the records meet in one batch (folded) or not; every on_durable
    is called with True after the commit."""

    async def main() -> None:
        store = SqliteStore(StoreConfig(path=str(tmp_path / "s.db")))
        await store.open()
        calls: list[tuple[str, bool]] = []
        try:
            async with asyncio.timeout(DEADLINE):
                for i in range(3):
                    store.add(stored_message(i))
                if flushed_first:
                    await store.flush()
                store.set_sending("m000000", "c1", lambda ok: calls.append(("sending", ok)))
                store.set_sending("m000001", "c1")
                store.set_sent("m000001", "c1", "X1")
                store.set_sending("m000002", "c1")
                store.set_sending("m000002", "c2")
                store.set_sent("m000002", "c2", "X2")
                report = DeliveryReport("m000002", MessageState.DELIVERED, done_at=9.0)
                store.set_final("m000002", report, lambda ok: calls.append(("final", ok)))
                store.hold("acme", b"r", 1e12, lambda ok: calls.append(("hold", ok)))
                await store.flush()
                rows = {}
                for i in range(3):
                    got = await store.get(f"m{i:06d}")
                    assert got is not None
                    rows[got.message.id] = (got.carrier, got.carrier_message_id, got.done_at)
                assert await store.find_sent("c2", "X2") == "m000002"
                assert await store.find_sent("c1", "") is None
                unfinished = [s.message.id for s in await store.unfinished()]
        finally:
            await store.close()
        assert rows == {
            "m000000": ("c1", "", None),
            "m000001": ("c1", "X1", None),
            "m000002": ("c2", "X2", 9.0),
        }
        assert unfinished == ["m000000", "m000001"]
        assert sorted(calls) == [("final", True), ("hold", True), ("sending", True)]

    run1(main())


def test_a_receipt_that_cannot_be_kept_is_refused_for_the_carrier_to_resend(
    run1: Run, tmp_path: Path
) -> None:
    """No receiver, and the store is gone: the receipt can be neither delivered nor held.
    It is answered ESME_RX_T_APPN, not ESME_ROK; sent again once the store is back, it is
    held and answered ESME_ROK, and the next receiver gets it."""

    async def main() -> None:
        async with (
            MinimalMC({UPSTREAM_ID: UPSTREAM_PASSWORD}, auto_receipt=False) as mc,
            running_app(mc_config(tmp_path, mc)) as app,
        ):
            tx = await bind_client(app, "tx")
            await tx.submit()
            await mc.wait_for(lambda: len(mc.message_ids) == 1)
            [carrier] = mc.bound(UPSTREAM_ID)
            await round_trip(carrier)  # its submit_sm_resp is processed
            await app.store.close()  # as if its disk were gone
            answer = mc.push_receipt(carrier, mc.message_ids[0])
            async with asyncio.timeout(DEADLINE):
                await answer
            assert status_of(answer) == CommandStatus.ESME_RX_T_APPN
            await app.store.open()
            again = mc.push_receipt(carrier, mc.message_ids[0])
            async with asyncio.timeout(DEADLINE):
                await again
            assert status_of(again) == CommandStatus.ESME_ROK
            rx = await bind_client(app, "rx")
            await rx.wait_for(lambda: len(final_receipts(rx)) == 1)
            await tx.close()
            await rx.close()

    run1(main())
