"""The simulator's message table: what query_sm, cancel_sm and replace_sm act on.

Bounded: past ``capacity`` the oldest messages are forgotten first (a final one is simply
gone; a pending one is forgotten too, and its late timer finds nothing). ``pending`` counts
messages not yet in a final state, for the profile's queue bound (ESME_RMSGQFUL).
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from smppcore.constants import MessageState
from smppcore.receipt import is_final


class SimMessage(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One message as the carrier holds it. ``fate`` is the final state drawn at submit."""

    id: str
    """The message_id given to the client (shared by the destinations of a submit_multi)."""
    key: str = ""
    """The table key: ``id``, or ``id/n`` for the n-th destination of a submit_multi."""
    system_id: str
    service_type: str = ""
    source_ton: int = 0
    source_npi: int = 0
    source: str = ""
    dest_ton: int = 0
    dest_npi: int = 0
    destination: str = ""
    data_coding: int = 0
    esm_class: int = 0
    registered_delivery: int = 0
    short_message: bytes = b""
    submitted_at: datetime
    scheduled_at: datetime | None = None
    expires_at: datetime | None = None
    state: MessageState = MessageState.ENROUTE
    error: int = 0
    final_at: datetime | None = None
    fate: MessageState = MessageState.DELIVERED
    fate_error: int = 0
    version: int = 0
    """Bumped by replace/cancel so that timers set for an older version do nothing."""

    @property
    def table_key(self) -> str:
        return self.key or self.id


class MessageTable:
    """Messages by key, oldest first, at most ``capacity``."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: dict[str, SimMessage] = {}
        self.pending = 0
        #: pending messages per system_id (each account's queue bound is its own)
        self.pending_by: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._items)

    def add(self, msg: SimMessage) -> None:
        items = self._items
        while len(items) >= self.capacity:
            old = items.pop(next(iter(items)))
            if not is_final(old.state):
                self._count(old.system_id, -1)
        items[msg.table_key] = msg
        if not is_final(msg.state):
            self._count(msg.system_id, 1)

    def put(self, msg: SimMessage) -> None:
        """Replace a message with a new version of itself (same key)."""
        key = msg.table_key
        old = self._items.get(key)
        if old is None:
            return
        delta = (not is_final(msg.state)) - (not is_final(old.state))
        if delta:
            self._count(msg.system_id, delta)
        self._items[key] = msg

    def _count(self, system_id: str, delta: int) -> None:
        self.pending += delta
        self.pending_by[system_id] = self.pending_by.get(system_id, 0) + delta

    def get(self, key: str) -> SimMessage | None:
        return self._items.get(key)

    def group(self, message_id: str) -> list[SimMessage]:
        """Every message given ``message_id``: one, or each destination of a submit_multi."""
        first = self._items.get(message_id)
        if first is None:
            return []
        out = [first]
        n = 2
        while (more := self._items.get(f"{message_id}/{n}")) is not None:
            out.append(more)
            n += 1
        return out

    def pending_matching(
        self, system_id: str, source: str, destination: str, service_type: str
    ) -> list[SimMessage]:
        """Pending messages of ``system_id`` from ``source`` to ``destination`` (cancel_sm)."""
        return [
            m
            for m in self._items.values()
            if m.system_id == system_id
            and not is_final(m.state)
            and m.source == source
            and (not destination or m.destination == destination)
            and (not service_type or m.service_type == service_type)
        ]


__all__ = ["MessageState", "MessageTable", "SimMessage"]
