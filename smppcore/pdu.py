"""Every SMPP 3.4 PDU as a frozen struct, and the layout of its body (§4).

A PDU struct holds the header's ``sequence_number`` and ``command_status`` and the typed
body; ``command_id`` is a class constant. C-octet strings are ``str`` (decoded as Latin-1,
so every octet survives a round trip); ``short_message`` and TLV values are ``bytes``.
The wire format lives in :mod:`smppcore.codec`, generated from :data:`LAYOUTS` below so that
encode and decode can never disagree about a field.

Concrete PDU classes are final: build new values with ``msgspec.structs.replace``.
"""

from __future__ import annotations

from typing import ClassVar

import msgspec

from smppcore.constants import RESPONSE_BIT, CommandId, CommandStatus
from smppcore.tlv import Tlv, TlvValue, find_tlv


class Pdu(msgspec.Struct, frozen=True, gc=False):
    """Common header fields; the base of every PDU struct."""

    sequence_number: int = 0
    command_status: int = 0

    command_id: ClassVar[int] = 0
    #: The response class of a request; None for responses and for outbind/alert_notification.
    response_class: ClassVar[type[Pdu] | None] = None

    @property
    def is_response(self) -> bool:
        return bool(self.command_id & RESPONSE_BIT)

    def tlv(self, tag: int) -> TlvValue | None:
        """The typed value of the first TLV with ``tag``, or None when absent."""
        tlvs: tuple[Tlv, ...] = getattr(self, "tlvs", ())
        item = find_tlv(tlvs, tag)
        return None if item is None else item.typed()


# --- session management -----------------------------------------------------------------


class BindTransmitter(Pdu, frozen=True, gc=False):
    system_id: str = ""
    password: str = ""
    system_type: str = ""
    interface_version: int = 0x34
    addr_ton: int = 0
    addr_npi: int = 0
    address_range: str = ""
    tlvs: tuple[Tlv, ...] = ()
    command_id: ClassVar[int] = int(CommandId.BIND_TRANSMITTER)


class BindReceiver(Pdu, frozen=True, gc=False):
    system_id: str = ""
    password: str = ""
    system_type: str = ""
    interface_version: int = 0x34
    addr_ton: int = 0
    addr_npi: int = 0
    address_range: str = ""
    tlvs: tuple[Tlv, ...] = ()
    command_id: ClassVar[int] = int(CommandId.BIND_RECEIVER)


class BindTransceiver(Pdu, frozen=True, gc=False):
    system_id: str = ""
    password: str = ""
    system_type: str = ""
    interface_version: int = 0x34
    addr_ton: int = 0
    addr_npi: int = 0
    address_range: str = ""
    tlvs: tuple[Tlv, ...] = ()
    command_id: ClassVar[int] = int(CommandId.BIND_TRANSCEIVER)


class BindTransmitterResp(Pdu, frozen=True, gc=False):
    system_id: str = ""
    tlvs: tuple[Tlv, ...] = ()
    command_id: ClassVar[int] = int(CommandId.BIND_TRANSMITTER_RESP)


class BindReceiverResp(Pdu, frozen=True, gc=False):
    system_id: str = ""
    tlvs: tuple[Tlv, ...] = ()
    command_id: ClassVar[int] = int(CommandId.BIND_RECEIVER_RESP)


class BindTransceiverResp(Pdu, frozen=True, gc=False):
    system_id: str = ""
    tlvs: tuple[Tlv, ...] = ()
    command_id: ClassVar[int] = int(CommandId.BIND_TRANSCEIVER_RESP)


class Outbind(Pdu, frozen=True, gc=False):
    system_id: str = ""
    password: str = ""
    tlvs: tuple[Tlv, ...] = ()
    command_id: ClassVar[int] = int(CommandId.OUTBIND)


class Unbind(Pdu, frozen=True, gc=False):
    command_id: ClassVar[int] = int(CommandId.UNBIND)


class UnbindResp(Pdu, frozen=True, gc=False):
    command_id: ClassVar[int] = int(CommandId.UNBIND_RESP)


class EnquireLink(Pdu, frozen=True, gc=False):
    command_id: ClassVar[int] = int(CommandId.ENQUIRE_LINK)


class EnquireLinkResp(Pdu, frozen=True, gc=False):
    command_id: ClassVar[int] = int(CommandId.ENQUIRE_LINK_RESP)


class GenericNack(Pdu, frozen=True, gc=False):
    command_id: ClassVar[int] = int(CommandId.GENERIC_NACK)


# --- message submission and delivery ----------------------------------------------------


class SubmitSm(Pdu, frozen=True, gc=False):
    service_type: str = ""
    source_addr_ton: int = 0
    source_addr_npi: int = 0
    source_addr: str = ""
    dest_addr_ton: int = 0
    dest_addr_npi: int = 0
    destination_addr: str = ""
    esm_class: int = 0
    protocol_id: int = 0
    priority_flag: int = 0
    schedule_delivery_time: str = ""
    validity_period: str = ""
    registered_delivery: int = 0
    replace_if_present_flag: int = 0
    data_coding: int = 0
    sm_default_msg_id: int = 0
    short_message: bytes = b""
    tlvs: tuple[Tlv, ...] = ()
    command_id: ClassVar[int] = int(CommandId.SUBMIT_SM)


class SubmitSmResp(Pdu, frozen=True, gc=False):
    message_id: str = ""
    tlvs: tuple[Tlv, ...] = ()
    command_id: ClassVar[int] = int(CommandId.SUBMIT_SM_RESP)


class DeliverSm(Pdu, frozen=True, gc=False):
    service_type: str = ""
    source_addr_ton: int = 0
    source_addr_npi: int = 0
    source_addr: str = ""
    dest_addr_ton: int = 0
    dest_addr_npi: int = 0
    destination_addr: str = ""
    esm_class: int = 0
    protocol_id: int = 0
    priority_flag: int = 0
    schedule_delivery_time: str = ""
    validity_period: str = ""
    registered_delivery: int = 0
    replace_if_present_flag: int = 0
    data_coding: int = 0
    sm_default_msg_id: int = 0
    short_message: bytes = b""
    tlvs: tuple[Tlv, ...] = ()
    command_id: ClassVar[int] = int(CommandId.DELIVER_SM)


class DeliverSmResp(Pdu, frozen=True, gc=False):
    message_id: str = ""
    tlvs: tuple[Tlv, ...] = ()
    command_id: ClassVar[int] = int(CommandId.DELIVER_SM_RESP)


class DataSm(Pdu, frozen=True, gc=False):
    service_type: str = ""
    source_addr_ton: int = 0
    source_addr_npi: int = 0
    source_addr: str = ""
    dest_addr_ton: int = 0
    dest_addr_npi: int = 0
    destination_addr: str = ""
    esm_class: int = 0
    registered_delivery: int = 0
    data_coding: int = 0
    tlvs: tuple[Tlv, ...] = ()
    command_id: ClassVar[int] = int(CommandId.DATA_SM)


class DataSmResp(Pdu, frozen=True, gc=False):
    message_id: str = ""
    tlvs: tuple[Tlv, ...] = ()
    command_id: ClassVar[int] = int(CommandId.DATA_SM_RESP)


class SmeAddress(msgspec.Struct, frozen=True, gc=False):
    """A dest_address of submit_multi with dest_flag 1 (an SME address)."""

    ton: int = 0
    npi: int = 0
    address: str = ""


class DistributionList(msgspec.Struct, frozen=True, gc=False):
    """A dest_address of submit_multi with dest_flag 2 (a distribution list name)."""

    name: str = ""


class UnsuccessSme(msgspec.Struct, frozen=True, gc=False):
    """One entry of submit_multi_resp's unsuccess_sme list."""

    ton: int = 0
    npi: int = 0
    address: str = ""
    error_status_code: int = 0


class SubmitMulti(Pdu, frozen=True, gc=False):
    service_type: str = ""
    source_addr_ton: int = 0
    source_addr_npi: int = 0
    source_addr: str = ""
    dest_addresses: tuple[SmeAddress | DistributionList, ...] = ()
    esm_class: int = 0
    protocol_id: int = 0
    priority_flag: int = 0
    schedule_delivery_time: str = ""
    validity_period: str = ""
    registered_delivery: int = 0
    replace_if_present_flag: int = 0
    data_coding: int = 0
    sm_default_msg_id: int = 0
    short_message: bytes = b""
    tlvs: tuple[Tlv, ...] = ()
    command_id: ClassVar[int] = int(CommandId.SUBMIT_MULTI)


class SubmitMultiResp(Pdu, frozen=True, gc=False):
    message_id: str = ""
    unsuccess_smes: tuple[UnsuccessSme, ...] = ()
    tlvs: tuple[Tlv, ...] = ()
    command_id: ClassVar[int] = int(CommandId.SUBMIT_MULTI_RESP)


# --- message management -----------------------------------------------------------------


class QuerySm(Pdu, frozen=True, gc=False):
    message_id: str = ""
    source_addr_ton: int = 0
    source_addr_npi: int = 0
    source_addr: str = ""
    tlvs: tuple[Tlv, ...] = ()
    command_id: ClassVar[int] = int(CommandId.QUERY_SM)


class QuerySmResp(Pdu, frozen=True, gc=False):
    message_id: str = ""
    final_date: str = ""
    message_state: int = 0
    error_code: int = 0
    tlvs: tuple[Tlv, ...] = ()
    command_id: ClassVar[int] = int(CommandId.QUERY_SM_RESP)


class CancelSm(Pdu, frozen=True, gc=False):
    service_type: str = ""
    message_id: str = ""
    source_addr_ton: int = 0
    source_addr_npi: int = 0
    source_addr: str = ""
    dest_addr_ton: int = 0
    dest_addr_npi: int = 0
    destination_addr: str = ""
    tlvs: tuple[Tlv, ...] = ()
    command_id: ClassVar[int] = int(CommandId.CANCEL_SM)


class CancelSmResp(Pdu, frozen=True, gc=False):
    command_id: ClassVar[int] = int(CommandId.CANCEL_SM_RESP)


class ReplaceSm(Pdu, frozen=True, gc=False):
    message_id: str = ""
    source_addr_ton: int = 0
    source_addr_npi: int = 0
    source_addr: str = ""
    schedule_delivery_time: str = ""
    validity_period: str = ""
    registered_delivery: int = 0
    sm_default_msg_id: int = 0
    short_message: bytes = b""
    tlvs: tuple[Tlv, ...] = ()
    command_id: ClassVar[int] = int(CommandId.REPLACE_SM)


class ReplaceSmResp(Pdu, frozen=True, gc=False):
    command_id: ClassVar[int] = int(CommandId.REPLACE_SM_RESP)


class AlertNotification(Pdu, frozen=True, gc=False):
    source_addr_ton: int = 0
    source_addr_npi: int = 0
    source_addr: str = ""
    esme_addr_ton: int = 0
    esme_addr_npi: int = 0
    esme_addr: str = ""
    tlvs: tuple[Tlv, ...] = ()
    command_id: ClassVar[int] = int(CommandId.ALERT_NOTIFICATION)


# --- body layouts ---------------------------------------------------------------------


class Field(msgspec.Struct, frozen=True):
    """One mandatory body field: its struct attribute, wire kind, size bound and error status.

    kinds: ``u8`` one octet; ``u32`` four octets; ``cstr`` C-octet string of at most ``size``
    octets counting the NULL; ``time`` a C-octet string of 0 or 16 characters (§7.1);
    ``sm`` sm_length + short_message (at most ``size`` octets); ``dests`` submit_multi's
    number_of_dests + dest_address list; ``unsuccess`` submit_multi_resp's no_unsuccess +
    unsuccess_sme list.
    """

    name: str
    kind: str
    size: int = 1
    status: int = CommandStatus.ESME_RINVCMDLEN


_S = CommandStatus


def _u8(name: str) -> Field:
    return Field(name, "u8")


def _cstr(name: str, size: int, status: int) -> Field:
    return Field(name, "cstr", size, status)


_SERVICE_TYPE = _cstr("service_type", 6, _S.ESME_RINVSERTYP)
_MESSAGE_ID = _cstr("message_id", 65, _S.ESME_RINVMSGID)
_SYSTEM_ID = _cstr("system_id", 16, _S.ESME_RINVSYSID)
_SHORT_MESSAGE = Field("short_message", "sm", 254, _S.ESME_RINVMSGLEN)


def _source(size: int = 21) -> tuple[Field, ...]:
    return (
        _u8("source_addr_ton"),
        _u8("source_addr_npi"),
        _cstr("source_addr", size, _S.ESME_RINVSRCADR),
    )


def _dest(size: int = 21) -> tuple[Field, ...]:
    return (
        _u8("dest_addr_ton"),
        _u8("dest_addr_npi"),
        _cstr("destination_addr", size, _S.ESME_RINVDSTADR),
    )


_BIND = (
    _SYSTEM_ID,
    _cstr("password", 9, _S.ESME_RINVPASWD),
    _cstr("system_type", 13, _S.ESME_RINVSYSTYP),
    _u8("interface_version"),
    _u8("addr_ton"),
    _u8("addr_npi"),
    _cstr("address_range", 41, _S.ESME_RBINDFAIL),
)

_SM_TAIL = (
    _u8("esm_class"),
    _u8("protocol_id"),
    _u8("priority_flag"),
    Field("schedule_delivery_time", "time", 17, _S.ESME_RINVSCHED),
    Field("validity_period", "time", 17, _S.ESME_RINVEXPIRY),
    _u8("registered_delivery"),
    _u8("replace_if_present_flag"),
    _u8("data_coding"),
    _u8("sm_default_msg_id"),
    _SHORT_MESSAGE,
)

#: The mandatory body of every PDU type, in wire order. TLVs follow when the class has them.
LAYOUTS: dict[type[Pdu], tuple[Field, ...]] = {
    BindTransmitter: _BIND,
    BindReceiver: _BIND,
    BindTransceiver: _BIND,
    BindTransmitterResp: (_SYSTEM_ID,),
    BindReceiverResp: (_SYSTEM_ID,),
    BindTransceiverResp: (_SYSTEM_ID,),
    Outbind: (_SYSTEM_ID, _cstr("password", 9, _S.ESME_RINVPASWD)),
    Unbind: (),
    UnbindResp: (),
    EnquireLink: (),
    EnquireLinkResp: (),
    GenericNack: (),
    SubmitSm: (_SERVICE_TYPE, *_source(), *_dest(), *_SM_TAIL),
    SubmitSmResp: (_MESSAGE_ID,),
    DeliverSm: (_SERVICE_TYPE, *_source(), *_dest(), *_SM_TAIL),
    DeliverSmResp: (_MESSAGE_ID,),
    DataSm: (
        _SERVICE_TYPE,
        *_source(65),
        *_dest(65),
        _u8("esm_class"),
        _u8("registered_delivery"),
        _u8("data_coding"),
    ),
    DataSmResp: (_MESSAGE_ID,),
    SubmitMulti: (
        _SERVICE_TYPE,
        *_source(),
        Field("dest_addresses", "dests", 254, _S.ESME_RINVNUMDESTS),
        *_SM_TAIL,
    ),
    SubmitMultiResp: (_MESSAGE_ID, Field("unsuccess_smes", "unsuccess", 255)),
    QuerySm: (_MESSAGE_ID, *_source()),
    QuerySmResp: (
        _MESSAGE_ID,
        Field("final_date", "time", 17, _S.ESME_RINVCMDLEN),
        _u8("message_state"),
        _u8("error_code"),
    ),
    CancelSm: (_SERVICE_TYPE, _MESSAGE_ID, *_source(), *_dest()),
    CancelSmResp: (),
    ReplaceSm: (
        _MESSAGE_ID,
        *_source(),
        Field("schedule_delivery_time", "time", 17, _S.ESME_RINVSCHED),
        Field("validity_period", "time", 17, _S.ESME_RINVEXPIRY),
        _u8("registered_delivery"),
        _u8("sm_default_msg_id"),
        _SHORT_MESSAGE,
    ),
    ReplaceSmResp: (),
    AlertNotification: (
        *_source(65),
        _u8("esme_addr_ton"),
        _u8("esme_addr_npi"),
        _cstr("esme_addr", 65, _S.ESME_RINVDSTADR),
    ),
}

PDU_CLASSES: dict[int, type[Pdu]] = {cls.command_id: cls for cls in LAYOUTS}

#: Responses that carry no body at all when command_status is not ESME_ROK (§3.3 and the
#: individual PDU sections). data_sm_resp keeps its TLVs: they describe the failure.
NO_BODY_ON_ERROR: frozenset[type[Pdu]] = frozenset(
    {
        BindTransmitterResp,
        BindReceiverResp,
        BindTransceiverResp,
        SubmitSmResp,
        SubmitMultiResp,
        QuerySmResp,
        DeliverSmResp,
    }
)

#: The request classes that may also be sent by a message centre, and the bind classes.
BIND_CLASSES: tuple[type[Pdu], ...] = (BindTransmitter, BindReceiver, BindTransceiver)


def _link_responses() -> None:
    for cid, cls in PDU_CLASSES.items():
        if cid & RESPONSE_BIT:
            continue
        resp = PDU_CLASSES.get(cid | RESPONSE_BIT)
        if resp is not None:
            type.__setattr__(cls, "response_class", resp)


_link_responses()


def _check_layouts() -> None:
    header = {"sequence_number", "command_status", "tlvs"}
    for cls, layout in LAYOUTS.items():
        declared = [f for f in cls.__struct_fields__ if f not in header]
        if declared != [f.name for f in layout]:
            raise RuntimeError(f"layout of {cls.__name__} does not match its fields")


_check_layouts()


def error_response(request: Pdu, status: int) -> Pdu:
    """The response to ``request`` carrying ``status`` (a generic_nack when it has none)."""
    cls = request.response_class or GenericNack
    return cls(sequence_number=request.sequence_number, command_status=status)
