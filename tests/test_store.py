"""router.stores (SQLite): batching, durability callbacks, read-your-writes, recovery, held
deliveries, permissions, failures, and the kill -9 guarantee of ``ack_after: store``.

Every test runs under a deadline and waits on the store (flush, callbacks), never on sleeps.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sqlite3
import stat
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from hypothesis import example, given, settings
from hypothesis import strategies as st
from small_fs import ext4_image, fill, make_read_only, mount_again, small_tmpfs

from router.config import StoreConfig
from router.model import Address, Concat, DeliveryReport, Message
from router.ports import Store, StoreClosed, StoreTimeout
from router.stores.sqlite import SqliteStore
from smppcore.constants import MessageState
from smppcore.tlv import Tlv

DEADLINE = 10.0
ROOT = Path(__file__).resolve().parent.parent
SRC = Address(5, 0, "ACME")
DST = Address(1, 1, "447700900123")


def msg(i: int, *, account: str = "acme", **kw: object) -> Message:
    fields: dict[str, object] = {"short_message": b"hello", "submitted_at": 1_000.0 + i}
    fields.update(kw)
    return Message(id=f"m{i:06d}", account=account, source=SRC, destination=DST, **fields)  # type: ignore[arg-type]


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def config(tmp_path: Path, **kw: object) -> StoreConfig:
    return StoreConfig(path=str(tmp_path / "smsc.db"), **kw)  # type: ignore[arg-type]


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(config(tmp_path))
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def committed_ids(path: str) -> set[str]:
    """What another connection sees: only committed transactions."""
    with sqlite3.connect(path) as db:
        return {row[0] for row in db.execute("SELECT id FROM messages")}


def test_sqlite_store_is_a_store(tmp_path: Path) -> None:
    s: Store = SqliteStore(config(tmp_path))
    assert s is not None


# -- batching and durability -----------------------------------------------------------------


@pytest.mark.asyncio
async def test_1000_adds_commit_in_few_transactions(store: SqliteStore) -> None:
    async with asyncio.timeout(DEADLINE):
        assert all(store.add(msg(i)) for i in range(1000))
        assert store.queued == 1000
        await store.flush()
    assert store.transactions == 1  # the writer drained everything queued at once
    assert store.queued == 0


@pytest.mark.asyncio
async def test_one_batch_of_mixed_records_ends_as_if_written_one_by_one(
    store: SqliteStore, tmp_path: Path
) -> None:
    """Adds, sends and final states interleaved in one transaction (written as multi-row
    statements): each message ends as its last write of each kind says, across more rows
    than one statement holds, with a message sent twice and finished twice."""
    n = 2_500
    async with asyncio.timeout(DEADLINE):
        for i in range(n):
            assert store.add(msg(i))
            if i % 2:
                store.set_sent(f"m{i:06d}", "c1", f"first-{i}")
            if i % 3 == 0:
                store.set_final(f"m{i:06d}", DeliveryReport("", MessageState.DELIVERED))
        store.set_sent("m000001", "c2", "second")  # sent again: the later wins
        store.set_final("m000003", DeliveryReport("", MessageState.UNDELIVERABLE, error=7))
        store.set_final("m000003", DeliveryReport("", MessageState.EXPIRED, error=9))
        await store.flush()
    assert store.transactions == 3  # 4,587 records, batch_max 2,000: several statements each
    with sqlite3.connect(tmp_path / "smsc.db") as db:
        query = "SELECT id, state, error, carrier, carrier_message_id FROM messages"
        rows = {r[0]: r[1:] for r in db.execute(query)}
    assert len(rows) == n
    assert rows["m000001"][2:] == ("c2", "second")
    assert rows["m000003"][:2] == (int(MessageState.EXPIRED), 9)
    assert rows["m000003"][2:] == ("c1", "first-3")
    for i in (0, 5, 6, 2_499):
        state = MessageState.DELIVERED if i % 3 == 0 else MessageState.ENROUTE
        sent = ("c1", f"first-{i}") if i % 2 else ("", "")
        assert rows[f"m{i:06d}"] == (int(state), 0, *sent)


# A record: ("add", i), ("sent", i, carrier id), ("final", i, state); i picks one of a few
# messages so that records of one message meet in a batch, in any order.
_RECORDS = st.one_of(
    st.tuples(st.just("add"), st.integers(0, 5)),
    st.tuples(st.just("sent"), st.integers(0, 5), st.sampled_from(["a1", "b2", "c3"])),
    st.tuples(
        st.just("final"),
        st.integers(0, 5),
        st.sampled_from([MessageState.ENROUTE, MessageState.DELIVERED, MessageState.EXPIRED]),
    ),
)


@settings(max_examples=100, deadline=None)
@given(st.lists(_RECORDS, max_size=40))
@example(  # a final state, a send, a later final state: the later one wins
    [
        ("final", 0, MessageState.EXPIRED),
        ("sent", 0, "a1"),
        ("final", 0, MessageState.DELIVERED),
    ]
)
def test_any_batch_of_adds_sends_and_finals_ends_as_if_written_one_by_one(
    records: list[tuple[Any, ...]],
) -> None:
    """Messages 0-2 were stored by an earlier batch; one batch then holds adds of messages
    3-5 (each before its own send and final state, as the router writes them), sends and
    final states of all six, and adds of ids that exist. One message's add, send and final
    state are folded into one row, a send and a final state into one update: whatever the
    mix, the table ends as the records applied one at a time say (an add of an existing id
    fails alone, the last send and the last final state win)."""
    added = {0, 1, 2}
    batch = []
    for record in records:
        if record[0] == "add":
            added.add(record[1])
        elif record[1] not in added:
            continue  # the router never sends a message before it is added
        batch.append(record)
    expected: dict[str, list[Any]] = {}
    for record in [("add", 0), ("add", 1), ("add", 2), *batch]:
        mid = f"m{record[1]:06d}"
        if record[0] == "add":
            expected.setdefault(mid, [int(MessageState.ENROUTE), 0, "", "", None])
        elif record[0] == "sent":
            expected[mid][2:4] = ["c", record[2]]
        else:
            state = record[2]
            expected[mid][:2] = [int(state), int(state)]
            expected[mid][4] = None if state == MessageState.ENROUTE else 5.0

    async def main(path: Path) -> dict[str, list[Any]]:
        s = SqliteStore(config(path), clock=Clock(5.0))
        await s.open()
        try:
            async with asyncio.timeout(DEADLINE):
                for i in range(3):
                    s.add(msg(i))
                await s.flush()
                for record in batch:
                    mid = f"m{record[1]:06d}"
                    if record[0] == "add":
                        s.add(msg(record[1]))
                    elif record[0] == "sent":
                        s.set_sent(mid, "c", record[2])
                    else:
                        s.set_final(mid, DeliveryReport("", record[2], error=int(record[2])))
                await s.flush()
        finally:
            await s.close()
        with sqlite3.connect(path / "smsc.db") as db:
            query = "SELECT id, state, error, carrier, carrier_message_id, done_at FROM messages"
            return {row[0]: list(row[1:]) for row in db.execute(query)}

    with tempfile.TemporaryDirectory() as tmp:
        assert asyncio.run(main(Path(tmp))) == expected


@pytest.mark.asyncio
async def test_records_queued_over_several_loop_turns_commit_together(tmp_path: Path) -> None:
    """Group commit: with nobody waiting, the writer gathers what comes within
    commit_interval into one transaction. The longest interval (1 s): the five loop turns
    must fall within it even when the process is descheduled on a loaded machine (the
    flush hurries the commit: the test does not wait for the interval)."""
    s = SqliteStore(config(tmp_path, commit_interval=1.0))
    await s.open()
    try:
        async with asyncio.timeout(DEADLINE):
            for i in range(5):
                s.add(msg(i))
                await asyncio.sleep(0)  # another loop turn (not a wait for anything)
            await s.flush()
        assert s.transactions == 1
        assert s.records == 5
    finally:
        await s.close()


@pytest.mark.asyncio
async def test_acks_and_reads_do_not_wait_for_the_commit_interval(tmp_path: Path) -> None:
    """An add whose ack waits for its commit (ack_after: store), and a read of a queued
    record, are written at once: each well within a commit_interval of 1 s (the longest).
    Each is measured on its own against the interval it must not wait for (not against a
    tighter guess at a commit's speed: on a loaded machine one may take a good part of a
    second); the deadline only guards against a hang."""
    interval = 1.0
    s = SqliteStore(config(tmp_path, commit_interval=interval))
    await s.open()
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(DEADLINE):
            durable = loop.create_future()
            started = loop.time()
            s.add(msg(1), durable.set_result)
            assert await durable is True
            acked_in = loop.time() - started
            started = loop.time()
            s.add(msg(2))
            stored = await s.get("m000002")
            read_in = loop.time() - started
            assert stored is not None
        assert acked_in < interval, acked_in
        assert read_in < interval, read_in
    finally:
        await s.close()


@pytest.mark.asyncio
async def test_batches_are_bounded_by_batch_max(tmp_path: Path) -> None:
    s = SqliteStore(config(tmp_path, batch_max=100))
    await s.open()
    try:
        async with asyncio.timeout(DEADLINE):
            for i in range(1000):
                s.add(msg(i))
            await s.flush()
        assert s.transactions == 10
    finally:
        await s.close()


@pytest.mark.asyncio
async def test_on_durable_fires_only_after_commit(store: SqliteStore, tmp_path: Path) -> None:
    path = str(tmp_path / "smsc.db")
    seen: list[tuple[str, bool, bool]] = []
    done = asyncio.Event()

    def durable(mid: str) -> object:
        def callback(ok: bool) -> None:
            # another connection must already see the row: the transaction has committed
            seen.append((mid, ok, mid in committed_ids(path)))
            if len(seen) == 50:
                done.set()

        return callback

    for i in range(50):
        assert store.add(msg(i), durable(f"m{i:06d}"))  # type: ignore[arg-type]
    assert seen == []  # nothing before the writer ran
    async with asyncio.timeout(DEADLINE):
        await done.wait()
    assert [s[0] for s in seen] == [f"m{i:06d}" for i in range(50)]  # in order
    assert all(ok and visible for _, ok, visible in seen)


@pytest.mark.asyncio
async def test_close_flushes_everything_queued(tmp_path: Path) -> None:
    s = SqliteStore(config(tmp_path))
    await s.open()
    results: list[bool] = []
    for i in range(500):
        s.add(msg(i), results.append)
    s.set_sent("m000001", "c1", "X1")
    async with asyncio.timeout(DEADLINE):
        await s.close()
    assert results == [True] * 500
    assert len(committed_ids(str(tmp_path / "smsc.db"))) == 500
    s2 = SqliteStore(config(tmp_path))
    await s2.open()
    try:
        got = await s2.get("m000001")
        assert got is not None
        assert got.carrier == "c1"
        assert got.carrier_message_id == "X1"
    finally:
        await s2.close()


@pytest.mark.asyncio
async def test_queue_full_refuses_add_without_callback(tmp_path: Path) -> None:
    s = SqliteStore(config(tmp_path, queue_max=5))
    await s.open()
    try:
        calls: list[bool] = []
        assert all(s.add(msg(i), calls.append) for i in range(5))
        assert not s.add(msg(5), calls.append)  # the server answers ESME_RMSGQFUL
        async with asyncio.timeout(DEADLINE):
            await s.flush()
        assert calls == [True] * 5
        assert s.add(msg(5))  # room again once the writer caught up
    finally:
        await s.close()


@pytest.mark.asyncio
async def test_state_changes_count_against_the_bound_but_are_never_refused(
    tmp_path: Path,
) -> None:
    s = SqliteStore(config(tmp_path, queue_max=2))
    await s.open()
    try:
        assert s.add(msg(1))
        s.set_sent("m000001", "c1", "A")
        s.set_final("m000001", DeliveryReport("m000001", MessageState.DELIVERED, done_at=5.0))
        assert s.queued == 3
        assert not s.add(msg(2))  # intake pushed back while the writer is behind
        async with asyncio.timeout(DEADLINE):
            got = await s.get("m000001")
        assert got is not None
        assert got.state == MessageState.DELIVERED
    finally:
        await s.close()


# -- failures ----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_failing_record_fails_only_its_own_ack(
    store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    results: dict[str, bool] = {}
    assert store.add(msg(1), lambda ok: results.__setitem__("first", ok))
    async with asyncio.timeout(DEADLINE):
        await store.flush()
        store.add(msg(2), lambda ok: results.__setitem__("before", ok))
        store.add(msg(1), lambda ok: results.__setitem__("duplicate", ok))  # PK violation
        store.add(msg(3), lambda ok: results.__setitem__("after", ok))
        with caplog.at_level(logging.WARNING, logger="router.stores"):
            await store.flush()
    assert results == {"first": True, "before": True, "duplicate": False, "after": True}
    assert store.failed == 1
    attempts = [r for r in caplog.records if "attempt" in r.getMessage()]
    assert len(attempts) == 2  # the batch was retried once before being split
    assert any(
        "record lost" in r.getMessage() and "m000001" in r.getMessage() for r in caplog.records
    )
    assert await store.get("m000002") is not None
    assert await store.get("m000003") is not None


@pytest.mark.asyncio
async def test_a_value_sqlite_cannot_bind_does_not_stop_the_writer(store: SqliteStore) -> None:
    async with asyncio.timeout(DEADLINE):
        store.add(msg(1))
        store.set_final("m000001", DeliveryReport("m000001", MessageState.DELIVERED, error=2**70))
        store.add(msg(2))
        await store.flush()
        assert store.failed == 1
        assert await store.get("m000002") is not None
        got = await store.get("m000001")
    assert got is not None
    assert got.state == MessageState.ENROUTE


@pytest.mark.asyncio
async def test_writes_after_close_are_refused(tmp_path: Path) -> None:
    s = SqliteStore(config(tmp_path))
    await s.open()
    await s.close()
    await s.close()  # idempotent
    assert not s.add(msg(1))
    with pytest.raises(StoreClosed):
        s.set_sent("m000001", "c1", "X")
    with pytest.raises(StoreClosed):
        await s.get("m000001")


@pytest.mark.asyncio
async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "smsc.db") as db:
        db.execute("PRAGMA user_version=99")
    s = SqliteStore(config(tmp_path))
    with pytest.raises(RuntimeError, match="newer"):
        await s.open()


# -- reads ---------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_get_round_trip_and_set_final(tmp_path: Path) -> None:
    clock = Clock(2_000.0)
    s = SqliteStore(config(tmp_path), clock=clock)
    await s.open()
    try:
        m = msg(
            7,
            short_message=b"\x05\x00\x03\x2a\x02\x01part one",
            data_coding=8,
            esm_class=0x40,
            priority=2,
            registered_delivery=1,
            tlvs=(Tlv(0x0204, b"\x00\x10"),),
            concat=Concat("acme/ACME/447700900123/42", 2, 1),
            schedule_at=1_500.0,
            expires_at=9_000.0,
            attempts=1,
            tried=("c0",),
            payload_tlv=True,
        )
        async with asyncio.timeout(DEADLINE):
            assert s.add(m)
            got = await s.get(m.id)  # read your writes: no flush needed
            assert got is not None
            assert got.message == m
            assert got.state == MessageState.ENROUTE
            assert got.done_at is None
            assert await s.get("nope") is None

            s.set_sent(m.id, "c1", "abc")
            s.set_final(m.id, DeliveryReport(m.id, MessageState.ENROUTE))  # intermediate
            got = await s.get(m.id)
            assert got is not None
            assert (got.state, got.carrier, got.carrier_message_id, got.done_at) == (
                MessageState.ENROUTE,
                "c1",
                "abc",
                None,
            )
            s.set_final(m.id, DeliveryReport(m.id, MessageState.UNDELIVERABLE, error=0x45))
            got = await s.get(m.id)
            assert got is not None
            assert (got.state, got.error, got.done_at) == (
                MessageState.UNDELIVERABLE,
                0x45,
                2_000.0,
            )

            replaced = msg(7, short_message=b"new text", attempts=2)
            s.update_message(replaced)
            got = await s.get(m.id)
            assert got is not None
            assert got.message == replaced
    finally:
        await s.close()


@pytest.mark.asyncio
async def test_cancel_only_applies_to_unfinished(store: SqliteStore) -> None:
    async with asyncio.timeout(DEADLINE):
        store.add(msg(1))
        store.add(msg(2))
        store.set_final("m000002", DeliveryReport("m000002", MessageState.DELIVERED, done_at=9.0))
        store.mark_cancelled("m000001", 10.0)
        store.mark_cancelled("m000002", 11.0)
        one, two = await store.get("m000001"), await store.get("m000002")
    assert one is not None
    assert (one.state, one.done_at) == (MessageState.DELETED, 10.0)
    assert two is not None
    assert (two.state, two.done_at) == (MessageState.DELIVERED, 9.0)


@pytest.mark.asyncio
async def test_reopen_finds_unfinished_messages(tmp_path: Path) -> None:
    s = SqliteStore(config(tmp_path))
    await s.open()
    s.add(msg(4))  # never sent
    s.add(msg(2))  # sent, waiting for its receipt
    s.add(msg(3))  # delivered
    s.add(msg(1))  # cancelled
    s.set_sent("m000002", "c1", "0A")
    s.set_final("m000003", DeliveryReport("m000003", MessageState.DELIVERED, done_at=5.0))
    s.mark_cancelled("m000001", 6.0)
    async with asyncio.timeout(DEADLINE):
        await s.close()

    s = SqliteStore(config(tmp_path))
    await s.open()
    try:
        async with asyncio.timeout(DEADLINE):
            left = await s.unfinished()
    finally:
        await s.close()
    assert [m.message.id for m in left] == ["m000002", "m000004"]  # oldest first
    assert [m.carrier for m in left] == ["c1", ""]  # re-queue the unsent, await the other


@pytest.mark.asyncio
async def test_find_sent_before_and_after_commit(store: SqliteStore) -> None:
    async with asyncio.timeout(DEADLINE):
        store.add(msg(1))
        store.set_sent("m000001", "c1", "0x1A", key="26")
        assert await store.find_sent("c1", "26") == "m000001"  # still queued
        await store.flush()
        assert await store.find_sent("c1", "26") == "m000001"  # from the index
        assert await store.find_sent("c2", "26") is None
        assert await store.find_sent("c1", "0x1A") is None


@pytest.mark.asyncio
async def test_correlation_lookup_uses_the_index(store: SqliteStore, tmp_path: Path) -> None:
    await store.flush()
    with sqlite3.connect(tmp_path / "smsc.db") as db:
        plan = db.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM messages WHERE carrier = ? AND carrier_key = ?"
            " ORDER BY submitted_at DESC LIMIT 1",
            ("c1", "26"),
        ).fetchall()
    assert "messages_carrier_key" in " ".join(str(row) for row in plan)


@pytest.mark.asyncio
async def test_reserved_id_blocks_never_repeat_across_restarts(tmp_path: Path) -> None:
    s = SqliteStore(config(tmp_path))
    await s.open()
    async with asyncio.timeout(DEADLINE):
        assert await s.reserve_ids(100) == 0
        assert await s.reserve_ids(50) == 100
        await s.close()
    with sqlite3.connect(tmp_path / "smsc.db") as db:  # committed, not just queued
        assert db.execute("SELECT value FROM counters").fetchone() == (150,)
    s = SqliteStore(config(tmp_path))
    await s.open()
    try:
        async with asyncio.timeout(DEADLINE):
            assert await s.reserve_ids(100) == 150
        with pytest.raises(ValueError, match="at least one"):
            await s.reserve_ids(0)
    finally:
        await s.close()


# -- held deliveries ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_held_items_are_ordered_per_account_and_released(tmp_path: Path) -> None:
    clock = Clock(100.0)
    s = SqliteStore(config(tmp_path), clock=clock)
    await s.open()
    try:
        async with asyncio.timeout(DEADLINE):
            for i in range(5):
                s.hold("acme", f"r{i}".encode(), 200.0)
                s.hold("other", f"o{i}".encode(), 200.0)
            items = await s.held("acme", 3)  # read your writes
            assert [item for _, item in items] == [b"r0", b"r1", b"r2"]
            s.release([held_id for held_id, _ in items[:2]])
            assert [item for _, item in await s.held("acme", 10)] == [b"r2", b"r3", b"r4"]
            assert len(await s.held("other", 10)) == 5
            assert await s.held("nobody", 10) == []
            await s.close()

            s = SqliteStore(config(tmp_path), clock=clock)
            await s.open()  # durable across a restart
            assert [item for _, item in await s.held("acme", 10)] == [b"r2", b"r3", b"r4"]
    finally:
        await s.close()


@pytest.mark.asyncio
async def test_held_items_expire_and_purge(tmp_path: Path) -> None:
    clock = Clock(100.0)
    s = SqliteStore(config(tmp_path, keep_days=1), clock=clock)
    await s.open()
    try:
        async with asyncio.timeout(DEADLINE):
            s.hold("acme", b"short", 150.0)
            s.hold("acme", b"long", 100_000.0)
            s.add(msg(1))
            s.add(msg(2))
            s.add(msg(3))
            s.set_final("m000001", DeliveryReport("m000001", MessageState.DELIVERED, done_at=10.0))
            s.set_final(
                "m000002", DeliveryReport("m000002", MessageState.DELIVERED, done_at=90_000)
            )
            assert [i for _, i in await s.held("acme", 10)] == [b"short", b"long"]
            clock.now = 150.0
            assert [i for _, i in await s.held("acme", 10)] == [b"long"]  # expired: skipped
            await s.flush()
            # a day later: "short" expired, m1 done more than a day ago; "long" not expired,
            # m2 too recent, m3 unfinished
            assert await s.purge(86_410.5) == 2
            assert await s.get("m000001") is None
            assert await s.get("m000002") is not None
            assert await s.get("m000003") is not None
            clock.now = 100.0
            assert [i for _, i in await s.held("acme", 10)] == [b"long"]
    finally:
        await s.close()


@pytest.mark.asyncio
async def test_held_items_are_bounded_per_account(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = SqliteStore(config(tmp_path), clock=Clock(0.0), held_max=3)
    await s.open()
    try:
        async with asyncio.timeout(DEADLINE):
            for i in range(5):
                s.hold("acme", bytes([i]), 10.0)
            s.hold("other", b"x", 10.0)
            with caplog.at_level(logging.WARNING, logger="router.stores"):
                await s.flush()
                s.hold("acme", b"\x05", 10.0)
                await s.flush()
            assert [i for _, i in await s.held("acme", 10)] == [b"\x03", b"\x04", b"\x05"]
            assert [i for _, i in await s.held("other", 10)] == [b"x"]
        assert s.dropped_held == 3
        # Two transactions dropped items of acme: one line, when it started.
        assert sum("dropped" in r.getMessage() for r in caplog.records) == 1
    finally:
        await s.close()


# -- the file --------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_database_files_are_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "smsc.db"
    path.touch(mode=0o644)
    os.chmod(path, 0o644)
    s = SqliteStore(config(tmp_path))
    await s.open()
    try:
        s.add(msg(1))
        await s.flush()
        for name in ("smsc.db", "smsc.db-wal", "smsc.db-shm"):
            mode = stat.S_IMODE((tmp_path / name).stat().st_mode)
            assert mode == 0o600, f"{name}: {oct(mode)}"
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        await s.close()


@pytest.mark.asyncio
async def test_memory_store_works() -> None:
    s = SqliteStore(StoreConfig(path=":memory:"))
    await s.open()
    try:
        async with asyncio.timeout(DEADLINE):
            s.add(msg(1))
            assert await s.get("m000001") is not None
    finally:
        await s.close()


# -- kill -9 -----------------------------------------------------------------------------------

CHILD = """
import asyncio, os, sys
from router.config import StoreConfig
from router.model import Address, Message
from router.stores.sqlite import SqliteStore

async def main(path):
    store = SqliteStore(StoreConfig(path=path, batch_max=64))
    await store.open()
    src, dst = Address(5, 0, "ACME"), Address(1, 1, "447700900123")

    def durable(mid):
        def callback(ok):
            if ok:
                os.write(1, (mid + "\\n").encode())
        return callback

    i = 0
    while True:  # until killed
        for _ in range(16):
            i += 1
            m = Message(id=f"k{i}", account="acme", source=src, destination=dst,
                        short_message=b"x" * 140, submitted_at=float(i))
            while not store.add(m, durable(m.id)):
                await store.flush()
        await asyncio.sleep(0)

asyncio.run(main(sys.argv[1]))
"""


@pytest.mark.asyncio
async def test_every_acknowledged_message_survives_kill_9(tmp_path: Path) -> None:
    path = str(tmp_path / "smsc.db")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, path, stdout=asyncio.subprocess.PIPE, env=env, cwd=ROOT
    )
    assert proc.stdout is not None
    acked: list[str] = []
    try:
        async with asyncio.timeout(30.0):
            while len(acked) < 3000:
                line = await proc.stdout.readline()
                assert line, "child stopped before it was killed"
                acked.append(line.decode().strip())
            proc.send_signal(signal.SIGKILL)  # mid-stream: the child never stops by itself
            acked.extend(line.decode().strip() for line in (await proc.stdout.read()).splitlines())
            assert await proc.wait() == -signal.SIGKILL
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    s = SqliteStore(StoreConfig(path=path))
    await s.open()
    try:
        async with asyncio.timeout(DEADLINE):
            stored = {m.message.id for m in await s.unfinished()}
    finally:
        await s.close()
    missing = [mid for mid in acked if mid not in stored]
    assert missing == []
    assert len(stored) >= len(acked)


@pytest.mark.asyncio
async def test_held_receipts_amid_their_messages_records_are_all_kept_in_order(
    tmp_path: Path,
) -> None:
    """Each message is added, sent and finished, and its receipt held (no receiver bound),
    all in the same batches: the holds are written apart from the messages' multi-row
    statements, and every one comes back, in the order held, with every message final.
    (How fast: bench/held.py, against the same messages without holds.)"""
    n = 3_000
    done_at = 2_000.0
    s = SqliteStore(StoreConfig(path=str(tmp_path / "held.db")), clock=Clock(0.0))
    await s.open()
    try:
        async with asyncio.timeout(DEADLINE):
            for i in range(n):
                m = msg(i)
                s.add(m)
                s.set_sent(m.id, "sim", f"c{i}")
                s.set_final(m.id, DeliveryReport(m.id, MessageState.DELIVERED, done_at=done_at))
                s.hold("acme", b"receipt %d" % i, 10.0)
            await s.flush()
            held = await s.held("acme", n + 1)
            assert [item for _, item in held] == [b"receipt %d" % i for i in range(n)]
            assert await s.unfinished() == []
            last = await s.get(msg(n - 1).id)
            assert last is not None
            assert last.state is MessageState.DELIVERED
    finally:
        await s.close()


# -- purge, row counts ---------------------------------------------------------------------


def finished(s: SqliteStore, first: int, n: int, done_at: float) -> None:
    for i in range(first, first + n):
        s.add(msg(i))
        s.set_final(
            f"m{i:06d}", DeliveryReport(f"m{i:06d}", MessageState.DELIVERED, done_at=done_at)
        )


@pytest.mark.asyncio
async def test_purge_deletes_a_batch_per_transaction_between_the_writers_own(
    tmp_path: Path,
) -> None:
    """40 old final messages and 25 expired held items, one row per purge transaction: an
    ack asked for while the purge runs comes before the purge ends (one purge transaction
    between two of the writer's)."""
    s = SqliteStore(config(tmp_path, keep_days=1, purge_batch=1), clock=Clock(0.0))
    await s.open()
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(DEADLINE):
            finished(s, 0, 40, done_at=10.0)  # old
            finished(s, 100, 5, done_at=90_000.0)  # recent
            s.add(msg(200))  # unfinished
            for i in range(25):
                s.hold("acme", bytes([i]), 50.0)  # expired at the purge
            s.hold("acme", b"later", 100_000.0)
            await s.flush()
            assert (s.message_rows, s.held_rows) == (46, 26)
            before = s.transactions

            purge = asyncio.create_task(s.purge(86_420.0))
            acks = [loop.create_future(), loop.create_future()]
            assert s.add(msg(300), acks[0].set_result)
            assert await acks[0] is True
            assert s.add(msg(301), acks[1].set_result)  # the purge runs meanwhile
            assert await acks[1] is True
            assert 0 < s.expired_held + s.purged_messages < 65
            assert not purge.done()
            assert await purge == 65

        assert s.expired_held == 25
        assert s.purged_messages == 40
        assert (s.message_rows, s.held_rows) == (8, 1)
        assert s.transactions - before == 2  # the adds; purge transactions are not counted
        with sqlite3.connect(tmp_path / "smsc.db") as db:
            assert db.execute("SELECT count(*) FROM messages").fetchone() == (8,)
            assert db.execute("SELECT count(*) FROM held").fetchone() == (1,)
    finally:
        await s.close()


@pytest.mark.asyncio
async def test_row_counts_follow_the_writes_and_are_read_again_at_open(tmp_path: Path) -> None:
    s = SqliteStore(config(tmp_path), clock=Clock(0.0), held_max=3)
    await s.open()
    try:
        async with asyncio.timeout(DEADLINE):
            for i in range(5):
                s.add(msg(i))
                s.hold("acme", bytes([i]), 10.0)  # two dropped by held_max
            s.add(msg(1))  # a duplicate: fails, adds no row
            await s.flush()
            assert (s.message_rows, s.held_rows) == (5, 3)
            s.release([held_id for held_id, _ in await s.held("acme", 2)])
            await s.flush()
            assert (s.message_rows, s.held_rows) == (5, 1)
            db_bytes, wal_bytes = s.file_sizes()
            assert db_bytes > 0
            assert wal_bytes > 0
            await s.close()
            s = SqliteStore(config(tmp_path), clock=Clock(0.0))
            await s.open()
            assert (s.message_rows, s.held_rows) == (5, 1)
    finally:
        await s.close()
    assert SqliteStore(StoreConfig(path=":memory:")).file_sizes() == (0, 0)


@pytest.mark.asyncio
async def test_run_purges_purges_at_once_and_on_schedule_until_cancelled(tmp_path: Path) -> None:
    from router.stores.writebehind import run_purges

    s = SqliteStore(config(tmp_path, keep_days=1))
    await s.open()
    try:
        finished(s, 0, 3, done_at=10.0)
        await s.flush()
        task = asyncio.create_task(run_purges(s, 3600.0, lambda: 86_420.0))
        async with asyncio.timeout(DEADLINE):
            await asyncio.sleep(0)  # one loop turn: the task starts and asks for its purge
            # Purges run in order: ours ends after the task's first one, which ran at once.
            assert await s.purge(86_420.0) == 0
            assert s.purged_messages == 3
            assert not task.done()  # waiting for the next one
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert s.message_rows == 0
    finally:
        await s.close()


# -- deadlines and bounds ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_read_gives_up_after_read_timeout_while_the_database_hangs(
    tmp_path: Path,
) -> None:
    """Another process holds the write lock: the writer is stuck in SQLite. A read that
    must see a queued write gives up after ``read_timeout`` (a TimeoutError the callers
    answer a temporary error for), and the store carries on once the lock is gone."""
    s = SqliteStore(config(tmp_path, read_timeout=0.2))
    await s.open()
    blocker = sqlite3.connect(tmp_path / "smsc.db", isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        assert s.add(msg(1))
        async with asyncio.timeout(DEADLINE):
            with pytest.raises(StoreTimeout, match=r"get took more than 0\.2 s") as caught:
                await s.get("m000001")
            assert isinstance(caught.value, TimeoutError)
            with pytest.raises(StoreTimeout):
                await s.flush()
            assert s.read_timeouts == 2
            blocker.execute("ROLLBACK")
            got = await s.get("m000001")
        assert got is not None
    finally:
        blocker.close()
        await s.close()


@pytest.mark.asyncio
async def test_close_gives_up_after_its_deadline_and_says_what_it_abandons(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = SqliteStore(config(tmp_path))
    await s.open()
    blocker = sqlite3.connect(tmp_path / "smsc.db", isolation_level=None)
    results: list[bool] = []
    try:
        blocker.execute("BEGIN IMMEDIATE")
        assert s.add(msg(1), results.append)
        assert s.add(msg(2))
        async with asyncio.timeout(DEADLINE):
            with caplog.at_level(logging.ERROR, logger="router.stores"):
                await s.close(timeout=0.2)
        assert not s.is_open
        assert results == [False]  # its client is answered: not acknowledged
        lines = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert any("not committed within 0.2 s" in line for line in lines), lines
        assert any("2 queued records abandoned" in line for line in lines), lines
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
        await s.close()


@pytest.mark.asyncio
async def test_add_and_hold_refuse_beyond_queue_max(tmp_path: Path) -> None:
    """An MO flood for an account with no receiver: holds past ``queue_max`` queued records
    are refused (the layer above answers a temporary error), not kept in memory; state
    changes of accepted messages are still taken."""
    s = SqliteStore(config(tmp_path, queue_max=5), clock=Clock(0.0))
    await s.open()
    try:
        taken = [s.hold("acme", bytes([i]), 10.0) for i in range(8)]
        assert taken == [True] * 5 + [False] * 3
        assert not s.add(msg(1))
        s.set_final("m000009", DeliveryReport("m000009", MessageState.DELIVERED))  # taken
        assert (s.refused_holds, s.refused_adds, s.queued) == (3, 1, 6)
        async with asyncio.timeout(DEADLINE):
            await s.flush()
            assert s.add(msg(1))
            assert s.hold("acme", b"\x08", 10.0)
            await s.flush()
            assert len(await s.held("acme", 10)) == 6
    finally:
        await s.close()


# -- a full disk -----------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("with_unacked", [True, False], ids=["enqueue-records", "acks-only"])
async def test_a_full_disk_refuses_new_writes_keeps_what_was_accepted_and_resumes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, with_unacked: bool
) -> None:
    """The store's file system fills up. Messages acknowledged before are kept; an add
    waiting for its commit (``ack_after: store``) is failed, never acknowledged, and not
    written later; a record already acknowledged (``ack_after: enqueue``) is kept in memory
    and written when space returns; new adds and holds are refused meanwhile; one ERROR
    line says why. With only acks in the failing batch, a probe write finds out that space
    is back. Writes resume by themselves once the filler file is removed."""
    with small_tmpfs(tmp_path / "fs") as fs:
        path = str(fs / "smsc.db")
        s = SqliteStore(StoreConfig(path=path, retry_max=0.05), clock=Clock(0.0))
        await s.open()
        loop = asyncio.get_running_loop()
        acked: list[str] = []
        unacked: list[str] = []
        try:
            async with asyncio.timeout(DEADLINE):
                for i in range(20):  # acknowledged before the disk is full
                    done = loop.create_future()
                    assert s.add(msg(i, short_message=b"x" * 200), done.set_result)
                    assert await done is True
                    acked.append(f"m{i:06d}")
                filler = fill(fs)
                refused: str | None = None
                with caplog.at_level(logging.INFO, logger="router.stores"):
                    i = 100
                    while refused is None:  # until the WAL's last free page is used up
                        i += 1
                        if with_unacked:
                            assert s.add(msg(1000 + i, short_message=b"y" * 200))
                            unacked.append(f"m{1000 + i:06d}")
                        done = loop.create_future()
                        assert s.add(msg(i, short_message=b"x" * 200), done.set_result)
                        if await done:
                            acked.append(f"m{i:06d}")
                        else:
                            refused = f"m{i:06d}"
                    assert s.unwritable == "disk_full"
                    assert s.write_errors["disk_full"] >= 1
                    assert not s.add(msg(5000))
                    assert s.hold("acme", b"mo", 10.0) is False
                    assert (s.refused_adds, s.refused_holds) == (1, 1)
                    # A state change of an accepted message is taken, and waits in memory.
                    s.set_final(acked[0], DeliveryReport(acked[0], MessageState.DELIVERED))
                    with pytest.raises(StoreTimeout, match="cannot write: disk_full"):
                        await s.flush(timeout=0.2)

                    filler.unlink()  # space returns
                    await s.flush()  # everything queued is written now
                assert s.unwritable is None
                errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
                assert len(errors) == 1, errors  # once, not per record nor per retry
                assert "cannot be written (disk_full" in errors[0].getMessage()
                assert any("written again" in r.getMessage() for r in caplog.records)

                done = loop.create_future()
                assert s.add(msg(6000), done.set_result)
                assert await done is True
            await s.close(timeout=DEADLINE)
            s = SqliteStore(StoreConfig(path=path), clock=Clock(0.0))
            await s.open()  # what is on disk:
            async with asyncio.timeout(DEADLINE):
                for mid in [*acked, *unacked, "m006000"]:
                    assert await s.get(mid) is not None, mid
                assert await s.get(refused) is None  # answered "not stored": it is not
                first = await s.get(acked[0])
                assert first is not None
                assert first.state == MessageState.DELIVERED
        finally:
            await s.close(timeout=DEADLINE)


@pytest.mark.asyncio
async def test_a_file_system_turned_read_only_refuses_writes_and_loses_nothing_acknowledged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The kernel turns the store's file system read-only (ext4 on an I/O error). Acked
    messages stay on disk; the add waiting for its ack is failed; new adds are refused;
    one ERROR line names the cause (read_only). The writer keeps what it holds and tries
    again (a file system the kernel made read-only needs an operator: fsck, remount)
    until ``close`` gives up on it at its deadline, saying what it abandons."""
    with ext4_image(tmp_path) as (mnt, device):
        path = str(mnt / "smsc.db")
        s = SqliteStore(StoreConfig(path=path, retry_max=0.05), clock=Clock(0.0))
        await s.open()
        loop = asyncio.get_running_loop()
        acked: list[str] = []
        try:
            async with asyncio.timeout(DEADLINE):
                for i in range(20):
                    done = loop.create_future()
                    assert s.add(msg(i), done.set_result)
                    assert await done is True
                    acked.append(f"m{i:06d}")
                # The acked writes are in the WAL, in the page cache (synchronous=NORMAL:
                # they survive kill -9, not a crash of the file system). Written out first,
                # as the kernel does within seconds; what it had not written when ext4
                # aborts is lost with the file system, whatever the program.
                os.sync()
                make_read_only(device)
                with caplog.at_level(logging.WARNING, logger="router.stores"):
                    s.set_final(acked[0], DeliveryReport(acked[0], MessageState.DELIVERED))
                    done = loop.create_future()
                    assert s.add(msg(100), done.set_result)
                    assert await done is False
                    assert s.unwritable == "read_only"
                    assert s.write_errors["read_only"] >= 1
                    assert not s.add(msg(101))
                    await s.close(timeout=0.3)
                errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
                assert "cannot be written (read_only" in errors[0]
                assert [e for e in errors if "cannot be written" in e] == errors[:1]
                assert any("1 queued records abandoned" in e for e in errors)  # the set_final
        finally:
            await s.close(timeout=DEADLINE)
        # The file system, checked and mounted again by its operator: acked ones are there.
        mount_again(mnt, device)
        assert set(acked) <= committed_ids(path)
        assert "m000100" not in committed_ids(path)
