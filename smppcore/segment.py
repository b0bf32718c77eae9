"""Concatenated short messages: splitting, UDH (3GPP TS 23.040 §9.2.3.24), SAR and reassembly.

Sizes count what one SMS carries in ``max_octets`` (140) octets of user data. A message
that fits whole (160 GSM septets, 140 octets, 70 UCS-2 units) is one Segment without UDH
or SAR. Otherwise the UDH (6 octets with an 8-bit reference, 7 with a 16-bit one) leaves
153/152 septets, 134/133 octets or 67/66 UCS-2 units per part. SAR parts use the same
sizes as UDH parts with the same ``ref_bits``, so an MC can turn SAR into UDH without
splitting again. Parts never end inside an ESC pair or a surrogate pair.
"""

from __future__ import annotations

from collections import deque
from typing import Final, Literal

import msgspec

from smppcore.constants import CommandStatus, DataCoding
from smppcore.errors import LocalProtocolError, RemoteProtocolError
from smppcore.text import ESC, choose_coding, codec_name, encode_text

Mode = Literal["udh", "sar", "payload"]
RefBits = Literal[8, 16]
Key = tuple[str, ...] | str

MAX_PARTS: Final = 255
MAX_PAYLOAD: Final = 0xFFFF  # message_payload is a TLV with a 2-octet length
IEI_CONCAT_8: Final = 0x00
IEI_CONCAT_16: Final = 0x08


class SarInfo(msgspec.Struct, frozen=True):
    """The sar_msg_ref_num, sar_total_segments and sar_segment_seqnum TLVs."""

    ref: int
    total: int
    seq: int


class ConcatInfo(msgspec.Struct, frozen=True):
    """A concatenation IE of a UDH (IEI 0x00 with an 8-bit ref, 0x08 with a 16-bit ref)."""

    ref: int
    total: int
    seq: int
    ref_bits: RefBits = 8


class Segment(msgspec.Struct, frozen=True, kw_only=True):
    """One submit's worth: ``short_message`` is UDH + payload when ``esm_class_udhi``."""

    short_message: bytes
    data_coding: int
    esm_class_udhi: bool = False
    sar: SarInfo | None = None


def concat_udh(ref: int, total: int, seq: int, *, ref_bits: RefBits = 8) -> bytes:
    """The UDH (UDHL included) holding only a concatenation IE."""
    if ref_bits == 8:
        return bytes((5, IEI_CONCAT_8, 3, ref, total, seq))
    return bytes((6, IEI_CONCAT_16, 4, ref >> 8, ref & 0xFF, total, seq))


def split(
    text: str,
    data_coding: int | None = None,
    *,
    mode: Mode = "udh",
    ref: int,
    ref_bits: RefBits = 8,
    max_octets: int = 140,
) -> tuple[Segment, ...]:
    """Encode ``text`` (in ``choose_coding(text)`` when ``data_coding`` is None) and split it.

    Raises ``EncodingError`` when the text does not fit the coding, and
    ``LocalProtocolError`` (ESME_RINVMSGLEN) when it needs more than 255 parts.
    """
    coding = choose_coding(text) if data_coding is None else data_coding
    encoded = encode_text(text, coding)
    return split_bytes(
        encoded, data_coding=coding, mode=mode, ref=ref, ref_bits=ref_bits, max_octets=max_octets
    )


def split_bytes(
    data: bytes,
    *,
    data_coding: int = DataCoding.BINARY,
    mode: Mode = "udh",
    ref: int,
    ref_bits: RefBits = 8,
    max_octets: int = 140,
) -> tuple[Segment, ...]:
    """Split already encoded ``data``; units follow ``data_coding`` as in ``split``."""
    _check_split_args(ref, ref_bits, max_octets)
    if mode == "payload":
        if len(data) > MAX_PAYLOAD:
            raise LocalProtocolError(
                f"{len(data)} octets exceed message_payload's {MAX_PAYLOAD}",
                status=CommandStatus.ESME_RINVMSGLEN,
            )
        return (Segment(short_message=data, data_coding=data_coding),)
    codec = codec_name(data_coding)
    udh_octets = 6 if ref_bits == 8 else 7
    if codec == "gsm":  # unpacked here, but packed on the air: 8 septets per 7 octets
        single, per_part = max_octets * 8 // 7, (max_octets - udh_octets) * 8 // 7
    elif codec == "utf-16-be":
        single, per_part = max_octets // 2 * 2, (max_octets - udh_octets) // 2 * 2
    else:
        single, per_part = max_octets, max_octets - udh_octets
    if len(data) <= single:
        return (Segment(short_message=data, data_coding=data_coding),)
    chunks = _chunks(data, per_part, codec)
    total = len(chunks)
    if total > MAX_PARTS:
        raise LocalProtocolError(
            f"message needs {total} parts; concatenation allows {MAX_PARTS}",
            status=CommandStatus.ESME_RINVMSGLEN,
        )
    if mode == "sar":
        return tuple(
            Segment(short_message=chunk, data_coding=data_coding, sar=SarInfo(ref, total, seq))
            for seq, chunk in enumerate(chunks, 1)
        )
    return tuple(
        Segment(
            short_message=concat_udh(ref, total, seq, ref_bits=ref_bits) + chunk,
            data_coding=data_coding,
            esm_class_udhi=True,
        )
        for seq, chunk in enumerate(chunks, 1)
    )


def _check_split_args(ref: int, ref_bits: int, max_octets: int) -> None:
    if ref_bits not in (8, 16):
        raise LocalProtocolError(f"ref_bits must be 8 or 16, not {ref_bits}")
    if not 0 <= ref < 1 << ref_bits:
        raise LocalProtocolError(f"ref {ref} does not fit {ref_bits} bits")
    if not 16 <= max_octets <= 140:
        raise LocalProtocolError(f"max_octets must be 16..140, not {max_octets}")


def _chunks(data: bytes, size: int, codec: str | None) -> list[bytes]:
    """Cut ``data`` into pieces of at most ``size`` octets, keeping ESC and surrogate pairs."""
    chunks = []
    start = 0
    while start < len(data):
        end = start + size
        if end < len(data):
            if codec == "gsm" and data[end - 1] == ESC:
                run = end - 1 - start - len(data[start : end - 1].rstrip(b"\x1b"))
                if run % 2 == 0:  # the last ESC opens a pair: keep it with its code
                    end -= 1
            elif codec == "utf-16-be" and 0xD8 <= data[end - 2] <= 0xDB:
                end -= 2  # high surrogate: keep it with its low half
        chunks.append(data[start:end])
        start = end
    return chunks


def parse_udh(short_message: bytes) -> tuple[ConcatInfo | None, bytes, bytes]:
    """Split a UDHI short_message into (concatenation, payload, UDH with its UDHL octet).

    Every IE is walked; unknown ones (ports 0x05, ...) are skipped. A concatenation IE with
    a wrong length, a total of 0 or a seq outside 1..total is ignored, as TS 23.040 says;
    if several are valid, the last wins. Raises ``RemoteProtocolError`` (ESME_RINVMSGLEN)
    when the message is empty, or the UDHL or an IE overruns its container.
    """
    if not short_message:
        raise _udh_error("esm_class has UDHI set but short_message is empty")
    end = 1 + short_message[0]
    if end > len(short_message):
        raise _udh_error(
            f"UDH length {short_message[0]} overruns the {len(short_message)}-octet short_message"
        )
    concat = None
    i = 1
    while i < end:
        if i + 2 > end or i + 2 + short_message[i + 1] > end:
            raise _udh_error(f"information element at UDH offset {i} overruns the UDH")
        iei, body = short_message[i], short_message[i + 2 : i + 2 + short_message[i + 1]]
        found = _concat_ie(iei, body)
        if found is not None and 1 <= found.seq <= found.total:
            concat = found
        i += 2 + len(body)
    return concat, short_message[end:], short_message[:end]


def _concat_ie(iei: int, body: bytes) -> ConcatInfo | None:
    if iei == IEI_CONCAT_8 and len(body) == 3:
        return ConcatInfo(body[0], body[1], body[2], 8)
    if iei == IEI_CONCAT_16 and len(body) == 4:
        return ConcatInfo(body[0] << 8 | body[1], body[2], body[3], 16)
    return None


def _udh_error(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, status=CommandStatus.ESME_RINVMSGLEN)


class Expired(msgspec.Struct, frozen=True):
    """A partial message given up: on ``timeout``, ``evicted`` for room, or ``superseded``
    by a part with the same reference but another total (the reference was reused)."""

    key: Key
    ref: int
    total: int
    received: tuple[int, ...]
    reason: Literal["timeout", "evicted", "superseded"]


class _Pending:
    __slots__ = ("deadline", "parts", "total")

    def __init__(self, total: int, deadline: float) -> None:
        self.total = total
        self.deadline = deadline
        self.parts: dict[int, bytes] = {}


class Reassembler:
    """Collects the parts of concatenated messages, in any order, for a bounded time.

    Parts are grouped by (key, reference kind, ref); ``key`` names the sender, e.g.
    (account, source_addr, destination_addr). A group lives ``timeout`` seconds from its
    first part. At most ``max_pending`` groups are held: a new one evicts the oldest, and
    each group holds at most 255 parts. Groups given up early (evicted, superseded) are
    reported by the next ``expire`` call; ``next_deadline`` is then due at once. At most
    ``max_pending`` such reports are kept (the oldest are dropped first).
    ``now`` should not go backwards; if it does, the latest value seen is used.
    """

    def __init__(self, max_pending: int, timeout: float) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, not {max_pending}")
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, not {timeout}")
        self._max_pending = max_pending
        self._timeout = timeout
        self._groups: dict[tuple[Key, int, int], _Pending] = {}  # oldest first
        self._reports: deque[Expired] = deque(maxlen=max_pending)
        self._reports_due: float | None = None
        self._now = float("-inf")

    def __len__(self) -> int:
        """The number of partial messages held."""
        return len(self._groups)

    def add(self, key: Key, info: ConcatInfo | SarInfo, payload: bytes, now: float) -> bytes | None:
        """Store one part; return the whole payload when this part completes the message.

        A repeated part is ignored (the first copy is kept). A one-part message is returned
        at once. Invalid SAR numbering raises ``RemoteProtocolError`` (ESME_RINVOPTPARAMVAL).
        """
        kind = _check_info(info)
        if info.total == 1:
            return payload
        self._now = max(self._now, now)
        group_id = (key, kind, info.ref)
        group = self._groups.get(group_id)
        if group is not None and group.total != info.total:
            self._give_up(group_id, "superseded")
            group = None
        if group is None:
            if len(self._groups) >= self._max_pending:
                self._give_up(next(iter(self._groups)), "evicted")
            group = self._groups[group_id] = _Pending(info.total, self._now + self._timeout)
        group.parts.setdefault(info.seq, payload)
        if len(group.parts) < group.total:
            return None
        del self._groups[group_id]
        return b"".join(group.parts[seq] for seq in range(1, group.total + 1))

    def expire(self, now: float) -> list[Expired]:
        """Drop and report partial messages whose time is up, and those given up early."""
        expired = list(self._reports)
        self._reports.clear()
        self._reports_due = None
        while self._groups:
            group_id, group = next(iter(self._groups.items()))
            if group.deadline > now:
                break
            expired.append(self._report(group_id, "timeout"))
        return expired

    def next_deadline(self) -> float | None:
        """When ``expire`` next has something to report, or None while nothing is pending."""
        if self._reports_due is not None:
            return self._reports_due
        return next(iter(self._groups.values())).deadline if self._groups else None

    def _give_up(
        self, group_id: tuple[Key, int, int], reason: Literal["evicted", "superseded"]
    ) -> None:
        self._reports.append(self._report(group_id, reason))
        if self._reports_due is None:
            self._reports_due = self._now

    def _report(
        self, group_id: tuple[Key, int, int], reason: Literal["timeout", "evicted", "superseded"]
    ) -> Expired:
        group = self._groups.pop(group_id)
        key, _, ref = group_id
        return Expired(key, ref, group.total, tuple(sorted(group.parts)), reason)


def _check_info(info: ConcatInfo | SarInfo) -> int:
    """Validate numbering; return the reference kind (8, 16, or 0 for SAR)."""
    if isinstance(info, SarInfo):
        if not (
            0 <= info.ref <= 0xFFFF and 1 <= info.total <= MAX_PARTS and 1 <= info.seq <= info.total
        ):
            raise RemoteProtocolError(
                f"SAR ref {info.ref}, segment {info.seq} of {info.total} is out of range",
                status=CommandStatus.ESME_RINVOPTPARAMVAL,
            )
        return 0
    if not (
        info.ref_bits in (8, 16)
        and 0 <= info.ref < 1 << info.ref_bits
        and 1 <= info.total <= MAX_PARTS
        and 1 <= info.seq <= info.total
    ):
        raise LocalProtocolError(f"invalid concatenation info {info!r}")
    return info.ref_bits
