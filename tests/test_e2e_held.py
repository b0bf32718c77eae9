"""End to end: held receipts reach the binds that are there (issue 13, section 3).

A receipt that could not be delivered (no slot or no answer in time) is held; it must
reach a receive-capable bind of the account as soon as one can take it — the same
session once it answers again, or another, idle one — not only at the next bind; never
twice, even when the client's answer came after ``response_timeout``; and an account
whose held receipts reach ``max_held`` refuses new submits that ask for one instead of
dropping receipts it promised.

Nothing sleeps: the tests wait for deliver_sm under deadlines. A client that withholds its
answers is the clock: what it receives next shows what the server did after its timers.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from admin_fixtures import TOKEN, Api
from carrier_fixtures import ESME_SESSION, Esme
from loops import Run
from smsc_fixtures import (
    BINDS,
    DEADLINE,
    FAST,
    PASSWORD,
    SYSTEM_ID,
    accounts,
    app_config,
    assert_one_final_receipt_each,
    bind_client,
    receipt_id,
    running_app,
    wait_final_receipts,
)

from smppcore.aio import Connection
from smppcore.constants import CommandStatus
from smppcore.pdu import DeliverSm, DeliverSmResp, Pdu
from smppcore.session import Role
from smsc.app import App


class Withholding(Esme):
    """An ESME that leaves its first ``silent_for`` deliver_sm unanswered (None: every
    one), then — when the next one comes — answers them late and every later one at
    once: a client that stalled for a while and recovered."""

    def __init__(self, silent_for: int | None) -> None:
        super().__init__()
        self.silent_for = silent_for
        self.withheld: list[DeliverSm] = []

    def request_received(self, conn: Connection, pdu: Pdu) -> None:
        if isinstance(pdu, DeliverSm):
            if self.silent_for is None or len(self.delivered) < self.silent_for:
                self.delivered.append(pdu)
                self.delivered_at.append(asyncio.get_running_loop().time())
                self.withheld.append(pdu)
                self._changed.set()
                return
            for early in self.withheld:  # late: after the server's response_timeout
                conn.respond(DeliverSmResp(sequence_number=early.sequence_number))
            self.withheld.clear()
        super().request_received(conn, pdu)


async def bind_as(app: App, esme: Esme, kind: str) -> Esme:
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(DEADLINE):
        _, esme.conn = await loop.create_connection(
            lambda: Connection(Role.ESME, ESME_SESSION, esme), "127.0.0.1", app.port
        )
        await esme.c.bind(BINDS[kind](system_id=SYSTEM_ID, password=PASSWORD))  # type: ignore[call-arg]
    return esme


def config(tmp_path: Path, **session: Any) -> Any:
    base = {
        "window": 2,
        "inbound_window": 100,
        "enquire_link_interval": None,
        "inactivity_timeout": None,
        "session_init_timeout": None,
    }
    return app_config(tmp_path, {"cheap": FAST}, session={**base, **session})


async def submit_each(esme: Esme, n: int, registered_delivery: int = 1) -> list[str]:
    """``n`` submits one after the other (receipts come back in order); their ids."""
    return [
        await esme.submit_ok(text=b"held %d" % i, registered_delivery=registered_delivery)
        for i in range(n)
    ]


def test_held_receipts_reach_a_session_that_was_silent_once_it_answers_again(
    run: Run, tmp_path: Path
) -> None:
    """A transceiver leaves its first two receipts unanswered: the rest find no slot in
    time and are held, then the two time out too. Once the session has a free slot the
    held receipts flow to it without a rebind — the first of them is what makes the
    client answer the two late — and each receipt arrives once: the two answered late
    are not sent again.

    The submits go out in one burst, so that every receipt is waiting for a slot before
    the first of them times out (slot_timeout): a receipt that comes after that waits
    behind the drain the first hold started, in memory, and is not counted as held. Sent
    one after the other, the twelfth receipt had to come within 0.2 s of the third (a
    round trip each): too tight for a slow, loaded CI machine."""
    n = 12

    async def main() -> None:
        cfg = config(tmp_path, slot_timeout=0.5, response_timeout=1.0)
        async with running_app(cfg) as app:
            esme = await bind_as(app, Withholding(silent_for=2), "trx")
            async with asyncio.timeout(DEADLINE):
                ids = await asyncio.gather(*(esme.submit_ok(text=b"held %d" % i) for i in range(n)))
            await wait_final_receipts(esme, ids)
            assert_one_final_receipt_each(esme, ids)
            assert app.delivery is not None
            assert app.delivery.held >= n - 2  # they were held, and came without a rebind
            # The first was answered late; the second too, unless the client's answers
            # (sent when the next deliver_sm arrives) beat its timeout on a busy machine.
            assert 1 <= app.delivery.late <= 2
            await esme.close()

    run(main())


def test_a_receipt_held_after_one_receiver_stalled_goes_to_the_other(
    run: Run, tmp_path: Path
) -> None:
    """Two receivers of one account; one never answers. The receipt it took times out and
    is held — and goes to the other, idle receiver, not to the stalled one again."""
    n = 10

    async def main() -> None:
        cfg = config(tmp_path, window=1, slot_timeout=5.0, response_timeout=0.5)
        async with running_app(cfg) as app:
            stalled = await bind_as(app, Withholding(silent_for=None), "rx")
            healthy = await bind_client(app, "rx")
            tx = await bind_client(app, "tx")
            ids = await submit_each(tx, n)
            await wait_final_receipts(healthy, ids)
            assert_one_final_receipt_each(healthy, ids)
            assert len(stalled.delivered) >= 1  # it took one (and never answered)
            for esme in (stalled, healthy, tx):
                await esme.close()

    run(main())


def test_a_late_answer_keeps_the_receipt_from_being_sent_twice(run: Run, tmp_path: Path) -> None:
    """The client answers a receipt after response_timeout (when the next one comes: it
    waited for the only slot). It is not sent again: neither to the session, nor at the
    next bind — whose first deliver_sm is the receipt of a new message."""

    async def main() -> None:
        cfg = config(tmp_path, window=1, slot_timeout=5.0, response_timeout=0.3)
        async with running_app(cfg) as app:
            esme = await bind_as(app, Withholding(silent_for=1), "trx")
            ids = await submit_each(esme, 3)
            await wait_final_receipts(esme, ids)
            async with asyncio.timeout(DEADLINE):
                await esme.c.unbind()
            again = await bind_client(app, "trx")  # a bind sends what is still held first
            marker = await again.submit_ok(text=b"marker")
            await again.receipt_for(marker)
            assert [receipt_id(p) for p in again.delivered] == [marker]
            assert_one_final_receipt_each(esme, ids)
            assert app.delivery is not None
            assert app.delivery.late == 1
            await again.close()

    run(main())


def test_an_account_at_max_held_refuses_submits_that_ask_for_a_receipt(
    run: Run, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """max_held 5 and no receiver: once five receipts are held, submits asking for a
    receipt are refused ESME_RMSGQFUL (logged once; through the admin API too: 503),
    others still pass, nothing held is dropped, and a receiver gets all five."""

    async def main() -> None:
        cfg = app_config(
            tmp_path, {"cheap": FAST}, accounts=accounts(max_held=5), admin={"token": TOKEN}
        )
        async with running_app(cfg) as app, Api(app.http_port) as api:
            tx = await bind_client(app, "tx")
            ids = await submit_each(tx, 5)
            for message_id in ids:
                await tx.until_final(message_id)  # its receipt is held by then
            for _ in range(3):
                refused = await tx.submit(text=b"one too many")
                assert refused.command_status == CommandStatus.ESME_RMSGQFUL
            assert await tx.submit_ok(text=b"no receipt wanted", registered_delivery=0)
            body = {"account": SYSTEM_ID, "source": "MyBrand", "destination": "447700900001"}
            by_api = await api.post(
                "/messages", json_body={**body, "text": "api", "registered_delivery": 1}
            )
            assert by_api.status == 503
            assert "ESME_RMSGQFUL" in by_api.body["error"]
            refusals = [r for r in caplog.records if "are refused" in r.getMessage()]
            assert len(refusals) == 1, refusals  # once, when it reached max_held
            rx = await bind_client(app, "rx")
            await wait_final_receipts(rx, ids)
            assert_one_final_receipt_each(rx, ids)
            assert app.store.dropped_held == 0
            for esme in (tx, rx):
                await esme.close()

    with caplog.at_level(logging.WARNING, logger="smsc.delivery"):
        run(main())


def test_what_was_held_before_a_restart_counts_toward_max_held(run1: Run, tmp_path: Path) -> None:
    """Two receipts held (max_held 2), then a restart on the same store: the account is at
    its max_held from the start, and a receiver still gets both."""

    async def main() -> None:
        cfg = app_config(tmp_path, {"cheap": FAST}, accounts=accounts(max_held=2))
        async with running_app(cfg) as app:
            tx = await bind_client(app, "tx")
            ids = await submit_each(tx, 2)
            for message_id in ids:
                await tx.until_final(message_id)  # its receipt is held by then
            await tx.close()
        async with running_app(cfg) as app:
            tx = await bind_client(app, "tx")
            refused = await tx.submit(text=b"one too many")
            assert refused.command_status == CommandStatus.ESME_RMSGQFUL
            rx = await bind_client(app, "rx")
            await wait_final_receipts(rx, ids)
            assert_one_final_receipt_each(rx, ids)
            for esme in (tx, rx):
                await esme.close()

    run1(main())
