"""Receipt deadlines: when each message a carrier accepted must have its final receipt.

A message accepted by a carrier is due its final receipt within the carrier's
``receipt_timeout``, and before its validity ends; past that it is final without one (see
:mod:`router.receipts`). Pure bookkeeping, wall time (Unix seconds) as a parameter.

One ordered map per carrier: its deadlines are added in time order (same timeout, a clock
that moves forward), so the due ones are at its front and a tick looks at no others. A
deadline cut short by the message's validity goes in one heap instead (validity differs
per message).
"""

from __future__ import annotations

import heapq


class ReceiptDeadlines:
    """Deadlines by message id: :meth:`add`, :meth:`drop` when the receipt comes,
    :meth:`due` to take those that passed."""

    def __init__(self) -> None:
        #: carrier → our id → deadline, in the order added (deadline order, see above)
        self._deadlines: dict[str, dict[str, float]] = {}
        #: Those cut short by their validity: a heap of (expiry, our id, carrier); an entry
        #: whose id left ``_capped_ids`` is dropped and skipped when due.
        self._capped: list[tuple[float, str, str]] = []
        self._capped_ids: set[str] = set()

    def __len__(self) -> int:
        return sum(map(len, self._deadlines.values())) + len(self._capped_ids)

    def add(self, message_id: str, carrier: str, deadline: float, expires_at: float | None) -> None:
        """``message_id`` (accepted by ``carrier``) is due its receipt by ``deadline``, or
        by ``expires_at`` when that is sooner (it then ends as EXPIRED)."""
        if expires_at is not None and expires_at < deadline:
            heapq.heappush(self._capped, (expires_at, message_id, carrier))
            self._capped_ids.add(message_id)
            return
        deadlines = self._deadlines.get(carrier)
        if deadlines is None:
            deadlines = self._deadlines[carrier] = {}
        deadlines[message_id] = deadline

    def awaits(self, message_id: str, carrier: str) -> bool:
        """Is ``message_id``'s receipt from ``carrier`` still awaited?"""
        deadlines = self._deadlines.get(carrier)
        if deadlines is not None and message_id in deadlines:
            return True
        return message_id in self._capped_ids

    def drop(self, message_id: str, carrier: str) -> None:
        """Its final receipt came: no deadline any more."""
        deadlines = self._deadlines.get(carrier)
        if deadlines is not None and deadlines.pop(message_id, None) is not None:
            return
        capped = self._capped_ids
        if message_id in capped:
            capped.discard(message_id)  # its heap entry is skipped when due...
            if len(self._capped) > 2 * len(capped) + 1024:
                # ...but not kept that long: the heap holds at most twice the live ones
                self._capped = [e for e in self._capped if e[1] in capped]
                heapq.heapify(self._capped)

    def due(self, now: float) -> list[tuple[str, str, bool]]:
        """Take every deadline passed at ``now``: (our id, carrier, ``expired``), where
        ``expired`` says its validity ended before the carrier's receipt timeout. The
        carriers' deadlines first, then the expired ones."""
        due: list[tuple[str, str, bool]] = []
        for carrier, deadlines in self._deadlines.items():
            while deadlines:
                message_id = next(iter(deadlines))
                if deadlines[message_id] > now:
                    break
                del deadlines[message_id]
                due.append((message_id, carrier, False))
        capped = self._capped
        while capped and capped[0][0] <= now:
            _, message_id, carrier = heapq.heappop(capped)
            if message_id in self._capped_ids:
                self._capped_ids.discard(message_id)
                due.append((message_id, carrier, True))
        return due
