"""Receipt deadlines (router.deadlines): each message a carrier accepted is due its final
receipt by the carrier's deadline, or by its validity when that comes first; a receipt
drops it; a tick takes those passed, each once.

Pure bookkeeping: time is a parameter (Unix seconds).
"""

from __future__ import annotations

from router.deadlines import ReceiptDeadlines

T0 = 1_700_000_000.0


def test_nothing_is_due_before_its_deadline_and_each_is_due_once() -> None:
    d = ReceiptDeadlines()
    d.add("a", "uk", T0 + 10, None)
    d.add("b", "uk", T0 + 20, None)
    assert d.due(T0 + 9.9) == []
    assert d.due(T0 + 10) == [("a", "uk", False)]
    assert d.due(T0 + 15) == []
    assert d.due(T0 + 100) == [("b", "uk", False)]
    assert d.due(T0 + 1000) == []
    assert len(d) == 0


def test_a_receipt_drops_the_deadline() -> None:
    d = ReceiptDeadlines()
    d.add("a", "uk", T0 + 10, None)
    d.add("b", "fr", T0 + 10, T0 + 5)
    assert len(d) == 2
    d.drop("a", "uk")
    d.drop("b", "fr")
    assert len(d) == 0
    assert d.due(T0 + 100) == []


def test_validity_before_the_receipt_timeout_makes_it_due_as_expired() -> None:
    d = ReceiptDeadlines()
    d.add("late", "uk", T0 + 10, T0 + 50)  # valid longer than the carrier waits
    d.add("short", "uk", T0 + 10, T0 + 3)
    assert d.due(T0 + 3) == [("short", "uk", True)]
    assert d.due(T0 + 10) == [("late", "uk", False)]


def test_carriers_deadlines_come_before_the_expired_ones_in_one_tick() -> None:
    d = ReceiptDeadlines()
    d.add("x", "uk", T0 + 10, T0 + 1)
    d.add("y", "fr", T0 + 2, None)
    d.add("z", "uk", T0 + 3, None)
    assert d.due(T0 + 5) == [("y", "fr", False), ("z", "uk", False), ("x", "uk", True)]


def test_a_dropped_expiring_message_is_never_due_and_its_entries_do_not_pile_up() -> None:
    d = ReceiptDeadlines()
    for i in range(5000):
        d.add(f"m{i}", "uk", T0 + 100, T0 + 1 + i)
    for i in range(5000):
        d.drop(f"m{i}", "uk")
    d.add("kept", "uk", T0 + 100, T0 + 2)
    assert len(d._capped) <= 2 * 1 + 1024 + 1  # compacted as they were dropped
    assert d.due(T0 + 10_000) == [("kept", "uk", True)]


def test_dropping_an_unknown_or_repeated_id_changes_nothing() -> None:
    d = ReceiptDeadlines()
    d.add("a", "uk", T0 + 10, None)
    d.drop("nope", "uk")
    d.drop("a", "fr")  # another carrier's: not this one's deadline
    assert d.due(T0 + 10) == [("a", "uk", False)]
    d.drop("a", "uk")
    assert len(d) == 0
