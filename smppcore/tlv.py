"""Optional parameters (TLVs, §5.3): tags, their wire types, and typed access.

A TLV travels as ``Tlv(tag, value)`` with the value's raw octets, so an unknown TLV is kept
byte-exact and re-encoded unchanged. Known tags have a :class:`TlvSpec` that says how the
octets are typed; :func:`tlv` builds one from a typed value and :meth:`Tlv.typed` reads it back.
"""

from __future__ import annotations

import struct
from enum import IntEnum

import msgspec

from smppcore.constants import CommandStatus
from smppcore.errors import LocalProtocolError, RemoteProtocolError


class Tag(IntEnum):
    """TLV tags of SMPP 3.4 (§5.3.2)."""

    DEST_ADDR_SUBUNIT = 0x0005
    DEST_NETWORK_TYPE = 0x0006
    DEST_BEARER_TYPE = 0x0007
    DEST_TELEMATICS_ID = 0x0008
    SOURCE_ADDR_SUBUNIT = 0x000D
    SOURCE_NETWORK_TYPE = 0x000E
    SOURCE_BEARER_TYPE = 0x000F
    SOURCE_TELEMATICS_ID = 0x0010
    QOS_TIME_TO_LIVE = 0x0017
    PAYLOAD_TYPE = 0x0019
    ADDITIONAL_STATUS_INFO_TEXT = 0x001D
    RECEIPTED_MESSAGE_ID = 0x001E
    MS_MSG_WAIT_FACILITIES = 0x0030
    PRIVACY_INDICATOR = 0x0201
    SOURCE_SUBADDRESS = 0x0202
    DEST_SUBADDRESS = 0x0203
    USER_MESSAGE_REFERENCE = 0x0204
    USER_RESPONSE_CODE = 0x0205
    SOURCE_PORT = 0x020A
    DESTINATION_PORT = 0x020B
    SAR_MSG_REF_NUM = 0x020C
    LANGUAGE_INDICATOR = 0x020D
    SAR_TOTAL_SEGMENTS = 0x020E
    SAR_SEGMENT_SEQNUM = 0x020F
    SC_INTERFACE_VERSION = 0x0210
    CALLBACK_NUM_PRES_IND = 0x0302
    CALLBACK_NUM_ATAG = 0x0303
    NUMBER_OF_MESSAGES = 0x0304
    CALLBACK_NUM = 0x0381
    DPF_RESULT = 0x0420
    SET_DPF = 0x0421
    MS_AVAILABILITY_STATUS = 0x0422
    NETWORK_ERROR_CODE = 0x0423
    MESSAGE_PAYLOAD = 0x0424
    DELIVERY_FAILURE_REASON = 0x0425
    MORE_MESSAGES_TO_SEND = 0x0426
    MESSAGE_STATE = 0x0427
    USSD_SERVICE_OP = 0x0501
    DISPLAY_TIME = 0x1201
    SMS_SIGNAL = 0x1203
    MS_VALIDITY = 0x1204
    ALERT_ON_MESSAGE_DELIVERY = 0x130C
    ITS_REPLY_TYPE = 0x1380
    ITS_SESSION_INFO = 0x1383


class TlvKind(IntEnum):
    """How a known TLV's octets are typed."""

    INT = 1  # unsigned big-endian integer of exactly ``max_len`` octets
    CSTRING = 2  # C-octet string, the length counting the NULL
    OCTETS = 3  # opaque octets
    EMPTY = 4  # presence alone carries the meaning


class TlvSpec(msgspec.Struct, frozen=True):
    """Wire type and length bounds of a known TLV (length of the value, in octets)."""

    name: str
    kind: TlvKind
    min_len: int
    max_len: int


def _int(name: str, size: int) -> TlvSpec:
    return TlvSpec(name, TlvKind.INT, size, size)


#: Every tag of §5.3.2 with its type; the name is the spec's field name.
TLV_SPECS: dict[int, TlvSpec] = {
    Tag.DEST_ADDR_SUBUNIT: _int("dest_addr_subunit", 1),
    Tag.DEST_NETWORK_TYPE: _int("dest_network_type", 1),
    Tag.DEST_BEARER_TYPE: _int("dest_bearer_type", 1),
    Tag.DEST_TELEMATICS_ID: _int("dest_telematics_id", 2),
    Tag.SOURCE_ADDR_SUBUNIT: _int("source_addr_subunit", 1),
    Tag.SOURCE_NETWORK_TYPE: _int("source_network_type", 1),
    Tag.SOURCE_BEARER_TYPE: _int("source_bearer_type", 1),
    Tag.SOURCE_TELEMATICS_ID: _int("source_telematics_id", 1),
    Tag.QOS_TIME_TO_LIVE: _int("qos_time_to_live", 4),
    Tag.PAYLOAD_TYPE: _int("payload_type", 1),
    Tag.ADDITIONAL_STATUS_INFO_TEXT: TlvSpec(
        "additional_status_info_text", TlvKind.CSTRING, 1, 256
    ),
    Tag.RECEIPTED_MESSAGE_ID: TlvSpec("receipted_message_id", TlvKind.CSTRING, 1, 65),
    Tag.MS_MSG_WAIT_FACILITIES: _int("ms_msg_wait_facilities", 1),
    Tag.PRIVACY_INDICATOR: _int("privacy_indicator", 1),
    Tag.SOURCE_SUBADDRESS: TlvSpec("source_subaddress", TlvKind.OCTETS, 2, 23),
    Tag.DEST_SUBADDRESS: TlvSpec("dest_subaddress", TlvKind.OCTETS, 2, 23),
    Tag.USER_MESSAGE_REFERENCE: _int("user_message_reference", 2),
    Tag.USER_RESPONSE_CODE: _int("user_response_code", 1),
    Tag.SOURCE_PORT: _int("source_port", 2),
    Tag.DESTINATION_PORT: _int("destination_port", 2),
    Tag.SAR_MSG_REF_NUM: _int("sar_msg_ref_num", 2),
    Tag.LANGUAGE_INDICATOR: _int("language_indicator", 1),
    Tag.SAR_TOTAL_SEGMENTS: _int("sar_total_segments", 1),
    Tag.SAR_SEGMENT_SEQNUM: _int("sar_segment_seqnum", 1),
    Tag.SC_INTERFACE_VERSION: _int("sc_interface_version", 1),
    Tag.CALLBACK_NUM_PRES_IND: _int("callback_num_pres_ind", 1),
    Tag.CALLBACK_NUM_ATAG: TlvSpec("callback_num_atag", TlvKind.OCTETS, 0, 65),
    Tag.NUMBER_OF_MESSAGES: _int("number_of_messages", 1),
    Tag.CALLBACK_NUM: TlvSpec("callback_num", TlvKind.OCTETS, 4, 19),
    Tag.DPF_RESULT: _int("dpf_result", 1),
    Tag.SET_DPF: _int("set_dpf", 1),
    Tag.MS_AVAILABILITY_STATUS: _int("ms_availability_status", 1),
    Tag.NETWORK_ERROR_CODE: TlvSpec("network_error_code", TlvKind.OCTETS, 3, 3),
    Tag.MESSAGE_PAYLOAD: TlvSpec("message_payload", TlvKind.OCTETS, 0, 65535),
    Tag.DELIVERY_FAILURE_REASON: _int("delivery_failure_reason", 1),
    Tag.MORE_MESSAGES_TO_SEND: _int("more_messages_to_send", 1),
    Tag.MESSAGE_STATE: _int("message_state", 1),
    Tag.USSD_SERVICE_OP: _int("ussd_service_op", 1),
    Tag.DISPLAY_TIME: _int("display_time", 1),
    Tag.SMS_SIGNAL: _int("sms_signal", 2),
    Tag.MS_VALIDITY: _int("ms_validity", 1),
    Tag.ALERT_ON_MESSAGE_DELIVERY: TlvSpec("alert_on_message_delivery", TlvKind.EMPTY, 0, 0),
    Tag.ITS_REPLY_TYPE: _int("its_reply_type", 1),
    Tag.ITS_SESSION_INFO: _int("its_session_info", 2),
}

TLV_BY_NAME: dict[str, int] = {spec.name: tag for tag, spec in TLV_SPECS.items()}

#: (min, max) value length per known tag, for the decoder's hot loop.
_BOUNDS: dict[int, tuple[int, int]] = {t: (s.min_len, s.max_len) for t, s in TLV_SPECS.items()}

TlvValue = int | str | bytes | bool


class Tlv(msgspec.Struct, frozen=True, gc=False):
    """One optional parameter: its tag and the raw octets of its value."""

    tag: int
    value: bytes

    def typed(self) -> TlvValue:
        """The value as the spec types it: int, str (C-octet string), bytes, or True (empty)."""
        spec = TLV_SPECS.get(self.tag)
        if spec is None or spec.kind is TlvKind.OCTETS:
            return self.value
        if spec.kind is TlvKind.INT:
            return int.from_bytes(self.value, "big")
        if spec.kind is TlvKind.CSTRING:
            # Lenient: many MCs omit the NULL of receipted_message_id.
            return self.value.split(b"\0", 1)[0].decode("latin-1")
        return True

    @property
    def name(self) -> str:
        spec = TLV_SPECS.get(self.tag)
        return spec.name if spec else f"0x{self.tag:04X}"


def tlv(tag: int, value: TlvValue) -> Tlv:
    """Build a TLV from a typed value, checked against the tag's spec."""
    spec = TLV_SPECS.get(tag)
    if spec is None:
        if not isinstance(value, bytes):
            raise LocalProtocolError(f"unknown TLV 0x{tag:04X} needs bytes, got {type(value)}")
        raw = value
    elif spec.kind is TlvKind.INT:
        if not isinstance(value, int) or isinstance(value, bool):
            raise LocalProtocolError(f"TLV {spec.name} needs an int")
        try:
            raw = value.to_bytes(spec.max_len, "big")
        except OverflowError:
            raise LocalProtocolError(
                f"TLV {spec.name} value {value} does not fit {spec.max_len} octet(s)",
                status=CommandStatus.ESME_RINVOPTPARAMVAL,
            ) from None
    elif spec.kind is TlvKind.CSTRING:
        if not isinstance(value, str):
            raise LocalProtocolError(f"TLV {spec.name} needs a str")
        raw = value.encode("latin-1") + b"\0"
    elif spec.kind is TlvKind.EMPTY:
        raw = b""
    else:
        if not isinstance(value, bytes):
            raise LocalProtocolError(f"TLV {spec.name} needs bytes")
        raw = value
    result = Tlv(tag, raw)
    check_tlv_length(result, local=True)
    return result


def check_tlv_length(item: Tlv, *, local: bool = False) -> None:
    """Refuse a known TLV whose value length is outside the spec's bounds."""
    bounds = _BOUNDS.get(item.tag)
    if bounds is None:
        return
    n = len(item.value)
    if bounds[0] <= n <= bounds[1]:
        return
    spec = TLV_SPECS[item.tag]
    msg = f"TLV {spec.name} has length {n}, spec allows {bounds[0]}..{bounds[1]}"
    if local:
        raise LocalProtocolError(msg, status=CommandStatus.ESME_RINVPARLEN)
    raise RemoteProtocolError(msg, status=CommandStatus.ESME_RINVPARLEN)


_TL = struct.Struct(">HH")


def decode_tlvs(body: bytes, pos: int, end: int) -> tuple[Tlv, ...]:
    """Read TLVs from ``body[pos:end]``; a truncated stream or a bad length is refused.

    Raises RemoteProtocolError with ESME_RINVOPTPARSTREAM (stream overruns the PDU) or
    ESME_RINVPARLEN (a known tag with a length the spec does not allow). The caller adds
    the command_id and sequence_number.
    """
    items: list[Tlv] = []
    unpack = _TL.unpack_from
    bounds = _BOUNDS
    while pos < end:
        if end - pos < 4:
            raise RemoteProtocolError(
                "TLV header truncated", status=CommandStatus.ESME_RINVOPTPARSTREAM
            )
        tag, length = unpack(body, pos)
        pos += 4
        stop = pos + length
        if stop > end:
            raise RemoteProtocolError(
                f"TLV 0x{tag:04X} length {length} runs past the PDU",
                status=CommandStatus.ESME_RINVOPTPARSTREAM,
            )
        b = bounds.get(tag)
        if b is not None and not (b[0] <= length <= b[1]):
            check_tlv_length(Tlv(tag, body[pos:stop]))
        items.append(Tlv(tag, body[pos:stop]))
        pos = stop
    return tuple(items)


def encode_tlvs(items: tuple[Tlv, ...]) -> bytes:
    """The wire form of a TLV tuple, in order."""
    pack = _TL.pack
    bounds = _BOUNDS
    out = []
    for item in items:
        value = item.value
        b = bounds.get(item.tag)
        if b is not None and not (b[0] <= len(value) <= b[1]):
            check_tlv_length(item, local=True)
        if len(value) > 0xFFFF:
            raise LocalProtocolError(
                f"TLV 0x{item.tag:04X} value of {len(value)} octets exceeds 65535",
                status=CommandStatus.ESME_RINVPARLEN,
            )
        out.append(pack(item.tag, len(value)))
        out.append(value)
    return b"".join(out)


def find_tlv(items: tuple[Tlv, ...], tag: int) -> Tlv | None:
    """The first TLV with ``tag``, or None."""
    for item in items:
        if item.tag == tag:
            return item
    return None
