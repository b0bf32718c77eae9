"""Layer 4 end to end: SMPP clients nobody here wrote bind to smsc (App), submit GSM, UCS-2
and long (UDH) messages through the router to simulated carriers, and get receipts that
name the ids smsc gave them.

Python ``smpplib`` (blocking, in a worker thread; TX + RX and TRX), ``aiosmpplib`` (TRX; its
own correlator matches each receipt to its submit by our id) and the npm ``smpp`` package
(``tests/interop/node/client.js``, a child process printing JSON lines). The client
drivers are those of test_carrier_interop.py; the account is theirs (interop/secret).
Every wait has a deadline; clients are closed or killed in ``finally``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import smpplib.consts
from aiosmpplib import ESME, PhoneNumber
from aiosmpplib import DeliverSm as AioDeliverSm
from aiosmpplib import SubmitSm as AioSubmitSm
from aiosmpplib import SubmitSmResp as AioSubmitSmResp
from smsc_fixtures import FAST, app_config, prices, running_app
from test_carrier_interop import (
    DEADLINE,
    GSM_TEXT,
    LONG_GSM_TEXT,
    LONG_UCS2_TEXT,
    MSISDN,
    PASSWORD,
    SHORT_CODE,
    SYSTEM_ID,
    UCS2_TEXT,
    NodeClient,
    QueueHook,
    SmpplibPeer,
    check_node_receipts,
    check_smpplib_receipts,
    needs_node,
    node_message,
    smpplib_submit,
)

from smppcore.segment import parse_udh
from smppcore.text import decode_text
from smsc.app import App

pytestmark = pytest.mark.interop


@asynccontextmanager
async def interop_app(tmp_path: Path) -> AsyncIterator[App]:
    """smsc with the interop account and two carriers; UK traffic prefers "uk"."""
    routes = [
        {"prefix": "", "carriers": prices(world="0.002", uk="0.003")},
        {"prefix": "44", "carriers": prices(uk="0.001", world="0.002")},
    ]
    config = app_config(
        tmp_path,
        {"world": FAST, "uk": FAST},
        routes,
        accounts=[{"system_id": SYSTEM_ID, "password": PASSWORD}],
    )
    async with running_app(config) as app:
        yield app


async def assert_forwarded(app: App, our_id: str, text: str, data_coding: int) -> str:
    """The carrier got what the foreign client meant; returns which carrier."""
    stored = await app.store.get(our_id)
    assert stored is not None, our_id
    assert stored.carrier, f"{our_id} not forwarded yet"
    msg = app.simulators[stored.carrier].messages.get(stored.carrier_message_id)
    assert msg is not None
    assert msg.data_coding == data_coding
    assert decode_text(msg.short_message, msg.data_coding) == text
    return stored.carrier


async def assert_parts_forwarded(app: App, ids: list[str], text: str) -> None:
    """The parts of a long message went over one carrier, in order, and rebuild ``text``."""
    carriers = set()
    rebuilt = ""
    for seq, our_id in enumerate(ids, start=1):
        stored = await app.store.get(our_id)
        assert stored is not None
        carriers.add(stored.carrier)
        msg = app.simulators[stored.carrier].messages.get(stored.carrier_message_id)
        assert msg is not None
        concat, body, _ = parse_udh(msg.short_message)
        assert concat is not None
        assert (concat.total, concat.seq) == (len(ids), seq)
        rebuilt += decode_text(body, msg.data_coding)
    assert rebuilt == text
    assert carriers == {"uk"}  # MSISDN is a UK number


# --- smpplib ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_smpplib_transmitter_and_receiver(tmp_path: Path) -> None:
    async with interop_app(tmp_path) as app:

        def conversation() -> tuple[list[Any], list[Any], list[Any]]:
            deadline = time.monotonic() + DEADLINE
            rx, tx = SmpplibPeer(app.port), SmpplibPeer(app.port)
            try:
                rx.client.connect()
                rx_resp = rx.client.bind_receiver(system_id=SYSTEM_ID, password=PASSWORD)
                tx.client.connect()
                tx_resp = tx.client.bind_transmitter(system_id=SYSTEM_ID, password=PASSWORD)
                assert rx_resp.system_id == tx_resp.system_id == b"smsc"
                parts = smpplib_submit(tx, GSM_TEXT, smpplib.consts.SMPP_ENCODING_DEFAULT)
                parts += smpplib_submit(tx, LONG_GSM_TEXT, smpplib.consts.SMPP_ENCODING_DEFAULT)
                tx.read_until(lambda: len(tx.resps) == parts, deadline)
                rx.read_until(lambda: len(rx.delivers) == parts, deadline)
                return tx.resps, rx.delivers, tx.delivers
            finally:
                tx.close()
                rx.close()

        async with asyncio.timeout(DEADLINE + 5):
            resps, receipts, on_tx = await asyncio.to_thread(conversation)
        assert on_tx == []
        ids = check_smpplib_receipts(resps, receipts)
        assert len(ids) == 1 + 3
        assert await assert_forwarded(app, ids[0], GSM_TEXT, 0) == "uk"
        await assert_parts_forwarded(app, ids[1:], LONG_GSM_TEXT)


@pytest.mark.asyncio
async def test_smpplib_transceiver_gsm_ucs2_and_long(tmp_path: Path) -> None:
    texts = [
        (GSM_TEXT, smpplib.consts.SMPP_ENCODING_DEFAULT),
        (UCS2_TEXT, smpplib.consts.SMPP_ENCODING_ISO10646),
        (LONG_UCS2_TEXT, smpplib.consts.SMPP_ENCODING_ISO10646),
    ]
    async with interop_app(tmp_path) as app:

        def conversation() -> tuple[list[Any], list[Any]]:
            deadline = time.monotonic() + DEADLINE
            trx = SmpplibPeer(app.port)
            try:
                trx.client.connect()
                trx.client.bind_transceiver(system_id=SYSTEM_ID, password=PASSWORD)
                parts = sum(smpplib_submit(trx, text, enc) for text, enc in texts)
                trx.read_until(lambda: len(trx.resps) == len(trx.delivers) == parts, deadline)
                return trx.resps, trx.delivers
            finally:
                trx.close()

        async with asyncio.timeout(DEADLINE + 5):
            resps, receipts = await asyncio.to_thread(conversation)
        ids = check_smpplib_receipts(resps, receipts)
        assert len(ids) == 1 + 1 + 2
        await assert_forwarded(app, ids[0], GSM_TEXT, 0)
        await assert_forwarded(app, ids[1], UCS2_TEXT, 8)
        await assert_parts_forwarded(app, ids[2:], LONG_UCS2_TEXT)


# --- aiosmpplib ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_aiosmpplib_transceiver_correlates_receipts_by_our_ids(tmp_path: Path) -> None:
    async with interop_app(tmp_path) as app:
        hook = QueueHook()
        esme = ESME(
            "127.0.0.1",
            app.port,
            SYSTEM_ID,
            PASSWORD,
            hook=hook,
            log_level="ERROR",
            socket_timeout=5.0,
        )
        task = asyncio.create_task(esme.start())
        writer = None
        try:
            for log_id, text, encoding, number in [
                ("gsm", GSM_TEXT, "gsm0338", MSISDN),
                ("ucs2", UCS2_TEXT, "ucs2", "33612345678"),
            ]:
                await esme.broker.enqueue(
                    AioSubmitSm(
                        short_message=text,
                        source=PhoneNumber(SHORT_CODE),
                        destination=PhoneNumber(number),
                        encoding=encoding,
                        log_id=log_id,
                        extra_data=f"extra-{log_id}",
                    )
                )
            resps = await hook.take(AioSubmitSmResp, 2)
            writer = esme._writer  # aiosmpplib's stop() never closes it: we do, below
            assert {(r.log_id, int(r.command_status)) for r in resps} == {("gsm", 0), ("ucs2", 0)}
            id_of = {r.log_id: r.message_id for r in resps}
            receipts = await hook.take(AioDeliverSm, 2)
            for receipt in receipts:
                assert receipt.is_receipt()
                fields = receipt.parse_receipt()
                # log_id/extra_data are set only when aiosmpplib matched the receipt's id
                # to the message_id of one of its submit_sm_resp.
                assert fields["id"] == id_of[receipt.log_id]
                assert receipt.extra_data == f"extra-{receipt.log_id}"
                assert fields["stat"] == "DELIVRD"
                tlvs = {p.tag: p.value for p in receipt.optional_params}
                assert tlvs[0x001E] == fields["id"]  # receipted_message_id
                assert tlvs[0x0427] == 2  # message_state DELIVERED
            assert sorted(r.log_id for r in receipts) == ["gsm", "ucs2"]
            # A receipt means forwarded (submit_sm_resp, in enqueue mode, may come first).
            assert await assert_forwarded(app, id_of["gsm"], GSM_TEXT, 0) == "uk"
            assert await assert_forwarded(app, id_of["ucs2"], UCS2_TEXT, 8) == "world"
        finally:
            try:
                async with asyncio.timeout(5):
                    await esme.stop()
            except TimeoutError:
                pass
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            if writer is not None:
                writer.close()
                try:
                    await writer.wait_closed()
                except OSError:
                    pass


# --- node smpp ----------------------------------------------------------------------------


@needs_node
@pytest.mark.asyncio
async def test_node_transceiver_gsm_ucs2_and_long(tmp_path: Path) -> None:
    messages = [
        node_message(GSM_TEXT),
        node_message(UCS2_TEXT, "ucs2"),
        node_message(LONG_GSM_TEXT),
        node_message(LONG_UCS2_TEXT, "ucs2"),
    ]
    async with interop_app(tmp_path) as app:
        node = await NodeClient.start(app.port, "trx", messages=messages)
        try:
            bound = await node.wait_for("bound")
            assert bound["system_id"] == "smsc"
            await node.finish()
        finally:
            await node.kill()
        resps, receipts = node.of("submit_sm_resp"), node.of("deliver_sm", "receipt")
        assert [(r["index"], r["part"], r["parts"]) for r in resps] == [
            (0, 1, 1),
            (1, 1, 1),
            (2, 1, 3),
            (2, 2, 3),
            (2, 3, 3),
            (3, 1, 2),
            (3, 2, 2),
        ]
        check_node_receipts(resps, receipts)
        id_of = {(r["index"], r["part"]): r["message_id"] for r in resps}
        await assert_forwarded(app, id_of[0, 1], GSM_TEXT, 0)
        await assert_forwarded(app, id_of[1, 1], UCS2_TEXT, 8)
        await assert_parts_forwarded(app, [id_of[2, s] for s in (1, 2, 3)], LONG_GSM_TEXT)
        await assert_parts_forwarded(app, [id_of[3, s] for s in (1, 2)], LONG_UCS2_TEXT)


@needs_node
@pytest.mark.asyncio
async def test_node_transmitter_receipts_reach_a_node_receiver(tmp_path: Path) -> None:
    async with interop_app(tmp_path) as app:
        rx = await NodeClient.start(app.port, "rx", expect_receipts=3)
        tx: NodeClient | None = None
        try:
            await rx.wait_for("bound")
            tx = await NodeClient.start(
                app.port,
                "tx",
                messages=[node_message(GSM_TEXT), node_message(LONG_UCS2_TEXT, "ucs2")],
            )
            await tx.finish()
            await rx.finish()
        finally:
            await rx.kill()
            if tx is not None:
                await tx.kill()
        assert tx.of("deliver_sm") == []
        check_node_receipts(tx.of("submit_sm_resp"), rx.of("deliver_sm", "receipt"))
