"""The bounded in-memory priority queue of messages waiting to go upstream.

Pure: no asyncio, no clock. ``now`` is Unix wall time (the times in :class:`Message`).

Shape
-----
* Four ready levels, one per ``Message.priority`` (0 lowest .. 3 highest), each FIFO.
* A heap of scheduled messages by ``schedule_at``; :meth:`release_due` moves the due ones to
  the back of their level, earliest first.
* Parking lots: messages that can go nowhere now (every carrier that could take them is
  down) wait in the lot of their :data:`ParkKey` (the carriers that could take them), FIFO
  per priority, and are not looked at until the router wakes the lot (:meth:`unpark`, all
  of them, or :meth:`unpark_first`, one trial message). Parked messages cost no work while
  they wait, and little memory: each is kept packed (one msgpack array of its fields, about
  a third of the Message's size) until it is popped again.
* Expiry buckets: every queued message (ready, scheduled or parked) with an ``expires_at``
  sits in the bucket of its 1/64 s tick, a dict; a heap orders the ticks. :meth:`expire`
  costs O(k + log n) for k expired messages, never a scan, and a message that leaves the
  queue leaves its bucket at once (O(1)): nothing dead accumulates there. Buckets left
  empty are kept for reuse until they outnumber the others, then swept.
* An index by message id, for cancel_sm / replace_sm in O(1) average.

Removal from the level deques and the lots is lazy: a removed, replaced or popped message
leaves a dead slot behind; slots are skipped when met (and trimmed from the front of a lot
at once), and a structure is compacted once its dead outnumber its live (amortised O(1),
memory bounded by about twice the live count). Every operation is O(log n) or better,
except :meth:`unpark` (O(k) for the k messages it wakes) and :meth:`oldest_submitted`
(a scan, for the admin API).

Bound
-----
``max_size`` counts ready + scheduled + parked messages, plus expired ones found but not yet
taken by :meth:`take_expired` (so a caller slow to report expiries is pushed back instead of
growing a list). :meth:`put` answers False when full (the caller answers ESME_RMSGQFUL).
:meth:`requeue` and :meth:`park` are the exception: a message coming back for retry, or
being parked after it was popped, was already accepted and counted once, so it is always
taken even beyond ``max_size`` (by at most the number of messages in flight upstream or
being dispatched); nothing accepted is ever dropped.

Waking a waiter
---------------
``on_ready`` (optional) is called after any call that made a message ready (put,
release_due, requeue, replace, unpark) or moved :meth:`next_due` earlier. The dispatcher
passes a function that schedules a dispatch pass; it waits for the next due time with a
timer (``next_due()``, ``next_expiry()``).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from router.model import Message

LEVELS = 4
"""Priorities 0..3."""

ParkKey = frozenset[str]
"""What a parked message waits for: the carriers that could take it (any one of them)."""

_READY = 0
_SCHEDULED = 1
_GONE = 2
_PARKED = 3

_SLACK = 64
"""Dead entries tolerated beyond the live count before a structure is compacted."""

_TICKS = 64
"""Expiry buckets per second (a power of two: ``t * _TICKS`` is exact)."""

#: A parked message is kept packed: its fields as one msgpack array (about 240 bytes for a
#: 160-character text, against about 730 for the Message with its strings, addresses and
#: floats). A million parked messages fit in memory; it is unpacked when popped.
_Packed: Any = msgspec.defstruct(
    "_PackedMessage",
    [(f.name, f.type) for f in msgspec.structs.fields(Message)],
    array_like=True,
    frozen=True,
    gc=False,
)
_ENCODER = msgspec.msgpack.Encoder()
_DECODER: Any = msgspec.msgpack.Decoder(_Packed)


def _pack(msg: Message) -> bytes:
    return _ENCODER.encode(msgspec.structs.astuple(msg))


def _unpack(data: bytes) -> Message:
    return Message(**msgspec.structs.asdict(_DECODER.decode(data)))


class _Slot(msgspec.Struct, gc=False, eq=False):
    """One queued message and where it is; ``state`` is _GONE once it left the queue;
    ``lot`` is its parking lot while ``state`` is _PARKED. ``msg`` is packed (bytes) when
    it was parked, until it is popped.

    Internal bookkeeping, mutable, compared and hashed by identity. Not tracked by the
    garbage collector (``gc=False``): a full collection would otherwise walk every queued
    message (~0.4 s with a million) and stall the loop. So it must never sit in a cycle:
    ``lot`` is cleared whenever the slot leaves its lot (the lot's deques hold it)."""

    msg: Message | bytes
    state: int
    lot: _Lot | None = None

    def message(self) -> Message:
        msg = self.msg
        return _unpack(msg) if isinstance(msg, bytes) else msg


class _Lot:
    """The parked messages of one key: a FIFO per priority, with lazily removed slots.

    Once woken (``woken``), the lot is out of the queue's lots and its slots sit in the
    ready levels: a slot still _PARKED in a woken lot counts as ready. Waking a lot so
    flips all its slots at once, without touching each."""

    __slots__ = ("dead", "key", "levels", "live", "per_level", "woken")

    def __init__(self, key: ParkKey) -> None:
        self.key = key
        self.levels: tuple[deque[_Slot], ...] = tuple(deque() for _ in range(LEVELS))
        self.per_level = [0] * LEVELS  # live slots per priority
        self.live = 0
        self.dead = 0
        self.woken = False

    def trim(self, level: int) -> None:
        """Drop the dead slots at the front of ``level``."""
        dq = self.levels[level]
        while dq and dq[0].state != _PARKED:
            dq.popleft()
            self.dead -= 1

    def compact(self) -> None:
        for dq in self.levels:
            kept = [s for s in dq if s.state == _PARKED]
            dq.clear()
            dq.extend(kept)
        self.dead = 0


def _is_ready(slot: _Slot) -> bool:
    """Ready: put there, or parked in a lot since woken."""
    state = slot.state
    if state == _READY:
        return True
    lot = slot.lot
    return state == _PARKED and lot is not None and lot.woken


class MessageQueue:
    """Bounded priority queue: FIFO within each of 4 priorities, scheduled delivery, expiry,
    parking lots."""

    __slots__ = (
        "_buckets",
        "_dead_ready",
        "_empty_buckets",
        "_expired",
        "_index",
        "_levels",
        "_lots",
        "_parked",
        "_per_level",
        "_ready",
        "_sched",
        "_scheduled",
        "_seq",
        "_ticks",
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
        self._lots: dict[ParkKey, _Lot] = {}
        self._parked = 0
        #: tick (int(expires_at * _TICKS)) → the slots expiring in it, in insertion order
        self._buckets: dict[int, dict[_Slot, None]] = {}
        #: Buckets left empty: kept (a shallow queue empties and refills the bucket of the
        #: current tick with every message) until they outnumber the others, then swept.
        self._empty_buckets = 0
        #: heap of the ticks of ``_buckets``; may hold ticks of buckets gone since
        self._ticks: list[int] = []
        self._index: dict[str, _Slot] = {}
        self._expired: list[Message] = []
        self._seq = 0  # tie-break in the schedule heap: FIFO among equal times

    # -- sizes -------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Messages waiting: ready, scheduled and parked (not the expired awaiting
        take_expired)."""
        return self._ready + self._scheduled + self._parked

    @property
    def ready_count(self) -> int:
        return self._ready

    @property
    def scheduled_count(self) -> int:
        return self._scheduled

    @property
    def parked_count(self) -> int:
        """Messages parked until a carrier that could take them comes back."""
        return self._parked

    @property
    def expired_count(self) -> int:
        """Expired messages found and not yet taken by :meth:`take_expired`."""
        return len(self._expired)

    def by_priority(self) -> tuple[int, ...]:
        """Ready messages per priority, index = priority (0..3)."""
        return tuple(self._per_level)

    def lots(self) -> dict[ParkKey, int]:
        """Each parking lot with messages in it: key → messages parked there."""
        return {key: lot.live for key, lot in self._lots.items()}

    def parked_in(self, key: ParkKey) -> int:
        """Messages parked under ``key``."""
        lot = self._lots.get(key)
        return 0 if lot is None else lot.live

    def oldest_submitted(self) -> float | None:
        """The earliest ``submitted_at`` among the waiting messages; None when none waits.
        Ready and scheduled messages are scanned (for the admin API, not the dispatcher);
        of the parked ones, the first of each priority of each lot is read (they are
        parked in the order they were queued)."""
        slots = [s for level in self._levels for s in level if _is_ready(s)]
        slots += [e[2] for e in self._sched if self._sched_valid(e)]
        for lot in self._lots.values():
            for level in range(LEVELS):
                lot.trim(level)
                if lot.levels[level]:
                    slots.append(lot.levels[level][0])
        return min((s.message().submitted_at for s in slots), default=None)

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._index

    def is_full(self) -> bool:
        return self._ready + self._scheduled + self._parked + len(self._expired) >= self.max_size

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

    def _add_expiry(self, slot: _Slot, msg: Message) -> None:
        exp = msg.expires_at
        if exp is None:
            return
        tick = int(exp * _TICKS)
        bucket = self._buckets.get(tick)
        if bucket is None or not bucket:
            if bucket is None:
                bucket = self._buckets[tick] = {}
            else:
                self._empty_buckets -= 1
            # Every bucket with slots has its tick in the heap (an empty one may not).
            ticks = self._ticks
            heapq.heappush(ticks, tick)
            if len(ticks) > 2 * len(self._buckets) + _SLACK:  # ticks of buckets gone
                self._sweep()
        bucket[slot] = None

    def _sweep(self) -> None:
        """Drop the empty buckets and rebuild the heap of ticks."""
        self._buckets = {t: b for t, b in self._buckets.items() if b}
        self._ticks = list(self._buckets)
        heapq.heapify(self._ticks)
        self._empty_buckets = 0

    def _drop_expiry(self, slot: _Slot, msg: Message) -> None:
        exp = msg.expires_at
        if exp is None:
            return
        bucket = self._buckets.get(int(exp * _TICKS))
        if bucket is not None and slot in bucket:
            del bucket[slot]
            if not bucket:
                self._empty_buckets += 1
                if self._empty_buckets > len(self._buckets) // 2 + _SLACK:
                    self._sweep()

    def _push_scheduled(self, slot: _Slot, msg: Message) -> bool:
        """Into the schedule heap; True if this moved next_due earlier."""
        at = msg.schedule_at
        assert at is not None
        earlier = self._peek_due() is None or at < self._sched[0][0]
        slot.state = _SCHEDULED
        heapq.heappush(self._sched, (at, self._next_seq(), slot))
        self._scheduled += 1
        return earlier

    def _append_ready(self, slot: _Slot, level: int, *, front: bool = False) -> None:
        slot.state = _READY
        if front:
            self._levels[level].appendleft(slot)
        else:
            self._levels[level].append(slot)
        self._per_level[level] += 1
        self._ready += 1

    def _park_slot(self, slot: _Slot, key: ParkKey, level: int) -> None:
        lot = self._lots.get(key)
        if lot is None:
            lot = self._lots[key] = _Lot(key)
        slot.state = _PARKED
        slot.lot = lot
        lot.levels[level].append(slot)
        lot.per_level[level] += 1
        lot.live += 1
        self._parked += 1

    def _kill(self, slot: _Slot, msg: Message) -> None:
        """Take a live slot (of ``msg``) out of the counts, the index and its expiry bucket;
        its entries in the levels, the schedule or a lot become dead."""
        state = slot.state
        lot = slot.lot
        slot.state = _GONE
        slot.lot = None
        if state == _READY or (state == _PARKED and lot is not None and lot.woken):
            self._per_level[msg.priority] -= 1
            self._ready -= 1
            self._dead_ready += 1
        elif state == _SCHEDULED:
            self._scheduled -= 1
        elif state == _PARKED:
            assert lot is not None
            self._parked -= 1
            lot.per_level[msg.priority] -= 1
            lot.live -= 1
            lot.dead += 1
            if lot.live == 0:
                if self._lots.get(lot.key) is lot:
                    del self._lots[lot.key]
                for dq in lot.levels:
                    dq.clear()
            else:
                lot.trim(msg.priority)
                if lot.dead > lot.live + _SLACK:
                    lot.compact()
        self._drop_expiry(slot, msg)
        del self._index[msg.id]

    def _compact(self) -> None:
        if self._dead_ready > self._ready + _SLACK:
            for level in self._levels:
                kept = [s for s in level if _is_ready(s)]
                level.clear()
                level.extend(kept)
            self._dead_ready = 0
        if len(self._sched) > 2 * self._scheduled + _SLACK:
            self._sched = [e for e in self._sched if self._sched_valid(e)]
            heapq.heapify(self._sched)

    @staticmethod
    def _sched_valid(entry: tuple[float, int, _Slot]) -> bool:
        at, _, slot = entry
        msg = slot.msg  # a scheduled slot is never packed
        return slot.state == _SCHEDULED and isinstance(msg, Message) and msg.schedule_at == at

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
        self._add_expiry(slot, msg)
        if msg.schedule_at is not None and msg.schedule_at > now:
            if self._push_scheduled(slot, msg):
                self._wake()
        else:
            self._append_ready(slot, msg.priority)
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
        self._add_expiry(slot, msg)
        self._append_ready(slot, msg.priority, front=True)
        self._wake()

    def park(self, msg: Message, key: ParkKey) -> None:
        """Park a message that no carrier can take now (it was popped, so it was accepted):
        at the back of its priority in the lot of ``key``, until :meth:`unpark` or
        :meth:`unpark_first` wakes it; even beyond ``max_size``. Its validity still runs
        (:meth:`expire`), and cancel / replace still find it. Raises ValueError for a bad
        priority or an id already queued."""
        self._level(msg)
        if msg.id in self._index:
            raise ValueError(f"message {msg.id!r} is already queued")
        slot = _Slot(_pack(msg), _GONE)
        self._index[msg.id] = slot
        self._add_expiry(slot, msg)
        self._park_slot(slot, key, msg.priority)

    def unpark(self, key: ParkKey) -> int:
        """Wake every message parked under ``key``: each goes to the FRONT of its ready
        level (they were popped before anything now ready), in the order they were parked.
        How many woke. The lot's slots are not touched one by one (the lot is marked
        woken); the deques are spliced in C, ~5 ms for a million."""
        lot = self._lots.pop(key, None)
        if lot is None:
            return 0
        lot.woken = True
        for level in range(LEVELS):
            dq = lot.levels[level]
            if dq:
                self._levels[level].extendleft(reversed(dq))
                dq.clear()
                self._per_level[level] += lot.per_level[level]
        self._dead_ready += lot.dead
        woken = lot.live
        self._ready += woken
        self._parked -= woken
        if woken:
            self._wake()
        return woken

    def unpark_first(self, keys: Iterable[ParkKey]) -> Message | None:
        """Wake ONE message (a breaker's trial): of the lots of ``keys``, the first message of
        the highest priority, the earliest submitted among the lots; to the front of its
        ready level. None when those lots are empty. O(number of keys)."""
        best: tuple[int, float] | None = None
        chosen: _Lot | None = None
        for key in keys:
            lot = self._lots.get(key)
            if lot is None:
                continue
            for level in range(LEVELS - 1, -1, -1):
                lot.trim(level)
                dq = lot.levels[level]
                if dq:
                    rank = (level, -dq[0].message().submitted_at)
                    if best is None or rank > best:
                        best, chosen = rank, lot
                    break
        if best is None or chosen is None:
            return None
        slot = chosen.levels[best[0]].popleft()
        chosen.per_level[best[0]] -= 1
        chosen.live -= 1
        self._parked -= 1
        if chosen.live == 0:
            del self._lots[chosen.key]
        slot.lot = None
        self._append_ready(slot, best[0], front=True)
        self._wake()
        return slot.message()

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
            self._append_ready(slot, slot.message().priority)
            moved += 1
        if moved:
            self._wake()
        return moved

    def next_due(self) -> float | None:
        """When the earliest scheduled message becomes due; None if none is scheduled."""
        return self._peek_due()

    def next_expiry(self) -> float | None:
        """A time by which :meth:`expire` finds the next message to expire (at most 1/64 s
        after its ``expires_at``); None when no queued message has a validity."""
        ticks = self._ticks
        buckets = self._buckets
        while ticks and not buckets.get(ticks[0]):  # gone, or empty (kept for reuse)
            heapq.heappop(ticks)
        return (ticks[0] + 1) / _TICKS if ticks else None

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
                    if slot.state != _READY and not _is_ready(slot):
                        self._dead_ready -= 1
                        continue
                    msg = slot.msg
                    if isinstance(msg, bytes):  # parked once
                        msg = _unpack(msg)
                    self._kill(slot, msg)
                    self._dead_ready -= 1  # popped, so not left behind in the deque
                    if msg.expires_at is not None and msg.expires_at <= now:
                        self._expired.append(msg)
                        continue
                    return msg
            return None
        finally:
            self._compact()

    def expire(self, now: float) -> None:
        """Set aside every queued message (ready, scheduled or parked) whose
        ``expires_at <= now``."""
        limit = int(now * _TICKS)
        ticks = self._ticks
        expired = self._expired
        while ticks and ticks[0] <= limit:
            tick = ticks[0]
            bucket = self._buckets.get(tick)
            if not bucket:  # gone, or empty (kept for reuse: a refill pushes the tick)
                heapq.heappop(ticks)
                continue
            if tick < limit:  # the whole tick is past
                heapq.heappop(ticks)
                del self._buckets[tick]
                for slot in bucket:
                    msg = slot.message()
                    expired.append(msg)
                    self._kill(slot, msg)
                continue
            # the tick ``now`` is in: only what expired by now (always the last bucket)
            for msg, slot in [(s.message(), s) for s in bucket]:
                if msg.expires_at is not None and msg.expires_at <= now:
                    expired.append(msg)
                    self._kill(slot, msg)
            break
        self._compact()

    def take_expired(self) -> list[Message]:
        """The expired messages found so far, in the order found (caller reports them EXPIRED).
        Taking them frees their places in the bound."""
        out, self._expired = self._expired, []
        return out

    def remove(self, message_id: str) -> Message | None:
        """Take a queued (ready, scheduled or parked) message out, for cancel_sm; None if
        not queued."""
        slot = self._index.get(message_id)
        if slot is None:
            return None
        msg = slot.message()
        self._kill(slot, msg)
        self._compact()
        return msg

    def replace(self, msg: Message) -> bool:
        """Swap the queued message with ``msg.id`` for ``msg`` (replace_sm); False if none.

        Same priority and ``schedule_at``: it keeps its place. Otherwise it is queued anew: a
        new ``schedule_at`` (or a scheduled one with a new priority) goes to the schedule and is
        released to the back of its level by the next :meth:`release_due` once due (at once
        if already due); a parked message (with a new priority, or whose ``schedule_at``
        was cleared) goes to the back of its level in its lot; a ready one to the back of
        its level.
        """
        slot = self._index.get(msg.id)
        if slot is None:
            return False
        self._level(msg)
        old = slot.message()
        if msg.priority == old.priority and msg.schedule_at == old.schedule_at:
            self._drop_expiry(slot, old)
            slot.msg = _pack(msg) if isinstance(slot.msg, bytes) else msg
            self._add_expiry(slot, msg)
            self._compact()
            return True
        was_scheduled = slot.state == _SCHEDULED
        lot = slot.lot if slot.state == _PARKED else None
        key = None if lot is None or lot.woken else lot.key
        self._kill(slot, old)
        fresh = _Slot(msg, _GONE)
        self._index[msg.id] = fresh
        self._add_expiry(fresh, msg)
        if msg.schedule_at is not None and (was_scheduled or msg.schedule_at != old.schedule_at):
            earlier = self._push_scheduled(fresh, msg)
        elif key is not None:
            fresh.msg = _pack(msg)
            self._park_slot(fresh, key, msg.priority)
            earlier = False
        else:
            self._append_ready(fresh, msg.priority)
            earlier = True
        self._compact()
        if earlier:
            self._wake()
        return True
