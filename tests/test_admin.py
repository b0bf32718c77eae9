"""simulator.admin: GET /metrics and POST /mo against an in-process carrier on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from carrier_helpers import DEADLINE, Phone
from loops import Run
from prometheus_client import CollectorRegistry

from simulator.admin import Admin
from simulator.carrier import Carrier
from simulator.config import CarrierConfig, Dist, Profile
from smppcore.aio import Connection, connect
from smppcore.constants import DataCoding, EsmClass
from smppcore.pdu import BindReceiver, BindTransmitter, SubmitSm


class Sim:
    def __init__(self, carrier: Carrier, admin: Admin, http: aiohttp.ClientSession) -> None:
        self.carrier = carrier
        self.admin = admin
        self.http = http
        self.url = f"http://127.0.0.1:{admin.port}"

    async def post_mo(self, body: Any = None, *, data: bytes | None = None) -> tuple[int, Any]:
        async with asyncio.timeout(DEADLINE):
            kwargs: dict[str, Any] = {"data": data} if data is not None else {"json": body}
            async with self.http.post(f"{self.url}/mo", **kwargs) as resp:
                return resp.status, await resp.json()

    async def metrics(self) -> tuple[str, str]:
        async with asyncio.timeout(DEADLINE), self.http.get(f"{self.url}/metrics") as resp:
            assert resp.status == 200
            return resp.headers["Content-Type"], await resp.text()

    async def bind(self, cls: type = BindReceiver) -> tuple[Connection, Phone]:
        phone = Phone()
        conn = await connect("127.0.0.1", self.carrier.port, handler=phone)
        await conn.bind(cls(system_id="test", password="test"))
        return conn, phone


@asynccontextmanager
async def simulator(config: CarrierConfig | None = None) -> AsyncIterator[Sim]:
    registry = CollectorRegistry()
    carrier = Carrier(config or CarrierConfig(port=0), registry=registry)
    await carrier.start()
    admin = Admin(carrier, registry)
    try:
        await admin.start("127.0.0.1", 0)
        async with aiohttp.ClientSession() as http:
            yield Sim(carrier, admin, http)
    finally:
        await admin.stop()
        await carrier.stop()


def test_post_mo_delivers_gsm_ucs2_and_long_messages(run: Run) -> None:
    async def main() -> None:
        async with simulator() as sim:
            conn, phone = await sim.bind()
            body = {"system_id": "test", "source": "447700900123", "destination": "1234"}

            status, reply = await sim.post_mo({**body, "text": "Hello [GSM] €"})
            assert (status, reply) == (202, {"system_id": "test", "parts": 1})
            text, [pdu] = await phone.next_message()
            assert text == "Hello [GSM] €"
            assert pdu.data_coding == DataCoding.SMSC_DEFAULT
            assert pdu.esm_class == 0
            assert (pdu.source_addr, pdu.destination_addr) == ("447700900123", "1234")

            status, reply = await sim.post_mo({**body, "text": "Καλημέρα 👍", "data_coding": None})
            assert (status, reply["parts"]) == (202, 1)
            text, [pdu] = await phone.next_message()
            assert text == "Καλημέρα 👍"
            assert pdu.data_coding == DataCoding.UCS2

            status, reply = await sim.post_mo({**body, "text": "plain", "data_coding": 8})
            assert status == 202
            text, [pdu] = await phone.next_message()
            assert (text, pdu.data_coding) == ("plain", DataCoding.UCS2)

            long_text = "This is a long message from a phone. " * 10
            status, reply = await sim.post_mo({**body, "text": long_text})
            assert (status, reply["parts"]) == (202, 3)
            text, parts = await phone.next_message()
            assert text == long_text
            assert len(parts) == 3
            assert all(p.esm_class == EsmClass.UDHI for p in parts)

            long_ucs2 = "Γεια σου κόσμε! " * 10
            status, reply = await sim.post_mo({**body, "text": long_ucs2})
            assert (status, reply["parts"]) == (202, 3)
            text, parts = await phone.next_message()
            assert text == long_ucs2
            assert {p.data_coding for p in parts} == {DataCoding.UCS2}

            _, metrics = await sim.metrics()
            assert "smsc_carrier_mo_total 9.0" in metrics
            await conn.unbind()

    run(main())


def test_source_and_destination_default_to_the_profile_ranges(run: Run) -> None:
    async def main() -> None:
        async with simulator() as sim:
            conn, phone = await sim.bind()
            status, _ = await sim.post_mo({"system_id": "test", "text": "hi"})
            assert status == 202
            _, [pdu] = await phone.next_message()
            assert pdu.source_addr.startswith("4477009")
            assert len(pdu.source_addr) == 12
            assert pdu.destination_addr == "1234"
            await conn.unbind()

    run(main())


def test_mo_for_an_offline_account_is_held_until_it_binds(run: Run) -> None:
    async def main() -> None:
        async with simulator() as sim:
            status, _ = await sim.post_mo({"system_id": "test", "text": "while you were away"})
            assert status == 202
            _, metrics = await sim.metrics()
            assert 'smsc_carrier_held{account="test"} 1.0' in metrics
            conn, phone = await sim.bind()
            text, _ = await phone.next_message()
            assert text == "while you were away"
            await conn.unbind()

    run(main())


@pytest.mark.parametrize(
    ("kwargs", "status", "error"),
    [
        ({"json": {"system_id": "nobody", "text": "hi"}}, 404, "no account 'nobody'"),
        ({"data": b"{not json"}, 400, "not valid JSON"),
        ({"data": b""}, 400, "empty body"),
        ({"json": ["test", "hi"]}, 400, "Expected `object`, got `array`"),
        ({"json": {"system_id": "test"}}, 400, "missing required field `text`"),
        ({"json": {"text": "hi"}}, 400, "missing required field `system_id`"),
        ({"json": {"system_id": "test", "text": "hi", "colour": 1}}, 400, "unknown field"),
        ({"json": {"system_id": "test", "text": 5}}, 400, "Expected `str`, got `int`"),
        ({"json": {"system_id": "test", "text": ""}}, 400, "length >= 1"),
        (
            {"json": {"system_id": "test", "text": "hi", "data_coding": 999}},
            400,
            "`int` <= 255",
        ),
        (
            {"json": {"system_id": "test", "text": "Καλημέρα", "data_coding": 0}},
            400,
            "not in the GSM 03.38 alphabet",
        ),
        ({"json": {"system_id": "test", "text": "hi", "data_coding": 4}}, 400, "carries no text"),
        (
            {"json": {"system_id": "test", "text": "hi", "source": "x" * 21}},
            400,
            "longer than 20",
        ),
    ],
)
def test_bad_requests_get_a_clear_json_error(
    run: Run, kwargs: dict[str, Any], status: int, error: str
) -> None:
    async def main() -> None:
        async with simulator() as sim:
            got, reply = await sim.post_mo(kwargs.get("json"), data=kwargs.get("data"))
            assert got == status
            assert error in reply["error"]
            assert sim.carrier.metrics.mo_sent == 0

    run(main())


#: The message stays pending for the whole test: the default profile's receipt comes a
#: seeded ~0.2 s after the submit, and a scrape on a loaded machine can come later than that.
NO_RECEIPT_YET = CarrierConfig(
    port=0, profiles={"default": Profile(receipt_delay=Dist("fixed", ms=3_600_000.0))}
)


def test_metrics_show_pdus_binds_and_scrape_time_gauges(run: Run) -> None:
    async def main() -> None:
        async with simulator(NO_RECEIPT_YET) as sim:
            conn, _ = await sim.bind(BindTransmitter)
            resp = await conn.request(
                SubmitSm(source_addr="me", destination_addr="447700900123", short_message=b"x")
            )
            assert resp.command_status == 0
            content_type, text = await sim.metrics()
            assert content_type.startswith("text/plain")
            assert 'smsc_carrier_pdus_in_total{command="submit_sm",status="ESME_ROK"} 1.0' in text
            assert (
                'smsc_carrier_binds_total{account="test",bind_type="transmitter",'
                'status="ESME_ROK"} 1.0'
            ) in text
            assert 'smsc_carrier_sessions{account="test"} 1.0' in text
            assert "smsc_carrier_pending_messages 1.0" in text
            await conn.unbind()

            # OpenMetrics when the scraper asks for it.
            async with (
                asyncio.timeout(DEADLINE),
                sim.http.get(
                    f"{sim.url}/metrics", headers={"Accept": "application/openmetrics-text"}
                ) as resp2,
            ):
                assert resp2.headers["Content-Type"].startswith("application/openmetrics-text")
                assert (await resp2.text()).rstrip().endswith("# EOF")

    run(main())


def test_stop_closes_the_port(run: Run) -> None:
    async def main() -> None:
        registry = CollectorRegistry()
        carrier = Carrier(CarrierConfig(port=0), registry=registry)
        await carrier.start()
        admin = Admin(carrier, registry)
        try:
            await admin.start("127.0.0.1", 0)
            port = admin.port
        finally:
            await admin.stop()
            await carrier.stop()
        with pytest.raises(ConnectionRefusedError):
            async with asyncio.timeout(DEADLINE):
                await asyncio.open_connection("127.0.0.1", port)

    run(main())
