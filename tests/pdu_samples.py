"""One realistic value per SMPP 3.4 PDU type, shared by the codec tests.

Every field that a real peer would fill is set to a non-default value, so a codec that drops
or reorders a field cannot pass a round trip by accident. The golden bytes in
``test_codec.py`` are written by hand for exactly these values.
"""

from __future__ import annotations

from smppcore.constants import CommandStatus, MessageState
from smppcore.pdu import (
    AlertNotification,
    BindReceiver,
    BindReceiverResp,
    BindTransceiver,
    BindTransceiverResp,
    BindTransmitter,
    BindTransmitterResp,
    CancelSm,
    CancelSmResp,
    DataSm,
    DataSmResp,
    DeliverSm,
    DeliverSmResp,
    DistributionList,
    EnquireLink,
    EnquireLinkResp,
    GenericNack,
    Outbind,
    Pdu,
    QuerySm,
    QuerySmResp,
    ReplaceSm,
    ReplaceSmResp,
    SmeAddress,
    SubmitMulti,
    SubmitMultiResp,
    SubmitSm,
    SubmitSmResp,
    Unbind,
    UnbindResp,
    UnsuccessSme,
)
from smppcore.tlv import Tag, tlv

MESSAGE_ID = "5f3c9a1e"
SUBSCRIBER = "447700900123"
OTHER_SUBSCRIBER = "447700900456"
SENDER_ID = "MyBrand"
#: The UDH of part 1 of 2 with the 8-bit reference 0x2A (IEI 0x00, TS 23.040 §9.2.3.24.1).
UDH_PART_1_OF_2 = bytes.fromhex("0500032a0201")
RECEIPT_TEXT = (
    b"id:5f3c9a1e sub:001 dlvrd:001 submit date:2403011200 done date:2403011201"
    b" stat:DELIVRD err:000 text:Hello"
)
WAP_PUSH = bytes.fromhex("01060403ae81ea")

BIND_TRANSMITTER = BindTransmitter(
    sequence_number=1,
    system_id="smppclient1",
    password="pw123456",
    system_type="VMA",
    interface_version=0x34,
    addr_ton=1,
    addr_npi=1,
    address_range="44*",
)
BIND_RECEIVER = BindReceiver(
    sequence_number=2,
    system_id="kannel",
    password="secret",
    interface_version=0x34,
)
BIND_TRANSCEIVER = BindTransceiver(
    sequence_number=3,
    system_id="esme01",
    password="s3cret",
    system_type="SMPP",
    interface_version=0x34,
    addr_ton=1,
    addr_npi=1,
    address_range="^4479",
)
BIND_TRANSMITTER_RESP = BindTransmitterResp(
    sequence_number=1, system_id="SMSC", tlvs=(tlv(Tag.SC_INTERFACE_VERSION, 0x34),)
)
BIND_RECEIVER_RESP = BindReceiverResp(
    sequence_number=2, system_id="SMSC", tlvs=(tlv(Tag.SC_INTERFACE_VERSION, 0x34),)
)
BIND_TRANSCEIVER_RESP = BindTransceiverResp(
    sequence_number=3, system_id="smsc-sim", tlvs=(tlv(Tag.SC_INTERFACE_VERSION, 0x34),)
)
OUTBIND = Outbind(sequence_number=4, system_id="carrier1", password="outpw")
UNBIND = Unbind(sequence_number=5)
UNBIND_RESP = UnbindResp(sequence_number=5)
ENQUIRE_LINK = EnquireLink(sequence_number=6)
ENQUIRE_LINK_RESP = EnquireLinkResp(sequence_number=6)
GENERIC_NACK = GenericNack(sequence_number=9, command_status=CommandStatus.ESME_RINVCMDID)

SUBMIT_SM = SubmitSm(
    sequence_number=7,
    source_addr_ton=5,  # alphanumeric
    source_addr_npi=0,
    source_addr=SENDER_ID,
    dest_addr_ton=1,  # international
    dest_addr_npi=1,  # ISDN
    destination_addr=SUBSCRIBER,
    esm_class=0x40,  # UDHI
    priority_flag=1,
    validity_period="000001000000000R",  # relative: one day
    registered_delivery=1,
    short_message=UDH_PART_1_OF_2 + b"Hello",
    tlvs=(tlv(Tag.USER_MESSAGE_REFERENCE, 0x1234),),
)
SUBMIT_SM_RESP = SubmitSmResp(sequence_number=7, message_id=MESSAGE_ID)
#: §4.4.2: a submit_sm_resp with a non-zero command_status carries no body at all.
SUBMIT_SM_RESP_ERROR = SubmitSmResp(
    sequence_number=8, command_status=CommandStatus.ESME_RSUBMITFAIL
)

DELIVER_SM_RECEIPT = DeliverSm(
    sequence_number=10,
    source_addr_ton=1,
    source_addr_npi=1,
    source_addr=SUBSCRIBER,
    dest_addr_ton=5,
    dest_addr_npi=0,
    destination_addr=SENDER_ID,
    esm_class=0x04,  # MC delivery receipt
    short_message=RECEIPT_TEXT,
    tlvs=(
        tlv(Tag.RECEIPTED_MESSAGE_ID, MESSAGE_ID),
        tlv(Tag.MESSAGE_STATE, MessageState.DELIVERED),
    ),
)
DELIVER_SM_RESP = DeliverSmResp(sequence_number=10)

DATA_SM = DataSm(
    sequence_number=11,
    service_type="WAP",
    source_addr_ton=1,
    source_addr_npi=1,
    source_addr=SUBSCRIBER,
    dest_addr_ton=1,
    dest_addr_npi=1,
    destination_addr=OTHER_SUBSCRIBER,
    registered_delivery=1,
    data_coding=4,
    tlvs=(
        tlv(Tag.SOURCE_PORT, 9200),
        tlv(Tag.DESTINATION_PORT, 2948),
        tlv(Tag.MESSAGE_PAYLOAD, WAP_PUSH),
    ),
)
DATA_SM_RESP = DataSmResp(sequence_number=11, message_id="ds-0042")

SUBMIT_MULTI = SubmitMulti(
    sequence_number=12,
    source_addr_ton=5,
    source_addr_npi=0,
    source_addr="Alerts",
    dest_addresses=(
        SmeAddress(1, 1, "447700900001"),
        SmeAddress(1, 1, "447700900002"),
        DistributionList("staff"),
    ),
    registered_delivery=1,
    short_message=b"Meeting at 3pm",
)
SUBMIT_MULTI_RESP = SubmitMultiResp(
    sequence_number=12,
    message_id="mm-7",
    unsuccess_smes=(UnsuccessSme(1, 1, "447700900002", CommandStatus.ESME_RINVDSTADR),),
)

QUERY_SM = QuerySm(
    sequence_number=13,
    message_id=MESSAGE_ID,
    source_addr_ton=1,
    source_addr_npi=1,
    source_addr=SUBSCRIBER,
)
QUERY_SM_RESP = QuerySmResp(
    sequence_number=13,
    message_id=MESSAGE_ID,
    final_date="240301120105000+",
    message_state=MessageState.DELIVERED,
    error_code=0,
)
CANCEL_SM = CancelSm(
    sequence_number=14,
    message_id=MESSAGE_ID,
    source_addr_ton=1,
    source_addr_npi=1,
    source_addr=SUBSCRIBER,
    dest_addr_ton=1,
    dest_addr_npi=1,
    destination_addr=OTHER_SUBSCRIBER,
)
CANCEL_SM_RESP = CancelSmResp(sequence_number=14)
REPLACE_SM = ReplaceSm(
    sequence_number=15,
    message_id=MESSAGE_ID,
    source_addr_ton=1,
    source_addr_npi=1,
    source_addr=SUBSCRIBER,
    validity_period="240302120000000+",
    registered_delivery=1,
    short_message=b"Updated text",
)
REPLACE_SM_RESP = ReplaceSmResp(sequence_number=15)
ALERT_NOTIFICATION = AlertNotification(
    sequence_number=16,
    source_addr_ton=1,
    source_addr_npi=1,
    source_addr=SUBSCRIBER,
    esme_addr_ton=1,
    esme_addr_npi=1,
    esme_addr="447700900999",
    tlvs=(tlv(Tag.MS_AVAILABILITY_STATUS, 0),),
)

#: One sample per PDU type, keyed by the type's name (usable as a pytest id).
SAMPLES: dict[str, Pdu] = {
    type(p).__name__: p
    for p in (
        BIND_TRANSMITTER,
        BIND_RECEIVER,
        BIND_TRANSCEIVER,
        BIND_TRANSMITTER_RESP,
        BIND_RECEIVER_RESP,
        BIND_TRANSCEIVER_RESP,
        OUTBIND,
        UNBIND,
        UNBIND_RESP,
        ENQUIRE_LINK,
        ENQUIRE_LINK_RESP,
        GENERIC_NACK,
        SUBMIT_SM,
        SUBMIT_SM_RESP,
        DELIVER_SM_RECEIPT,
        DELIVER_SM_RESP,
        DATA_SM,
        DATA_SM_RESP,
        SUBMIT_MULTI,
        SUBMIT_MULTI_RESP,
        QUERY_SM,
        QUERY_SM_RESP,
        CANCEL_SM,
        CANCEL_SM_RESP,
        REPLACE_SM,
        REPLACE_SM_RESP,
        ALERT_NOTIFICATION,
    )
}
