"""Layer 4 end to end: SMPP clients nobody here wrote bind to smsc (App), submit GSM, UCS-2
and long (UDH) messages through the router to simulated carriers, and get receipts that
name the ids smsc gave them.

Python ``smpplib`` (TX + RX and TRX), ``aiosmpplib`` (TRX; its own correlator matches each
receipt to its submit by our id) and the npm ``smpp`` package: the drivers and
conversations of tests/interop_clients.py, the same traffic the carrier simulator's interop
tests send. Every wait has a deadline; clients are closed or killed in ``finally``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
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
    aiosmpplib_esme,
    check_aio_receipts,
    needs_node,
    node_trx_mix,
    node_tx_to_rx,
    rebuilt_text,
    smpplib_trx,
    smpplib_tx_rx,
)
from smsc_fixtures import FAST, app_config, prices, running_app

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
    stored = [await app.store.get(our_id) for our_id in ids]
    assert all(s is not None and s.carrier for s in stored), stored
    carriers = {s.carrier for s in stored if s is not None}
    assert carriers == {"uk"}  # MSISDN is a UK number
    sim = app.simulators["uk"]
    parts = [sim.messages.get(s.carrier_message_id) for s in stored if s is not None]
    assert rebuilt_text(parts) == text


# --- smpplib ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_smpplib_transmitter_and_receiver(tmp_path: Path) -> None:
    async with interop_app(tmp_path) as app:
        ids, system_id = await smpplib_tx_rx(app.port, [(GSM_TEXT, GSM), (LONG_GSM_TEXT, GSM)])
        assert system_id == b"smsc"
        assert len(ids) == 1 + 3
        assert await assert_forwarded(app, ids[0], GSM_TEXT, 0) == "uk"
        await assert_parts_forwarded(app, ids[1:], LONG_GSM_TEXT)


@pytest.mark.asyncio
async def test_smpplib_transceiver_gsm_ucs2_and_long(tmp_path: Path) -> None:
    async with interop_app(tmp_path) as app:
        ids = await smpplib_trx(
            app.port, [(GSM_TEXT, GSM), (UCS2_TEXT, UCS2), (LONG_UCS2_TEXT, UCS2)]
        )
        assert len(ids) == 1 + 1 + 2
        await assert_forwarded(app, ids[0], GSM_TEXT, 0)
        await assert_forwarded(app, ids[1], UCS2_TEXT, 8)
        await assert_parts_forwarded(app, ids[2:], LONG_UCS2_TEXT)


# --- aiosmpplib ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_aiosmpplib_transceiver_correlates_receipts_by_our_ids(tmp_path: Path) -> None:
    async with interop_app(tmp_path) as app, aiosmpplib_esme(app.port) as (esme, hook):
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
        assert {(r.log_id, int(r.command_status)) for r in resps} == {("gsm", 0), ("ucs2", 0)}
        id_of = {r.log_id: r.message_id for r in resps}

        check_aio_receipts(await hook.take(AioDeliverSm, 2), id_of)
        # A receipt means forwarded (submit_sm_resp, in enqueue mode, may come first).
        assert await assert_forwarded(app, id_of["gsm"], GSM_TEXT, 0) == "uk"
        assert await assert_forwarded(app, id_of["ucs2"], UCS2_TEXT, 8) == "world"


# --- node smpp ----------------------------------------------------------------------------


@needs_node
@pytest.mark.asyncio
async def test_node_transceiver_gsm_ucs2_and_long(tmp_path: Path) -> None:
    async with interop_app(tmp_path) as app:
        system_id, id_of = await node_trx_mix(app.port)
        assert system_id == "smsc"
        await assert_forwarded(app, id_of[0, 1], GSM_TEXT, 0)
        await assert_forwarded(app, id_of[1, 1], UCS2_TEXT, 8)
        await assert_parts_forwarded(app, [id_of[2, s] for s in (1, 2, 3)], LONG_GSM_TEXT)
        await assert_parts_forwarded(app, [id_of[3, s] for s in (1, 2)], LONG_UCS2_TEXT)


@needs_node
@pytest.mark.asyncio
async def test_node_transmitter_receipts_reach_a_node_receiver(tmp_path: Path) -> None:
    async with interop_app(tmp_path) as app:
        await node_tx_to_rx(app.port)
