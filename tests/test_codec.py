"""The PDU codec against SMPP 3.4: round trips, golden bytes, framing and malformed input.

Section numbers are those of the SMPP Protocol Specification v3.4, Issue 1.2. The golden
bytes below are written by hand from the PDU layouts of §4, field by field, never produced
by ``encode``.
"""

from __future__ import annotations

import itertools
import struct

import msgspec
import pdu_samples as s
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from profiles import examples

from smppcore.codec import DEFAULT_MAX_PDU_LENGTH, FrameBuffer, decode, encode
from smppcore.constants import RESPONSE_BIT, CommandId, CommandStatus
from smppcore.errors import LocalProtocolError, RemoteProtocolError
from smppcore.pdu import (
    LAYOUTS,
    PDU_CLASSES,
    AlertNotification,
    BindTransceiver,
    BindTransceiverResp,
    BindTransmitter,
    DataSm,
    DataSmResp,
    DeliverSm,
    DistributionList,
    EnquireLink,
    GenericNack,
    Outbind,
    Pdu,
    QuerySmResp,
    ReplaceSm,
    SmeAddress,
    SubmitMulti,
    SubmitMultiResp,
    SubmitSm,
    SubmitSmResp,
    Unbind,
    UnsuccessSme,
    error_response,
)
from smppcore.tlv import TLV_SPECS, Tag, Tlv, TlvKind, tlv

S = CommandStatus
replace = msgspec.structs.replace

# --- golden bytes, by hand from §4 --------------------------------------------------------
# Header (§3.2): command_length, command_id, command_status, sequence_number.
# C-octet strings are shown as their ASCII hex followed by the 00 terminator.

GOLDEN: dict[str, tuple[Pdu, bytes]] = {
    # §4.1.1 bind_transmitter: 16 + 12 + 9 + 4 + 3 + 4 = 48
    "bind_transmitter": (
        s.BIND_TRANSMITTER,
        bytes.fromhex(
            "00000030 00000002 00000000 00000001"
            "736d7070636c69656e7431 00"  # system_id "smppclient1"
            "7077313233343536 00"  # password "pw123456"
            "564d41 00"  # system_type "VMA"
            "34"  # interface_version 3.4
            "01 01"  # addr_ton international, addr_npi ISDN
            "34342a 00"  # address_range "44*"
        ),
    ),
    # §4.1.3 bind_receiver: 16 + 7 + 7 + 1 + 3 + 1 = 35
    "bind_receiver": (
        s.BIND_RECEIVER,
        bytes.fromhex(
            "00000023 00000001 00000000 00000002"
            "6b616e6e656c 00"  # system_id "kannel"
            "736563726574 00"  # password "secret"
            "00"  # system_type ""
            "34 00 00"  # interface_version, addr_ton, addr_npi
            "00"  # address_range ""
        ),
    ),
    # §4.1.5 bind_transceiver: 16 + 7 + 7 + 5 + 3 + 6 = 44
    "bind_transceiver": (
        s.BIND_TRANSCEIVER,
        bytes.fromhex(
            "0000002c 00000009 00000000 00000003"
            "65736d653031 00"  # system_id "esme01"
            "733363726574 00"  # password "s3cret"
            "534d5050 00"  # system_type "SMPP"
            "34 01 01"
            "5e34343739 00"  # address_range "^4479"
        ),
    ),
    # §4.1.2 bind_transmitter_resp + §5.3.2.25 sc_interface_version: 16 + 5 + 5 = 26
    "bind_transmitter_resp": (
        s.BIND_TRANSMITTER_RESP,
        bytes.fromhex(
            "0000001a 80000002 00000000 00000001"
            "534d5343 00"  # system_id "SMSC"
            "0210 0001 34"  # TLV sc_interface_version = 0x34
        ),
    ),
    "bind_receiver_resp": (
        s.BIND_RECEIVER_RESP,
        bytes.fromhex("0000001a 80000001 00000000 00000002 534d5343 00 0210 0001 34"),
    ),
    # 16 + 9 + 5 = 30
    "bind_transceiver_resp": (
        s.BIND_TRANSCEIVER_RESP,
        bytes.fromhex(
            "0000001e 80000009 00000000 00000003"
            "736d73632d73696d 00"  # system_id "smsc-sim"
            "0210 0001 34"
        ),
    ),
    # §4.1.7 outbind: 16 + 9 + 6 = 31
    "outbind": (
        s.OUTBIND,
        bytes.fromhex(
            "0000001f 0000000b 00000000 00000004"
            "6361727269657231 00"  # system_id "carrier1"
            "6f75747077 00"  # password "outpw"
        ),
    ),
    # §4.2 unbind / unbind_resp, §4.11 enquire_link / _resp, §4.3 generic_nack: header only
    "unbind": (s.UNBIND, bytes.fromhex("00000010 00000006 00000000 00000005")),
    "unbind_resp": (s.UNBIND_RESP, bytes.fromhex("00000010 80000006 00000000 00000005")),
    "enquire_link": (s.ENQUIRE_LINK, bytes.fromhex("00000010 00000015 00000000 00000006")),
    "enquire_link_resp": (
        s.ENQUIRE_LINK_RESP,
        bytes.fromhex("00000010 80000015 00000000 00000006"),
    ),
    "generic_nack": (s.GENERIC_NACK, bytes.fromhex("00000010 80000000 00000003 00000009")),
    # §4.4.1 submit_sm, UDH part 1/2: 16 + 1+2+8+2+13+3+1+17+4+1+11 + 6 = 85
    "submit_sm": (
        s.SUBMIT_SM,
        bytes.fromhex(
            "00000055 00000004 00000000 00000007"
            "00"  # service_type ""
            "05 00"  # source_addr_ton alphanumeric, source_addr_npi unknown
            "4d794272616e64 00"  # source_addr "MyBrand"
            "01 01"  # dest_addr_ton, dest_addr_npi
            "343437373030393030313233 00"  # destination_addr "447700900123"
            "40"  # esm_class: UDHI
            "00"  # protocol_id
            "01"  # priority_flag
            "00"  # schedule_delivery_time ""
            "30303030303130303030303030303052 00"  # validity_period "000001000000000R"
            "01"  # registered_delivery: final receipt
            "00"  # replace_if_present_flag
            "00"  # data_coding
            "00"  # sm_default_msg_id
            "0b"  # sm_length 11
            "05 00 03 2a 02 01"  # UDH: IEI 00, ref 0x2A, 2 parts, part 1
            "48656c6c6f"  # "Hello"
            "0204 0002 1234"  # TLV user_message_reference = 0x1234
        ),
    ),
    # §4.4.2 submit_sm_resp: 16 + 9 = 25
    "submit_sm_resp": (
        s.SUBMIT_SM_RESP,
        bytes.fromhex("00000019 80000004 00000000 00000007 3566336339613165 00"),
    ),
    # §4.4.2: "the submit_sm_resp PDU Body is not returned" when command_status is non-zero
    "submit_sm_resp_error": (
        s.SUBMIT_SM_RESP_ERROR,
        bytes.fromhex("00000010 80000004 00000045 00000008"),
    ),
    # §4.6.1 deliver_sm carrying a receipt (Appendix B) with receipted_message_id (§5.3.2.12)
    # and message_state (§5.3.2.35): 16 + 1+2+13+2+8+3+1+1+4+1+105 + 13 + 5 = 175
    "deliver_sm_receipt": (
        s.DELIVER_SM_RECEIPT,
        bytes.fromhex(
            "000000af 00000005 00000000 0000000a"
            "00"  # service_type
            "01 01 343437373030393030313233 00"  # source "447700900123"
            "05 00 4d794272616e64 00"  # destination "MyBrand"
            "04"  # esm_class: MC delivery receipt
            "00 00"  # protocol_id, priority_flag
            "00 00"  # schedule_delivery_time, validity_period: both empty
            "00 00 00 00"  # registered_delivery, replace_if_present, data_coding, default id
            "69"  # sm_length 105
            "69643a3566336339613165"  # "id:5f3c9a1e"
            "20 7375623a303031"  # " sub:001"
            "20 646c7672643a303031"  # " dlvrd:001"
            "20 7375626d697420646174653a32343033303131323030"  # " submit date:2403011200"
            "20 646f6e6520646174653a32343033303131323031"  # " done date:2403011201"
            "20 737461743a44454c49565244"  # " stat:DELIVRD"
            "20 6572723a303030"  # " err:000"
            "20 746578743a48656c6c6f"  # " text:Hello"
            "001e 0009 3566336339613165 00"  # TLV receipted_message_id "5f3c9a1e"
            "0427 0001 02"  # TLV message_state DELIVERED
        ),
    ),
    # §4.6.2 deliver_sm_resp: message_id is unused and set to NULL: 16 + 1 = 17
    "deliver_sm_resp": (s.DELIVER_SM_RESP, bytes.fromhex("00000011 80000005 00000000 0000000a 00")),
    # §4.7.1 data_sm: 16 + 4+2+13+2+13+3 + 6+6+11 = 76
    "data_sm": (
        s.DATA_SM,
        bytes.fromhex(
            "0000004c 00000103 00000000 0000000b"
            "574150 00"  # service_type "WAP"
            "01 01 343437373030393030313233 00"  # source
            "01 01 343437373030393030343536 00"  # destination "447700900456"
            "00 01 04"  # esm_class, registered_delivery, data_coding
            "020a 0002 23f0"  # TLV source_port 9200
            "020b 0002 0b84"  # TLV destination_port 2948
            "0424 0007 01060403ae81ea"  # TLV message_payload
        ),
    ),
    # §4.7.2 data_sm_resp: 16 + 8 = 24
    "data_sm_resp": (
        s.DATA_SM_RESP,
        bytes.fromhex("00000018 80000103 00000000 0000000b 64732d30303432 00"),
    ),
    # §4.5.1 submit_multi: 16 + 1+2+7 + 1+16+16+7 + 3+2+4+1+14 = 90
    "submit_multi": (
        s.SUBMIT_MULTI,
        bytes.fromhex(
            "0000005a 00000021 00000000 0000000c"
            "00"  # service_type
            "05 00 416c65727473 00"  # source "Alerts"
            "03"  # number_of_dests
            "01 01 01 343437373030393030303031 00"  # dest_flag 1: SME 447700900001
            "01 01 01 343437373030393030303032 00"  # dest_flag 1: SME 447700900002
            "02 7374616666 00"  # dest_flag 2: distribution list "staff"
            "00 00 00"  # esm_class, protocol_id, priority_flag
            "00 00"  # schedule_delivery_time, validity_period
            "01 00 00 00"  # registered_delivery, replace_if_present, data_coding, default id
            "0e 4d656574696e672061742033706d"  # sm_length 14, "Meeting at 3pm"
        ),
    ),
    # §4.5.2 submit_multi_resp: 16 + 5 + 1 + 2+13+4 = 41
    "submit_multi_resp": (
        s.SUBMIT_MULTI_RESP,
        bytes.fromhex(
            "00000029 80000021 00000000 0000000c"
            "6d6d2d37 00"  # message_id "mm-7"
            "01"  # no_unsuccess
            "01 01 343437373030393030303032 00"  # unsuccess_sme address
            "0000000b"  # error_status_code ESME_RINVDSTADR
        ),
    ),
    # §4.8.1 query_sm: 16 + 9 + 2 + 13 = 40
    "query_sm": (
        s.QUERY_SM,
        bytes.fromhex(
            "00000028 00000003 00000000 0000000d"
            "3566336339613165 00"
            "01 01 343437373030393030313233 00"
        ),
    ),
    # §4.8.2 query_sm_resp: 16 + 9 + 17 + 1 + 1 = 44
    "query_sm_resp": (
        s.QUERY_SM_RESP,
        bytes.fromhex(
            "0000002c 80000003 00000000 0000000d"
            "3566336339613165 00"  # message_id
            "323430333031313230313035303030 2b 00"  # final_date "240301120105000+"
            "02"  # message_state DELIVERED
            "00"  # error_code
        ),
    ),
    # §4.9.1 cancel_sm: 16 + 1 + 9 + 15 + 15 = 56
    "cancel_sm": (
        s.CANCEL_SM,
        bytes.fromhex(
            "00000038 00000008 00000000 0000000e"
            "00"  # service_type
            "3566336339613165 00"  # message_id
            "01 01 343437373030393030313233 00"  # source
            "01 01 343437373030393030343536 00"  # destination
        ),
    ),
    "cancel_sm_resp": (s.CANCEL_SM_RESP, bytes.fromhex("00000010 80000008 00000000 0000000e")),
    # §4.10.1 replace_sm: 16 + 9 + 15 + 1 + 17 + 1 + 1 + 1 + 12 = 73
    "replace_sm": (
        s.REPLACE_SM,
        bytes.fromhex(
            "00000049 00000007 00000000 0000000f"
            "3566336339613165 00"  # message_id
            "01 01 343437373030393030313233 00"  # source
            "00"  # schedule_delivery_time
            "323430333032313230303030303030 2b 00"  # validity_period "240302120000000+"
            "01"  # registered_delivery
            "00"  # sm_default_msg_id
            "0c 557064617465642074657874"  # sm_length 12, "Updated text"
        ),
    ),
    "replace_sm_resp": (s.REPLACE_SM_RESP, bytes.fromhex("00000010 80000007 00000000 0000000f")),
    # §4.12.1 alert_notification + ms_availability_status (§5.3.2.30): 16 + 15 + 15 + 5 = 51
    "alert_notification": (
        s.ALERT_NOTIFICATION,
        bytes.fromhex(
            "00000033 00000102 00000000 00000010"
            "01 01 343437373030393030313233 00"  # source
            "01 01 343437373030393030393939 00"  # esme_addr "447700900999"
            "0422 0001 00"  # TLV ms_availability_status: available
        ),
    ),
}


def header(length: int, command_id: int, status: int = 0, seq: int = 0) -> bytes:
    return struct.pack(">IIII", length, command_id, status, seq)


def frame(command_id: int, body: bytes = b"", *, seq: int = 0x01020304, status: int = 0) -> bytes:
    """A PDU with a correct command_length around a hand-built body."""
    return header(16 + len(body), command_id, status, seq) + body


def refused(data: bytes) -> RemoteProtocolError:
    """Decode ``data`` expecting a refusal that names the PDU it came from (§3.3)."""
    with pytest.raises(RemoteProtocolError) as info:
        decode(data)
    exc = info.value
    _, command_id, _, seq = struct.unpack_from(">IIII", data)
    assert exc.command_id == command_id
    assert exc.sequence_number == seq
    return exc


def refused_locally(pdu: Pdu) -> LocalProtocolError:
    with pytest.raises(LocalProtocolError) as info:
        encode(pdu)
    return info.value


# --- 1. round trip of every PDU type ------------------------------------------------------


def test_the_samples_and_the_golden_bytes_cover_every_pdu_type() -> None:
    """Every command_id of §5.1.2.1 has a sample and a hand-written golden frame."""
    assert {type(p) for p in s.SAMPLES.values()} == set(PDU_CLASSES.values())
    assert {type(p) for p, _ in GOLDEN.values()} == set(PDU_CLASSES.values())
    assert set(PDU_CLASSES) == set(CommandId)


@pytest.mark.parametrize("pdu", s.SAMPLES.values(), ids=s.SAMPLES.keys())
def test_every_pdu_type_round_trips(pdu: Pdu) -> None:
    """§4: decode(encode(pdu)) is the same PDU, with its header fields (§3.2) on the wire."""
    data = encode(pdu)
    length, command_id, status, seq = struct.unpack_from(">IIII", data)
    assert length == len(data)
    assert command_id == type(pdu).command_id
    assert (status, seq) == (pdu.command_status, pdu.sequence_number)
    assert decode(data) == pdu


def test_submit_multi_round_trips_sme_addresses_and_a_distribution_list() -> None:
    """§4.5.1.1: dest_flag 1 carries ton/npi/address, dest_flag 2 a dl_name; order is kept."""
    back = decode(encode(s.SUBMIT_MULTI))
    assert isinstance(back, SubmitMulti)
    assert back.dest_addresses == (
        SmeAddress(1, 1, "447700900001"),
        SmeAddress(1, 1, "447700900002"),
        DistributionList("staff"),
    )


def test_submit_multi_resp_round_trips_several_unsuccess_smes() -> None:
    """§4.5.2: no_unsuccess followed by that many unsuccess_sme entries."""
    pdu = SubmitMultiResp(
        sequence_number=99,
        message_id="mm-8",
        unsuccess_smes=(
            UnsuccessSme(1, 1, "447700900002", S.ESME_RINVDSTADR),
            UnsuccessSme(2, 8, "07700900003", S.ESME_RX_P_APPN),
            UnsuccessSme(0, 0, "", 0xFFFFFFFF),
        ),
    )
    assert decode(encode(pdu)) == pdu


def test_every_request_has_the_response_id_with_bit_31_set() -> None:
    """§3.2 / §5.1.2.1: a response's command_id is the request's with 0x80000000 set."""
    for command_id, cls in PDU_CLASSES.items():
        if command_id & RESPONSE_BIT or cls in (Outbind, AlertNotification):
            continue
        assert cls.response_class is not None, cls.__name__
        assert cls.response_class.command_id == command_id | RESPONSE_BIT


@pytest.mark.parametrize(
    "request_pdu",
    [p for p in s.SAMPLES.values() if not p.is_response],
    ids=[k for k, p in s.SAMPLES.items() if not p.is_response],
)
def test_error_response_answers_with_the_requests_sequence_number(request_pdu: Pdu) -> None:
    """§3.3: the answer echoes the sequence_number; outbind and alert_notification have no
    response PDU, so their refusal is a generic_nack (§4.3)."""
    resp = error_response(request_pdu, S.ESME_RSYSERR)
    if isinstance(request_pdu, (Outbind, AlertNotification)):
        expected_id = CommandId.GENERIC_NACK
    else:
        expected_id = request_pdu.command_id | RESPONSE_BIT
    assert resp.command_id == expected_id
    assert (resp.sequence_number, resp.command_status) == (
        request_pdu.sequence_number,
        S.ESME_RSYSERR,
    )
    assert decode(encode(resp)) == resp


# --- 2. golden bytes ----------------------------------------------------------------------


@pytest.mark.parametrize(("pdu", "wire"), GOLDEN.values(), ids=GOLDEN.keys())
def test_encode_gives_the_golden_bytes(pdu: Pdu, wire: bytes) -> None:
    """§4: each PDU is laid out field by field exactly as the spec's tables say."""
    assert encode(pdu).hex(" ", 4) == wire.hex(" ", 4)


@pytest.mark.parametrize(("pdu", "wire"), GOLDEN.values(), ids=GOLDEN.keys())
def test_decode_of_the_golden_bytes_gives_the_pdu(pdu: Pdu, wire: bytes) -> None:
    assert decode(wire) == pdu


NO_BODY_ON_ERROR_SAMPLES = [
    s.BIND_TRANSMITTER_RESP,
    s.BIND_RECEIVER_RESP,
    s.BIND_TRANSCEIVER_RESP,
    s.SUBMIT_SM_RESP,
    s.DELIVER_SM_RESP,
    s.SUBMIT_MULTI_RESP,
    s.QUERY_SM_RESP,
]


@pytest.mark.parametrize(
    "pdu", NO_BODY_ON_ERROR_SAMPLES, ids=[type(p).__name__ for p in NO_BODY_ON_ERROR_SAMPLES]
)
def test_an_error_response_is_sent_without_a_body(pdu: Pdu) -> None:
    """§4.1.2, §4.4.2, §4.5.2, §4.6.2, §4.8.2: with a non-zero command_status the body (system_id,
    message_id, ...) is not returned, even when the struct holds values."""
    failed = replace(pdu, command_status=S.ESME_RSYSERR)
    wire = encode(failed)
    assert wire == header(16, pdu.command_id, S.ESME_RSYSERR, pdu.sequence_number)
    assert decode(wire) == type(pdu)(pdu.sequence_number, S.ESME_RSYSERR)


@pytest.mark.parametrize(
    "command_id", [c for c in PDU_CLASSES if c & RESPONSE_BIT], ids=lambda c: f"0x{c:08x}"
)
def test_a_header_only_error_response_decodes_for_every_response(command_id: int) -> None:
    """§3.3: every response may come back as a bare header carrying the error status."""
    pdu = decode(header(16, command_id, S.ESME_RTHROTTLED, 4242))
    assert type(pdu) is PDU_CLASSES[command_id]
    assert (pdu.sequence_number, pdu.command_status) == (4242, S.ESME_RTHROTTLED)


def test_an_error_response_that_still_carries_a_message_id_is_read() -> None:
    """Lenient reading (NOTES: vendors differ): some MCs return message_id with an error."""
    pdu = decode(frame(CommandId.SUBMIT_SM_RESP, b"abc\x00", status=S.ESME_RSUBMITFAIL, seq=3))
    assert pdu == SubmitSmResp(3, S.ESME_RSUBMITFAIL, message_id="abc")


def test_an_error_response_whose_body_cannot_be_read_is_still_that_error() -> None:
    """The codec's stated leniency (§3.3 answers are keyed on status and sequence_number):
    a submit_sm_resp with status ESME_RSUBMITFAIL and a junk body (no NULL terminator) must
    still reach the session as that failed response, not as a framing error."""
    data = frame(CommandId.SUBMIT_SM_RESP, b"abc", status=S.ESME_RSUBMITFAIL, seq=3)
    assert decode(data) == SubmitSmResp(3, S.ESME_RSUBMITFAIL)


def test_data_sm_resp_keeps_its_tlvs_on_error() -> None:
    """§4.7.2: data_sm_resp carries delivery_failure_reason etc. to describe a failure."""
    pdu = DataSmResp(
        sequence_number=11,
        command_status=S.ESME_RDELIVERYFAILURE,
        tlvs=(
            tlv(Tag.DELIVERY_FAILURE_REASON, 1),
            tlv(Tag.ADDITIONAL_STATUS_INFO_TEXT, "absent subscriber"),
        ),
    )
    wire = encode(pdu)
    assert wire[16:] == bytes.fromhex(
        "00"  # message_id ""
        "0425 0001 01"  # delivery_failure_reason 1
        "001d 0012 616273656e74207375627363726962657200"  # "absent subscriber"
    )
    assert decode(wire) == pdu


# --- 3. framing: whole, byte by byte, any chunking, trailing bytes ---------------------------

GOLDEN_WIRES = [wire for _, wire in GOLDEN.values()]


@pytest.mark.parametrize(("pdu", "wire"), GOLDEN.values(), ids=GOLDEN.keys())
def test_framebuffer_cuts_a_whole_pdu(pdu: Pdu, wire: bytes) -> None:
    buffer = FrameBuffer()
    assert buffer.feed(wire) == [wire]
    assert buffer.buffered == 0
    assert decode(wire) == pdu


@pytest.mark.parametrize(("pdu", "wire"), GOLDEN.values(), ids=GOLDEN.keys())
def test_framebuffer_returns_nothing_until_the_last_byte(pdu: Pdu, wire: bytes) -> None:
    """Architecture: the codec returns nothing until a whole PDU is in."""
    buffer = FrameBuffer()
    for i in range(len(wire) - 1):
        assert buffer.feed(wire[i : i + 1]) == []
        assert buffer.buffered == i + 1
    [frame_out] = buffer.feed(wire[-1:])
    assert buffer.buffered == 0
    assert decode(frame_out) == pdu


@settings(max_examples=examples(100))
@given(cuts=st.lists(st.integers(0, sum(map(len, GOLDEN_WIRES))), max_size=40))
def test_framebuffer_any_chunking_yields_the_same_pdus(cuts: list[int]) -> None:
    """§2.5 (pipelining): PDUs back to back, split anywhere by TCP, come out whole and in order."""
    stream = b"".join(GOLDEN_WIRES)
    bounds = [0, *sorted(cuts), len(stream)]
    buffer = FrameBuffer()
    out: list[bytes] = []
    for a, b in itertools.pairwise(bounds):
        out += buffer.feed(stream[a:b])
    assert out == GOLDEN_WIRES
    assert buffer.buffered == 0
    assert buffer.error is None
    assert [decode(f) for f in out] == [p for p, _ in GOLDEN.values()]


def test_framebuffer_returns_a_second_pdu_that_follows_in_the_same_data() -> None:
    first, second = GOLDEN["submit_sm"][1], GOLDEN["enquire_link"][1]
    assert FrameBuffer().feed(first + second) == [first, second]


def test_framebuffer_keeps_a_partial_pdu_that_follows_until_it_completes() -> None:
    first, second = GOLDEN["submit_sm"][1], GOLDEN["deliver_sm_receipt"][1]
    buffer = FrameBuffer()
    assert buffer.feed(first + second[:20]) == [first]
    assert buffer.buffered == 20
    assert buffer.feed(second[20:-1]) == []
    assert buffer.buffered == len(second) - 1
    assert buffer.feed(second[-1:] + first[:3]) == [second]
    assert buffer.buffered == 3  # not even a whole command_length yet


@settings(max_examples=examples(100))
@given(cuts=st.lists(st.integers(0, 200), max_size=12), length=st.sampled_from([0, 15, 1 << 20]))
def test_framebuffer_refuses_a_bad_length_the_same_however_it_is_split(
    cuts: list[int], length: int
) -> None:
    """Good PDUs, then a header with a bad command_length: the good ones come out, then
    ESME_RINVCMDLEN whatever the chunking — with the sequence number, or 0 when a read
    ended after the length but before the sequence number (refused from its 4 octets)."""
    good = GOLDEN["submit_sm"][1] + GOLDEN["enquire_link"][1]
    stream = good + header(length, CommandId.ENQUIRE_LINK, 0, 77) + b"more"
    bounds = [0, *sorted(min(c, len(stream)) for c in cuts), len(stream)]
    buffer = FrameBuffer()
    out: list[bytes] = []
    for a, b in itertools.pairwise(bounds):
        out += buffer.feed(stream[a:b])
    assert out == [GOLDEN["submit_sm"][1], GOLDEN["enquire_link"][1]]
    assert buffer.error is not None
    cut_inside = any(len(good) + 4 <= c < len(good) + 16 for c in bounds)
    expected_seq = 0 if cut_inside else 77
    assert (buffer.error.status, buffer.error.sequence_number) == (S.ESME_RINVCMDLEN, expected_seq)


def test_default_maximum_admits_a_full_64k_message_payload() -> None:
    """§5.3.2.32: message_payload may be up to 64K octets; the default limit lets it in."""
    pdu = SubmitSm(
        sequence_number=1,
        destination_addr=s.SUBSCRIBER,
        tlvs=(tlv(Tag.MESSAGE_PAYLOAD, bytes(range(256)) * 255 + b"x" * 255),),
    )
    wire = encode(pdu)
    assert len(wire) <= DEFAULT_MAX_PDU_LENGTH
    [out] = FrameBuffer().feed(wire)
    assert decode(out) == pdu


# --- 4. malformed input -> the exact status --------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 15])
def test_command_length_under_16_is_refused_with_rinvcmdlen(length: int) -> None:
    """§3.3/§4.3: a command_length below the header size is ESME_RINVCMDLEN, and the stream
    is no longer trustworthy (fatal); the sequence number is echoed when it could be read."""
    buffer = FrameBuffer()
    assert buffer.feed(header(length, CommandId.ENQUIRE_LINK, 0, 77)) == []
    err = buffer.error
    assert err is not None
    assert (err.status, err.fatal) == (S.ESME_RINVCMDLEN, True)
    assert (err.command_id, err.sequence_number) == (CommandId.ENQUIRE_LINK, 77)
    assert buffer.buffered == 0


def test_a_bad_command_length_is_refused_from_its_four_octets_alone() -> None:
    """The length is checked as soon as its 4 octets are in; the sequence number is then 0."""
    buffer = FrameBuffer()
    assert buffer.feed(b"\x00\x00") == []
    assert buffer.error is None
    assert buffer.feed(b"\x00\x0f") == []
    assert buffer.error is not None
    assert (buffer.error.status, buffer.error.sequence_number) == (S.ESME_RINVCMDLEN, 0)
    assert buffer.buffered == 0


@pytest.mark.parametrize("claimed", [1025, 0x7FFFFFFF, 0xFFFFFFFF])
def test_command_length_over_the_maximum_is_refused_before_buffering(claimed: int) -> None:
    """Architecture: lengths over the configured maximum are refused before anything is
    buffered, so a peer cannot make us hold gigabytes by claiming them."""
    buffer = FrameBuffer(max_length=1024)
    assert buffer.feed(header(claimed, CommandId.SUBMIT_SM, 0, 5) + b"\xaa" * 100) == []
    err = buffer.error
    assert err is not None
    assert (err.status, err.fatal, err.sequence_number) == (S.ESME_RINVCMDLEN, True, 5)
    assert buffer.buffered == 0
    for _ in range(10):
        assert buffer.feed(b"\xaa" * 10_000) == []
        assert buffer.buffered == 0


def test_command_length_equal_to_the_maximum_is_accepted() -> None:
    wire = GOLDEN["submit_sm"][1]
    assert FrameBuffer(max_length=len(wire)).feed(wire) == [wire]
    too_small = FrameBuffer(max_length=len(wire) - 1)
    assert too_small.feed(wire) == []
    assert too_small.error is not None
    assert too_small.error.status == S.ESME_RINVCMDLEN


def test_pdus_before_a_bad_length_are_delivered_and_nothing_after() -> None:
    good = GOLDEN["enquire_link"][1]
    buffer = FrameBuffer(max_length=1024)
    assert buffer.feed(good + header(5000, CommandId.SUBMIT_SM, 0, 8) + good) == [good]
    assert buffer.error is not None
    assert buffer.error.sequence_number == 8
    assert buffer.feed(good) == []


def test_framebuffer_maximum_must_hold_a_header() -> None:
    with pytest.raises(ValueError, match="16"):
        FrameBuffer(max_length=15)


def test_decode_refuses_a_frame_shorter_than_a_header() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode(b"\x00\x00\x00\x10\x00\x00")
    assert (info.value.status, info.value.fatal) == (S.ESME_RINVCMDLEN, True)


def test_decode_refuses_a_frame_whose_command_length_disagrees() -> None:
    wire = GOLDEN["enquire_link"][1] + b"\x00"
    exc = refused(wire)
    assert (exc.status, exc.fatal) == (S.ESME_RINVCMDLEN, True)


@pytest.mark.parametrize(
    "command_id",
    [0x0000000A, 0x0000000C, 0x00000022, 0x80000102, 0x8000000B, 0x00000104, 0x12345678],
    ids=lambda c: f"0x{c:08x}",
)
def test_unknown_command_id_is_rinvcmdid_with_the_sequence_number(command_id: int) -> None:
    """§4.3 / §5.1.3: an unknown (or reserved) command_id is answered with generic_nack
    ESME_RINVCMDID echoing the sequence_number; the stream itself stays usable."""
    exc = refused(frame(command_id, b"\x00\x01\x02", seq=0x7FFFFFFF))
    assert exc.status == S.ESME_RINVCMDID
    assert exc.sequence_number == 0x7FFFFFFF
    assert exc.fatal is False


def sm_body(
    *,
    service_type: bytes = b"",
    source: bytes = b"447700900123",
    dest: bytes = b"447700900456",
    schedule: bytes = b"",
    validity: bytes = b"",
    sm: bytes = b"Hi",
    sm_length: int | None = None,
    tlvs: bytes = b"",
) -> bytes:
    """A submit_sm / deliver_sm body (§4.4.1), field by field."""
    return (
        service_type + b"\x00"
        + b"\x01\x01" + source + b"\x00"
        + b"\x01\x01" + dest + b"\x00"
        + b"\x00\x00\x00"  # esm_class, protocol_id, priority_flag
        + schedule + b"\x00"
        + validity + b"\x00"
        + b"\x01\x00\x00\x00"  # registered_delivery, replace_if_present, data_coding, default id
        + bytes([len(sm) if sm_length is None else sm_length]) + sm
        + tlvs
    )  # fmt: skip


def data_sm_body(*, source: bytes = b"447700900123", dest: bytes = b"447700900456") -> bytes:
    """A data_sm body (§4.7.1)."""
    return b"\x00" + b"\x01\x01" + source + b"\x00" + b"\x01\x01" + dest + b"\x00" + b"\x00\x01\x00"


def bind_body(
    system_id: bytes = b"esme01", password: bytes = b"pw", system_type: bytes = b""
) -> bytes:
    """A bind_* body (§4.1.1)."""
    return system_id + b"\0" + password + b"\0" + system_type + b"\0" + b"\x34\x00\x00" + b"\0"


def multi_body(dests: bytes) -> bytes:
    """A submit_multi body (§4.5.1) around a hand-built number_of_dests + dest_address list."""
    return (
        b"\x00"
        + b"\x05\x00Alerts\x00"
        + dests
        + b"\x00\x00\x00"
        + b"\x00\x00"
        + b"\x01\x00\x00\x00"
        + b"\x02Hi"
    )


SME_1 = b"\x01\x01\x01447700900001\x00"
C = CommandId
MALFORMED: dict[str, tuple[int, bytes, int]] = {
    # §4.4.1: source_addr is at most 21 octets with its NULL
    "submit_sm source_addr 21 octets": (C.SUBMIT_SM, sm_body(source=b"4" * 21), S.ESME_RINVSRCADR),
    "deliver_sm source_addr 30 octets": (
        C.DELIVER_SM,
        sm_body(source=b"4" * 30),
        S.ESME_RINVSRCADR,
    ),
    "submit_sm destination_addr 21 octets": (
        C.SUBMIT_SM,
        sm_body(dest=b"4" * 21),
        S.ESME_RINVDSTADR,
    ),
    # §4.7.1: data_sm addresses are up to 65 octets with the NULL
    "data_sm source_addr 65 octets": (
        C.DATA_SM,
        data_sm_body(source=b"4" * 65),
        S.ESME_RINVSRCADR,
    ),
    "data_sm destination_addr 65 octets": (
        C.DATA_SM,
        data_sm_body(dest=b"4" * 65),
        S.ESME_RINVDSTADR,
    ),
    "submit_sm service_type 6 octets": (
        C.SUBMIT_SM,
        sm_body(service_type=b"SERVIC"),
        S.ESME_RINVSERTYP,
    ),
    "submit_sm with an empty body": (C.SUBMIT_SM, b"", S.ESME_RINVCMDLEN),
    "deliver_sm with an empty body": (C.DELIVER_SM, b"", S.ESME_RINVCMDLEN),
    "bind_transceiver with an empty body": (C.BIND_TRANSCEIVER, b"", S.ESME_RINVCMDLEN),
    "submit_sm cut after the addresses": (
        C.SUBMIT_SM,
        sm_body()[:33],
        S.ESME_RINVCMDLEN,
    ),
    # §4.4.1: sm_length counts the short_message octets that follow
    "sm_length past the end of the body": (
        C.SUBMIT_SM,
        sm_body(sm=b"Hi", sm_length=10),
        S.ESME_RINVMSGLEN,
    ),
    "sm_length 255": (C.SUBMIT_SM, sm_body(sm=b"x" * 255), S.ESME_RINVMSGLEN),
    # §5.3.2.32: short_message and message_payload must not both be used
    "short_message with message_payload": (
        C.SUBMIT_SM,
        sm_body(sm=b"Hi", tlvs=b"\x04\x24\x00\x02Hi"),
        S.ESME_RINVMSGLEN,
    ),
    "deliver_sm short_message with message_payload": (
        C.DELIVER_SM,
        sm_body(sm=b"Hi", tlvs=b"\x04\x24\x00\x00"),
        S.ESME_RINVMSGLEN,
    ),
    # §3.2.4 / §5.3.1: a TLV is tag(2) length(2) value(length), inside command_length
    "TLV header of 1 octet": (C.SUBMIT_SM, sm_body(tlvs=b"\x02"), S.ESME_RINVOPTPARSTREAM),
    "TLV header of 3 octets": (
        C.SUBMIT_SM,
        sm_body(tlvs=b"\x02\x04\x00"),
        S.ESME_RINVOPTPARSTREAM,
    ),
    "TLV header cut after a good TLV": (
        C.DELIVER_SM,
        sm_body(tlvs=b"\x04\x27\x00\x01\x02" + b"\x00\x1e"),
        S.ESME_RINVOPTPARSTREAM,
    ),
    "TLV value past the end": (
        C.SUBMIT_SM,
        sm_body(sm=b"", tlvs=b"\x04\x24\x00\x10abc"),
        S.ESME_RINVOPTPARSTREAM,
    ),
    "bind_transmitter_resp TLV value past the end": (
        C.BIND_TRANSMITTER_RESP,
        b"SMSC\x00\x02\x10\x00\x02\x34",
        S.ESME_RINVOPTPARSTREAM,
    ),
    # §5.3.2: a known TLV with a length its definition does not allow
    "sar_msg_ref_num of 1 octet": (
        C.SUBMIT_SM,
        sm_body(tlvs=b"\x02\x0c\x00\x01\x07"),
        S.ESME_RINVPARLEN,
    ),
    "message_state of 2 octets": (
        C.DELIVER_SM,
        sm_body(tlvs=b"\x04\x27\x00\x02\x00\x02"),
        S.ESME_RINVPARLEN,
    ),
    "sc_interface_version of 0 octets": (
        C.BIND_TRANSCEIVER_RESP,
        b"SMSC\x00\x02\x10\x00\x00",
        S.ESME_RINVPARLEN,
    ),
    "receipted_message_id of 66 octets": (
        C.DELIVER_SM,
        sm_body(tlvs=b"\x00\x1e\x00\x42" + b"7" * 65 + b"\x00"),
        S.ESME_RINVPARLEN,
    ),
    # §7.1: a time is empty or exactly 16 characters
    "schedule_delivery_time of 10 characters": (
        C.SUBMIT_SM,
        sm_body(schedule=b"2403011200"),
        S.ESME_RINVSCHED,
    ),
    "schedule_delivery_time of 17 characters": (
        C.SUBMIT_SM,
        sm_body(schedule=b"240301120000000+0"),
        S.ESME_RINVSCHED,
    ),
    "validity_period of 15 characters": (
        C.SUBMIT_SM,
        sm_body(validity=b"000001000000000"),
        S.ESME_RINVEXPIRY,
    ),
    "replace_sm validity_period of 1 character": (
        C.REPLACE_SM,
        b"5f3c9a1e\x00\x01\x01447700900123\x00" + b"\x00" + b"R\x00" + b"\x01\x00\x02Hi",
        S.ESME_RINVEXPIRY,
    ),
    # §4.1.1: system_id ≤ 16, password ≤ 9, system_type ≤ 13 octets with the NULL
    "bind_transmitter system_id 16 octets": (
        C.BIND_TRANSMITTER,
        bind_body(system_id=b"s" * 16),
        S.ESME_RINVSYSID,
    ),
    "bind_transceiver_resp system_id 16 octets": (
        C.BIND_TRANSCEIVER_RESP,
        b"s" * 16 + b"\x00",
        S.ESME_RINVSYSID,
    ),
    "bind_receiver password 9 octets": (
        C.BIND_RECEIVER,
        bind_body(password=b"p" * 9),
        S.ESME_RINVPASWD,
    ),
    "outbind password 9 octets": (
        C.OUTBIND,
        b"carrier1\x00" + b"p" * 9 + b"\x00",
        S.ESME_RINVPASWD,
    ),
    "bind_transceiver system_type 13 octets": (
        C.BIND_TRANSCEIVER,
        bind_body(system_type=b"t" * 13),
        S.ESME_RINVSYSTYP,
    ),
    # §4.8.1: message_id ≤ 65 octets with the NULL
    "query_sm message_id 65 octets": (
        C.QUERY_SM,
        b"m" * 65 + b"\x00\x01\x01447700900123\x00",
        S.ESME_RINVMSGID,
    ),
    # §4.5.1: number_of_dests 1..254, dest_flag 1 (SME) or 2 (distribution list)
    "submit_multi number_of_dests 0": (C.SUBMIT_MULTI, multi_body(b"\x00"), S.ESME_RINVNUMDESTS),
    "submit_multi number_of_dests 255": (
        C.SUBMIT_MULTI,
        multi_body(b"\xff" + SME_1 * 255),
        S.ESME_RINVNUMDESTS,
    ),
    "submit_multi dest_flag 3": (
        C.SUBMIT_MULTI,
        multi_body(b"\x02" + SME_1 + b"\x03\x01\x01447700900002\x00"),
        S.ESME_RINVDESTFLAG,
    ),
    "submit_multi dest_flag 0": (
        C.SUBMIT_MULTI,
        multi_body(b"\x01\x00\x01\x01447700900002\x00"),
        S.ESME_RINVDESTFLAG,
    ),
    "submit_multi SME address 21 octets": (
        C.SUBMIT_MULTI,
        multi_body(b"\x01\x01\x01\x01" + b"4" * 21 + b"\x00"),
        S.ESME_RINVDSTADR,
    ),
    "submit_multi dl_name 21 octets": (
        C.SUBMIT_MULTI,
        multi_body(b"\x01\x02" + b"d" * 21 + b"\x00"),
        S.ESME_RINVDLNAME,
    ),
}


@pytest.mark.parametrize(("command_id", "body", "status"), MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_body_is_refused_with_the_exact_status(
    command_id: int, body: bytes, status: int
) -> None:
    """§5.1.3: each broken field maps to its own command_status; the error carries the
    command_id and sequence_number so the session answers with the matching *_resp."""
    exc = refused(frame(command_id, body, seq=0x00ABCDEF))
    assert exc.status == status, str(exc)
    assert exc.fatal is False


def test_the_boundaries_just_inside_the_limits_are_accepted() -> None:
    """The largest legal values of §4.4.1 / §4.1.1 / §4.5.1 decode without complaint."""
    pdu = decode(frame(C.SUBMIT_SM, sm_body(source=b"4" * 20, dest=b"5" * 20, sm=b"x" * 254)))
    assert isinstance(pdu, SubmitSm)
    assert (len(pdu.source_addr), len(pdu.destination_addr), len(pdu.short_message)) == (
        20,
        20,
        254,
    )
    bind = decode(frame(C.BIND_TRANSMITTER, bind_body(b"s" * 15, b"p" * 8, b"t" * 12)))
    assert isinstance(bind, BindTransmitter)
    assert (bind.system_id, bind.password, bind.system_type) == ("s" * 15, "p" * 8, "t" * 12)
    multi = decode(frame(C.SUBMIT_MULTI, multi_body(b"\xfe" + SME_1 * 254)))
    assert isinstance(multi, SubmitMulti)
    assert len(multi.dest_addresses) == 254
    data_sm = decode(frame(C.DATA_SM, data_sm_body(source=b"4" * 64, dest=b"5" * 64)))
    assert isinstance(data_sm, DataSm)
    assert (len(data_sm.source_addr), len(data_sm.destination_addr)) == (64, 64)


SUBMIT_SM_WIRE = GOLDEN["submit_sm"][1]
#: body offset 51 holds sm_length in the golden submit_sm (see its layout above)
SM_LENGTH_AT = 16 + 51


@pytest.mark.parametrize("cut", range(16, len(SUBMIT_SM_WIRE)))
def test_every_truncation_of_submit_sm_maps_to_the_field_it_cuts(cut: int) -> None:
    """A body cut inside the mandatory fields is too short for its command (ESME_RINVCMDLEN),
    inside short_message sm_length overruns (ESME_RINVMSGLEN), inside a TLV the optional
    parameter stream is broken (ESME_RINVOPTPARSTREAM); cut right after short_message it is a
    valid submit_sm without TLVs."""
    data = struct.pack(">I", cut) + SUBMIT_SM_WIRE[4:cut]
    sm_end = SM_LENGTH_AT + 1 + 11
    if cut == sm_end:
        assert decode(data) == replace(s.SUBMIT_SM, tlvs=())
        return
    exc = refused(data)
    if cut <= SM_LENGTH_AT:
        assert exc.status == S.ESME_RINVCMDLEN
    elif cut < sm_end:
        assert exc.status == S.ESME_RINVMSGLEN
    else:
        assert exc.status == S.ESME_RINVOPTPARSTREAM


def test_unknown_tlvs_are_kept_byte_exact_and_re_encode_unchanged() -> None:
    """§3.2.4 / §5.3: an unknown optional parameter is skipped, not refused; we keep it so a
    relayed PDU carries it on unchanged (vendor tags 0x1400-0x3FFF, any length)."""
    golden = GOLDEN["deliver_sm_receipt"][1]
    vendor = (
        b"\x14\x03\x00\x07(null)\x00"  # a vendor tag seen in the wild
        + b"\x15\x00\x00\x00"  # zero-length
        + b"\x14\x02\x00\x04612\x00"
        + b"\xff\xff\x00\x03\x00\x01\x02"
    )
    data = struct.pack(">I", len(golden) + len(vendor)) + golden[4:] + vendor
    pdu = decode(data)
    assert isinstance(pdu, DeliverSm)
    assert pdu.tlvs == (
        *s.DELIVER_SM_RECEIPT.tlvs,
        Tlv(0x1403, b"(null)\x00"),
        Tlv(0x1500, b""),
        Tlv(0x1402, b"612\x00"),
        Tlv(0xFFFF, b"\x00\x01\x02"),
    )
    assert encode(pdu) == data


def test_tlvs_keep_their_wire_order() -> None:
    """§3.2.4: TLVs may come in any order; re-encoding keeps the order they came in."""
    tlvs = b"\x04\x27\x00\x01\x02" + b"\x00\x1e\x00\x035f\x00"
    data = frame(C.DELIVER_SM, sm_body(tlvs=tlvs))
    pdu = decode(data)
    assert isinstance(pdu, DeliverSm)
    assert [t.tag for t in pdu.tlvs] == [Tag.MESSAGE_STATE, Tag.RECEIPTED_MESSAGE_ID]
    assert encode(pdu) == data


# --- 4b. encode-side limits -------------------------------------------------------------------

ENCODE_LIMITS: dict[str, tuple[Pdu, int]] = {
    "source_addr 21 octets": (SubmitSm(source_addr="4" * 21), S.ESME_RINVSRCADR),
    "source_addr with a NULL": (SubmitSm(source_addr="4477\x00"), S.ESME_RINVSRCADR),
    "destination_addr 21 octets": (DeliverSm(destination_addr="4" * 21), S.ESME_RINVDSTADR),
    "data_sm source_addr 65 octets": (DataSm(source_addr="4" * 65), S.ESME_RINVSRCADR),
    "service_type 6 octets": (SubmitSm(service_type="SERVIC"), S.ESME_RINVSERTYP),
    "system_id 16 octets": (BindTransmitter(system_id="s" * 16), S.ESME_RINVSYSID),
    "bind resp system_id 16 octets": (BindTransceiverResp(system_id="s" * 16), S.ESME_RINVSYSID),
    "password 9 octets": (BindTransmitter(password="p" * 9), S.ESME_RINVPASWD),
    "outbind password 9 octets": (Outbind(password="p" * 9), S.ESME_RINVPASWD),
    "message_id 65 octets": (SubmitSmResp(message_id="m" * 65), S.ESME_RINVMSGID),
    "short_message 255 octets": (SubmitSm(short_message=b"x" * 255), S.ESME_RINVMSGLEN),
    "replace_sm short_message 255 octets": (
        ReplaceSm(message_id="1", short_message=b"x" * 255),
        S.ESME_RINVMSGLEN,
    ),
    "short_message and message_payload": (
        SubmitSm(short_message=b"Hi", tlvs=(tlv(Tag.MESSAGE_PAYLOAD, b"Hi"),)),
        S.ESME_RINVMSGLEN,
    ),
    "deliver_sm short_message and message_payload": (
        DeliverSm(short_message=b"Hi", tlvs=(tlv(Tag.MESSAGE_PAYLOAD, b""),)),
        S.ESME_RINVMSGLEN,
    ),
    "submit_multi short_message and message_payload": (
        replace(s.SUBMIT_MULTI, tlvs=(tlv(Tag.MESSAGE_PAYLOAD, b"Hi"),)),
        S.ESME_RINVMSGLEN,
    ),
    "schedule_delivery_time of 10 characters": (
        SubmitSm(schedule_delivery_time="2403011200"),
        S.ESME_RINVSCHED,
    ),
    "validity_period of 17 characters": (
        SubmitSm(validity_period="240301120000000+0"),
        S.ESME_RINVEXPIRY,
    ),
    "schedule_delivery_time with a NULL inside": (
        SubmitSm(schedule_delivery_time="240301120000\x00\x00\x00+"),
        S.ESME_RINVSCHED,
    ),
    "validity_period with a NULL inside": (
        SubmitSm(validity_period="\x00" * 16),
        S.ESME_RINVEXPIRY,
    ),
    "submit_multi with no destination": (
        replace(s.SUBMIT_MULTI, dest_addresses=()),
        S.ESME_RINVNUMDESTS,
    ),
    "submit_multi with 255 destinations": (
        replace(s.SUBMIT_MULTI, dest_addresses=(SmeAddress(1, 1, "447700900001"),) * 255),
        S.ESME_RINVNUMDESTS,
    ),
    "submit_multi SME address 21 octets": (
        replace(s.SUBMIT_MULTI, dest_addresses=(SmeAddress(1, 1, "4" * 21),)),
        S.ESME_RINVDSTADR,
    ),
    "submit_multi dl_name 21 octets": (
        replace(s.SUBMIT_MULTI, dest_addresses=(DistributionList("d" * 21),)),
        S.ESME_RINVDLNAME,
    ),
    "known TLV with the wrong length": (
        DeliverSm(tlvs=(Tlv(Tag.MESSAGE_STATE, b"\x00\x02"),)),
        S.ESME_RINVPARLEN,
    ),
    "TLV value over 65535 octets": (
        DataSm(tlvs=(Tlv(0x1400, b"x" * 65536),)),
        S.ESME_RINVPARLEN,
    ),
}


@pytest.mark.parametrize(("pdu", "status"), ENCODE_LIMITS.values(), ids=ENCODE_LIMITS.keys())
def test_encode_refuses_what_the_spec_forbids_with_the_status(pdu: Pdu, status: int) -> None:
    """Encoding checks the same limits as decoding: what we send must be decodable by a peer
    as the same PDU, and a refusal carries the status a peer would have answered."""
    assert refused_locally(pdu).status == status


MISUSE: dict[str, Pdu] = {
    "non-Latin-1 source_addr": SubmitSm(source_addr="€44"),
    "non-Latin-1 system_id": BindTransmitter(system_id="ÿsmsc✓"),
    "non-Latin-1 time": SubmitSm(validity_period="00000100000000€R"),
    "esm_class 256": SubmitSm(esm_class=256),
    "data_coding -1": DeliverSm(data_coding=-1),
    "interface_version 0x134": BindTransmitter(interface_version=0x134),
    "message_state 300": QuerySmResp(message_state=300),
    "dest_addr_ton 256 in a submit_multi": replace(
        s.SUBMIT_MULTI, dest_addresses=(SmeAddress(256, 1, "4477"),)
    ),
    "error_status_code over 32 bits": SubmitMultiResp(
        unsuccess_smes=(UnsuccessSme(1, 1, "4477", 2**32),)
    ),
    "sequence_number over 32 bits": EnquireLink(sequence_number=2**32),
    "short_message as str": SubmitSm(short_message="Hi"),  # type: ignore[arg-type]
}


@pytest.mark.parametrize("pdu", MISUSE.values(), ids=MISUSE.keys())
def test_encode_refuses_values_that_do_not_fit_their_octets(pdu: Pdu) -> None:
    """Values outside an octet's range or outside Latin-1 are a bug on our side
    (LocalProtocolError, ESME_RSYSERR by default), never a silently wrong PDU."""
    exc = refused_locally(pdu)
    assert exc.status == S.ESME_RSYSERR


def test_encode_accepts_the_largest_legal_values() -> None:
    pdu = SubmitSm(
        service_type="CMTXY",
        source_addr="4" * 20,
        destination_addr="5" * 20,
        esm_class=255,
        short_message=b"\xff" * 254,
    )
    assert decode(encode(pdu)) == pdu
    bind = BindTransceiver(system_id="s" * 15, password="p" * 8, system_type="t" * 12)
    assert decode(encode(bind)) == bind


# --- 5. properties --------------------------------------------------------------------------

KNOWN_IDS = sorted(PDU_CLASSES)


@st.composite
def suspicious_frames(draw: st.DrawFn) -> bytes:
    """A valid header with a known command_id and a body that is random, or a mutated or cut
    copy of a real body."""
    command_id = draw(st.sampled_from(KNOWN_IDS))
    if draw(st.booleans()):
        body = draw(st.binary(max_size=120))
    else:
        real = next(w for p, w in GOLDEN.values() if p.command_id == command_id)
        raw = bytearray(real[16:])
        for _ in range(draw(st.integers(0, 4))):
            if raw:
                raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
        cut = draw(st.integers(0, len(raw) + 8))
        body = bytes(raw[:cut]) + draw(st.binary(max_size=max(0, cut - len(raw))))
    status = draw(st.sampled_from([0, 0, S.ESME_RSYSERR, 0x45]))
    seq = draw(st.integers(0, 0xFFFFFFFF))
    return header(16 + len(body), command_id, status, seq) + body


@settings(max_examples=examples(200))
@given(data=suspicious_frames())
def test_decode_of_random_bodies_raises_only_remote_protocol_error(data: bytes) -> None:
    """House rule: any exception other than RemoteProtocolError escaping the core is a bug."""
    _, command_id, _, seq = struct.unpack_from(">IIII", data)
    error: RemoteProtocolError | None = None
    try:
        pdu = decode(data)
    except RemoteProtocolError as exc:
        error = exc
    if error is None:
        assert type(pdu) is PDU_CLASSES[command_id]
        assert pdu.sequence_number == seq
    else:
        assert error.status != S.ESME_ROK
        assert (error.command_id, error.sequence_number) == (command_id, seq)


@settings(max_examples=examples(100))
@given(data=st.binary(max_size=200), max_length=st.integers(16, 300))
def test_framebuffer_never_raises_and_never_holds_more_than_a_pdu(
    data: bytes, max_length: int
) -> None:
    buffer = FrameBuffer(max_length=max_length)
    for i in range(0, len(data), 7):
        for out in buffer.feed(data[i : i + 7]):
            assert HEADER_LEN <= len(out) <= max_length
        assert buffer.buffered < max_length
        if buffer.error is not None:
            assert buffer.error.status == S.ESME_RINVCMDLEN
            assert buffer.buffered == 0


HEADER_LEN = 16
latin1_text = st.characters(min_codepoint=1, max_codepoint=255)


def cstr(max_octets: int) -> st.SearchStrategy[str]:
    return st.text(latin1_text, max_size=max_octets - 1)


u8 = st.integers(0, 255)
smpp_time = st.one_of(
    st.just(""),
    st.from_regex(r"[0-9]{12}[0-9][0-4][0-9][+-]", fullmatch=True),
    st.from_regex(r"[0-9]{12}000R", fullmatch=True),
)
INT_TAGS = sorted(t for t, spec in TLV_SPECS.items() if spec.kind is TlvKind.INT)
unknown_tag = st.integers(0x1400, 0xFFFF).filter(lambda t: t not in TLV_SPECS)
one_tlv = st.one_of(
    st.builds(
        lambda tag, raw: tlv(tag, int.from_bytes(raw, "big") % (256 ** TLV_SPECS[tag].max_len)),
        st.sampled_from(INT_TAGS),
        st.binary(min_size=4, max_size=4),
    ),
    st.builds(lambda v: tlv(Tag.RECEIPTED_MESSAGE_ID, v), cstr(65)),
    st.builds(lambda v: tlv(Tag.NETWORK_ERROR_CODE, v), st.binary(min_size=3, max_size=3)),
    st.just(tlv(Tag.ALERT_ON_MESSAGE_DELIVERY, True)),
    st.builds(Tlv, unknown_tag, st.binary(max_size=40)),
)


@st.composite
def sm_pdus(draw: st.DrawFn, cls: type[SubmitSm] | type[DeliverSm]) -> Pdu:
    short_message = draw(st.binary(max_size=254))
    tlvs = draw(st.lists(one_tlv, max_size=5))
    if not short_message and draw(st.booleans()):
        tlvs.append(tlv(Tag.MESSAGE_PAYLOAD, draw(st.binary(max_size=1000))))
    return cls(
        sequence_number=draw(st.integers(1, 0x7FFFFFFF)),
        service_type=draw(cstr(6)),
        source_addr_ton=draw(u8),
        source_addr_npi=draw(u8),
        source_addr=draw(cstr(21)),
        dest_addr_ton=draw(u8),
        dest_addr_npi=draw(u8),
        destination_addr=draw(cstr(21)),
        esm_class=draw(u8),
        protocol_id=draw(u8),
        priority_flag=draw(u8),
        schedule_delivery_time=draw(smpp_time),
        validity_period=draw(smpp_time),
        registered_delivery=draw(u8),
        replace_if_present_flag=draw(u8),
        data_coding=draw(u8),
        sm_default_msg_id=draw(u8),
        short_message=short_message,
        tlvs=tuple(tlvs),
    )


@settings(max_examples=examples(150))
@given(pdu=st.one_of(sm_pdus(SubmitSm), sm_pdus(DeliverSm)))
def test_submit_sm_and_deliver_sm_round_trip_for_any_values_within_limits(pdu: Pdu) -> None:
    """§4.4.1 / §4.6.1: every legal combination of field values survives encode → decode,
    through the framer too."""
    wire = encode(pdu)
    assert decode(wire) == pdu
    assert FrameBuffer().feed(wire) == [wire]


def test_layouts_describe_every_pdu_class() -> None:
    """The codec is generated from LAYOUTS: a class without a layout could not be sent."""
    assert set(LAYOUTS) == set(PDU_CLASSES.values())


def test_generic_nack_and_unbind_have_no_body() -> None:
    """§4.3 / §4.2: these PDUs are the header alone."""
    assert encode(GenericNack(1, S.ESME_RINVCMDLEN)) == header(16, C.GENERIC_NACK, 2, 1)
    assert encode(Unbind(2)) == header(16, C.UNBIND, 0, 2)
