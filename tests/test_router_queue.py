"""Bounded in-memory priority queue: SMPP priority_flag and account priority, FIFO within a
priority, ESME_RMSGQFUL when full, scheduled delivery, validity_period expiry, cancel_sm and
replace_sm of a message not yet sent, retries to the front.

Time is a parameter (Unix seconds); nothing sleeps.
"""

from __future__ import annotations

import gc
from collections import deque

import msgspec
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
)

from router.model import Address, Message
from router.queue import LEVELS, MessageQueue

T0 = 1_700_000_000.0


def m(
    id: str,
    priority: int = 0,
    *,
    schedule_at: float | None = None,
    expires_at: float | None = None,
    text: bytes = b"",
) -> Message:
    return Message(
        id=id,
        account="acme",
        source=Address(5, 0, "Shop"),
        destination=Address(1, 1, "447700900123"),
        short_message=text,
        priority=priority,
        schedule_at=schedule_at,
        expires_at=expires_at,
    )


def drain(q: MessageQueue, now: float = T0) -> list[str]:
    out = []
    while (msg := q.pop_ready(now)) is not None:
        out.append(msg.id)
    return out


class Wakes:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> None:
        self.n += 1


# -- priority and order --------------------------------------------------------------------


def test_highest_priority_first_fifo_within_a_priority() -> None:
    q = MessageQueue(100)
    for id, prio in [("a", 0), ("b", 3), ("c", 1), ("d", 3), ("e", 0), ("f", 2)]:
        assert q.put(m(id, prio), T0)
    assert q.by_priority() == (2, 1, 1, 2)
    assert len(q) == q.ready_count == 6
    assert drain(q) == ["b", "d", "f", "c", "a", "e"]
    assert len(q) == 0
    assert q.pop_ready(T0) is None


@pytest.mark.parametrize("priority", [-1, LEVELS])
def test_priority_outside_0_to_3_is_refused(priority: int) -> None:
    q = MessageQueue(10)
    with pytest.raises(ValueError, match="priority"):
        q.put(m("a", priority), T0)
    with pytest.raises(ValueError, match="priority"):
        q.requeue(m("a", priority))
    assert len(q) == 0


def test_an_id_is_queued_once() -> None:
    q = MessageQueue(10)
    q.put(m("a"), T0)
    with pytest.raises(ValueError, match="already queued"):
        q.put(m("a"), T0)
    with pytest.raises(ValueError, match="already queued"):
        q.requeue(m("a"))
    assert "a" in q
    assert len(q) == 1


def test_max_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_size"):
        MessageQueue(0)


# -- the bound ----------------------------------------------------------------------------------


def test_put_refuses_when_full_so_the_caller_answers_msgqful() -> None:
    q = MessageQueue(3)
    assert all(q.put(m(str(i)), T0) for i in range(3))
    assert q.is_full()
    assert not q.put(m("x"), T0)
    assert not q.put(m("y", schedule_at=T0 + 60), T0), "scheduled messages count too"
    assert "x" not in q
    assert len(q) == 3
    assert q.pop_ready(T0) is not None
    assert q.put(m("x"), T0)


def test_scheduled_messages_count_in_the_bound() -> None:
    q = MessageQueue(2)
    assert q.put(m("a", schedule_at=T0 + 60), T0)
    assert q.put(m("b", schedule_at=T0 + 30), T0)
    assert not q.put(m("c"), T0)
    assert (q.ready_count, q.scheduled_count, len(q)) == (0, 2, 2)


def test_requeue_goes_to_the_front_and_may_exceed_the_bound() -> None:
    """A retry was accepted once already: it is never refused, and it goes first."""
    q = MessageQueue(2)
    q.put(m("a", 1), T0)
    q.put(m("b", 1), T0)
    first = q.pop_ready(T0)
    assert first is not None
    q.put(m("c", 1), T0)
    q.requeue(msgspec.structs.replace(first, attempts=1, tried=("alpha",)))
    q.requeue(m("z", 1))  # beyond max_size
    assert len(q) == 4
    assert not q.put(m("d"), T0)
    retried = q.pop_ready(T0)
    assert retried is not None
    assert retried.id == "z"
    retried = q.pop_ready(T0)
    assert retried is not None
    assert (retried.id, retried.tried) == ("a", ("alpha",))
    assert drain(q) == ["b", "c"]


def test_requeue_is_ready_now_even_with_a_future_schedule() -> None:
    q = MessageQueue(5)
    q.requeue(m("a", schedule_at=T0 + 3600))
    assert q.ready_count == 1
    assert drain(q) == ["a"]


def test_expired_messages_not_yet_taken_hold_their_place() -> None:
    """A caller slow to report expiries is pushed back rather than growing a list."""
    q = MessageQueue(2)
    q.put(m("a", expires_at=T0 + 1), T0)
    q.put(m("b", expires_at=T0 + 1), T0)
    q.expire(T0 + 1)
    assert (len(q), q.expired_count) == (0, 2)
    assert not q.put(m("c"), T0 + 1)
    assert [x.id for x in q.take_expired()] == ["a", "b"]
    assert q.expired_count == 0
    assert q.put(m("c"), T0 + 1)


# -- scheduled delivery -------------------------------------------------------------------------


def test_scheduled_messages_wait_until_due() -> None:
    q = MessageQueue(10)
    q.put(m("late", 3, schedule_at=T0 + 20), T0)
    q.put(m("soon", 0, schedule_at=T0 + 10), T0)
    q.put(m("past", 0, schedule_at=T0 - 5), T0)  # already due: ready at once
    q.put(m("now", 0, schedule_at=T0), T0)
    assert (q.ready_count, q.scheduled_count) == (2, 2)
    assert q.next_due() == T0 + 10
    assert q.release_due(T0 + 9.9) == 0
    assert drain(q, T0 + 9.9) == ["past", "now"]
    assert q.release_due(T0 + 10) == 1
    assert q.next_due() == T0 + 20
    assert drain(q, T0 + 10) == ["soon"]
    assert q.pop_ready(T0 + 20) == m("late", 3, schedule_at=T0 + 20), "pop releases what is due"
    assert q.next_due() is None


def test_released_messages_join_the_back_of_their_level_earliest_first() -> None:
    q = MessageQueue(10)
    q.put(m("s2", 1, schedule_at=T0 + 2), T0)
    q.put(m("s1", 1, schedule_at=T0 + 1), T0)
    q.put(m("s1b", 1, schedule_at=T0 + 1), T0)
    q.put(m("r", 1), T0)
    assert q.release_due(T0 + 5) == 3
    assert drain(q, T0 + 5) == ["r", "s1", "s1b", "s2"]


def test_on_ready_wakes_the_dispatcher_when_something_is_ready_or_due_sooner() -> None:
    wakes = Wakes()
    q = MessageQueue(10, on_ready=wakes)
    q.put(m("a"), T0)
    assert wakes.n == 1
    q.put(m("b", schedule_at=T0 + 10), T0)
    assert wakes.n == 2, "next_due moved earlier (from none): re-arm the timer"
    q.put(m("c", schedule_at=T0 + 20), T0)
    assert wakes.n == 2, "later than next_due: nothing to do"
    q.put(m("d", schedule_at=T0 + 5), T0)
    assert wakes.n == 3
    assert q.release_due(T0 + 1) == 0
    assert wakes.n == 3
    assert q.release_due(T0 + 10) == 2
    assert wakes.n == 4, "once per call"
    q.requeue(m("e"))
    assert wakes.n == 5
    assert q.pop_ready(T0 + 10) is not None
    assert q.remove("a") is not None
    assert wakes.n == 5


# -- expiry -------------------------------------------------------------------------------------


def test_pop_skips_and_collects_expired_messages() -> None:
    q = MessageQueue(10)
    q.put(m("old", 2, expires_at=T0 + 5), T0)
    q.put(m("edge", 2, expires_at=T0 + 10), T0)
    q.put(m("fresh", 1, expires_at=T0 + 60), T0)
    q.put(m("forever", 0), T0)
    msg = q.pop_ready(T0 + 10)  # expires_at <= now is expired
    assert msg is not None
    assert msg.id == "fresh"
    assert [x.id for x in q.take_expired()] == ["old", "edge"]
    assert q.take_expired() == []
    assert drain(q, T0 + 10_000) == ["forever"]


def test_pop_returns_none_when_everything_ready_has_expired() -> None:
    q = MessageQueue(10)
    q.put(m("a", expires_at=T0 + 1), T0)
    assert q.pop_ready(T0 + 2) is None
    assert [x.id for x in q.take_expired()] == ["a"]


def test_expire_finds_ready_and_scheduled_messages_by_deadline() -> None:
    q = MessageQueue(10)
    q.put(m("r", 0, expires_at=T0 + 30), T0)
    q.put(m("s", 3, schedule_at=T0 + 100, expires_at=T0 + 20), T0)
    q.put(m("k", 0, expires_at=T0 + 40), T0)
    q.expire(T0 + 30)
    assert [x.id for x in q.take_expired()] == ["s", "r"]
    assert (len(q), q.ready_count, q.scheduled_count) == (1, 1, 0)
    assert q.next_due() is None
    assert drain(q, T0 + 30) == ["k"]


def test_expire_does_not_scan_what_is_not_due() -> None:
    """Expiries are a heap: expire(now) touches only the expired entries."""
    q = MessageQueue(100_000)
    for i in range(50_000):
        q.put(m(str(i), i % 4, expires_at=T0 + 1000 + i), T0)
    q.expire(T0 + 1009)
    assert [x.id for x in q.take_expired()] == [str(i) for i in range(10)]
    assert len(q) == 49_990


# -- cancel_sm and replace_sm ---------------------------------------------------------------------


def test_remove_takes_a_ready_or_scheduled_message_out() -> None:
    q = MessageQueue(10)
    q.put(m("a", 1), T0)
    q.put(m("b", 1), T0)
    q.put(m("s", 1, schedule_at=T0 + 10), T0)
    removed = q.remove("a")
    assert removed is not None
    assert removed.id == "a"
    assert q.remove("a") is None
    assert q.remove("nope") is None
    assert q.remove("s") is not None
    assert (len(q), q.scheduled_count, q.by_priority()) == (1, 0, (0, 1, 0, 0))
    assert q.next_due() is None
    assert q.release_due(T0 + 10) == 0
    assert drain(q, T0 + 10) == ["b"]


def test_a_popped_message_can_no_longer_be_cancelled_or_replaced() -> None:
    q = MessageQueue(10)
    q.put(m("a"), T0)
    assert q.pop_ready(T0) is not None
    assert q.remove("a") is None
    assert not q.replace(m("a", text=b"new"))


def test_replace_keeps_the_place_in_line() -> None:
    q = MessageQueue(10)
    for id in "abc":
        q.put(m(id, 2), T0)
    assert q.replace(m("b", 2, text=b"new text"))
    assert not q.replace(m("zz", 2))
    msgs = [q.pop_ready(T0) for _ in range(3)]
    assert [(x.id, x.short_message) for x in msgs if x] == [
        ("a", b""),
        ("b", b"new text"),
        ("c", b""),
    ]


def test_replace_with_a_new_validity() -> None:
    q = MessageQueue(10)
    q.put(m("a", expires_at=T0 + 10), T0)
    q.put(m("b", expires_at=T0 + 100), T0)
    assert q.replace(m("a", expires_at=T0 + 100))  # extended: no longer expires at +10
    assert q.replace(m("b", expires_at=T0 + 5))  # shortened
    q.expire(T0 + 10)
    assert [x.id for x in q.take_expired()] == ["b"]
    assert drain(q, T0 + 10) == ["a"]


def test_replace_with_a_new_schedule() -> None:
    q = MessageQueue(10)
    q.put(m("a"), T0)
    q.put(m("b"), T0)
    q.put(m("s", schedule_at=T0 + 50), T0)
    assert q.replace(m("a", schedule_at=T0 + 30))  # ready → scheduled
    assert q.replace(m("s"))  # schedule cleared: ready now, at the back
    assert (q.ready_count, q.scheduled_count, q.next_due()) == (2, 1, T0 + 30)
    assert drain(q, T0) == ["b", "s"]
    assert drain(q, T0 + 30) == ["a"]


def test_replace_with_a_new_priority_keeps_a_scheduled_message_scheduled() -> None:
    q = MessageQueue(10)
    q.put(m("s", 0, schedule_at=T0 + 50), T0)
    q.put(m("r", 0), T0)
    assert q.replace(m("s", 3, schedule_at=T0 + 50))
    assert q.replace(m("r", 2))
    assert (q.scheduled_count, q.by_priority()) == (1, (0, 0, 1, 0))
    assert drain(q, T0 + 50) == ["s", "r"]


def test_lazy_deletion_stays_bounded() -> None:
    """Removed entries are compacted away once they outnumber the live ones."""
    q = MessageQueue(10_000)
    for i in range(5000):
        q.put(m(str(i), i % 4, schedule_at=T0 + 10 if i % 2 else None, expires_at=T0 + i), T0)
    for i in range(4990):
        assert q.remove(str(i)) is not None
    for i in range(1000):  # churn the expiry of the survivors
        assert q.replace(m("4999", 3, schedule_at=T0 + 10, expires_at=T0 + 10_000 + i))
    # white box: the structures hold about the live entries, not the history
    assert sum(len(level) for level in q._levels) <= 2 * q.ready_count + 64 + 4
    assert len(q._sched) <= 2 * q.scheduled_count + 64 + 1
    assert sum(len(b) for b in q._buckets.values()) == len(q)  # left at once, not lazily
    assert len(q._ticks) <= 2 * len(q._buckets) + 64 + 1
    assert len(q) == 10


def test_messages_that_leave_leave_their_expiry_bucket_at_once() -> None:
    """A million messages sent one after the other leave nothing behind (validity 48 h)."""
    q = MessageQueue(10)
    for i in range(20_000):
        q.put(m(str(i), expires_at=T0 + 172_800 + i / 1000), T0)
        assert q.pop_ready(T0) is not None
    assert not any(q._buckets.values())
    assert len(q._buckets) <= 2 * 64 + 2, "empty buckets are swept"
    assert len(q._ticks) <= 2 * len(q._buckets) + 64 + 1
    assert q.next_expiry() is None


# -- parking: messages no carrier can take now ------------------------------------------------

UK = frozenset({"uk"})
UK_FR = frozenset({"uk", "fr"})


def park_next(q: MessageQueue, key: frozenset[str], now: float = T0) -> str:
    """Pop the next ready message and park it (what the dispatcher does with one that no
    carrier can take); its id."""
    msg = q.pop_ready(now)
    assert msg is not None
    q.park(msg, key)
    return msg.id


def test_parked_messages_wait_out_of_line_until_their_lot_is_woken() -> None:
    wakes = Wakes()
    q = MessageQueue(10, on_ready=wakes)
    for id in "abc":
        q.put(m(id), T0)
    assert park_next(q, UK) == "a"
    assert park_next(q, UK_FR) == "b"
    assert (len(q), q.ready_count, q.parked_count) == (3, 1, 2)
    assert q.lots() == {UK: 1, UK_FR: 1}
    assert "a" in q
    before = wakes.n
    assert drain(q) == ["c"], "parked messages are not offered again"
    assert q.pop_ready(T0 + 3600) is None
    assert wakes.n == before
    assert q.unpark(UK) == 1
    assert wakes.n == before + 1
    assert q.unpark(UK) == 0
    assert q.lots() == {UK_FR: 1}
    assert drain(q) == ["a"]
    assert q.unpark(UK_FR) == 1
    assert drain(q) == ["b"]
    assert (len(q), q.parked_count, q.lots()) == (0, 0, {})


def test_woken_messages_go_first_in_priority_order_and_in_the_order_parked() -> None:
    q = MessageQueue(20)
    for id, prio in [("p0", 0), ("q3", 3), ("p1", 1), ("q0", 0), ("r3", 3)]:
        q.put(m(id, prio), T0)
    parked = [park_next(q, UK) for _ in range(5)]
    assert parked == ["q3", "r3", "p1", "p0", "q0"]
    for id, prio in [("new3", 3), ("new0", 0), ("new1", 1)]:
        q.put(m(id, prio), T0)
    assert q.unpark(UK) == 5
    assert drain(q) == ["q3", "r3", "new3", "p1", "new1", "p0", "q0", "new0"]


def test_a_trial_wakes_one_message_the_first_by_priority_then_age() -> None:
    q = MessageQueue(20)
    for i, (id, prio) in enumerate([("a", 1), ("b", 2), ("c", 2), ("d", 0)]):
        q.put(msgspec.structs.replace(m(id, prio), submitted_at=T0 + i), T0)
    keys = {"b": UK_FR, "c": UK, "a": UK, "d": UK}
    while q.ready_count:
        msg = q.pop_ready(T0)
        assert msg is not None
        q.park(msg, keys[msg.id])
    first = q.unpark_first([UK, UK_FR])
    assert first is not None
    assert first.id == "b", "priority 2, submitted before c"
    assert (q.ready_count, q.parked_count) == (1, 3)
    assert drain(q) == ["b"]
    nxt = q.unpark_first([UK])
    assert nxt is not None
    assert nxt.id == "c"
    assert q.unpark_first([frozenset({"de"})]) is None
    assert drain(q) == ["c"]


def test_parked_messages_count_in_the_bound_and_are_never_refused() -> None:
    q = MessageQueue(2)
    q.put(m("a"), T0)
    q.put(m("b"), T0)
    park_next(q, UK)
    assert q.is_full()
    assert not q.put(m("c"), T0), "parked messages hold their place"
    msg = q.pop_ready(T0)
    assert msg is not None
    assert q.put(m("c"), T0)
    q.park(msg, UK)  # popped, hence accepted: parked even beyond max_size
    assert (len(q), q.parked_count) == (3, 2)
    with pytest.raises(ValueError, match="already queued"):
        q.park(m("c"), UK)


def test_parked_messages_expire_by_their_validity() -> None:
    q = MessageQueue(10)
    q.put(m("a", expires_at=T0 + 30), T0)
    q.put(m("b", expires_at=T0 + 60), T0)
    q.put(m("c"), T0)
    for _ in range(3):
        park_next(q, UK)
    assert q.next_expiry() == pytest.approx(T0 + 30, abs=1 / 64)
    q.expire(T0 + 29.99)
    assert q.take_expired() == []
    q.expire(T0 + 30)
    assert [x.id for x in q.take_expired()] == ["a"]
    assert (q.parked_count, q.lots()) == (2, {UK: 2})
    q.expire(T0 + 3600)
    assert [x.id for x in q.take_expired()] == ["b"]
    assert q.unpark(UK) == 1
    assert drain(q, T0 + 3600) == ["c"]


def test_expiring_parked_messages_does_not_scan_the_lot() -> None:
    """100,000 parked; expire(now) finds the 10 due ones and leaves nothing dead behind."""
    q = MessageQueue(200_000)
    for i in range(100_000):
        q.put(m(str(i), i % 4, expires_at=T0 + 1000 + i), T0)
    while q.ready_count:
        park_next(q, UK)
    q.expire(T0 + 1009)
    assert sorted(x.id for x in q.take_expired()) == sorted(str(i) for i in range(10))
    assert q.lots() == {UK: 99_990}
    lot = q._lots[UK]  # white box: the dead were trimmed from the front of their levels
    assert (lot.dead, sum(len(level) for level in lot.levels)) == (0, 99_990)


def test_cancel_and_replace_find_parked_messages() -> None:
    q = MessageQueue(10)
    for id in "abcd":
        q.put(m(id, 1), T0)
    for _ in range(4):
        park_next(q, UK)
    removed = q.remove("b")
    assert removed is not None
    assert removed.id == "b"
    assert q.replace(m("a", 1, text=b"new")), "same priority: keeps its place in the lot"
    assert q.replace(m("c", 3)), "a new priority: the back of that level, still parked"
    assert q.replace(m("d", 1, schedule_at=T0 + 60)), "a new schedule: scheduled"
    assert (q.parked_count, q.scheduled_count, q.lots()) == (2, 1, {UK: 2})
    assert q.unpark(UK) == 2
    woken = q.pop_ready(T0)
    assert woken is not None
    assert woken.id == "c"
    woken = q.pop_ready(T0)
    assert woken is not None
    assert (woken.id, woken.short_message) == ("a", b"new")
    assert drain(q, T0 + 60) == ["d"]


def test_a_lot_with_many_cancelled_messages_stays_bounded() -> None:
    q = MessageQueue(10_000)
    for i in range(5000):
        q.put(m(str(i), i % 4), T0)
    while q.ready_count:
        park_next(q, UK)
    for i in range(5000):
        if i % 50:  # from the middle of each level, not only the front
            assert q.remove(str(i)) is not None
    lot = q._lots[UK]
    assert sum(len(level) for level in lot.levels) <= 2 * lot.live + 64 + 4
    assert q.unpark(UK) == 100
    assert drain(q) == [str(i) for p in (3, 2, 1, 0) for i in range(0, 5000, 50) if i % 4 == p]


def test_queued_messages_are_not_walked_by_the_garbage_collector() -> None:
    """White box: a full collection must not visit every queued message (with a million
    it stalled the loop ~0.4 s), so the queue's per-message records are untracked; and
    a record that leaves a lot drops its link to it (an untracked cycle would leak)."""
    q = MessageQueue(10)
    for id in "abc":
        q.put(m(id, expires_at=T0 + 60), T0)
    park_next(q, UK)
    park_next(q, UK)
    slots = list(q._index.values())
    assert len(slots) == 3
    assert not any(gc.is_tracked(slot) for slot in slots)
    assert q.unpark(UK) == 2
    assert all(slot.lot is None or not any(slot.lot.levels) for slot in slots)
    assert drain(q) == ["a", "b", "c"]
    assert all(slot.lot is None for slot in slots)


# -- any sequence of operations agrees with a plain model ---------------------------------------


class Model:
    """The queue's documented behaviour, spelled out with lists and linear scans."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.levels: list[deque[str]] = [deque() for _ in range(LEVELS)]
        self.scheduled: list[tuple[float, int, str]] = []
        self.lots: dict[frozenset[str], list[deque[str]]] = {}
        self.msgs: dict[str, Message] = {}
        self.expired: list[str] = []
        self.seq = 0

    def size(self) -> int:
        return sum(len(level) for level in self.levels) + len(self.scheduled) + self.parked()

    def parked(self) -> int:
        return sum(len(level) for lot in self.lots.values() for level in lot)

    def lot_of(self, id: str) -> frozenset[str] | None:
        for key, lot in self.lots.items():
            if any(id in level for level in lot):
                return key
        return None

    def _park(self, msg: Message, key: frozenset[str]) -> None:
        self.lots.setdefault(key, [deque() for _ in range(LEVELS)])[msg.priority].append(msg.id)

    def _schedule(self, msg: Message) -> None:
        assert msg.schedule_at is not None
        self.seq += 1
        self.scheduled.append((msg.schedule_at, self.seq, msg.id))

    def _drop(self, id: str) -> None:
        for level in self.levels:
            if id in level:
                level.remove(id)
        self.scheduled = [e for e in self.scheduled if e[2] != id]
        for key, lot in list(self.lots.items()):
            for level in lot:
                if id in level:
                    level.remove(id)
            if not any(lot):
                del self.lots[key]

    def park(self, msg: Message, key: frozenset[str]) -> None:
        self.msgs[msg.id] = msg
        self._park(msg, key)

    def unpark(self, key: frozenset[str]) -> int:
        lot = self.lots.pop(key, None)
        if lot is None:
            return 0
        for level, ids in zip(self.levels, lot, strict=True):
            level.extendleft(reversed(ids))
        return sum(len(ids) for ids in lot)

    def unpark_first(self, keys: list[frozenset[str]]) -> str | None:
        best: tuple[int, float] | None = None
        where: tuple[frozenset[str], int] | None = None
        for key in keys:
            lot = self.lots.get(key)
            if lot is None:
                continue
            for p in reversed(range(LEVELS)):
                if lot[p]:
                    rank = (p, -self.msgs[lot[p][0]].submitted_at)
                    if best is None or rank > best:
                        best, where = rank, (key, p)
                    break
        if where is None:
            return None
        key, p = where
        id = self.lots[key][p].popleft()
        if not any(self.lots[key]):
            del self.lots[key]
        self.levels[p].appendleft(id)
        return id

    def put(self, msg: Message, now: float) -> bool:
        if self.size() + len(self.expired) >= self.max_size:
            return False
        self.msgs[msg.id] = msg
        if msg.schedule_at is not None and msg.schedule_at > now:
            self._schedule(msg)
        else:
            self.levels[msg.priority].append(msg.id)
        return True

    def requeue(self, msg: Message) -> None:
        self.msgs[msg.id] = msg
        self.levels[msg.priority].appendleft(msg.id)

    def release(self, now: float) -> int:
        due = sorted(e for e in self.scheduled if e[0] <= now)
        self.scheduled = [e for e in self.scheduled if e[0] > now]
        for _, _, id in due:
            self.levels[self.msgs[id].priority].append(id)
        return len(due)

    def pop(self, now: float) -> str | None:
        self.release(now)
        for level in reversed(self.levels):
            while level:
                id = level.popleft()
                exp = self.msgs[id].expires_at
                if exp is not None and exp <= now:
                    self.expired.append(id)
                    continue
                return id
        return None

    def expire(self, now: float) -> None:
        for id, msg in list(self.msgs.items()):
            if self.queued(id) and msg.expires_at is not None and msg.expires_at <= now:
                self._drop(id)
                self.expired.append(id)

    def queued(self, id: str) -> bool:
        return (
            any(id in level for level in self.levels)
            or any(e[2] == id for e in self.scheduled)
            or self.lot_of(id) is not None
        )

    def remove(self, id: str) -> bool:
        if not self.queued(id):
            return False
        self._drop(id)
        return True

    def replace(self, msg: Message) -> bool:
        if not self.queued(msg.id):
            return False
        old = self.msgs[msg.id]
        self.msgs[msg.id] = msg
        if msg.priority == old.priority and msg.schedule_at == old.schedule_at:
            return True
        was_scheduled = any(e[2] == msg.id for e in self.scheduled)
        lot = self.lot_of(msg.id)
        self._drop(msg.id)
        if msg.schedule_at is not None and (was_scheduled or msg.schedule_at != old.schedule_at):
            self._schedule(msg)
        elif lot is not None:
            self._park(msg, lot)
        else:
            self.levels[msg.priority].append(msg.id)
        return True


KEYS = (UK, UK_FR, frozenset({"fr"}))


class QueueMachine(RuleBasedStateMachine):
    """put / pop / remove / replace / requeue / park / unpark / expire / time passing, in any
    order: counts stay consistent and every pop, expiry and answer matches the model (so FIFO
    per level, parked messages wait until woken, woken ones go first)."""

    popped = Bundle("popped")

    @initialize(max_size=st.integers(1, 12))
    def start(self, max_size: int) -> None:
        self.q = MessageQueue(max_size, on_ready=self.woke)
        self.model = Model(max_size)
        self.now = T0
        self.n = 0
        self.wakes = 0

    def woke(self) -> None:
        self.wakes += 1

    def new_message(self, priority: int, sched: int | None, exp: int | None) -> Message:
        self.n += 1
        msg = m(
            f"m{self.n}",
            priority,
            schedule_at=None if sched is None else self.now + sched,
            expires_at=None if exp is None else self.now + exp,
        )
        return msgspec.structs.replace(msg, submitted_at=self.now)

    @rule(
        priority=st.integers(0, 3),
        sched=st.none() | st.integers(-2, 6),
        exp=st.none() | st.integers(0, 12),
    )
    def put(self, priority: int, sched: int | None, exp: int | None) -> None:
        msg = self.new_message(priority, sched, exp)
        before = self.wakes
        ok = self.q.put(msg, self.now)
        assert ok == self.model.put(msg, self.now)
        if ok and (msg.schedule_at is None or msg.schedule_at <= self.now):
            assert self.wakes == before + 1

    @rule(target=popped)
    def pop(self) -> Message | None:
        msg = self.q.pop_ready(self.now)
        assert (None if msg is None else msg.id) == self.model.pop(self.now)
        if msg is not None:
            self.model.msgs.pop(msg.id)
        return msg

    @rule(msg=consumes(popped))
    def requeue(self, msg: Message | None) -> None:
        if msg is None or msg.id in self.q:
            return
        retry = msgspec.structs.replace(msg, attempts=msg.attempts + 1)
        self.q.requeue(retry)
        self.model.requeue(retry)

    @rule(msg=consumes(popped), key=st.sampled_from(KEYS))
    def park(self, msg: Message | None, key: frozenset[str]) -> None:
        if msg is None or msg.id in self.q:
            return
        before = self.wakes
        self.q.park(msg, key)
        self.model.park(msg, key)
        assert self.wakes == before, "parking makes nothing ready"

    @rule(key=st.sampled_from(KEYS), n=st.integers(1, 4))
    def pop_and_park(self, key: frozenset[str], n: int) -> None:
        """What the dispatcher does with messages no carrier can take now."""
        for _ in range(n):
            msg = self.pop()
            if msg is None:
                return
            self.q.park(msg, key)
            self.model.park(msg, key)

    @rule(key=st.sampled_from(KEYS))
    def unpark(self, key: frozenset[str]) -> None:
        before = self.wakes
        n = self.q.unpark(key)
        assert n == self.model.unpark(key)
        assert self.wakes == before + (1 if n else 0)

    @rule(keys=st.lists(st.sampled_from(KEYS), max_size=3))
    def unpark_first(self, keys: list[frozenset[str]]) -> None:
        woken = self.q.unpark_first(keys)
        assert (None if woken is None else woken.id) == self.model.unpark_first(keys)

    @rule(k=st.integers(1, 40))
    def remove(self, k: int) -> None:
        id = f"m{k}"
        removed = self.q.remove(id)
        assert (removed is not None) == self.model.remove(id)

    @rule(
        k=st.integers(1, 40),
        priority=st.integers(0, 3),
        sched=st.none() | st.integers(-2, 6),
        exp=st.none() | st.integers(0, 12),
        same_schedule=st.booleans(),
    )
    def replace(
        self, k: int, priority: int, sched: int | None, exp: int | None, same_schedule: bool
    ) -> None:
        id = f"m{k}"
        current = self.model.msgs.get(id)
        schedule_at = None if sched is None else self.now + sched
        if same_schedule and current is not None:
            schedule_at = current.schedule_at
        msg = msgspec.structs.replace(
            m(id, priority, expires_at=None if exp is None else self.now + exp),
            schedule_at=schedule_at,
        )
        assert self.q.replace(msg) == self.model.replace(msg)

    @rule(dt=st.sampled_from([0.0, 0.5, 1.0, 3.0, 10.0]))
    def tick(self, dt: float) -> None:
        self.now += dt

    @rule()
    def release(self) -> None:
        assert self.q.release_due(self.now) == self.model.release(self.now)

    @rule()
    def expire(self) -> None:
        self.q.expire(self.now)
        self.model.expire(self.now)

    @rule()
    def take_expired(self) -> None:
        taken = [x.id for x in self.q.take_expired()]
        assert sorted(taken) == sorted(self.model.expired)
        for id in taken:
            self.model.msgs.pop(id)
        self.model.expired = []

    @invariant()
    def counts_agree(self) -> None:
        model = self.model
        ready = [len(level) for level in model.levels]
        assert self.q.by_priority() == tuple(ready)
        assert self.q.ready_count == sum(ready)
        assert self.q.scheduled_count == len(model.scheduled)
        assert self.q.parked_count == model.parked()
        assert self.q.lots() == {
            key: sum(len(level) for level in lot) for key, lot in model.lots.items()
        }
        assert len(self.q) == model.size()
        assert self.q.expired_count == len(model.expired)
        due = min((e[0] for e in model.scheduled), default=None)
        assert self.q.next_due() == due
        exps = [
            msg.expires_at
            for id, msg in model.msgs.items()
            if msg.expires_at is not None and model.queued(id)
        ]
        first = self.q.next_expiry()
        if not exps:
            assert first is None
        else:
            assert first is not None
            assert min(exps) < first <= min(exps) + 1 / 64


QueueMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=60)
test_queue_matches_its_model = QueueMachine.TestCase
