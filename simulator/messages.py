"""The simulator's message table: what query_sm, cancel_sm and replace_sm act on.

Bounded: past ``capacity`` the oldest messages are forgotten first (a final one is simply
gone; a pending one is forgotten too, and its late timer finds nothing). ``pending`` counts
messages not yet in a final state, for the profile's queue bound (ESME_RMSGQFUL).
"""

from __future__ import annotations

from collections import deque
from datetime import datetime

import msgspec

from smppcore.constants import MessageState
from smppcore.receipt import is_final

_NOT_FINAL = frozenset(s for s in MessageState if not is_final(s))
_replace = msgspec.structs.replace


class SimMessage(msgspec.Struct, frozen=True, gc=False):
    """One message as the carrier holds it. ``fate`` is the final state drawn at submit.

    Fields may be given by position, in this order: the carrier builds one per message,
    and keyword construction of a struct this wide costs several times more."""

    id: str
    """The message_id given to the client (shared by the destinations of a submit_multi)."""
    system_id: str
    submitted_at: datetime
    key: str = ""
    """The table key: ``id``, or ``id/n`` for the n-th destination of a submit_multi."""
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
        # Keys in insertion order, for eviction: ``next(iter(dict))`` after many pops from
        # the front scans the dict's dead entries, tens of microseconds once full.
        self._order: deque[str] = deque()
        self.pending = 0
        #: pending messages per system_id (each account's queue bound is its own)
        self.pending_by: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._items)

    def add(self, msg: SimMessage) -> None:
        items = self._items
        order = self._order
        while len(items) >= self.capacity:
            # None: a key added twice went at its first place (as in a dict), not again.
            old = items.pop(order.popleft(), None)
            if old is not None and old.state in _NOT_FINAL:
                self._count(old.system_id, -1)
        key = msg.key or msg.id
        items[key] = msg
        order.append(key)
        if msg.state in _NOT_FINAL:
            self.pending += 1
            by = self.pending_by
            by[msg.system_id] = by.get(msg.system_id, 0) + 1

    def settle(self, key: str, version: int, final_at: datetime) -> SimMessage | None:
        """Move the message ``key`` to its drawn fate (``fate``/``fate_error``) at
        ``final_at`` and return it — unless it is gone, at another ``version`` or final."""
        msg = self._items.get(key)
        if msg is None or msg.version != version or msg.state not in _NOT_FINAL:
            return None
        done = _replace(msg, state=msg.fate, error=msg.fate_error, final_at=final_at)
        self._items[key] = done
        if done.state not in _NOT_FINAL:
            self.pending -= 1
            by = self.pending_by
            by[msg.system_id] -= 1
        return done

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

    def last(self, n: int) -> list[SimMessage]:
        """The ``n`` messages added last, newest first (the console's list)."""
        out: list[SimMessage] = []
        for key in reversed(self._order):
            msg = self._items.get(key)
            if msg is not None:
                out.append(msg)
                if len(out) >= n:
                    break
        return out

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
