"""The load generator's fast paths, pinned to the slow ones they stand for.

- :func:`simulator.load.fastpdu.scan_deliver_sm` reads a deliver_sm from its frame; it
  must give what :func:`smppcore.codec.decode` gives, and hand every frame the codec
  might refuse back to it (``None``), valid, odd, broken or randomly mutated.
- :meth:`MessageFactory.one` must build the very bytes :meth:`MessageFactory.message`
  builds, draw for draw.
- A :class:`Bind` fed receipts (with and without TLVs, before and after their
  submit_sm_resp, intermediate, MO, unknown) must count what the codec path counts, and
  answer every deliver_sm with a deliver_sm_resp of its sequence number.
"""

from __future__ import annotations

import asyncio
import random
import struct
import time
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from loops import LOOP_FACTORIES

from simulator.load.config import decode_config
from simulator.load.engine import Bind, Engine
from simulator.load.fastpdu import scan_deliver_sm
from simulator.load.messages import Plan
from simulator.load.traffic import MessageFactory
from smppcore.codec import decode, encode
from smppcore.constants import CommandId, EsmClass, MessageState
from smppcore.errors import RemoteProtocolError
from smppcore.pdu import DeliverSm, DeliverSmResp
from smppcore.receipt_pdu import receipt_deliver_sm
from smppcore.tlv import Tag, Tlv, tlv

_HEADER = struct.Struct(">IIII")
_AT = datetime(2024, 1, 2, 3, 4, tzinfo=UTC)


def carrier_receipt(message_id: str, state: MessageState = MessageState.DELIVERED) -> DeliverSm:
    """A receipt as the carrier simulator sends it: Appendix B text and both TLVs."""
    return receipt_deliver_sm(
        message_id=message_id,
        state=state,
        error=0,
        submitted_at=_AT,
        done_at=_AT,
        source=(1, 1, "447700900123"),
        destination=(1, 1, "447700900456"),
        preview="hello 100% sure",
    )


def text_receipt(message_id: str, stat: str = "DELIVRD", esm: int = 4) -> DeliverSm:
    text = f"id:{message_id} sub:001 dlvrd:001 submit date:2401010000 done date:2401010000"
    return DeliverSm(esm_class=esm, short_message=f"{text} stat:{stat} err:000 text:x".encode())


def frame(pdu: DeliverSm, seq: int = 7) -> bytes:
    return encode(msgspec.structs.replace(pdu, sequence_number=seq))


def expected(pdu: DeliverSm) -> tuple[int, str | None, int | None, bytes]:
    """What scan_deliver_sm must say, from the decoded PDU (Pdu.tlv as the engine used)."""
    rid = pdu.tlv(Tag.RECEIPTED_MESSAGE_ID)
    state = pdu.tlv(Tag.MESSAGE_STATE)
    assert rid is None or isinstance(rid, str)
    assert state is None or isinstance(state, int)
    if rid and state is not None:
        body = b""  # not needed: the TLVs say it all
    else:
        payload = pdu.tlv(Tag.MESSAGE_PAYLOAD)
        body = pdu.short_message or (payload if isinstance(payload, bytes) else b"")
    return pdu.esm_class, rid, state, body


VALID = [
    carrier_receipt("00000A1B2C"),
    carrier_receipt("abc", MessageState.ENROUTE),
    carrier_receipt("x" * 64, MessageState.UNDELIVERABLE),
    text_receipt("1234"),
    text_receipt("77", esm=int(EsmClass.DELIVERY_RECEIPT | EsmClass.INTERMEDIATE_NOTIFICATION)),
    DeliverSm(source_addr="4477", short_message=b"an MO message"),
    DeliverSm(),
    DeliverSm(
        service_type="CMT",
        source_addr="1" * 20,
        destination_addr="2" * 20,
        esm_class=4,
        schedule_delivery_time="240101000000000+",
        validity_period="000001000000000R",
        short_message=b"\0" * 254,
        tlvs=(
            Tlv(0x1400, b"vendor"),  # unknown tag: any length
            Tlv(int(Tag.RECEIPTED_MESSAGE_ID), b"no-nul"),  # no NUL: read to the end
            Tlv(int(Tag.RECEIPTED_MESSAGE_ID), b"second\0"),  # only the first counts
            Tlv(int(Tag.MESSAGE_STATE), b"\x09"),  # outside the enum
            Tlv(int(Tag.MESSAGE_STATE), b"\x02"),
        ),
    ),
    DeliverSm(esm_class=4, tlvs=(Tlv(int(Tag.RECEIPTED_MESSAGE_ID), b"mid\0dle"),)),
    DeliverSm(esm_class=4, tlvs=(Tlv(int(Tag.RECEIPTED_MESSAGE_ID), b"\0"),)),
    DeliverSm(
        esm_class=4,
        tlvs=(
            Tlv(int(Tag.MESSAGE_PAYLOAD), b"id:55 stat:UNDELIV"),
            tlv(Tag.MESSAGE_STATE, 3),
        ),
    ),
    DeliverSm(esm_class=4, tlvs=(Tlv(int(Tag.MESSAGE_PAYLOAD), b""),)),
]


@pytest.mark.parametrize("pdu", VALID, ids=range(len(VALID)))
def test_scan_reads_what_the_codec_reads(pdu: DeliverSm) -> None:
    wire = frame(pdu)
    assert scan_deliver_sm(wire, 0, len(wire)) == expected(decode(wire))  # type: ignore[arg-type]
    # In the middle of a read buffer, between other PDUs, from a bytearray too.
    buf = bytearray(b"\x01" * 40 + wire + frame(carrier_receipt("next")))
    assert scan_deliver_sm(buf, 40, 40 + len(wire)) == expected(decode(wire))  # type: ignore[arg-type]


def _raw(body: bytes, seq: int = 9) -> bytes:
    return _HEADER.pack(16 + len(body), int(CommandId.DELIVER_SM), 0, seq) + body


_TAIL = b"\x04\x00\x00\x00\x00\x00\x00\x00\x00"  # esm_class 4 .. sm_default_msg_id, times empty
BROKEN = [
    _raw(b""),  # no body
    _raw(b"\x00\x01\x01"),  # ends inside the addresses
    _raw(b"SEVENCH\x00" + b"\x00" * 6 + _TAIL + b"\x00"),  # service_type over 5 octets
    _raw(b"\x00\x01\x01" + b"1" * 21 + b"\x00\x01\x01\x00" + _TAIL + b"\x00"),  # source 21
    _raw(b"\x00\x01\x01\x00\x01\x01" + b"1" * 25),  # destination never ends
    _raw(b"\x00\x01\x01\x00\x01\x01\x00\x04\x00\x00" + b"2401\x00" + b"\x00" * 6),  # time 4
    _raw(b"\x00\x01\x01\x00\x01\x01\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x05ab"),  # sm > PDU
    _raw(b"\x00\x01\x01\x00\x01\x01\x00" + _TAIL[:4]),  # ends before sm_length
    _raw(b"\x00\x01\x01\x00\x01\x01\x00" + _TAIL + b"\x00\x00\x1e"),  # TLV header cut
    _raw(b"\x00\x01\x01\x00\x01\x01\x00" + _TAIL + b"\x00\x00\x1e\x00\x09ab"),  # value cut
    _raw(b"\x00\x01\x01\x00\x01\x01\x00" + _TAIL + b"\x00\x04\x27\x00\x02\x00\x02"),  # state 2
    _raw(b"\x00\x01\x01\x00\x01\x01\x00" + _TAIL + b"\x00\x00\x1e\x00\x00"),  # empty id
    _raw(b"\x00\x01\x01\x00\x01\x01\x00" + _TAIL + b"\x00\x04\x23\x00\x01\x00"),  # 0x0423 is 3
    _raw(b"\x00\x01\x01\x00\x01\x01\x00" + _TAIL[:-1] + b"\x02hi\x04\x24\x00\x01x"),  # sm+payload
]


@pytest.mark.parametrize("wire", BROKEN, ids=range(len(BROKEN)))
def test_scan_leaves_what_the_codec_refuses_to_the_codec(wire: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode(wire)
    assert scan_deliver_sm(wire, 0, len(wire)) is None
    # The next PDU's octets must not stand in for the missing ones.
    buf = wire + frame(carrier_receipt("next"))
    assert scan_deliver_sm(buf, 0, len(wire)) is None


def test_scan_agrees_with_the_codec_on_mutated_frames() -> None:
    rng = random.Random(5)
    seeds = [frame(p) for p in VALID] + BROKEN
    accepted = refused = 0
    for _ in range(20_000):
        wire = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(16, len(wire)) if len(wire) > 16 else 16
            action = rng.random()
            if action < 0.6 and at < len(wire):
                wire[at] = rng.choice((0, 1, 0x1E, 0x27, 0x04, 0xFF, rng.randrange(256)))
            elif action < 0.8:
                wire[at:at] = bytes([rng.randrange(256)])
            else:
                del wire[at : at + rng.randint(1, 4)]
        wire[0:4] = len(wire).to_bytes(4, "big")
        data = bytes(wire)
        got = scan_deliver_sm(data + b"\0" * 8, 0, len(data))
        try:
            pdu = decode(data)
        except RemoteProtocolError:
            assert got is None, data
            refused += 1
            continue
        if got is not None:
            assert isinstance(pdu, DeliverSm)
            assert got == expected(pdu), data
            accepted += 1
    assert accepted > 1000
    assert refused > 1000


# --- message templates ------------------------------------------------------------------


@pytest.mark.parametrize(
    "traffic",
    [
        {},
        {"variants": 5, "mix": [{"weight": 2}, {"weight": 1, "coding": "ucs2", "length": 30}]},
        {"variants": 1, "source": {"prefix": "1", "digits": 15}},
        {"mix": [{"texts": ["100% off", "50%% more", "%s %d %b"]}]},
        {"mix": [{"coding": "latin1", "length": 20}], "service_type": "CMT", "priority": 3},
    ],
)
def test_one_builds_the_bytes_message_builds(traffic: dict[str, Any]) -> None:
    cfg = decode_config({"traffic": traffic}).traffic
    fast, slow = MessageFactory(cfg, "s:0"), MessageFactory(cfg, "s:0")
    assert fast.single_part
    for seq in (*range(1, 3000), 0x7FFFFFFF):
        assert fast.one(seq) == slow.message(seq)[0]


@pytest.mark.parametrize(
    "traffic",
    [
        {"mix": [{"length": 400}]},
        {"source": {"prefix": "4477", "digits": 0}},
        {"destination": {"prefix": "4477", "digits": 0}},
    ],
)
def test_one_is_not_offered_where_it_cannot_stand_in(traffic: dict[str, Any]) -> None:
    assert not MessageFactory(decode_config({"traffic": traffic}).traffic, 1).single_part


# --- receipts through a bind ------------------------------------------------------------


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str) -> None:
        return None

    def pdus(self) -> list[tuple[int, int, int, bytes]]:
        data = b"".join(self.written)
        out = []
        pos = 0
        while pos < len(data):
            length, cid, status, seq = _HEADER.unpack_from(data, pos)
            out.append((cid, status, seq, data[pos + 16 : pos + length]))
            pos += length
        return out


def _engine(**receipts: Any) -> tuple[Engine, Bind, _Transport]:
    cfg = decode_config({"binds": {"window": 50}, "receipts": receipts})
    engine = Engine(Plan(worker=0, workers=1, config=cfg, binds=1, rate=None, messages=None), print)
    bind = engine.binds[0]
    transport = _Transport()
    bind.connection_made(transport)  # type: ignore[arg-type]
    bind.bound = True
    engine.sending = True
    engine.t0 = 1.0
    return engine, bind, transport


def _resp(seq: int, message_id: str) -> bytes:
    body = message_id.encode() + b"\0"
    return _HEADER.pack(16 + len(body), int(CommandId.SUBMIT_SM_RESP), 0, seq) + body


def _receipts(ids: list[str]) -> list[DeliverSm]:
    out: list[DeliverSm] = []
    for k, mid in enumerate(ids):
        kind = k % 4
        if kind == 0:
            out.append(carrier_receipt(mid))
        elif kind == 1:
            out.append(text_receipt(mid, stat="UNDELIV"))
        elif kind == 2:
            out.append(carrier_receipt(mid.lower(), MessageState.EXPIRED))
        else:
            out.append(carrier_receipt(mid, MessageState.ENROUTE))
    return out


@pytest.mark.parametrize("style", ["as_is", "upper"])
def test_a_bind_counts_receipts_as_the_codec_path_does(style: str) -> None:
    """Half the receipts come before their submit_sm_resp; plus MO, unknown ids, one
    intermediate, and id case that only the ``upper`` style matches."""
    fast, bind, transport = _engine(submit_id=style, receipt_id=style)
    slow, _, _ = _engine(submit_id=style, receipt_id=style)
    fast.fill(bind)
    slow.fill(slow.binds[0])
    submits = [seq for cid, _, seq, _ in transport.pdus() if cid == CommandId.SUBMIT_SM]
    assert len(submits) == 50
    ids = [f"AB{n:04X}" for n in range(len(submits))]
    receipts = _receipts(ids)
    extra = [
        DeliverSm(short_message=b"MO"),
        carrier_receipt("nobody"),
        text_receipt("nobody-either"),
        DeliverSm(esm_class=0x24, tlvs=(tlv(Tag.RECEIPTED_MESSAGE_ID, ids[0]),)),
    ]
    frames: list[bytes] = []
    seq = 100
    for k, (sub_seq, mid) in enumerate(zip(submits, ids, strict=True)):
        receipt = frame(receipts[k], seq)
        seq += 1
        frames += [receipt, _resp(sub_seq, mid)] if k % 2 else [_resp(sub_seq, mid), receipt]
    frames += [frame(p, 900 + n) for n, p in enumerate(extra)]
    data = b"".join(frames)
    before = len(transport.written)
    for at in range(0, len(data), 997):  # PDUs split across reads
        bind.data_received(data[at : at + 997])
    # The codec path, as the engine read deliver_sm before: decode, then delivered().
    for k, mid in enumerate(ids):
        pdu = decode(frame(receipts[k]))
        assert isinstance(pdu, DeliverSm)
        if k % 2:
            slow.delivered(pdu, 2.0)
            slow.submit_accepted(mid, 1.0)
        else:
            slow.submit_accepted(mid, 1.0)
            slow.delivered(pdu, 2.0)
    for p in extra:
        slow.delivered(p, 2.0)

    c, s = fast.counters, slow.counters
    got = (c.receipts, c.receipt_states, c.intermediate, c.mo, len(fast.early), len(fast.awaiting))
    want = (s.receipts, s.receipt_states, s.intermediate, s.mo, len(slow.early), len(slow.awaiting))
    assert got == want
    assert c.receipts == (38 if style == "upper" else 26)
    assert c.mo == 1
    assert c.intermediate == 12 + 1
    assert fast.rcpt_iv.count == c.receipts
    # Every deliver_sm answered once, with its sequence number and an empty message_id.
    answers = [
        (seq, body)
        for cid, status, seq, body in transport.pdus()[before:]
        if cid == CommandId.DELIVER_SM_RESP and status == 0
    ]
    assert sorted(answers) == sorted(
        [(100 + k, b"\0") for k in range(50)] + [(900 + n, b"\0") for n in range(4)]
    )
    assert decode(encode(DeliverSmResp(sequence_number=5))) == DeliverSmResp(5)


def test_a_bind_answers_a_deliver_sm_the_codec_refuses_with_its_status() -> None:
    _, bind, transport = _engine()
    bad = BROKEN[6]  # sm_length beyond the PDU
    good = frame(carrier_receipt("x"), 41)
    bind.data_received(good + bad + good)
    answers = [(cid, status, seq) for cid, status, seq, _ in transport.pdus() if cid & 0x80000000]
    with pytest.raises(RemoteProtocolError) as err:
        decode(bad)
    assert answers == [
        (int(CommandId.DELIVER_SM_RESP), 0, 41),
        (int(CommandId.DELIVER_SM_RESP), err.value.status, 9),
        (int(CommandId.DELIVER_SM_RESP), 0, 41),
    ]


# --- the open-loop timer ----------------------------------------------------------------


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_the_open_loop_ticks_at_most_once_a_millisecond(loop_name: str) -> None:
    """At 3000/s a message is due every 0.33 ms, finer than the loop's timers: the tick
    must wait a whole millisecond (uvloop rounds shorter delays to 0 and would spin)."""
    cfg = decode_config({"load": {"rate": 3000, "ramp": 0, "duration": 10}})

    async def main() -> tuple[int, float]:
        engine = Engine(
            Plan(worker=0, workers=1, config=cfg, binds=1, rate=3000, messages=None), print
        )
        ticks = 0
        tick = engine._send_tick

        def counted() -> None:
            nonlocal ticks
            ticks += 1
            tick()

        engine._send_tick = counted  # type: ignore[method-assign]
        loop = asyncio.get_running_loop()
        started = loop.time()
        engine._go(time.monotonic())
        await asyncio.sleep(0.1)
        elapsed = loop.time() - started
        engine.stop(interrupted=True)
        return ticks, elapsed

    with asyncio.Runner(loop_factory=LOOP_FACTORIES[loop_name]) as runner:
        ticks, elapsed = runner.run(main())
    # It ticks (how often depends on how much CPU this process got), never more often
    # than once a millisecond of the time that passed.
    assert 1 <= ticks <= elapsed * 1000 + 5
