"""The deliver_sm that carries a delivery receipt, as every MC role here emits it.

Appendix B text (strict), plus the 3.4 TLVs: receipted_message_id (exactly the id given in
submit_sm_resp), message_state, and network_error_code when the message failed. Addresses
are the original message's, swapped: the receipt comes from the handset.
"""

from __future__ import annotations

from datetime import datetime

from smppcore.constants import EsmClass, MessageState
from smppcore.errors import RemoteProtocolError
from smppcore.pdu import DeliverSm
from smppcore.receipt import Receipt, format_receipt
from smppcore.segment import parse_udh
from smppcore.text import decode_text
from smppcore.tlv import Tag, Tlv

_UDHI = int(EsmClass.UDHI)

# Characters that read the same in ASCII and in GSM 03.38: a receipt travels as
# data_coding 0, which clients decode either way, so its text: preview keeps only these.
_PORTABLE = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 !\"#%&'()*+,-./:;<=>?"
)


def message_text(short_message: bytes, esm_class: int, data_coding: int) -> str:
    """The text a subscriber reads: without the UDH of a concatenated part."""
    if esm_class & _UDHI:
        try:
            short_message = parse_udh(short_message)[1]
        except RemoteProtocolError:
            short_message = b""
    return decode_text(short_message, data_coding)


# Octet → itself when portable, else "?": bytes.translate runs it in C.
_TO_PORTABLE = bytes(b if chr(b) in _PORTABLE else 0x3F for b in range(256))


def receipt_preview(text: str) -> str:
    """The first 20 characters of ``text`` as a receipt shows them (others become '?')."""
    # Non-ASCII characters become "?" one per code point, then the rest by the table.
    return text[:20].encode("ascii", "replace").translate(_TO_PORTABLE).decode("ascii")


def receipt_deliver_sm(
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
    """A receipt for the message ``message_id`` sent from ``source`` to ``destination``
    (the original's addresses). ``preview`` is the original's text (20 characters kept)."""
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
        # network_error_code: type 3 (GSM), then the 2-octet code (§5.3.2.31).
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
        short_message=text.encode("ascii", "replace"),  # the preview keeps it ASCII
        tlvs=tuple(tlvs),
    )
