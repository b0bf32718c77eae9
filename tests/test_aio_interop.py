"""Layer 4: clients nobody here wrote against the minimal MC of tests/minimal_mc.py, which
is nothing but smppcore.aio (start_server, Connection, Handler) and smppcore's codec.

``smpplib`` is blocking: each conversation runs in a worker thread (``asyncio.to_thread``)
while the MC runs on the test's loop. ``aiosmpplib`` runs on the loop itself, its results
collected through its hook. Every test runs on asyncio and on uvloop (see test_aio.py for
why the loop comes from a ``run`` fixture and not from pytest-asyncio). Nothing sleeps:
smpplib reads with a socket timeout and a deadline, everything else awaits under
``asyncio.timeout``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import smpplib.client
import smpplib.consts
import smpplib.exceptions
import smpplib.gsm
from aiosmpplib import ESME, BindMode, PhoneNumber
from aiosmpplib import DeliverSm as AioDeliverSm
from aiosmpplib import SubmitSm as AioSubmitSm
from aiosmpplib import SubmitSmResp as AioSubmitSmResp
from interop_clients import QueueHook, SmpplibPeer, check_aio_receipts, check_smpplib_receipts
from loops import Run
from minimal_mc import DEADLINE, MinimalMC

from smppcore.constants import CommandStatus, EsmClass
from smppcore.pdu import BindReceiver, BindTransceiver, BindTransmitter, DeliverSmResp
from smppcore.segment import parse_udh
from smppcore.text import decode_text

pytestmark = pytest.mark.interop

ACCOUNT = {"esme": "secret"}
SHORT_CODE = "1234"
MSISDN = "491701234567"
GSM_TEXT = "Hello @ £5 {ok} from smpplib"  # '{' and '}' take the GSM escape table
UCS2_TEXT = "Привет, κόσμε ✓"
LONG_TEXT = " ".join(f"word{i:03d}" for i in range(50))  # 399 septets: 3 UDH parts


# --- smpplib ------------------------------------------------------------------------------


def in_thread(port: int, count: int, body: Callable[..., Any]) -> Coroutine[Any, Any, Any]:
    """Run ``body(deadline, *clients)`` with ``count`` fresh smpplib clients in a thread."""

    def conversation() -> Any:
        clients = [SmpplibPeer(port) for _ in range(count)]
        try:
            return body(time.monotonic() + DEADLINE, *clients)
        finally:
            for c in clients:
                c.close()

    async def go() -> Any:
        async with asyncio.timeout(DEADLINE + 2):
            return await asyncio.to_thread(conversation)

    return go()


def text_of(resp: Any) -> str:
    value = resp.message_id
    return value.decode("ascii") if isinstance(value, bytes) else str(value)


@pytest.mark.parametrize(
    ("method", "pdu_class", "mode"),
    [
        ("bind_transmitter", BindTransmitter, "tx"),
        ("bind_receiver", BindReceiver, "rx"),
        ("bind_transceiver", BindTransceiver, "trx"),
    ],
)
def test_smpplib_binds(run: Run, method: str, pdu_class: type, mode: str) -> None:
    async def main() -> None:
        async with MinimalMC(ACCOUNT) as mc:

            def body(deadline: float, c: SmpplibPeer) -> tuple[Any, Any]:
                c.client.connect()
                resp = getattr(c.client, method)(system_id="esme", password="secret")
                return resp, c.unbind()

            bind_resp, unbind_resp = await in_thread(mc.port, 1, body)
            assert bind_resp.status == 0
            assert bind_resp.system_id == b"minimal-mc"
            assert unbind_resp.command == "unbind_resp"
            assert unbind_resp.status == 0
            [bind] = mc.binds
            assert type(bind) is pdu_class
            assert isinstance(bind, BindTransmitter | BindReceiver | BindTransceiver)
            assert (bind.system_id, bind.interface_version) == ("esme", 0x34)
            [conn] = mc.connections
            assert conn.context == {"system_id": "esme", "mode": mode}
            await conn.wait_closed(DEADLINE)
            assert mc.closed_reasons == ["unbound by peer"]

    run(main())


def test_smpplib_bad_password_is_refused(run: Run) -> None:
    async def main() -> None:
        async with MinimalMC(ACCOUNT) as mc:

            def body(deadline: float, c: SmpplibPeer) -> int:
                c.client.connect()
                with pytest.raises(smpplib.exceptions.PDUError) as info:
                    c.client.bind_transceiver(system_id="esme", password="nope")
                status: int = info.value.args[1]
                return status

            assert await in_thread(mc.port, 1, body) == CommandStatus.ESME_RINVPASWD
            assert mc.bound() == []

    run(main())


def test_smpplib_submits_gsm_ucs2_and_long(run: Run) -> None:
    async def main() -> None:
        async with MinimalMC(ACCOUNT) as mc:

            def body(deadline: float, c: SmpplibPeer) -> tuple[list[Any], int]:
                c.client.connect()
                c.client.bind_transmitter(system_id="esme", password="secret")
                parts = c.submit(GSM_TEXT, smpplib.consts.SMPP_ENCODING_DEFAULT, receipt=False)
                parts += c.submit(UCS2_TEXT, smpplib.consts.SMPP_ENCODING_ISO10646, receipt=False)
                parts += c.submit(LONG_TEXT, smpplib.consts.SMPP_ENCODING_DEFAULT, receipt=False)
                c.read_until(lambda: len(c.resps) == parts, deadline)
                c.unbind()
                return c.resps, parts

            resps, parts = await in_thread(mc.port, 1, body)
            assert parts == 5
            assert all(r.status == 0 for r in resps)
            ids = [text_of(r) for r in resps]
            assert ids == mc.message_ids == [str(n) for n in range(1, 6)]

            gsm, ucs2, *long_parts = mc.submits
            assert (gsm.data_coding, decode_text(gsm.short_message, 0)) == (0, GSM_TEXT)
            assert (ucs2.data_coding, decode_text(ucs2.short_message, 8)) == (8, UCS2_TEXT)
            rebuilt = ""
            refs = set()
            for seq, part in enumerate(long_parts, start=1):
                assert part.esm_class & EsmClass.UDHI
                concat, body_octets, _ = parse_udh(part.short_message)
                assert concat is not None
                assert (concat.total, concat.seq) == (3, seq)
                refs.add(concat.ref)
                rebuilt += decode_text(body_octets, part.data_coding)
            assert len(refs) == 1
            assert rebuilt == LONG_TEXT

    run(main())


def test_smpplib_transceiver_gets_its_receipt(run: Run) -> None:
    async def main() -> None:
        async with MinimalMC(ACCOUNT) as mc:

            def body(deadline: float, c: SmpplibPeer) -> tuple[list[Any], list[Any]]:
                c.client.connect()
                c.client.bind_transceiver(system_id="esme", password="secret")
                c.submit(GSM_TEXT, smpplib.consts.SMPP_ENCODING_DEFAULT)
                c.read_until(lambda: len(c.resps) == len(c.delivers) == 1, deadline)
                c.unbind()
                return c.resps, c.delivers

            resps, receipts = await in_thread(mc.port, 1, body)
            check_smpplib_receipts(resps, receipts)
            await mc.wait_for(lambda: len(mc.receipt_acks) == 1)
            [ack] = mc.receipt_acks
            assert isinstance(ack, DeliverSmResp)
            assert ack.command_status == 0

    run(main())


def test_smpplib_receipt_reaches_a_separate_receiver(run: Run) -> None:
    async def main() -> None:
        async with MinimalMC(ACCOUNT) as mc:

            def body(deadline: float, rx: SmpplibPeer, tx: SmpplibPeer) -> tuple[Any, ...]:
                rx.client.connect()
                rx.client.bind_receiver(system_id="esme", password="secret")
                tx.client.connect()
                tx.client.bind_transmitter(system_id="esme", password="secret")
                parts = tx.submit(LONG_TEXT, smpplib.consts.SMPP_ENCODING_DEFAULT)
                tx.read_until(lambda: len(tx.resps) == parts, deadline)
                rx.read_until(lambda: len(rx.delivers) == parts, deadline)
                tx.unbind()
                rx.unbind()
                return tx.resps, rx.delivers, tx.delivers

            resps, receipts, on_tx = await in_thread(mc.port, 2, body)
            assert on_tx == []
            assert len(resps) == 3
            check_smpplib_receipts(resps, receipts)
            await mc.wait_for(lambda: len(mc.receipt_acks) == 3)
            assert all(a.command_status == 0 for a in mc.receipt_acks)

    run(main())


# --- aiosmpplib ---------------------------------------------------------------------------


class Aio:
    """An aiosmpplib ESME started as a task; :meth:`stop` also closes what it leaves open."""

    def __init__(self, port: int, mode: BindMode) -> None:
        self.hook = QueueHook()
        self.esme = ESME(
            "127.0.0.1",
            port,
            "esme",
            "secret",
            bind_mode=mode,
            hook=self.hook,
            log_handler=logging.NullHandler(),
            log_level="ERROR",
            socket_timeout=DEADLINE,
        )
        self.task = asyncio.create_task(self.esme.start())

    async def stop(self) -> None:
        writer = self.esme._writer  # ESME.stop() drops its writer without closing it
        try:
            async with asyncio.timeout(DEADLINE):
                await self.esme.stop()
        finally:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            if writer is not None:
                writer.close()
                try:
                    await writer.wait_closed()
                except OSError:
                    pass


def aio_submit(text: str, log_id: str, encoding: str | None = None) -> AioSubmitSm:
    return AioSubmitSm(
        short_message=text,
        source=PhoneNumber(SHORT_CODE),
        destination=PhoneNumber(MSISDN),
        encoding=encoding,
        registered_delivery=1,
        log_id=log_id,
        extra_data=f"extra-{log_id}",
    )


def test_aiosmpplib_transceiver_submits_and_gets_receipts(run: Run) -> None:
    async def main() -> None:
        async with MinimalMC(ACCOUNT) as mc:
            client = Aio(mc.port, BindMode.TRANSCEIVER)
            try:
                await client.esme.broker.enqueue(aio_submit(GSM_TEXT, "gsm"))
                await client.esme.broker.enqueue(aio_submit(UCS2_TEXT, "ucs2", "ucs2"))
                resps = await client.hook.take(AioSubmitSmResp, 2)
                assert {(r.log_id, int(r.command_status)) for r in resps} == {
                    ("gsm", 0),
                    ("ucs2", 0),
                }
                id_of = {r.log_id: r.message_id for r in resps}
                assert sorted(id_of.values()) == mc.message_ids == ["1", "2"]
                receipts = await client.hook.take(AioDeliverSm, 2)
                check_aio_receipts(receipts, id_of)
            finally:
                await client.stop()
            [conn] = mc.connections
            assert conn.context["mode"] == "trx"
            assert [decode_text(s.short_message, s.data_coding) for s in mc.submits] == [
                GSM_TEXT,
                UCS2_TEXT,
            ]
            assert [s.data_coding for s in mc.submits] == [0, 8]
            await mc.wait_for(lambda: len(mc.receipt_acks) == 2)
            assert all(a.command_status == 0 for a in mc.receipt_acks)
            await conn.wait_closed(DEADLINE)
            assert mc.closed_reasons == ["unbound by peer"]

    run(main())


def test_aiosmpplib_transmitter_with_a_separate_receiver(run: Run) -> None:
    async def main() -> None:
        async with MinimalMC(ACCOUNT) as mc:
            rx = Aio(mc.port, BindMode.RECEIVER)
            tx: Aio | None = None
            try:
                await mc.wait_for(lambda: len(mc.bound()) == 1)
                tx = Aio(mc.port, BindMode.TRANSMITTER)
                await tx.esme.broker.enqueue(aio_submit(GSM_TEXT, "gsm"))
                [resp] = await tx.hook.take(AioSubmitSmResp, 1)
                assert int(resp.command_status) == 0
                [receipt] = await rx.hook.take(AioDeliverSm, 1)
                # The receiver never saw the submit: its correlator cannot match the id.
                assert receipt.is_receipt()
                assert receipt.parse_receipt()["id"] == resp.message_id
            finally:
                if tx is not None:
                    await tx.stop()
                await rx.stop()
            assert sorted(c.context["mode"] for c in mc.connections) == ["rx", "tx"]

    run(main())
