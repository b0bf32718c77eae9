"""Optional parameters (TLVs) of SMPP 3.4 §5.3: building, typing, encoding and decoding."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from profiles import examples

from smppcore.constants import CommandStatus
from smppcore.errors import LocalProtocolError, RemoteProtocolError
from smppcore.pdu import DeliverSm, EnquireLink, SubmitSm
from smppcore.tlv import (
    TLV_BY_NAME,
    TLV_SPECS,
    Tag,
    Tlv,
    TlvKind,
    decode_tlvs,
    encode_tlvs,
    find_tlv,
    tlv,
)

S = CommandStatus

# §5.3.2: the wire type and length of every 3.4 TLV, copied by hand from the spec tables.
# (tag, name, kind, min length, max length)
SPEC_TABLE = [
    (0x0005, "dest_addr_subunit", TlvKind.INT, 1, 1),
    (0x0006, "dest_network_type", TlvKind.INT, 1, 1),
    (0x0007, "dest_bearer_type", TlvKind.INT, 1, 1),
    (0x0008, "dest_telematics_id", TlvKind.INT, 2, 2),
    (0x000D, "source_addr_subunit", TlvKind.INT, 1, 1),
    (0x000E, "source_network_type", TlvKind.INT, 1, 1),
    (0x000F, "source_bearer_type", TlvKind.INT, 1, 1),
    (0x0010, "source_telematics_id", TlvKind.INT, 1, 1),
    (0x0017, "qos_time_to_live", TlvKind.INT, 4, 4),
    (0x0019, "payload_type", TlvKind.INT, 1, 1),
    (0x001D, "additional_status_info_text", TlvKind.CSTRING, 1, 256),
    (0x001E, "receipted_message_id", TlvKind.CSTRING, 1, 65),
    (0x0030, "ms_msg_wait_facilities", TlvKind.INT, 1, 1),
    (0x0201, "privacy_indicator", TlvKind.INT, 1, 1),
    (0x0202, "source_subaddress", TlvKind.OCTETS, 2, 23),
    (0x0203, "dest_subaddress", TlvKind.OCTETS, 2, 23),
    (0x0204, "user_message_reference", TlvKind.INT, 2, 2),
    (0x0205, "user_response_code", TlvKind.INT, 1, 1),
    (0x020A, "source_port", TlvKind.INT, 2, 2),
    (0x020B, "destination_port", TlvKind.INT, 2, 2),
    (0x020C, "sar_msg_ref_num", TlvKind.INT, 2, 2),
    (0x020D, "language_indicator", TlvKind.INT, 1, 1),
    (0x020E, "sar_total_segments", TlvKind.INT, 1, 1),
    (0x020F, "sar_segment_seqnum", TlvKind.INT, 1, 1),
    (0x0210, "sc_interface_version", TlvKind.INT, 1, 1),
    (0x0302, "callback_num_pres_ind", TlvKind.INT, 1, 1),
    (0x0303, "callback_num_atag", TlvKind.OCTETS, 0, 65),
    (0x0304, "number_of_messages", TlvKind.INT, 1, 1),
    (0x0381, "callback_num", TlvKind.OCTETS, 4, 19),
    (0x0420, "dpf_result", TlvKind.INT, 1, 1),
    (0x0421, "set_dpf", TlvKind.INT, 1, 1),
    (0x0422, "ms_availability_status", TlvKind.INT, 1, 1),
    (0x0423, "network_error_code", TlvKind.OCTETS, 3, 3),
    (0x0424, "message_payload", TlvKind.OCTETS, 0, 65535),
    (0x0425, "delivery_failure_reason", TlvKind.INT, 1, 1),
    (0x0426, "more_messages_to_send", TlvKind.INT, 1, 1),
    (0x0427, "message_state", TlvKind.INT, 1, 1),
    (0x0501, "ussd_service_op", TlvKind.INT, 1, 1),
    (0x1201, "display_time", TlvKind.INT, 1, 1),
    (0x1203, "sms_signal", TlvKind.INT, 2, 2),
    (0x1204, "ms_validity", TlvKind.INT, 1, 1),
    (0x130C, "alert_on_message_delivery", TlvKind.EMPTY, 0, 0),
    (0x1380, "its_reply_type", TlvKind.INT, 1, 1),
    (0x1383, "its_session_info", TlvKind.INT, 2, 2),
]


def test_the_tlv_table_is_the_one_of_section_5_3_2() -> None:
    """§5.3.2: every 3.4 tag, its name, its type and its length, and nothing else."""
    table = {
        tag: (spec.name, spec.kind, spec.min_len, spec.max_len) for tag, spec in TLV_SPECS.items()
    }
    assert table == {tag: (name, kind, lo, hi) for tag, name, kind, lo, hi in SPEC_TABLE}
    assert {int(t) for t in Tag} == set(TLV_SPECS)
    assert {name: tag for tag, name, *_ in SPEC_TABLE} == TLV_BY_NAME


# --- building from typed values -------------------------------------------------------------


@pytest.mark.parametrize(
    ("tag", "value", "raw"),
    [
        (Tag.SAR_TOTAL_SEGMENTS, 3, b"\x03"),
        (Tag.SAR_MSG_REF_NUM, 0x1234, b"\x12\x34"),
        (Tag.SOURCE_PORT, 0, b"\x00\x00"),
        (Tag.QOS_TIME_TO_LIVE, 86400, b"\x00\x01\x51\x80"),
        (Tag.QOS_TIME_TO_LIVE, 0xFFFFFFFF, b"\xff\xff\xff\xff"),
    ],
)
def test_an_integer_tlv_is_big_endian_in_exactly_its_size(tag: int, value: int, raw: bytes) -> None:
    """§3.1: integers are unsigned, most significant octet first, in the TLV's fixed size."""
    item = tlv(tag, value)
    assert item == Tlv(tag, raw)
    assert item.typed() == value


@pytest.mark.parametrize(
    ("tag", "value"),
    [(Tag.SAR_TOTAL_SEGMENTS, 256), (Tag.SAR_MSG_REF_NUM, 0x10000), (Tag.MESSAGE_STATE, -1)],
)
def test_an_integer_that_does_not_fit_is_rinvoptparamval(tag: int, value: int) -> None:
    with pytest.raises(LocalProtocolError) as info:
        tlv(tag, value)
    assert info.value.status == S.ESME_RINVOPTPARAMVAL


def test_a_c_octet_string_tlv_carries_its_null_and_reads_back_without_it() -> None:
    """§5.3.2.12: receipted_message_id is a C-octet string; the length counts the NULL."""
    item = tlv(Tag.RECEIPTED_MESSAGE_ID, "5f3c9a1e")
    assert item.value == b"5f3c9a1e\x00"
    assert item.typed() == "5f3c9a1e"
    assert item.name == "receipted_message_id"


def test_a_c_octet_string_without_its_null_still_reads() -> None:
    """NOTES (lenient parsing): many MCs omit the NULL of receipted_message_id."""
    assert Tlv(Tag.RECEIPTED_MESSAGE_ID, b"ABC123").typed() == "ABC123"


def test_a_c_octet_string_keeps_every_latin1_octet() -> None:
    item = tlv(Tag.ADDITIONAL_STATUS_INFO_TEXT, "café ÿ")
    assert item.value == b"caf\xe9 \xff\x00"
    assert item.typed() == "café ÿ"


def test_receipted_message_id_of_65_characters_is_too_long() -> None:
    """§5.3.2.12: at most 65 octets including the NULL, so 64 characters."""
    assert len(tlv(Tag.RECEIPTED_MESSAGE_ID, "x" * 64).value) == 65
    with pytest.raises(LocalProtocolError) as info:
        tlv(Tag.RECEIPTED_MESSAGE_ID, "x" * 65)
    assert info.value.status == S.ESME_RINVPARLEN


def test_an_octet_string_tlv_is_checked_against_its_bounds() -> None:
    """§5.3.2.31: network_error_code is exactly 3 octets (type + 2-octet error code)."""
    assert tlv(Tag.NETWORK_ERROR_CODE, b"\x03\x00\x0b").typed() == b"\x03\x00\x0b"
    for bad in (b"\x03\x00", b"\x03\x00\x0b\x00"):
        with pytest.raises(LocalProtocolError) as info:
            tlv(Tag.NETWORK_ERROR_CODE, bad)
        assert info.value.status == S.ESME_RINVPARLEN
    with pytest.raises(LocalProtocolError) as info:
        tlv(Tag.CALLBACK_NUM, b"123")  # §5.3.2.36: at least 4 octets
    assert info.value.status == S.ESME_RINVPARLEN


def test_message_payload_takes_up_to_65535_octets() -> None:
    """§5.3.2.32: message_payload is 0..64K octets, beyond short_message's 254."""
    assert len(tlv(Tag.MESSAGE_PAYLOAD, b"x" * 65535).value) == 65535
    with pytest.raises(LocalProtocolError) as info:
        tlv(Tag.MESSAGE_PAYLOAD, b"x" * 65536)
    assert info.value.status == S.ESME_RINVPARLEN


def test_alert_on_message_delivery_has_no_value() -> None:
    """§5.3.2.41: presence alone is the meaning; length 0."""
    item = tlv(Tag.ALERT_ON_MESSAGE_DELIVERY, True)
    assert item == Tlv(0x130C, b"")
    assert item.typed() is True
    assert encode_tlvs((item,)) == b"\x13\x0c\x00\x00"


@pytest.mark.parametrize(
    ("tag", "value"),
    [
        (Tag.MESSAGE_STATE, "2"),
        (Tag.MESSAGE_STATE, True),
        (Tag.RECEIPTED_MESSAGE_ID, b"id"),
        (Tag.MESSAGE_PAYLOAD, "text"),
        (0x1400, 5),
        (0x1400, "vendor"),
    ],
)
def test_tlv_refuses_a_value_of_the_wrong_type(tag: int, value: object) -> None:
    with pytest.raises(LocalProtocolError):
        tlv(tag, value)  # type: ignore[arg-type]


def test_an_unknown_tag_is_raw_octets_with_a_hex_name() -> None:
    item = tlv(0x1403, b"(null)\x00")
    assert item.typed() == b"(null)\x00"
    assert item.name == "0x1403"


# --- decoding a TLV stream --------------------------------------------------------------------


def test_decode_tlvs_reads_several_in_order() -> None:
    body = bytes.fromhex(
        "ffff"  # junk before the window
        "001e 0009 3566336339613165 00"  # receipted_message_id
        "0427 0001 02"  # message_state
        "0423 0003 03000b"  # network_error_code
        "eeee"  # junk after the window
    )
    items = decode_tlvs(body, 2, len(body) - 2)
    assert items == (
        Tlv(Tag.RECEIPTED_MESSAGE_ID, b"5f3c9a1e\x00"),
        Tlv(Tag.MESSAGE_STATE, b"\x02"),
        Tlv(Tag.NETWORK_ERROR_CODE, b"\x03\x00\x0b"),
    )
    assert [i.typed() for i in items] == ["5f3c9a1e", 2, b"\x03\x00\x0b"]


def test_decode_tlvs_of_an_empty_window_is_empty() -> None:
    assert decode_tlvs(b"\x04\x27\x00\x01\x02", 5, 5) == ()


@pytest.mark.parametrize("stream", [b"\x04", b"\x04\x27", b"\x04\x27\x00"])
def test_a_truncated_tlv_header_is_rinvoptparstream(stream: bytes) -> None:
    """§3.2.4: a TLV header is 4 octets; fewer at the end of the PDU is a broken stream."""
    with pytest.raises(RemoteProtocolError) as info:
        decode_tlvs(b"\x04\x27\x00\x01\x02" + stream, 0, 5 + len(stream))
    assert info.value.status == S.ESME_RINVOPTPARSTREAM


@pytest.mark.parametrize(
    "stream", [b"\x04\x24\x00\x05abcd", b"\x14\x00\x00\x01", b"\x00\x1e\xff\xff"]
)
def test_a_value_running_past_the_pdu_is_rinvoptparstream(stream: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_tlvs(stream, 0, len(stream))
    assert info.value.status == S.ESME_RINVOPTPARSTREAM


def test_the_window_end_bounds_the_stream_not_the_buffer() -> None:
    """A TLV must end within command_length even if more octets follow in the buffer."""
    data = b"\x04\x27\x00\x01\x02"
    with pytest.raises(RemoteProtocolError) as info:
        decode_tlvs(data, 0, 4)
    assert info.value.status == S.ESME_RINVOPTPARSTREAM


@pytest.mark.parametrize(
    "stream",
    [
        b"\x04\x27\x00\x00",  # message_state, 0 octets
        b"\x02\x0c\x00\x01\x07",  # sar_msg_ref_num, 1 octet
        b"\x00\x17\x00\x02\x00\x01",  # qos_time_to_live, 2 octets
        b"\x04\x23\x00\x02\x03\x00",  # network_error_code, 2 octets
        b"\x00\x1e\x00\x00",  # receipted_message_id, 0 octets
        b"\x13\x0c\x00\x01\x01",  # alert_on_message_delivery, 1 octet
    ],
)
def test_a_known_tlv_with_the_wrong_length_is_rinvparlen(stream: bytes) -> None:
    """§5.3.2 / §5.1.3: ESME_RINVPARLEN, 'Invalid Parameter Length'."""
    with pytest.raises(RemoteProtocolError) as info:
        decode_tlvs(stream, 0, len(stream))
    assert info.value.status == S.ESME_RINVPARLEN


def test_an_unknown_tlv_of_any_length_is_kept() -> None:
    """§3.2.4: an unknown optional parameter is ignored, not refused; we keep it raw."""
    stream = b"\x14\x03\x00\x00" + b"\x3f\xff\x00\x03abc"
    assert decode_tlvs(stream, 0, len(stream)) == (Tlv(0x1403, b""), Tlv(0x3FFF, b"abc"))


# --- encoding ---------------------------------------------------------------------------------


def test_encode_tlvs_writes_tag_length_value_in_order() -> None:
    items = (tlv(Tag.SAR_MSG_REF_NUM, 0x2A), tlv(Tag.SAR_TOTAL_SEGMENTS, 3), Tlv(0x1500, b"\x01"))
    assert encode_tlvs(items) == bytes.fromhex("020c 0002 002a  020e 0001 03  1500 0001 01")
    assert encode_tlvs(()) == b""


def test_encode_tlvs_refuses_a_known_tag_with_the_wrong_length() -> None:
    with pytest.raises(LocalProtocolError) as info:
        encode_tlvs((Tlv(Tag.SC_INTERFACE_VERSION, b"\x00\x34"),))
    assert info.value.status == S.ESME_RINVPARLEN


def test_encode_tlvs_refuses_a_value_over_the_16_bit_length() -> None:
    with pytest.raises(LocalProtocolError) as info:
        encode_tlvs((Tlv(0x1400, bytes(65536)),))
    assert info.value.status == S.ESME_RINVPARLEN


@settings(max_examples=examples(150))
@given(
    st.lists(
        st.tuples(
            st.integers(0, 0xFFFF).filter(lambda t: t not in TLV_SPECS), st.binary(max_size=300)
        ),
        max_size=8,
    )
)
def test_any_unknown_tlvs_round_trip_byte_exact(pairs: list[tuple[int, bytes]]) -> None:
    items = tuple(Tlv(tag, value) for tag, value in pairs)
    raw = encode_tlvs(items)
    assert len(raw) == sum(4 + len(v) for _, v in pairs)
    assert decode_tlvs(raw, 0, len(raw)) == items
    assert encode_tlvs(decode_tlvs(raw, 0, len(raw))) == raw


@settings(max_examples=examples(100))
@given(st.binary(max_size=60))
def test_decode_tlvs_of_random_octets_raises_only_remote_protocol_error(raw: bytes) -> None:
    try:
        items = decode_tlvs(raw, 0, len(raw))
    except RemoteProtocolError as exc:
        status = exc.status
    else:
        status = S.ESME_ROK
        assert encode_tlvs(items) == raw
    assert status in (S.ESME_ROK, S.ESME_RINVOPTPARSTREAM, S.ESME_RINVPARLEN)


# --- access from a PDU ------------------------------------------------------------------------


def test_find_tlv_returns_the_first_with_the_tag() -> None:
    first, second = Tlv(0x1400, b"a"), Tlv(0x1400, b"b")
    items = (tlv(Tag.MESSAGE_STATE, 2), first, second)
    assert find_tlv(items, 0x1400) is first
    assert find_tlv(items, Tag.RECEIPTED_MESSAGE_ID) is None


def test_pdu_tlv_gives_the_typed_value_or_none() -> None:
    pdu = DeliverSm(
        esm_class=0x04,
        tlvs=(
            tlv(Tag.RECEIPTED_MESSAGE_ID, "5f3c9a1e"),
            tlv(Tag.MESSAGE_STATE, 2),
            tlv(Tag.NETWORK_ERROR_CODE, b"\x03\x00\x0b"),
        ),
    )
    assert pdu.tlv(Tag.RECEIPTED_MESSAGE_ID) == "5f3c9a1e"
    assert pdu.tlv(Tag.MESSAGE_STATE) == 2
    assert pdu.tlv(Tag.NETWORK_ERROR_CODE) == b"\x03\x00\x0b"
    assert pdu.tlv(Tag.SAR_MSG_REF_NUM) is None
    assert SubmitSm().tlv(Tag.MESSAGE_PAYLOAD) is None
    assert EnquireLink().tlv(Tag.MESSAGE_STATE) is None  # a PDU without TLVs at all
