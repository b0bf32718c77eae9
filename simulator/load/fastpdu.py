"""A deliver_sm read straight from its frame: the few fields a receipt needs.

The load generator gets one deliver_sm per message (its receipt). Decoding each into a
:class:`~smppcore.pdu.DeliverSm` (every field, a tuple of TLV structs) and then searching
its TLVs costs more than the rest of the receipt's handling; :func:`scan_deliver_sm` walks
the same octets with the same checks as :func:`smppcore.codec.decode` and keeps only
``esm_class``, ``short_message`` and the first ``receipted_message_id``,
``message_state`` and ``message_payload`` TLVs.

It is conservative: it returns ``None`` for any frame the codec might refuse (or that it
does not recognise), and the caller then decodes it with the codec, which produces the
error status to answer. So a frame it accepts is one the codec accepts, with the same
values (tests/test_load_units.py pins this on valid, odd and broken frames).
"""

from __future__ import annotations

import struct
from typing import Final

from smppcore.pdu import LAYOUTS, DeliverSm
from smppcore.tlv import TLV_SPECS, Tag

_TL: Final = struct.Struct(">HH")
_RECEIPTED_ID: Final = int(Tag.RECEIPTED_MESSAGE_ID)
_MESSAGE_STATE: Final = int(Tag.MESSAGE_STATE)
_MESSAGE_PAYLOAD: Final = int(Tag.MESSAGE_PAYLOAD)
#: (min, max) value length of each known tag: a TLV outside them makes the codec refuse.
_BOUNDS: Final = {tag: (spec.min_len, spec.max_len) for tag, spec in TLV_SPECS.items()}
_RID_MAX: Final = TLV_SPECS[_RECEIPTED_ID].max_len
if _BOUNDS[_RECEIPTED_ID][0] != 1 or _BOUNDS[_MESSAGE_STATE] != (1, 1):  # pragma: no cover
    raise RuntimeError("TLV bounds changed: mirror them in scan_deliver_sm")
if _BOUNDS[_MESSAGE_PAYLOAD] != (0, 0xFFFF):  # pragma: no cover
    raise RuntimeError("TLV bounds changed: mirror them in scan_deliver_sm")


def _layout() -> tuple[int, int, int, int, int, int]:
    """The field sizes of deliver_sm, checked against the codec's layout at import."""
    layout = LAYOUTS[DeliverSm]
    kinds = tuple((f.name, f.kind) for f in layout)
    expected = (
        ("service_type", "cstr"),
        ("source_addr_ton", "u8"),
        ("source_addr_npi", "u8"),
        ("source_addr", "cstr"),
        ("dest_addr_ton", "u8"),
        ("dest_addr_npi", "u8"),
        ("destination_addr", "cstr"),
        ("esm_class", "u8"),
        ("protocol_id", "u8"),
        ("priority_flag", "u8"),
        ("schedule_delivery_time", "time"),
        ("validity_period", "time"),
        ("registered_delivery", "u8"),
        ("replace_if_present_flag", "u8"),
        ("data_coding", "u8"),
        ("sm_default_msg_id", "u8"),
        ("short_message", "sm"),
    )
    if kinds != expected:  # pragma: no cover - a change in smppcore must be mirrored here
        raise RuntimeError(f"deliver_sm layout changed: {kinds}")
    sizes = {f.name: f.size for f in layout}
    return (
        sizes["service_type"],
        sizes["source_addr"],
        sizes["destination_addr"],
        sizes["schedule_delivery_time"],
        sizes["validity_period"],
        sizes["short_message"],
    )


_ST, _SRC, _DST, _SCHED, _VALID, _SM_MAX = _layout()

#: (esm_class, receipted_message_id, message_state, body)
Scanned = tuple[int, str | None, int | None, bytes]


def scan_deliver_sm(frame: bytes | bytearray, start: int, end: int) -> Scanned | None:
    """The receipt fields of the deliver_sm in ``frame[start:end]`` (header included).

    ``receipted_message_id`` is read as :meth:`smppcore.tlv.Tlv.typed` reads it (up to a
    NUL, Latin-1) and ``message_state`` as an integer; each is ``None`` when absent (the
    first of each counts, as with :meth:`smppcore.pdu.Pdu.tlv`). ``body`` is the
    short_message, else the message_payload, else empty — and left empty when both TLVs
    are there and the id is not empty, since the receipt text is not needed then.
    ``None`` as a whole: let the codec decode the frame.
    """
    pos = start + 16
    find = frame.find
    # service_type, source_addr, destination_addr: C-octet strings of bounded size that
    # may not run past the PDU (a NUL found beyond ``end`` belongs to the next one).
    if pos >= end:
        return None
    if frame[pos]:
        e = find(0, pos, pos + _ST)
        if e < 0 or e >= end:
            return None
        pos = e + 3  # the NUL, then source_addr_ton and source_addr_npi
    else:
        pos += 3
    if pos >= end:
        return None
    if frame[pos]:
        e = find(0, pos, pos + _SRC)
        if e < 0 or e >= end:
            return None
        pos = e + 3  # the NUL, then dest_addr_ton and dest_addr_npi
    else:
        pos += 3
    if pos >= end:
        return None
    if frame[pos]:
        e = find(0, pos, pos + _DST)
        if e < 0 or e >= end:
            return None
        pos = e + 1
    else:
        pos += 1
    if pos + 3 >= end:  # esm_class, protocol_id, priority_flag, then a time's first octet
        return None
    esm_class = frame[pos]
    pos += 3
    # schedule_delivery_time, validity_period: empty or exactly 16 characters.
    if frame[pos]:
        e = find(0, pos, pos + _SCHED)
        if e - pos != 16 or e >= end:
            return None
        pos = e + 1
    else:
        pos += 1
    if pos >= end:
        return None
    if frame[pos]:
        e = find(0, pos, pos + _VALID)
        if e - pos != 16 or e >= end:
            return None
        pos = e + 1
    else:
        pos += 1
    pos += 4  # registered_delivery, replace_if_present_flag, data_coding, sm_default_msg_id
    if pos >= end:
        return None
    n = frame[pos]
    sm_at = pos + 1
    pos = sm_at + n
    if n > _SM_MAX or pos > end:
        return None
    rid_at = rid_end = -1
    state: int | None = None
    payload_at = payload_end = -1
    if pos < end:
        unpack = _TL.unpack_from
        bounds = _BOUNDS
        while pos < end:
            if end - pos < 4:
                return None
            tag, length = unpack(frame, pos)
            pos += 4
            stop = pos + length
            if stop > end:
                return None
            if tag == _RECEIPTED_ID:
                if not 1 <= length <= _RID_MAX:
                    return None
                if rid_at < 0:
                    rid_at = pos
                    rid_end = stop
            elif tag == _MESSAGE_STATE:
                if length != 1:
                    return None
                if state is None:
                    state = frame[pos]
            elif tag == _MESSAGE_PAYLOAD:  # any u16 length is allowed
                if payload_at < 0:
                    payload_at = pos
                    payload_end = stop
            else:
                b = bounds.get(tag)
                if b is not None and not (b[0] <= length <= b[1]):
                    return None
            pos = stop
        if payload_at >= 0 and n:
            return None  # short_message and message_payload both used: the codec refuses
    rid: str | None = None
    if rid_at >= 0:
        e = find(0, rid_at, rid_end)
        rid = frame[rid_at : e if e >= 0 else rid_end].decode("latin-1")
        if rid and state is not None:
            return esm_class, rid, state, b""
    if n:
        body = bytes(frame[sm_at : sm_at + n])
    elif payload_at >= 0:
        body = bytes(frame[payload_at:payload_end])
    else:
        body = b""
    return esm_class, rid, state, body


__all__ = ["Scanned", "scan_deliver_sm"]
