"""The webhook outbox and the SQLite file under it: every committed event is handed out
once for its first attempt (from memory, or from the file when memory is full or after a
reopen), retries come back from the file when due, and a read never waits for writes
queued after it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from loops import Run

from smsc.outbox import SqliteOutbox
from smsc.sqlitefile import SqliteFile

DEADLINE = 10.0
NOW = 1_700_000_000.0
A = "http://a.example/hook"
B = "http://b.example/hook"


async def put_all(outbox: SqliteOutbox, urls: list[str]) -> None:
    done = [outbox.put("acct", url, b"{}", NOW) for url in urls]
    assert all(d is not None for d in done)
    async with asyncio.timeout(DEADLINE):
        assert all(await asyncio.gather(*[d for d in done if d is not None]))


def test_each_committed_event_is_handed_out_once_memory_full_or_not(
    run: Run, tmp_path: Path
) -> None:
    async def main() -> None:
        outbox = SqliteOutbox(str(tmp_path / "o.db"), memory=2)
        await outbox.open()
        try:
            await put_all(outbox, [A] * 5)
            first = await outbox.due(NOW, 3, set())
            rest = await outbox.due(NOW, 10, {e.id for e in first})
            ids = [e.id for e in first + rest]
            assert len(ids) == 5
            assert len(set(ids)) == 5
            assert await outbox.due(NOW, 10, set(ids)) == []
            for event_id in ids:
                outbox.delivered(event_id)
            assert outbox.waiting == 0
            assert await outbox.due(NOW + 1, 10, set()) == []
            assert await outbox.next_due(set()) is None
        finally:
            await outbox.close()

    run(main())


def test_a_blocked_host_waits_and_an_event_given_back_is_handed_out_again(
    run: Run, tmp_path: Path
) -> None:
    async def main() -> None:
        outbox = SqliteOutbox(str(tmp_path / "o.db"))
        await outbox.open()
        try:
            await put_all(outbox, [A, B, A])
            got = await outbox.due(NOW, 10, set(), hosts={"a.example"})
            assert [e.url for e in got] == [B]
            assert await outbox.next_due({got[0].id}, hosts={"a.example"}) is None
            to_a = await outbox.due(NOW, 10, {got[0].id})
            assert [e.url for e in to_a] == [A, A]
            outbox.give_back(to_a[1:])
            skip = {got[0].id, to_a[0].id}
            assert [e.id for e in await outbox.due(NOW, 10, skip)] == [to_a[1].id]
        finally:
            await outbox.close()

    run(main())


def test_the_next_event_to_a_host_is_taken_only_when_nothing_waits_elsewhere(
    run: Run, tmp_path: Path
) -> None:
    async def main() -> None:
        outbox = SqliteOutbox(str(tmp_path / "o.db"), memory=3)
        await outbox.open()
        try:
            await put_all(outbox, [A, A, A])
            first = await outbox.due(NOW, 1, set())
            outbox.delivered(first[0].id)
            second = outbox.take_next("a.example", set())
            assert second is not None
            assert second.id == first[0].id + 1
            await put_all(outbox, [B])  # another host waits: the sender's loop chooses
            assert outbox.take_next("a.example", {second.id}) is None
            to_b = await outbox.due(NOW, 1, {second.id}, hosts={"a.example"})
            assert [e.url for e in to_b] == [B]
            outbox.delivered(to_b[0].id)
            third = outbox.take_next("a.example", {second.id})
            assert third is not None
            assert third.id == second.id + 1
            assert outbox.take_next("a.example", {second.id, third.id}) is None
            await put_all(outbox, [A] * 4)  # past memory: one only in the file
            assert outbox.take_next("a.example", {second.id, third.id}) is None
            rest = await outbox.due(NOW, 10, {second.id, third.id})
            assert sorted(e.id for e in rest) == [5, 6, 7, 8]
        finally:
            await outbox.close()

    run(main())


def test_a_retried_event_comes_back_from_the_file_when_due(run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        outbox = SqliteOutbox(str(tmp_path / "o.db"))
        await outbox.open()
        try:
            await put_all(outbox, [A])
            (event,) = await outbox.due(NOW, 10, set())
            outbox.retry_at(event.id, 1, NOW + 60, "HTTP 503")
            assert await outbox.due(NOW + 30, 10, set()) == []
            assert await outbox.next_due(set()) == NOW + 60
            (again,) = await outbox.due(NOW + 60, 10, set())
            assert (again.id, again.attempts, again.last_error) == (event.id, 1, "HTTP 503")
        finally:
            await outbox.close()

    run(main())


def test_events_from_before_a_reopen_are_read_from_the_file_and_ids_go_on(
    run: Run, tmp_path: Path
) -> None:
    async def main() -> None:
        path = str(tmp_path / "o.db")
        outbox = SqliteOutbox(path)
        await outbox.open()
        await put_all(outbox, [A, A])
        (sent,) = await outbox.due(NOW, 1, set())
        outbox.delivered(sent.id)
        await outbox.close()
        outbox = SqliteOutbox(path)
        await outbox.open()
        try:
            assert outbox.waiting == 1
            await put_all(outbox, [B])
            got = await outbox.due(NOW, 10, set())
            assert [e.url for e in got] == [A, B]
            assert len({sent.id, *(e.id for e in got)}) == 3
        finally:
            await outbox.close()

    run(main())


def test_a_read_waits_for_earlier_writes_not_for_a_steady_flow_of_later_ones(
    run: Run, tmp_path: Path
) -> None:
    async def main() -> None:
        file = SqliteFile(str(tmp_path / "f.db"), "CREATE TABLE t (n INTEGER);")
        await file.open()
        stop = asyncio.Event()

        async def writer() -> None:
            n = 0
            while not stop.is_set():
                n += 1
                file.write("INSERT INTO t VALUES (?)", [(n,)])
                await asyncio.sleep(0)

        flow = asyncio.create_task(writer())
        try:
            await asyncio.sleep(0)
            marker = file.write("INSERT INTO t VALUES (?)", [(-1,)])
            assert marker is not None
            async with asyncio.timeout(DEADLINE):
                rows = await file.read("SELECT COUNT(*) FROM t WHERE n = -1")
            assert marker.done()
            assert rows == [(1,)]
        finally:
            stop.set()
            await flow
            await file.close()

    run(main())


def test_a_transaction_of_many_writes_keeps_their_order_and_every_row(
    run: Run, tmp_path: Path
) -> None:
    """Runs of one INSERT or DELETE-by-key are written many rows to a statement; the
    outcome is that of each write in turn."""

    async def main() -> None:
        schema = "CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT, n INTEGER NOT NULL DEFAULT 0);"
        file = SqliteFile(str(tmp_path / "f.db"), schema)
        await file.open()
        try:
            writes = []
            for k in range(1, 151):
                writes.append(
                    file.write("INSERT OR REPLACE INTO t (k, v) VALUES (?, ?)", [(k, "a")])
                )
            writes.append(file.write("INSERT OR REPLACE INTO t (k, v) VALUES (?, ?)", [(7, "b")]))
            for k in range(1, 100, 2):  # odd keys below 100 go
                writes.append(file.write("DELETE FROM t WHERE k = ?", [(k,)]))
            writes.append(file.write("UPDATE t SET n = n + 1 WHERE k = ?", [(8,), (8,)]))
            writes.append(file.write("INSERT OR REPLACE INTO t (k, v) VALUES (?, ?)", [(7, "c")]))
            writes.append(file.write("DELETE FROM t WHERE k = ?", [(150,), (149,), (999,)]))
            async with asyncio.timeout(DEADLINE):
                assert all(await asyncio.gather(*[w for w in writes if w is not None]))
                rows = await file.read("SELECT k, v, n FROM t ORDER BY k")
            expected = {k: ("a", 0) for k in range(1, 149) if not (k % 2 and k < 100)}
            expected[7] = ("c", 0)
            expected[8] = ("a", 2)
            assert rows == [(k, v, n) for k, (v, n) in sorted(expected.items())]
            failed = file.write("INSERT INTO t (k, v) VALUES (?, ?)", [(1000, "x"), (1000, "y")])
            assert failed is not None
            async with asyncio.timeout(DEADLINE):
                assert await failed is False  # the whole transaction, as one write failed
                assert await file.read("SELECT COUNT(*) FROM t WHERE k = 1000") == [(0,)]
        finally:
            await file.close()

    run(main())


def test_a_posted_change_is_committed_in_order_with_the_writes_around_it(
    run: Run, tmp_path: Path
) -> None:
    """``post`` queues a change nobody waits for: it joins the next transaction in its
    place, and a read after it sees it; once the file is closed it is refused."""

    async def main() -> None:
        schema = "CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT);"
        file = SqliteFile(str(tmp_path / "f.db"), schema)
        await file.open()
        try:
            first = file.write("INSERT INTO t (k, v) VALUES (?, ?)", [(1, "a"), (2, "a")])
            assert file.post("DELETE FROM t WHERE k = ?", [(1,)])
            last = file.write("INSERT OR REPLACE INTO t (k, v) VALUES (?, ?)", [(1, "b")])
            assert first is not None
            assert last is not None
            async with asyncio.timeout(DEADLINE):
                assert await first
                assert await last
                assert await file.read("SELECT k, v FROM t ORDER BY k") == [(1, "b"), (2, "a")]
            assert file.post("DELETE FROM t WHERE k = ?", [(2,)])
            async with asyncio.timeout(DEADLINE):
                assert await file.read("SELECT k FROM t ORDER BY k") == [(1,)]
        finally:
            await file.close()
        assert not file.post("DELETE FROM t WHERE k = ?", [(1,)])

    run(main())
