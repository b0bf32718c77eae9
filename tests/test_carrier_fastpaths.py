"""The carrier's per-message fast paths give exactly what the plain paths give.

Receipts: built the fast way (positional struct, shared TLVs, octets taken as the preview
without decoding) they encode to the same octets as the Appendix B text made by
``format_receipt`` and the TLVs built one by one — for every state, GSM, UCS-2, Latin-1,
UDH parts, long and non-portable texts, errors in and out of range. Timers, the message
table, message ids and fixed-delay decisions keep their documented behaviour.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulator.behaviour import Behaviour, Decision, MessageIds
from simulator.carrier import receipt_body, receipt_pdu
from simulator.config import Dist, Profile
from simulator.messages import MessageTable, SimMessage
from simulator.timers import TimerQueue
from smppcore.codec import encode
from smppcore.constants import CommandStatus, EsmClass, MessageState
from smppcore.errors import LocalProtocolError
from smppcore.pdu import DeliverSm
from smppcore.receipt import Receipt, format_receipt, state_from_word
from smppcore.receipt_pdu import (
    message_preview,
    message_text,
    receipt_deliver_sm,
    receipt_preview,
    receipt_sm,
    receipt_sm_body,
)
from smppcore.text import encode_text
from smppcore.tlv import Tag, Tlv

SUBMITTED = datetime(2026, 11, 22, 1, 23, 45, tzinfo=UTC)
DONE = datetime(2026, 11, 22, 1, 24, 2, tzinfo=UTC)


def reference_receipt(
    *,
    message_id: str,
    state: MessageState,
    error: int,
    submitted_at: datetime,
    done_at: datetime,
    source: tuple[int, int, str],
    destination: tuple[int, int, str],
    preview: str,
    intermediate: bool = False,
) -> DeliverSm:
    """The receipt as it was built before the fast path: the oracle."""
    text = format_receipt(
        Receipt(
            message_id=message_id,
            state=state,
            sub=1,
            dlvrd=1 if state == MessageState.DELIVERED else 0,
            submit_date=submitted_at,
            done_date=done_at,
            error=0 if intermediate else error,
            text=receipt_preview(preview),
        )
    )
    tlvs = [
        Tlv(Tag.RECEIPTED_MESSAGE_ID, message_id.encode("latin-1") + b"\0"),
        Tlv(Tag.MESSAGE_STATE, bytes((int(state),))),
    ]
    if error and not intermediate:
        tlvs.append(Tlv(Tag.NETWORK_ERROR_CODE, bytes((3,)) + (error & 0xFFFF).to_bytes(2, "big")))
    return DeliverSm(
        source_addr_ton=destination[0],
        source_addr_npi=destination[1],
        source_addr=destination[2],
        dest_addr_ton=source[0],
        dest_addr_npi=source[1],
        destination_addr=source[2],
        esm_class=int(
            EsmClass.INTERMEDIATE_NOTIFICATION if intermediate else EsmClass.DELIVERY_RECEIPT
        ),
        data_coding=0,
        short_message=text.encode("ascii", "replace"),
        tlvs=tuple(tlvs),
    )


TEXTS = [
    "",
    "Hi",
    "Hello world, this is a load test message",  # longer than 20
    "Exactly twenty chars",
    "Price: $5 @ home {ok} [x] ~ ^ | \\ €",  # GSM extension and non-portable characters
    "ÄÖÜ äöü ñ à é ¿¡ §",
    "Здравствуйте, мир! Привет",  # UCS-2 only
    "emoji 😀 inside a text of some length",
    "line\nbreak\rand\ttab",
]
CODINGS = [0, 1, 3, 8, 0xF0]


def _sm(text: str, coding: int) -> bytes | None:
    try:
        return encode_text(text, coding)
    except Exception:
        return None


@pytest.mark.parametrize(
    ("text", "coding"), [(t, c) for t in TEXTS for c in CODINGS if _sm(t, c) is not None]
)
@pytest.mark.parametrize("udh", [False, True])
def test_message_preview_is_the_decoded_preview(text: str, coding: int, udh: bool) -> None:
    sm = _sm(text, coding)
    assert sm is not None
    esm = int(EsmClass.UDHI) if udh else 0
    if udh:
        sm = bytes((5, 0, 3, 7, 2, 1)) + sm  # a concatenation UDH, part 1 of 2
    assert message_preview(sm, esm, coding) == receipt_preview(message_text(sm, esm, coding))


@given(st.binary(max_size=60), st.sampled_from([0, 1, 3, 6, 7, 8, 0xC5, 0xE1, 0xF2, 4]))
def test_message_preview_matches_for_any_octets(sm: bytes, coding: int) -> None:
    for esm in (0, int(EsmClass.UDHI)):
        assert message_preview(sm, esm, coding) == receipt_preview(message_text(sm, esm, coding))


def _message(text: str, coding: int, **kw: Any) -> SimMessage:
    sm = _sm(text, coding)
    assert sm is not None
    fields: dict[str, Any] = {
        "id": "1A2B3C4D",
        "system_id": "test",
        "submitted_at": SUBMITTED,
        "source_ton": 5,
        "source_npi": 0,
        "source": "MyBrand",
        "dest_ton": 1,
        "dest_npi": 1,
        "destination": "447700900123",
        "data_coding": coding,
        "registered_delivery": 1,
        "short_message": sm,
        "final_at": DONE,
    }
    fields.update(kw)
    return SimMessage(**fields)


@pytest.mark.parametrize("state", list(MessageState))
@pytest.mark.parametrize("error", [0, 1, 27, 999, 1000, 70000, -3])
@pytest.mark.parametrize("intermediate", [False, True])
def test_receipt_octets_equal_the_reference(
    state: MessageState, error: int, intermediate: bool
) -> None:
    for text, coding in [(TEXTS[2], 0), (TEXTS[4], 0), (TEXTS[6], 8), (TEXTS[5], 3), ("", 0)]:
        msg = _message(text, coding, error=error, state=state)
        fast = receipt_pdu(msg, state, intermediate=intermediate)
        ref = reference_receipt(
            message_id=msg.id,
            state=state,
            error=error,
            submitted_at=SUBMITTED,
            done_at=DONE,
            source=(5, 0, "MyBrand"),
            destination=(1, 1, "447700900123"),
            preview=message_text(msg.short_message, msg.esm_class, coding),
            intermediate=intermediate,
        )
        assert fast == ref
        assert receipt_body(msg, state, intermediate=intermediate) == encode(ref)[16:]
        assert encode(fast) == encode(ref)


@pytest.mark.parametrize("state", list(MessageState))
@pytest.mark.parametrize("error", [0, 1, 999, 1000, 0x1234, 70000, -3])
@pytest.mark.parametrize("intermediate", [False, True])
def test_receipt_body_is_the_encoded_receipt(
    state: MessageState, error: int, intermediate: bool
) -> None:
    for message_id, src, dst, preview in [
        ("1A2B3C4D", (5, 0, "MyBrand"), (1, 1, "447700900123"), "Hello world, this i"),
        ("x" * 64, (255, 18, "1" * 20), (0, 0, ""), ""),
        ("id with spaces", (1, 1, "44770"), (2, 9, "ABC"), "??? portable only ?"),
        ("caf\u00e9", (1, 1, "1"), (1, 1, "2"), "x"),  # a Latin-1 id: the codec's way
        ("1", (1, 1, "Gr\u00fc\u00dfe"), (1, 1, "2"), "x"),  # a Latin-1 address
    ]:
        args = (message_id, state, error, SUBMITTED, DONE, *src, *dst, preview, intermediate)
        assert receipt_sm_body(*args) == encode(receipt_sm(*args))[16:]


@pytest.mark.parametrize(
    ("message_id", "source", "destination"),
    [
        ("1" * 65, "1", "2"),  # receipted_message_id over 65 octets
        ("1", "1" * 21, "2"),  # addresses over 20 octets
        ("1", "1", "2" * 21),
        ("1", "a\0b", "2"),
        ("1", "\u20ac", "2"),  # not Latin-1
    ],
)
def test_receipt_body_refuses_what_the_codec_refuses(
    message_id: str, source: str, destination: str
) -> None:
    args = (message_id, 2, 0, SUBMITTED, DONE, 1, 1, source, 1, 1, destination, "x", False)
    with pytest.raises(LocalProtocolError):
        encode(receipt_sm(*args))
    with pytest.raises(LocalProtocolError):
        receipt_sm_body(*args)


def test_receipt_deliver_sm_keeps_its_contract() -> None:
    """The public builder the router uses: same octets, any aware zone, new objects."""
    plus2 = timezone(timedelta(hours=2))
    for submitted, done in [
        (SUBMITTED, DONE),
        (SUBMITTED.astimezone(plus2), DONE.astimezone(plus2)),
        (SUBMITTED, SUBMITTED + timedelta(days=40, minutes=3)),
    ]:
        for state in (MessageState.DELIVERED, MessageState.UNDELIVERABLE):
            kw: dict[str, Any] = {
                "message_id": "abc-123",
                "state": state,
                "error": 34,
                "submitted_at": submitted,
                "done_at": done,
                "source": (1, 1, "447700900999"),
                "destination": (1, 1, "447700900123"),
                "preview": "Grüße $ von € hier, ein langer Text",
            }
            assert encode(receipt_deliver_sm(**kw)) == encode(reference_receipt(**kw))


def test_receipt_dates_follow_the_datetime_not_a_cache() -> None:
    """Two datetimes alternating, then a third: each receipt shows its own dates."""
    dates = [SUBMITTED + timedelta(minutes=m) for m in (0, 1, 2, 0, 1, 61)]
    for a, b in zip(dates, reversed(dates), strict=True):
        kw: dict[str, Any] = {
            "message_id": "9",
            "state": MessageState.DELIVERED,
            "error": 0,
            "submitted_at": a,
            "done_at": b,
            "source": (0, 0, "1"),
            "destination": (0, 0, "2"),
            "preview": "x",
        }
        assert receipt_deliver_sm(**kw) == reference_receipt(**kw)


def test_receipt_sm_refuses_a_naive_date() -> None:
    with pytest.raises(Exception, match="aware"):
        receipt_sm("1", 2, 0, datetime(2026, 1, 1), DONE, 0, 0, "1", 0, 0, "2", "", False)


# --- timers -------------------------------------------------------------------------------


class FakeLoop:
    """time() that a test moves; call_at() that records the one timer."""

    def __init__(self) -> None:
        self.now = 100.0
        self.timers: list[tuple[float, Callable[[], None], bool]] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> Any:
        loop = self

        class Handle:
            def cancel(self) -> None:
                loop.timers = [t for t in loop.timers if t[1] is not callback or t[0] != when]

        self.timers.append((when, callback, True))
        return Handle()

    def fire(self) -> None:
        """Run the armed timers that are due, as the loop would."""
        due = [t for t in self.timers if t[0] <= self.now]
        self.timers = [t for t in self.timers if t[0] > self.now]
        for _, callback, _ in due:
            callback()


def test_timers_run_in_time_then_schedule_order() -> None:
    loop = FakeLoop()
    q = TimerQueue(loop)  # type: ignore[arg-type]
    ran: list[str] = []
    q.call_at(100.5, ran.append, "late")
    q.call_at(100.0, ran.append, "due-1")
    q.call_later(0.0, ran.append, "due-2")
    q.call_at(99.0, ran.append, "overdue")  # earlier than those queued before it
    q.call_at(100.2, ran.append, "soon")
    assert len(q) == 5
    loop.fire()
    assert ran == ["overdue", "due-1", "due-2"]
    loop.now = 100.3
    q.call_later(0, ran.append, "now")
    loop.fire()
    assert ran == ["overdue", "due-1", "due-2", "soon", "now"]
    loop.now = 101.0
    loop.fire()
    assert ran[-1] == "late"
    assert len(q) == 0


def test_timers_callback_scheduling_more_runs_it_in_order() -> None:
    loop = FakeLoop()
    q = TimerQueue(loop)  # type: ignore[arg-type]
    ran: list[int] = []

    def chain(n: int) -> None:
        ran.append(n)
        if n < 3:
            q.call_later(0, chain, n + 1)

    q.call_later(0, chain, 0)
    q.call_later(0, ran.append, 10)
    loop.fire()
    assert ran == [0, 10, 1, 2, 3]


def test_timers_close_drops_everything() -> None:
    loop = FakeLoop()
    q = TimerQueue(loop)  # type: ignore[arg-type]
    ran: list[int] = []
    q.call_later(0, ran.append, 1)
    q.call_later(5, ran.append, 2)
    q.close()
    q.call_later(0, ran.append, 3)
    loop.now = 200
    loop.fire()
    assert ran == []
    assert len(q) == 0


# --- message table ------------------------------------------------------------------------


def test_table_forgets_the_oldest_and_counts_pending() -> None:
    table = MessageTable(3)
    for i in range(5):
        table.add(SimMessage(str(i), "acct", SUBMITTED))
    assert [table.get(str(i)) is not None for i in range(5)] == [False, False, True, True, True]
    assert table.pending == 3
    assert table.pending_by == {"acct": 3}
    done = table.settle("3", 0, DONE)
    assert done is not None
    assert done.state == MessageState.DELIVERED
    assert done.final_at == DONE
    assert table.get("3") == done
    assert table.pending == 2
    assert table.pending_by == {"acct": 2}
    assert table.settle("3", 0, DONE) is None  # final already
    assert table.settle("4", 1, DONE) is None  # another version
    assert table.settle("0", 0, DONE) is None  # forgotten
    for i in range(5, 8):
        table.add(SimMessage(str(i), "acct", SUBMITTED))
    assert len(table) == 3
    assert table.pending == 3


def test_table_settles_to_the_drawn_fate() -> None:
    table = MessageTable(10)
    table.add(SimMessage("x", "a", SUBMITTED, fate=MessageState.UNDELIVERABLE, fate_error=11))
    done = table.settle("x", 0, DONE)
    assert done is not None
    assert (done.state, done.error) == (MessageState.UNDELIVERABLE, 11)


def test_table_keeps_the_newest_when_full() -> None:
    table = MessageTable(50_000)
    for i in range(150_000):
        table.add(SimMessage(str(i), "a", SUBMITTED))
    assert len(table) == 50_000
    assert table.get("99999") is None
    assert table.get("100000") is not None
    assert table.get("149999") is not None
    assert table.pending == 50_000


# --- ids and decisions --------------------------------------------------------------------


@pytest.mark.parametrize("start", [1, 0xFFE, 0x1000, 0xFFFFF0, 2**36 - 3])
def test_hex_ids_are_the_plain_hex_numbers(start: int) -> None:
    ids = MessageIds("hex", random.Random(1))
    first = int(ids.next(), 16)
    seen = [ids.next() for _ in range(5000)]
    assert seen == [f"{n:X}" for n in range(first + 1, first + 5001)]
    ids._next = start  # where the OS randomness may start
    assert [ids.next() for _ in range(5000)] == [f"{n:X}" for n in range(start, start + 5000)]


def test_fixed_delay_decisions_follow_the_seed() -> None:
    """Fixed delays, no rules: each decision is the state drawn by one rng.random()."""
    prof = Profile(
        seed=7,
        submit_latency=Dist("fixed", ms=3),
        receipt_delay=Dist("fixed", ms=250, max=100),
        states={"DELIVRD": 0.5, "UNDELIV": 0.3, "EXPIRED": 0.2},
        errors={"UNDELIV": 1, "EXPIRED": 27, "DELIVRD": 5},
    )
    b = Behaviour(prof, random.Random(7))
    got = [b.decide("a", "b") for _ in range(2000)]
    rng = random.Random(7)
    expected = []
    for _ in range(2000):
        r = rng.random()
        word = "DELIVRD" if r < 0.5 else "UNDELIV" if r < 0.8 else "EXPIRED"
        state = state_from_word(word)
        error = {"UNDELIV": 1, "EXPIRED": 27}.get(word, 0)
        expected.append(Decision(CommandStatus.ESME_ROK, 0.003, state, error, 0.1))
    assert got == expected
    assert {d.state for d in got} == {
        MessageState.DELIVERED,
        MessageState.UNDELIVERABLE,
        MessageState.EXPIRED,
    }
