"""simulator.mo: building MO deliver_sm templates (pure, seeded) and paced generation."""

from __future__ import annotations

import asyncio
import random
import re
from typing import Any

import pytest
from carrier_helpers import DEADLINE, Phone, mo_text
from loops import Run

from simulator.carrier import Carrier
from simulator.config import CarrierAccount, CarrierConfig, MoConfig, NumberRange, Profile
from simulator.mo import (
    MoError,
    MoGenerator,
    build_mo,
    start_mo_generators,
    stop_mo_generators,
)
from smppcore.aio import connect
from smppcore.constants import DataCoding, EsmClass
from smppcore.pdu import BindReceiver, DeliverSm
from smppcore.segment import parse_udh
from smppcore.text import gsm_encode


def build(text: str, **kw: Any) -> list[DeliverSm]:
    kw.setdefault("source", "447700900123")
    kw.setdefault("destination", "1234")
    return build_mo(random.Random(0), MoConfig(), text=text, **kw)


# --- build_mo -------------------------------------------------------------------------------


def test_gsm_text_is_one_template_in_gsm() -> None:
    [pdu] = build("Hello {world} €5")
    assert pdu.sequence_number == 0
    assert pdu.data_coding == DataCoding.SMSC_DEFAULT
    assert pdu.esm_class == 0
    assert pdu.short_message == gsm_encode("Hello {world} €5")
    assert (pdu.source_addr, pdu.source_addr_ton, pdu.source_addr_npi) == ("447700900123", 1, 1)
    assert (pdu.destination_addr, pdu.dest_addr_ton, pdu.dest_addr_npi) == ("1234", 0, 1)


def test_text_outside_gsm_goes_as_ucs2() -> None:
    [pdu] = build("Καλημέρα 👍")
    assert pdu.data_coding == DataCoding.UCS2
    assert pdu.short_message == "Καλημέρα 👍".encode("utf-16-be")


def test_explicit_data_coding_wins() -> None:
    [pdu] = build("plain", data_coding=8)
    assert pdu.data_coding == DataCoding.UCS2
    assert pdu.short_message == "plain".encode("utf-16-be")


def test_alphanumeric_source_is_ton_5() -> None:
    [pdu] = build("hi", source="MyBank")
    assert (pdu.source_addr_ton, pdu.source_addr_npi) == (5, 0)


@pytest.mark.parametrize(
    ("text", "coding", "parts"),
    [
        ("x" * 161, DataCoding.SMSC_DEFAULT, 2),
        ("€" * 100, DataCoding.SMSC_DEFAULT, 2),  # 200 septets: extension chars count 2
        ("A" * 153 * 3, DataCoding.SMSC_DEFAULT, 3),
        ("Ω" + "ж" * 70, DataCoding.UCS2, 2),
        ("👍" * 60, DataCoding.UCS2, 2),  # surrogate pairs are never cut
    ],
    ids=["gsm-161", "gsm-extension", "gsm-3-parts", "ucs2-71", "ucs2-surrogates"],
)
def test_long_text_goes_as_udh_parts(text: str, coding: int, parts: int) -> None:
    pdus = build(text, ref=77)
    assert len(pdus) == parts
    for seq, pdu in enumerate(pdus, 1):
        assert pdu.esm_class == EsmClass.UDHI
        assert pdu.data_coding == coding
        assert pdu.sequence_number == 0
        concat, _, _ = parse_udh(pdu.short_message)
        assert concat is not None
        assert (concat.ref, concat.total, concat.seq, concat.ref_bits) == (77, parts, seq, 8)
        # UDH + 153 unpacked septets (GSM is one septet per octet in SMPP), or 140 octets.
        assert len(pdu.short_message) <= (159 if coding == DataCoding.SMSC_DEFAULT else 140)
    assert mo_text(list(reversed(pdus))) == text


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"text": ""}, "empty"),
        ({"text": "Καλημέρα", "data_coding": 0}, "GSM 03.38"),
        ({"text": "hi", "data_coding": 4}, "carries no text"),
        ({"text": "hi", "data_coding": 300}, "carries no text"),
        ({"text": "x" * 153 * 256}, "255"),
        ({"text": "hi", "source": "1" * 21}, "longer than 20"),
        ({"text": "hi", "destination": "12\n34"}, "printable"),
    ],
)
def test_unsendable_input_is_refused(kwargs: dict[str, Any], reason: str) -> None:
    with pytest.raises(MoError, match=re.escape(reason)):
        build(**kwargs)


def test_drawn_mo_repeats_with_the_seed() -> None:
    config = MoConfig(long_share=0.3, ucs2_share=0.3)
    first = [build_mo(random.Random(5), config) for _ in range(3)]
    rng_a, rng_b = random.Random(9), random.Random(9)
    a = [build_mo(rng_a, config) for _ in range(200)]
    b = [build_mo(rng_b, config) for _ in range(200)]
    assert a == b
    assert first[0] == first[1] == first[2]


def test_drawn_mo_follows_the_configured_mix() -> None:
    config = MoConfig(
        sources=NumberRange("3069", 8),
        destinations=NumberRange("5", 4),
        texts=("Hello", "STOP", "Καλημέρα"),
        ucs2_share=0.25,
        long_share=0.1,
    )
    rng = random.Random(2024)
    n = 6000
    messages = [build_mo(rng, config) for _ in range(n)]
    long = sum(len(m) > 1 for m in messages)
    ucs2_gsm_text = 0
    gsm_text = 0
    texts: set[str] = set()
    for parts in messages:
        pdu = parts[0]
        assert re.fullmatch(r"3069\d{8}", pdu.source_addr)
        assert re.fullmatch(r"5\d{4}", pdu.destination_addr)
        text = mo_text(parts)
        if len(parts) > 1:
            assert all(p.esm_class == EsmClass.UDHI for p in parts)
            assert len({parse_udh(p.short_message)[0].ref for p in parts}) == 1  # type: ignore[union-attr]
        else:
            assert pdu.esm_class == 0
            texts.add(text)
        if "Καλημέρα" not in text:
            gsm_text += 1
            ucs2_gsm_text += pdu.data_coding == DataCoding.UCS2
        else:
            assert pdu.data_coding == DataCoding.UCS2
    assert texts == set(config.texts)
    assert abs(long / n - 0.1) < 0.02
    assert abs(ucs2_gsm_text / gsm_text - 0.25) < 0.03


# --- MoGenerator ----------------------------------------------------------------------------


def test_generator_keeps_its_rate_and_stops_on_cancel(run: Run) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        sent: list[tuple[str, list[DeliverSm], float]] = []
        enough = asyncio.Event()

        def send(system_id: str, pdus: list[DeliverSm]) -> None:
            sent.append((system_id, pdus, loop.time()))
            if len(sent) == 40:
                enough.set()

        rate = 200.0
        gen = MoGenerator("acct", MoConfig(rate=rate, long_share=0.2), random.Random(1), send)
        start = loop.time()
        task = asyncio.create_task(gen.run())
        async with asyncio.timeout(DEADLINE):
            await enough.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert gen.messages == len(sent) >= 40
        assert gen.parts == sum(len(p) for _, p, _ in sent)
        assert {s for s, _, _ in sent} == {"acct"}
        # Never ahead of schedule: message k goes no earlier than start + k / rate.
        for k, (_, _, at) in enumerate(sent):
            assert at >= start + k / rate - 0.002
        # Each message gets the next concatenation reference: long ones never share one.
        refs = [parse_udh(p[0].short_message)[0].ref for _, p, _ in sent if len(p) > 1]  # type: ignore[union-attr]
        assert refs
        assert len(set(refs)) == len(refs)

    run(main())


def test_generator_with_rate_zero_returns_at_once(run: Run) -> None:
    async def main() -> None:
        gen = MoGenerator("acct", MoConfig(rate=0), random.Random(1), lambda s, p: None)
        async with asyncio.timeout(DEADLINE):
            await gen.run()
        assert gen.messages == 0

    run(main())


def test_carrier_generators_deliver_to_a_bound_receiver(run: Run) -> None:
    config = CarrierConfig(
        port=0,
        accounts=(
            CarrierAccount(system_id="busy", password="pw", profile="chatty"),
            CarrierAccount(system_id="quiet", password="pw"),
        ),
        profiles={
            "default": Profile(),
            "chatty": Profile(mo=MoConfig(rate=100.0, texts=("Hi", "Ναι"), long_share=0.2)),
        },
    )

    async def main() -> None:
        carrier = Carrier(config)
        await carrier.start()
        tasks: list[asyncio.Task[None]] = []
        try:
            tasks = start_mo_generators(carrier)
            assert [t.get_name() for t in tasks] == ["mo-generator:busy"]
            phone = Phone()
            conn = await connect("127.0.0.1", carrier.port, handler=phone)
            await conn.bind(BindReceiver(system_id="busy", password="pw"))
            for _ in range(10):
                text, parts = await phone.next_message()
                assert parts[0].destination_addr == "1234"
                assert parts[0].source_addr.startswith("4477009")
                assert text.split(" ")[0] in ("Hi", "Ναι")
            await stop_mo_generators(tasks)
            assert all(t.cancelled() for t in tasks)
            assert carrier.metrics.mo_sent >= 10
            await conn.unbind()
        finally:
            await stop_mo_generators(tasks)
            await carrier.stop()

    run(main())
