"""Helpers for the carrier simulator's MO, admin and CLI tests: an ESME that takes
deliver_sm, the two event loops, and decoding of (possibly concatenated) MO."""

from __future__ import annotations

import asyncio

from smppcore.aio import Connection, Handler
from smppcore.constants import EsmClass
from smppcore.pdu import DeliverSm, DeliverSmResp, Pdu
from smppcore.segment import parse_udh
from smppcore.text import decode_text

#: Every wait in these tests is bounded by this (seconds).
DEADLINE = 10.0


class Phone(Handler):
    """The ESME side: answers deliver_sm and queues it; records how the session ended."""

    def __init__(self) -> None:
        self.delivered: asyncio.Queue[DeliverSm] = asyncio.Queue()
        self.closed = asyncio.Event()
        self.close_reason = ""

    def request_received(self, conn: Connection, pdu: Pdu) -> None:
        if isinstance(pdu, DeliverSm):
            conn.respond(DeliverSmResp(pdu.sequence_number))
            self.delivered.put_nowait(pdu)
        else:
            super().request_received(conn, pdu)

    def session_closed(self, conn: Connection, reason: str) -> None:
        self.close_reason = reason
        self.closed.set()

    async def next_mo(self, timeout: float = DEADLINE) -> DeliverSm:
        """The next deliver_sm that is not a receipt."""
        async with asyncio.timeout(timeout):
            while True:
                pdu = await self.delivered.get()
                if not pdu.esm_class & (
                    EsmClass.DELIVERY_RECEIPT | EsmClass.INTERMEDIATE_NOTIFICATION
                ):
                    return pdu

    async def next_message(self, timeout: float = DEADLINE) -> tuple[str, list[DeliverSm]]:
        """The text of the next MO message (all its parts, in order) and the parts."""
        first = await self.next_mo(timeout)
        parts = [first]
        if first.esm_class & EsmClass.UDHI:
            concat, _, _ = parse_udh(first.short_message)
            assert concat is not None
            while len(parts) < concat.total:
                parts.append(await self.next_mo(timeout))
        return mo_text(parts), parts


def mo_text(parts: list[DeliverSm]) -> str:
    """The text of an MO message from its parts (in any order)."""
    if len(parts) == 1 and not parts[0].esm_class & EsmClass.UDHI:
        return decode_text(parts[0].short_message, parts[0].data_coding)
    by_seq: dict[int, bytes] = {}
    for part in parts:
        assert part.esm_class & EsmClass.UDHI
        concat, payload, _ = parse_udh(part.short_message)
        assert concat is not None
        assert concat.total == len(parts)
        by_seq[concat.seq] = payload
    assert sorted(by_seq) == list(range(1, len(parts) + 1))
    data = b"".join(by_seq[seq] for seq in sorted(by_seq))
    return decode_text(data, parts[0].data_coding)
