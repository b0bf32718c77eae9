"""The deliver_sm that carries a delivery receipt, as every MC role here emits it, and
:func:`read_receipt`, which reads one from any MC (what the router does with a carrier's).

Appendix B text (strict), plus the 3.4 TLVs: receipted_message_id (exactly the id given in
submit_sm_resp), message_state, and network_error_code when the message failed. Addresses
are the original message's, swapped: the receipt comes from the handset.

A carrier sends one of these per message, so the builders here are written for speed:
the text is one f-string, the constant TLVs are shared, and a receipt date is formatted
once per datetime object (callers that read the clock once per loop turn pass the same
object for thousands of receipts). The output is exactly :func:`format_receipt`'s text.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Final

from smppcore.codec import encode
from smppcore.constants import EsmClass, MessageState
from smppcore.errors import RemoteProtocolError
from smppcore.pdu import DeliverSm
from smppcore.receipt import parse_receipt, stat_word
from smppcore.segment import parse_udh
from smppcore.smpptime import format_receipt_date
from smppcore.text import codec_name, decode_text
from smppcore.tlv import Tag, Tlv

_UDHI = int(EsmClass.UDHI)
_ESM_RECEIPT: Final = int(EsmClass.DELIVERY_RECEIPT)
_ESM_INTERMEDIATE: Final = int(EsmClass.INTERMEDIATE_NOTIFICATION)
_DELIVERED: Final = int(MessageState.DELIVERED)
_RECEIPTED_MESSAGE_ID: Final = int(Tag.RECEIPTED_MESSAGE_ID)
_NETWORK_ERROR_CODE: Final = int(Tag.NETWORK_ERROR_CODE)
_MESSAGE_STATE: Final = int(Tag.MESSAGE_STATE)
_STATE_BY_INT: Final[dict[int, MessageState]] = {int(s): s for s in MessageState}
#: Every ``err:`` field a receipt text may hold (what :func:`_text_error` looks for).
_ERR: Final = re.compile(rb"\berr:\s*([0-9]{1,9})", re.IGNORECASE)

# Characters that read the same in ASCII and in GSM 03.38: a receipt travels as
# data_coding 0, which clients decode either way, so its text: preview keeps only these.
_PORTABLE = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 !\"#%&'()*+,-./:;<=>?"
)
_PORTABLE_OCTETS: Final = "".join(sorted(_PORTABLE)).encode("ascii")

#: Receipts repeat this many characters of the original (Appendix B).
_PREVIEW = 20


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
    return text[:_PREVIEW].encode("ascii", "replace").translate(_TO_PORTABLE).decode("ascii")


# data_codings whose decoding maps each portable octet to that same character, one octet
# per character: GSM 03.38 (unpacked septets), IA5/ASCII and Latin-1.
_OCTET_PER_CHAR: Final = frozenset(
    dc for dc in range(256) if codec_name(dc) in ("gsm", "ascii", "latin-1")
)


def message_preview(short_message: bytes, esm_class: int, data_coding: int) -> str:
    """``receipt_preview(message_text(short_message, esm_class, data_coding))``, fast.

    When the message has no UDH, is in a one-octet-per-character coding and its first 20
    octets are all portable, those octets are the preview: nothing is decoded.
    """
    if not esm_class & _UDHI and data_coding in _OCTET_PER_CHAR:
        head = short_message[:_PREVIEW]
        if not head.translate(None, _PORTABLE_OCTETS):
            return head.decode("ascii")
    return receipt_preview(message_text(short_message, esm_class, data_coding))


_THREE: Final = tuple(f"{n:03d}" for n in range(1000))
# Keyed by the members: a lookup with a member hits on identity (plain ints work too).
_STAT: Final[dict[int, str]] = {s: stat_word(s) for s in MessageState}
_STATE_TLVS: Final[dict[int, Tlv]] = {
    s: Tlv(int(Tag.MESSAGE_STATE), bytes((int(s),))) for s in MessageState
}
_ERROR_TLVS: dict[int, Tlv] = {}


def _error_tlv(error: int) -> Tlv:
    """network_error_code: type 3 (GSM), then the 2-octet code (§5.3.2.31); shared."""
    code = error & 0xFFFF
    tlv = _ERROR_TLVS.get(code)
    if tlv is None:
        tlv = _ERROR_TLVS[code] = Tlv(_NETWORK_ERROR_CODE, bytes((3,)) + code.to_bytes(2, "big"))
    return tlv


# The receipt dates of the last two datetime objects formatted, by identity:
# [datetime, text, datetime, text]. A carrier reads the clock once per loop turn, so
# thousands of receipts in a row pass the same two objects.
_dates: list[datetime | str | None] = [None, "", None, ""]


def _date_text(dt: datetime) -> str:
    d = _dates
    if dt is d[0]:
        return d[1]  # type: ignore[return-value]
    if dt is d[2]:
        return d[3]  # type: ignore[return-value]
    text = format_receipt_date(dt)
    d[:] = [dt, text, d[0], d[1]]
    return text


def _receipt_text(
    message_id: str,
    state: int,
    error: int,
    submitted_at: datetime,
    done_at: datetime,
    preview: str,
    intermediate: bool,
) -> str:
    """The Appendix B text: ``err:`` 0 for an intermediate notification, clamped to 3 digits."""
    err = 0 if intermediate else error
    if not 0 <= err <= 999:
        err = 999 if err > 999 else 0
    d = _dates
    return (
        f"id:{message_id} sub:001 dlvrd:{'001' if state == _DELIVERED else '000'}"
        f" submit date:{d[1] if submitted_at is d[0] else _date_text(submitted_at)}"
        f" done date:{d[1] if done_at is d[0] else _date_text(done_at)}"
        f" stat:{_STAT[state]} err:{_THREE[err]} text:{preview}"
    )


def receipt_sm(
    message_id: str,
    state: int,
    error: int,
    submitted_at: datetime,
    done_at: datetime,
    source_ton: int,
    source_npi: int,
    source: str,
    dest_ton: int,
    dest_npi: int,
    destination: str,
    preview: str,
    intermediate: bool = False,
) -> DeliverSm:
    """:func:`receipt_deliver_sm` with positional arguments and a ready ``preview`` (the
    receipt's text: field as :func:`receipt_preview` or :func:`message_preview` give it)."""
    text = _receipt_text(message_id, state, error, submitted_at, done_at, preview, intermediate)
    receipted = Tlv(_RECEIPTED_MESSAGE_ID, message_id.encode("latin-1") + b"\0")
    if error and not intermediate:
        tlvs: tuple[Tlv, ...] = (receipted, _STATE_TLVS[state], _error_tlv(error))
    else:
        tlvs = (receipted, _STATE_TLVS[state])
    return DeliverSm(  # by position (keywords cost more): the fields in layout order
        0,  # sequence_number: the session gives one
        0,  # command_status
        "",  # service_type
        dest_ton,  # source_addr: the handset's
        dest_npi,
        destination,
        source_ton,  # destination_addr: the original sender's
        source_npi,
        source,
        _ESM_INTERMEDIATE if intermediate else _ESM_RECEIPT,
        0,  # protocol_id
        0,  # priority_flag
        "",  # schedule_delivery_time
        "",  # validity_period
        0,  # registered_delivery
        0,  # replace_if_present_flag
        0,  # data_coding
        0,  # sm_default_msg_id
        text.encode("ascii", "replace"),  # short_message: the preview keeps it ASCII
        tlvs,
    )


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
    return receipt_sm(
        message_id,
        state,
        error,
        submitted_at,
        done_at,
        source[0],
        source[1],
        source[2],
        destination[0],
        destination[1],
        destination[2],
        receipt_preview(preview),
        intermediate,
    )


_CHR: Final = tuple(chr(i) for i in range(256))
_LONG_TEXT: Final = 254  # sm_length is one octet


def receipt_sm_body(
    message_id: str,
    state: int,
    error: int,
    submitted_at: datetime,
    done_at: datetime,
    source_ton: int,
    source_npi: int,
    source: str,
    dest_ton: int,
    dest_npi: int,
    destination: str,
    preview: str,
    intermediate: bool = False,
) -> bytes:
    """The octets after the 16-octet header of ``receipt_sm(...)`` as the codec encodes
    them, written directly: for a session that sends an already-encoded request body.

    Ordinary receipts (an ASCII id of at most 64 characters, addresses that fit) are one
    string encoded once; anything else goes through the codec, which refuses what it must.
    """
    if (
        len(message_id) <= 64
        and len(source) <= 20
        and len(destination) <= 20
        and message_id.isascii()
        and "\0" not in message_id
        and "\0" not in source
        and "\0" not in destination
        and 0 <= source_ton <= 255
        and 0 <= source_npi <= 255
        and 0 <= dest_ton <= 255
        and 0 <= dest_npi <= 255
    ):
        text = _receipt_text(message_id, state, error, submitted_at, done_at, preview, intermediate)
        if len(text) <= _LONG_TEXT and text.isascii():
            c = _CHR
            body = (
                f"\0{c[dest_ton]}{c[dest_npi]}{destination}\0{c[source_ton]}{c[source_npi]}"
                f"{source}\0{c[_ESM_INTERMEDIATE if intermediate else _ESM_RECEIPT]}"
                f"\0\0\0\0\0\0\0\0{c[len(text)]}{text}"
                f"\0\x1e\0{c[len(message_id) + 1]}{message_id}\0\x04\x27\0\x01{c[state]}"
            )
            if error and not intermediate:
                code = error & 0xFFFF
                body += f"\x04\x23\0\x03\x03{c[code >> 8]}{c[code & 0xFF]}"
            try:
                return body.encode("latin-1")
            except UnicodeEncodeError:
                pass  # an address beyond Latin-1: the codec says what is wrong
    pdu = receipt_sm(
        message_id,
        state,
        error,
        submitted_at,
        done_at,
        source_ton,
        source_npi,
        source,
        dest_ton,
        dest_npi,
        destination,
        preview,
        intermediate,
    )
    return encode(pdu)[16:]


def read_receipt(pdu: DeliverSm) -> tuple[str, MessageState, int] | None:
    """A carrier's receipt deliver_sm: (the carrier's id of the message, its state, the
    error); None when it names no message. The 3.4 TLVs first (receipted_message_id,
    message_state, network_error_code), the Appendix B text for what they lack."""
    # One pass over the TLVs (the first of each tag counts, as Pdu.tlv reads them).
    rid: bytes | None = None
    state_raw: bytes | None = None
    nec: bytes | None = None
    for item in pdu.tlvs:
        tag = item.tag
        if tag == _RECEIPTED_MESSAGE_ID:
            if rid is None:
                rid = item.value
        elif tag == _MESSAGE_STATE:
            if state_raw is None:
                state_raw = item.value
        elif tag == _NETWORK_ERROR_CODE and nec is None:
            nec = item.value
    # receipted_message_id is a C-octet string (lenient: the NULL may be missing).
    receipt_id = "" if rid is None else rid.split(b"\0", 1)[0].decode("latin-1")
    state: MessageState | None = (
        None if state_raw is None else _STATE_BY_INT.get(int.from_bytes(state_raw, "big"))
    )
    if receipt_id and state is not None:
        # The 3.4 TLVs say what matters: read only err: from the text (cheap).
        if nec is not None and len(nec) == 3:
            error = int.from_bytes(nec[1:], "big")
        else:
            error = _text_error(pdu.short_message)
    else:
        parsed = parse_receipt(pdu.short_message) if pdu.short_message else None
        if parsed is None and not receipt_id:
            return None
        receipt_id = receipt_id or (parsed.message_id if parsed else "")
        if not receipt_id:
            return None
        if state is None:
            state = parsed.state if parsed else MessageState.UNKNOWN
        error = parsed.error if parsed else 0
        if nec is not None and len(nec) == 3 and not error:
            error = int.from_bytes(nec[1:], "big")
    return receipt_id, state, error


def _text_error(text: bytes) -> int:
    """The ``err:`` code of a receipt's text, 0 without one (what ``_ERR.search`` finds)."""
    # Every match starts at an "err:" in some case: search from the first one only (``\b``
    # still sees the octet before it), not over the id, dates and state before it.
    start = text.lower().find(b"err:")
    if start < 0:
        return 0
    m = _ERR.search(text, start)
    return int(m[1]) if m else 0

