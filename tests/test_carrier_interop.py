"""Layer 4: the carrier simulator against SMPP clients nobody here wrote.

Python ``smpplib``, ``aiosmpplib`` and the npm ``smpp`` package (drivers and shared
conversations: tests/interop_clients.py) bind as transmitter, receiver and transceiver,
submit GSM, UCS-2 and long (UDH) messages, and receive receipts and MO injected by the test.

The carrier runs in-process on port 0 with a profile of fixed 0 ms latency and receipt
delay, every message DELIVRD. Nothing sleeps: every wait is a read or a queue get under a
deadline, and every client (thread, task, process) is closed or killed in ``finally``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from aiosmpplib import DeliverSm as AioDeliverSm
from aiosmpplib import PhoneNumber
from aiosmpplib import SubmitSm as AioSubmitSm
from aiosmpplib import SubmitSmResp as AioSubmitSmResp
from interop_clients import (
    GSM,
    GSM_TEXT,
    LONG_GSM_TEXT,
    LONG_UCS2_TEXT,
    MSISDN,
    PASSWORD,
    SHORT_CODE,
    SYSTEM_ID,
    UCS2,
    UCS2_TEXT,
    NodeClient,
    aiosmpplib_esme,
    check_aio_receipts,
    needs_node,
    node_message,
    node_trx_mix,
    node_tx_to_rx,
    rebuilt_text,
    receipt_fields,
    smpplib_trx,
    smpplib_tx_rx,
)
from prometheus_client import CollectorRegistry

from simulator.carrier import Carrier
from simulator.config import CarrierConfig
from smppcore.config import load_config
from smppcore.pdu import DeliverSm
from smppcore.segment import parse_udh
from smppcore.text import decode_text, encode_text

pytestmark = pytest.mark.interop


# --- the carrier --------------------------------------------------------------------------


def carrier_config() -> CarrierConfig:
    return load_config(
        {
            "host": "127.0.0.1",
            "port": 0,
            "accounts": [{"system_id": SYSTEM_ID, "password": PASSWORD, "profile": "instant"}],
            "profiles": {
                "instant": {
                    "submit_latency": {"kind": "fixed", "ms": 0},
                    "receipt_delay": {"kind": "fixed", "ms": 0},
                    "states": {"DELIVRD": 1},
                }
            },
        },
        CarrierConfig,
        source="test",
    )


@pytest_asyncio.fixture
async def carrier() -> AsyncIterator[Carrier]:
    sim = Carrier(carrier_config(), registry=CollectorRegistry())
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop(timeout=2.0)


def assert_stored(carrier: Carrier, message_id: str, text: str, data_coding: int) -> None:
    """The carrier read what the foreign client meant: coding and text (UDH stripped)."""
    msg = carrier.messages.get(message_id)
    assert msg is not None, f"carrier has no message {message_id!r}"
    assert msg.data_coding == data_coding
    assert decode_text(msg.short_message, msg.data_coding) == text


def mo_pdus() -> list[DeliverSm]:
    """Two MO deliver_sm (esm_class 0): one GSM, one UCS-2."""
    return [
        DeliverSm(
            source_addr=MSISDN,
            destination_addr=SHORT_CODE,
            esm_class=0,
            data_coding=0,
            short_message=encode_text("STOP please", 0),
        ),
        DeliverSm(
            source_addr=MSISDN,
            destination_addr=SHORT_CODE,
            esm_class=0,
            data_coding=8,
            short_message=encode_text("Ναι, ευχαριστώ", 8),
        ),
    ]


MO_TEXTS = ["STOP please", "Ναι, ευχαριστώ"]


# --- smpplib ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_smpplib_transmitter_and_receiver_binds(carrier: Carrier) -> None:
    """TX submits; the receipt arrives on a separate RX bind of the same account."""
    (message_id,), system_id = await smpplib_tx_rx(carrier.port, [(GSM_TEXT, GSM)])
    assert system_id == b"smscsim"
    assert_stored(carrier, message_id, GSM_TEXT, 0)


@pytest.mark.asyncio
async def test_smpplib_transceiver_gsm_ucs2_and_long(carrier: Carrier) -> None:
    """TRX: GSM, UCS-2 (data_coding 8) and a make_parts long message, a receipt per part."""
    texts = [(GSM_TEXT, GSM), (UCS2_TEXT, UCS2), (LONG_GSM_TEXT, GSM)]
    ids = await smpplib_trx(carrier.port, texts)
    assert len(ids) == 1 + 1 + 3
    # Responses come back in submit order (no latency): GSM, UCS-2, then the three parts.
    assert_stored(carrier, ids[0], GSM_TEXT, 0)
    assert_stored(carrier, ids[1], UCS2_TEXT, 8)
    assert rebuilt_text([carrier.messages.get(i) for i in ids[2:]]) == LONG_GSM_TEXT


# --- aiosmpplib ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_aiosmpplib_transceiver_receipts_and_mo(carrier: Carrier) -> None:
    """aiosmpplib correlates each receipt to its submit by itself; MO arrives as DeliverSm."""
    async with aiosmpplib_esme(carrier.port) as (esme, hook):
        for text, encoding, log_id in ((GSM_TEXT, "gsm0338", "gsm"), (UCS2_TEXT, "ucs2", "ucs2")):
            await esme.broker.enqueue(
                AioSubmitSm(
                    short_message=text,
                    source=PhoneNumber(SHORT_CODE),
                    destination=PhoneNumber(MSISDN),
                    encoding=encoding,
                    log_id=log_id,
                    extra_data=f"extra-{log_id}",
                )
            )
        resps = await hook.take(AioSubmitSmResp, 2)
        assert {(r.log_id, int(r.command_status)) for r in resps} == {
            ("gsm", 0),
            ("ucs2", 0),
        }
        id_of = {r.log_id: r.message_id for r in resps}
        assert_stored(carrier, id_of["gsm"], GSM_TEXT, 0)
        assert_stored(carrier, id_of["ucs2"], UCS2_TEXT, 8)

        check_aio_receipts(await hook.take(AioDeliverSm, 2), id_of)

        carrier.inject(SYSTEM_ID, mo_pdus())
        mos = await hook.take(AioDeliverSm, 2)
        assert [m.is_receipt() for m in mos] == [False, False]
        assert [m.short_message for m in mos] == MO_TEXTS
        assert [(m.source.number, m.destination.number) for m in mos] == [(MSISDN, SHORT_CODE)] * 2


# --- node smpp ----------------------------------------------------------------------------


@needs_node
@pytest.mark.asyncio
async def test_node_transceiver_gsm_ucs2_and_long(carrier: Carrier) -> None:
    system_id, id_of = await node_trx_mix(carrier.port)
    assert system_id == "smscsim"
    assert_stored(carrier, id_of[0, 1], GSM_TEXT, 0)
    assert_stored(carrier, id_of[1, 1], UCS2_TEXT, 8)
    for index, text, total in ((2, LONG_GSM_TEXT, 3), (3, LONG_UCS2_TEXT, 2)):
        parts = [carrier.messages.get(id_of[index, seq]) for seq in range(1, total + 1)]
        assert rebuilt_text(parts) == text
        for part in parts:  # node smpp numbers its concatenations 1, 2, ... per message
            assert part is not None
            concat = parse_udh(part.short_message)[0]
            assert concat is not None
            assert concat.ref == index + 1


@needs_node
@pytest.mark.asyncio
async def test_node_receiver_gets_injected_mo(carrier: Carrier) -> None:
    node = await NodeClient.start(carrier.port, "rx", expect_mo=2)
    try:
        await node.wait_for("bound")
        carrier.inject(SYSTEM_ID, mo_pdus())
        await node.finish()
    finally:
        await node.kill()
    mos = node.of("deliver_sm", "mo")
    assert [(m["esm_class"], m["data_coding"]) for m in mos] == [(0, 0), (0, 8)]
    assert [m["text"] for m in mos] == MO_TEXTS
    assert [(m["source_addr"], m["destination_addr"]) for m in mos] == [(MSISDN, SHORT_CODE)] * 2
    assert [m["receipted_message_id"] for m in mos] == [None, None]


@needs_node
@pytest.mark.asyncio
async def test_node_transmitter_receipts_reach_node_receiver(carrier: Carrier) -> None:
    """A node TX submits; the receipts go to a node RX bound to the same account."""
    await node_tx_to_rx(carrier.port)


# --- receipt text as foreign clients read it ----------------------------------------------


@needs_node
@pytest.mark.asyncio
async def test_node_receipt_text_of_a_udh_part_is_the_part_text(carrier: Carrier) -> None:
    """The receipt's ``text:`` starts the message text, not the UDH read as characters."""
    node = await NodeClient.start(carrier.port, "trx", messages=[node_message(LONG_GSM_TEXT)])
    try:
        await node.finish()
    finally:
        await node.kill()
    resps = node.of("submit_sm_resp")
    by_id = {r["message_id"]: r["part"] for r in resps}
    part_texts = [LONG_GSM_TEXT[i : i + 153] for i in range(0, len(LONG_GSM_TEXT), 153)]
    for receipt in node.of("deliver_sm", "receipt"):
        rid, _, preview = receipt_fields(receipt["text"])
        assert preview == part_texts[by_id[rid] - 1][:20]


@needs_node
@pytest.mark.asyncio
async def test_node_receipt_text_shows_no_character_the_sender_did_not_write(
    carrier: Carrier,
) -> None:
    """A data_coding 0 receipt is read as GSM 03.38 (node smpp, aiosmpplib): its preview
    may mask characters (``?``) but must not turn ``$`` into ``¤`` or ``_`` into ``§``."""
    text = "Pay $5 to a_b now"
    node = await NodeClient.start(carrier.port, "trx", messages=[node_message(text)])
    try:
        await node.finish()
    finally:
        await node.kill()
    (receipt,) = node.of("deliver_sm", "receipt")
    _, _, preview = receipt_fields(receipt["text"])
    assert len(preview) == len(text)
    wrong = [(sent, got) for sent, got in zip(text, preview, strict=True) if got not in (sent, "?")]
    assert wrong == [], f"receipt preview {preview!r} for {text!r}"
