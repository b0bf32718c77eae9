"""The bounded in-memory priority queue of messages waiting to go upstream.

Pure: no asyncio, no clock. ``now`` is Unix wall time (the times in :class:`Message`).

Shape
-----
* Four ready levels, one per ``Message.priority`` (0 lowest .. 3 highest), each FIFO.
* A heap of scheduled messages by ``schedule_at``; :meth:`release_due` moves the due ones to
  the back of their level, earliest first.
* A heap of expiries by ``expires_at`` (ready and scheduled messages alike), so
  :meth:`expire` costs O(k log n) for k expired messages, never a scan.
* An index by message id, for cancel_sm / replace_sm in O(1) average.

Removal is lazy: a removed, replaced or popped message leaves a dead slot behind in the
structures it was in; slots are skipped when met and the structures are compacted once the
dead outnumber the live (amortised O(1), memory bounded by about twice the live count).

Bound
-----
``max_size`` counts ready + scheduled messages, plus expired ones found but not yet taken by
:meth:`take_expired` (so a caller slow to report expiries is pushed back instead of growing a
list). :meth:`put` answers False when full (the caller answers ESME_RMSGQFUL).
:meth:`requeue` is the exception: a message coming back for retry was already accepted and
counted once, so it is always taken even beyond ``max_size`` (by at most the number of
messages in flight upstream); nothing accepted is ever dropped.

Waking a waiter
---------------
``on_ready`` (optional) is called after any call that made a message ready (put, release_due,
requeue, replace) or moved :meth:`next_due` earlier. The dispatcher passes ``event.set`` of
an asyncio.Event it owns and waits on it with a deadline of ``next_due()``.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable

from router.model import Message

LEVELS = 4
"""Priorities 0..3."""

_READY = 0
_SCHEDULED = 1
_GONE = 2

_SLACK = 64
"""Dead entries tolerated beyond the live count before a structure is compacted."""


class _Slot:
    """One queued message and where it is; ``state`` is _GONE once it left the queue."""

    __slots__ = ("msg", "state")

    def __init__(self, msg: Message, state: int) -> None:
        self.msg = msg
        self.state = state


class MessageQueue:
    """Bounded priority queue: FIFO within each of 4 priorities, scheduled delivery, expiry."""

    __slots__ = (
        "_dead_ready",
        "_expired",
        "_expiry",
        "_index",
        "_levels",
        "_per_level",
        "_ready",
        "_sched",
        "_scheduled",
        "_seq",
        "max_size",
        "on_ready",
    )

    def __init__(self, max_size: int, on_ready: Callable[[], None] | None = None) -> None:
        if max_size < 1:
            raise ValueError("max_size must be >= 1")
        self.max_size = max_size
        self.on_ready = on_ready
        self._levels: tuple[deque[_Slot], ...] = tuple(deque() for _ in range(LEVELS))
        self._per_level = [0] * LEVELS  # live ready slots per level
        self._ready = 0
        self._dead_ready = 0  # dead slots still in the level deques
        self._sched: list[tuple[float, int, _Slot]] = []
        self._scheduled = 0
        self._expiry: list[tuple[float, int, _Slot]] = []
        self._index: dict[str, _Slot] = {}
        self._expired: list[Message] = []
        self._seq = 0  # tie-break in the heaps: FIFO among equal times

    # -- sizes -------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Messages waiting: ready plus scheduled (not the expired awaiting take_expired)."""
        return self._ready + self._scheduled

    @property
    def ready_count(self) -> int:
        return self._ready

    @property
    def scheduled_count(self) -> int:
        return self._scheduled

    @property
    def expired_count(self) -> int:
        """Expired messages found and not yet taken by :meth:`take_expired`."""
        return len(self._expired)

    def by_priority(self) -> tuple[int, ...]:
        """Ready messages per priority, index = priority (0..3)."""
        return tuple(self._per_level)

    def oldest_submitted(self) -> float | None:
        """The earliest ``submitted_at`` among the waiting messages (ready or scheduled);
        None when none waits. A scan: for the admin API, not for the dispatcher."""
        return min((slot.msg.submitted_at for slot in self._index.values()), default=None)

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._index

    def is_full(self) -> bool:
        return self._ready + self._scheduled + len(self._expired) >= self.max_size

    # -- internals -----------------------------------------------------------------------------

    def _wake(self) -> None:
        if self.on_ready is not None:
            self.on_ready()

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    @staticmethod
    def _level(msg: Message) -> int:
        p = msg.priority
        if not 0 <= p < LEVELS:
            raise ValueError(f"priority {p} is not 0..{LEVELS - 1}")
        return p

    def _push_expiry(self, slot: _Slot) -> None:
        exp = slot.msg.expires_at
        if exp is not None:
            heapq.heappush(self._expiry, (exp, self._next_seq(), slot))

    def _push_scheduled(self, slot: _Slot) -> bool:
        """Into the schedule heap; True if this moved next_due earlier."""
        at = slot.msg.schedule_at
        assert at is not None
        earlier = self._peek_due() is None or at < self._sched[0][0]
        slot.state = _SCHEDULED
        heapq.heappush(self._sched, (at, self._next_seq(), slot))
        self._scheduled += 1
        return earlier

    def _append_ready(self, slot: _Slot, *, front: bool = False) -> None:
        level = slot.msg.priority
        slot.state = _READY
        if front:
            self._levels[level].appendleft(slot)
        else:
            self._levels[level].append(slot)
        self._per_level[level] += 1
        self._ready += 1

    def _kill(self, slot: _Slot) -> None:
        """Take a live slot out of the counts and the index; its entries become dead."""
        if slot.state == _READY:
            self._per_level[slot.msg.priority] -= 1
            self._ready -= 1
            self._dead_ready += 1
        elif slot.state == _SCHEDULED:
            self._scheduled -= 1
        slot.state = _GONE
        del self._index[slot.msg.id]

    def _compact(self) -> None:
        live = len(self._index)
        if self._dead_ready > self._ready + _SLACK:
            for level in self._levels:
                kept = [s for s in level if s.state == _READY]
                level.clear()
                level.extend(kept)
            self._dead_ready = 0
        if len(self._sched) > 2 * self._scheduled + _SLACK:
            self._sched = [e for e in self._sched if self._sched_valid(e)]
            heapq.heapify(self._sched)
        if len(self._expiry) > 2 * live + _SLACK:
            self._expiry = [e for e in self._expiry if self._expiry_valid(e)]
            heapq.heapify(self._expiry)

    @staticmethod
    def _sched_valid(entry: tuple[float, int, _Slot]) -> bool:
        at, _, slot = entry
        return slot.state == _SCHEDULED and slot.msg.schedule_at == at

    @staticmethod
    def _expiry_valid(entry: tuple[float, int, _Slot]) -> bool:
        exp, _, slot = entry
        return slot.state != _GONE and slot.msg.expires_at == exp

    def _peek_due(self) -> float | None:
        sched = self._sched
        while sched and not self._sched_valid(sched[0]):
            heapq.heappop(sched)
        return sched[0][0] if sched else None

    # -- operations ----------------------------------------------------------------------------

    def put(self, msg: Message, now: float) -> bool:
        """Queue a newly accepted message; False (nothing queued) when the queue is full.

        With ``schedule_at`` after ``now`` it waits in the schedule until due. A message
        already expired is taken and reported by the next :meth:`pop_ready` or :meth:`expire`.
        Raises ValueError for a priority outside 0..3 or an id already queued.
        """
        self._level(msg)
        if msg.id in self._index:
            raise ValueError(f"message {msg.id!r} is already queued")
        if self.is_full():
            return False
        slot = _Slot(msg, _GONE)
        self._index[msg.id] = slot
        self._push_expiry(slot)
        if msg.schedule_at is not None and msg.schedule_at > now:
            if self._push_scheduled(slot):
                self._wake()
        else:
            self._append_ready(slot)
            self._wake()
        return True

    def requeue(self, msg: Message) -> None:
        """Put back a message returning for retry: at the FRONT of its level, ready now (its
        schedule already passed), and even beyond ``max_size`` (see the module docstring).
        Raises ValueError for a bad priority or an id already queued."""
        self._level(msg)
        if msg.id in self._index:
            raise ValueError(f"message {msg.id!r} is already queued")
        slot = _Slot(msg, _GONE)
        self._index[msg.id] = slot
        self._push_expiry(slot)
        self._append_ready(slot, front=True)
        self._wake()

    def release_due(self, now: float) -> int:
        """Move scheduled messages due at ``now`` to the back of their level, earliest first;
        how many moved."""
        moved = 0
        sched = self._sched
        while sched and sched[0][0] <= now:
            entry = heapq.heappop(sched)
            if not self._sched_valid(entry):
                continue
            slot = entry[2]
            self._scheduled -= 1
            self._append_ready(slot)
            moved += 1
        if moved:
            self._wake()
        return moved

    def next_due(self) -> float | None:
        """When the earliest scheduled message becomes due; None if none is scheduled."""
        return self._peek_due()

    def pop_ready(self, now: float) -> Message | None:
        """Release what is due, then take the oldest ready message of the highest priority.

        Messages whose ``expires_at <= now`` met on the way are set aside for
        :meth:`take_expired`. None when nothing is ready.
        """
        self.release_due(now)
        try:
            for level in range(LEVELS - 1, -1, -1):
                if not self._per_level[level]:
                    continue
                dq = self._levels[level]
                while dq:
                    slot = dq.popleft()
                    if slot.state != _READY:
                        self._dead_ready -= 1
                        continue
                    msg = slot.msg
                    self._kill(slot)
                    self._dead_ready -= 1  # popped, so not left behind in the deque
                    if msg.expires_at is not None and msg.expires_at <= now:
                        self._expired.append(msg)
                        continue
                    return msg
            return None
        finally:
            self._compact()

    def expire(self, now: float) -> None:
        """Set aside every queued message (ready or scheduled) whose ``expires_at <= now``."""
        expiry = self._expiry
        while expiry and expiry[0][0] <= now:
            entry = heapq.heappop(expiry)
            if not self._expiry_valid(entry):
                continue
            slot = entry[2]
            self._expired.append(slot.msg)
            self._kill(slot)
        self._compact()

    def take_expired(self) -> list[Message]:
        """The expired messages found so far, in the order found (caller reports them EXPIRED).
        Taking them frees their places in the bound."""
        out, self._expired = self._expired, []
        return out

    def remove(self, message_id: str) -> Message | None:
        """Take a queued (ready or scheduled) message out, for cancel_sm; None if not queued."""
        slot = self._index.get(message_id)
        if slot is None:
            return None
        msg = slot.msg
        self._kill(slot)
        self._compact()
        return msg

    def replace(self, msg: Message) -> bool:
        """Swap the queued message with ``msg.id`` for ``msg`` (replace_sm); False if none.

        Same priority and ``schedule_at``: it keeps its place. Otherwise it is queued anew: a
        new ``schedule_at`` (or a scheduled one with a new priority) goes to the schedule and is
        released to the back of its level by the next :meth:`release_due` once due (at once
        if already due); a ready message with a new priority, or one whose ``schedule_at`` was
        cleared, goes to the back of its level.
        """
        slot = self._index.get(msg.id)
        if slot is None:
            return False
        self._level(msg)
        old = slot.msg
        if msg.priority == old.priority and msg.schedule_at == old.schedule_at:
            slot.msg = msg
            if msg.expires_at != old.expires_at:
                self._push_expiry(slot)
            self._compact()
            return True
        was_scheduled = slot.state == _SCHEDULED
        self._kill(slot)
        fresh = _Slot(msg, _GONE)
        self._index[msg.id] = fresh
        self._push_expiry(fresh)
        if msg.schedule_at is not None and (was_scheduled or msg.schedule_at != old.schedule_at):
            earlier = self._push_scheduled(fresh)
        else:
            self._append_ready(fresh)
            earlier = True
        self._compact()
        if earlier:
            self._wake()
        return True
