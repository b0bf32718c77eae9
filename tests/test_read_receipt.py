"""How a receipt deliver_sm is read (its TLVs, else its text; the router reads every
carrier's receipt this way): the one pass over the TLVs and the ``err:`` shortcut read
exactly what the general readers read (``Pdu.tlv`` for the first TLV of a tag,
``_ERR.search`` over the whole text)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smppcore.constants import EsmClass, MessageState
from smppcore.pdu import DeliverSm
from smppcore.receipt_pdu import _ERR, _text_error, read_receipt
from smppcore.tlv import Tag, Tlv


def slow_error(text: bytes) -> int:
    m = _ERR.search(text)
    return int(m[1]) if m else 0


@pytest.mark.parametrize(
    "text",
    [
        b"",
        b"id:1 sub:001 dlvrd:001 submit date:2601010000 done date:2601010000 stat:DELIVRD "
        b"err:000 text:hi",
        b"id:1 stat:UNDELIV err:042 text:err:7",
        b"id:1 stat:UNDELIV ERR:  123",
        b"id:1 xerr:5 Err:6",
        b"id:1 err:x err:9",
        b"id:1 err:1234567890123",
        b"err:5",
        b"errr:5 err:",
        b"id:err:4",
        b"id:1 \xe9rr:3 err:2",
    ],
)
def test_err_shortcut_reads_what_the_regex_reads(text: bytes) -> None:
    assert _text_error(text) == slow_error(text)


@given(
    st.lists(
        st.sampled_from(
            [b"err:", b"ERR:", b"eRr:", b"x", b" ", b"\t", b"0", b"42", b":", b"e", b"_"]
        ),
        max_size=12,
    )
)
def test_err_shortcut_matches_the_regex_on_any_text(parts: list[bytes]) -> None:
    text = b"".join(parts)
    assert _text_error(text) == slow_error(text)


def expected_read(pdu: DeliverSm) -> tuple[str, MessageState, int] | None:
    """What the TLV readers say, through Pdu.tlv (the general path)."""
    rid = pdu.tlv(Tag.RECEIPTED_MESSAGE_ID)
    state = pdu.tlv(Tag.MESSAGE_STATE)
    nec = pdu.tlv(Tag.NETWORK_ERROR_CODE)
    if not isinstance(rid, str) or not rid or not isinstance(state, int):
        return None
    if state not in {int(s) for s in MessageState}:
        return None
    error = (
        int.from_bytes(nec[1:], "big")
        if isinstance(nec, bytes) and len(nec) == 3
        else slow_error(pdu.short_message)
    )
    return rid, MessageState(state), error


@pytest.mark.parametrize(
    "tlvs",
    [
        (Tlv(Tag.RECEIPTED_MESSAGE_ID, b"abc\0"), Tlv(Tag.MESSAGE_STATE, b"\x02")),
        (Tlv(Tag.MESSAGE_STATE, b"\x05"), Tlv(Tag.RECEIPTED_MESSAGE_ID, b"abc")),
        (
            Tlv(Tag.RECEIPTED_MESSAGE_ID, b"first\0"),
            Tlv(Tag.RECEIPTED_MESSAGE_ID, b"second\0"),
            Tlv(Tag.MESSAGE_STATE, b"\x08"),
            Tlv(Tag.MESSAGE_STATE, b"\x02"),
            Tlv(Tag.NETWORK_ERROR_CODE, b"\x03\x00\x2a"),
            Tlv(Tag.NETWORK_ERROR_CODE, b"\x03\x00\x01"),
        ),
        (
            Tlv(0x1400, b"vendor"),
            Tlv(Tag.RECEIPTED_MESSAGE_ID, b"\xe9t\xe9\0junk"),
            Tlv(Tag.MESSAGE_STATE, b"\x03"),
            Tlv(Tag.NETWORK_ERROR_CODE, b"\x01\x00"),  # not 3 octets: err: from the text
        ),
    ],
)
def test_receipt_tlvs_are_read_as_pdu_tlv_reads_them(tlvs: tuple[Tlv, ...]) -> None:
    pdu = DeliverSm(
        esm_class=int(EsmClass.DELIVERY_RECEIPT),
        short_message=b"id:zzz stat:UNDELIV err:017",
        tlvs=tlvs,
    )
    expected = expected_read(pdu)
    assert expected is not None
    assert read_receipt(pdu) == expected


def test_unknown_state_value_falls_back_to_the_text() -> None:
    pdu = DeliverSm(
        esm_class=int(EsmClass.DELIVERY_RECEIPT),
        short_message=b"id:zzz sub:001 dlvrd:000 submit date:2601010000 done date:2601010000 "
        b"stat:UNDELIV err:017 text:",
        tlvs=(Tlv(Tag.RECEIPTED_MESSAGE_ID, b"abc\0"), Tlv(Tag.MESSAGE_STATE, b"\x63")),
    )
    assert read_receipt(pdu) == ("abc", MessageState.UNDELIVERABLE, 17)
