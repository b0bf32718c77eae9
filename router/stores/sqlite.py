"""The SQLite store backend: ``SqliteStore`` implements ``router.ports.Store`` on one aiosqlite
connection in WAL mode (reads) and a writer connection on a thread of its own, with the
write-behind core of ``router.stores.writebehind`` (batching, acks after commit, read your
writes, retries while the database cannot be written).

One SQLite file belongs to one node: every message it adds is owned by ``node_id`` (the
``owner`` column), ``unfinished`` reads that owner's messages, and ``take_over`` moves
another owner's unfinished messages to it (a node id changed in the configuration).

Batches. Records of one message that meet in a batch are folded into one row; runs of adds,
sends and final states become multi-row statements (see below). Id blocks (``reserve_ids``)
are reserved on the writer's connection too, between two of its transactions.

Durability. The connection runs ``journal_mode=WAL`` with ``synchronous=NORMAL``: a commit
appends the transaction to the WAL file with ``write()`` and the WAL is fsynced at checkpoints.
A committed transaction therefore survives the process being killed (``kill -9``, OOM killer,
a crash): its pages are in the operating system's cache and reach the disk without us. It may
not survive a power loss or kernel panic (the database then stays consistent and loses the
last transactions). That is exactly what ``ack_after: store`` promises.

Failures of the database (disk full, read-only file system, I/O errors, locked by someone
else) make the store *unwritable* (see the write-behind core); any other failure is a
record's fault.

Deadlines. Every read waits ``read_timeout`` seconds at most, its wait for queued writes
included (read your writes), then raises :class:`StoreTimeout` (a ``TimeoutError``): a hung
database stalls a query_sm, not the server. ``close`` takes a deadline too.

Purge. ``purge(now)`` deletes final messages older than ``keep_days`` and held deliveries
past their expiry, ``purge_batch`` rows per transaction, on the writer, one such transaction
between two of its batches.

The file is created owner-only (0600); SQLite gives its -wal and -shm files the same mode.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import Any, Final

import aiosqlite

from router.config import StoreConfig
from router.model import DeliveryReport, StoredMessage
from router.ports import StoreClosed, StoreError
from router.stores.writebehind import (
    ADD,
    CANCEL,
    FINAL,
    HOLD,
    RELEASE,
    SENT,
    UPDATE,
    Op,
    WriteBehind,
)
from smppcore.constants import MessageState
from smppcore.receipt import is_final

__all__ = ["WRITE_ERROR_REASONS", "SqliteStore", "unwritable_reason"]

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 2

#: First wait before the writer tries a failed transaction again (then doubling).
RETRY_MIN: Final = 0.05

#: Why the database cannot be written, by SQLite's primary result code (the label of
#: ``smsc_store_write_errors_total``); other errors are a record's fault.
_UNWRITABLE: Final[dict[int, str]] = {
    sqlite3.SQLITE_FULL: "disk_full",
    sqlite3.SQLITE_READONLY: "read_only",
    sqlite3.SQLITE_IOERR: "io_error",
    sqlite3.SQLITE_CANTOPEN: "io_error",
    sqlite3.SQLITE_BUSY: "busy",
    sqlite3.SQLITE_LOCKED: "busy",
    sqlite3.SQLITE_NOMEM: "no_memory",
}
#: Every label of ``smsc_store_write_errors_total`` (each series exists from the start).
WRITE_ERROR_REASONS: Final = ("disk_full", "read_only", "io_error", "busy", "no_memory")


def unwritable_reason(exc: BaseException) -> str | None:
    """Why ``exc`` says the database cannot be written now (a reason word), or None when it
    is a record's fault (a constraint, a value SQLite cannot bind)."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        return None if code is None else _UNWRITABLE.get(code & 0xFF)
    if isinstance(exc, OSError):
        return "io_error"
    return None


# Statement shapes of records folded together in one batch (see _folded); never queued.
_ADD_FOLDED: Final = 7
_SENT_FINAL: Final = 8

_SQL: Final[dict[int, str]] = {
    ADD: "INSERT INTO messages (id, account, state, submitted_at, body, owner)"
    " VALUES (?, ?, ?, ?, ?, ?)",
    SENT: "UPDATE messages SET carrier = ?, carrier_message_id = ?, carrier_key = ? WHERE id = ?",
    FINAL: "UPDATE messages SET state = ?, error = ?, done_at = ? WHERE id = ?",
    UPDATE: "UPDATE messages SET account = ?, submitted_at = ?, body = ? WHERE id = ?",
    CANCEL: "UPDATE messages SET state = ?, done_at = ? WHERE id = ? AND done_at IS NULL",
    HOLD: "INSERT INTO held (account, expires_at, item) VALUES (?, ?, ?)",
    RELEASE: "DELETE FROM held WHERE id = ?",
}

# --- multi-row statements -------------------------------------------------------------------
#
# Why not executemany: the sqlite3 module releases the GIL around every sqlite3_step, so a
# writer thread running executemany must win the GIL back once per row — and while the event
# loop thread is busy that takes up to the switch interval (5 ms) each time. Under load 2,000
# rows took seconds (measured: 4.7 s with a busy thread, against 25 ms in multi-row statements)
# and the writer fell ever further behind. One statement carries up to _ROWS rows instead;
# the last one of a run is padded with NULL rows, which match and insert nothing, so each
# kind has a few statement shapes, all cached by sqlite3.

_ROWS: Final = (4, 16, 64, 256, 1024)
"""Rows per multi-row statement: as many of the largest as fit, then smaller ones; the last
statement is padded with NULL rows to its size."""

_MULTI_ROW: Final = {
    ADD: (
        6,
        "INSERT INTO messages (id, account, state, submitted_at, body, owner)"
        " SELECT column1, column2, column3, column4, column5, column6 FROM (VALUES {values})"
        " WHERE column1 IS NOT NULL",
    ),
    _ADD_FOLDED: (
        11,
        "INSERT INTO messages (id, account, state, submitted_at, body, carrier,"
        " carrier_message_id, carrier_key, error, done_at, owner)"
        " SELECT column1, column2, column3, column4, column5, column6, column7, column8,"
        " column9, column10, column11 FROM (VALUES {values}) WHERE column1 IS NOT NULL",
    ),
    SENT: (
        4,
        "UPDATE messages SET carrier = v.column1, carrier_message_id = v.column2,"
        " carrier_key = v.column3 FROM (VALUES {values}) AS v WHERE messages.id = v.column4",
    ),
    FINAL: (
        4,
        "UPDATE messages SET state = v.column1, error = v.column2, done_at = v.column3"
        " FROM (VALUES {values}) AS v WHERE messages.id = v.column4",
    ),
    _SENT_FINAL: (
        7,
        "UPDATE messages SET carrier = v.column1, carrier_message_id = v.column2,"
        " carrier_key = v.column3, state = v.column4, error = v.column5, done_at = v.column6"
        " FROM (VALUES {values}) AS v WHERE messages.id = v.column7",
    ),
    # Held deliveries: inserted in the order given (their ids, AUTOINCREMENT, keep it).
    HOLD: (
        3,
        "INSERT INTO held (account, expires_at, item)"
        " SELECT column1, column2, column3 FROM (VALUES {values}) WHERE column1 IS NOT NULL",
    ),
}
# A batch's adds, then its sends, then its final states: the order per message is always
# add → (send, final), and sends and final states write different columns.
_REORDERABLE: Final = (ADD, SENT, FINAL)


@cache
def _multi_row_sql(kind: int, rows: int) -> str:
    width, template = _MULTI_ROW[kind]
    row = "(" + ", ".join(["?"] * width) + ")"
    return template.format(values=", ".join([row] * rows))


_Statement = tuple[int, str, list[Any], bool]
"""(kind, sql, params, many): many → executemany over rows of params."""


def _statements(ops: list[Op]) -> Iterator[_Statement]:
    """Statements that write ``ops`` with the same result as one
    statement per record in order. Runs of adds, sends and final states become multi-row
    statements (a message appears at most once per UPDATE, whose FROM join would otherwise
    pick one of its rows at random); other kinds keep one row per step and stay barriers.

    Held deliveries touch nothing else (a release names a row already committed): they
    are taken out of the batch, in their order, and inserted first in multi-row
    statements. Left in place, each receipt held amid its messages' records was a barrier
    splitting those runs, and a statement of its own (measured: a writer that fell tens of
    thousands of records behind at 1,000 messages/s)."""
    holds = [op.params for op in ops if op.kind == HOLD]
    if holds:
        yield from _multi_row(HOLD, holds)
        ops = [op for op in ops if op.kind != HOLD]
    i = 0
    while i < len(ops):
        if ops[i].kind not in _REORDERABLE:
            j = i
            while j < len(ops) and ops[j].kind == ops[i].kind:
                j += 1
            kind = ops[i].kind
            yield kind, _SQL[kind], [op.params for op in ops[i:j]], True
            i = j
            continue
        j = i
        while j < len(ops) and ops[j].kind in _REORDERABLE:
            j += 1
        segment = ops[i:j]
        folded = _folded(segment)
        if folded is not None:
            for kind, rows in folded:
                yield from _multi_row(kind, rows)
        else:
            for kind in _REORDERABLE:
                yield from _multi_row(kind, [op.params for op in segment if op.kind == kind])
        i = j


def _folded(segment: list[Op]) -> list[tuple[int, list[tuple[Any, ...]]]] | None:
    """The rows of a run of adds, sends and final states with each message's records
    folded into one row: an add takes its message's send and final state in the same
    batch (one INSERT instead of an INSERT and two UPDATEs: most messages go out within
    milliseconds of their add, and a quick carrier's receipt follows), and a send takes its
    final state. Several final states or sends of one message (``set_sending``, then
    ``set_sent``): the last one wins, as it would one statement at a time. None when the
    run holds what folding does not cover (an id added twice): the caller then writes it
    record by record, and a bad record fails as it would alone."""
    adds: dict[Any, list[Any]] = {}
    sends: dict[Any, list[Any]] = {}
    finals: dict[Any, tuple[Any, ...]] = {}
    for op in segment:
        params = op.params
        kind = op.kind
        if kind == ADD:
            mid = params[0]
            if mid in adds or mid in sends or mid in finals:
                return None
            # id, account, state, submitted_at, body, carrier, carrier_message_id,
            # carrier_key, error, done_at (the table's defaults until folded over), owner
            adds[mid] = [*params[:5], "", "", None, 0, None, params[5]]
        elif kind == SENT:
            carrier, carrier_message_id, key, mid = params
            row = adds.get(mid)
            if row is not None:
                row[5:8] = carrier, carrier_message_id, key  # the last send wins
            elif mid in sends:
                # set_sending, then set_sent (or a resend): the last one wins, as it would
                # one statement at a time; a final state folded in before stays
                sends[mid][0:3] = carrier, carrier_message_id, key
            else:
                sends[mid] = [carrier, carrier_message_id, key, None, mid]
        else:  # FINAL
            state, error, done_at, mid = params
            row = adds.get(mid)
            if row is not None:
                row[2] = state
                row[8:10] = error, done_at
                continue
            sent = sends.get(mid)
            if sent is not None:
                sent[3] = (state, error, done_at)
                finals.pop(mid, None)  # an earlier one must not be written after it
            else:
                finals.pop(mid, None)  # the last one wins (and keeps its place)
                finals[mid] = params
    out: list[tuple[int, list[tuple[Any, ...]]]] = []
    if adds:
        out.append((_ADD_FOLDED, [tuple(row) for row in adds.values()]))
    plain = [(c, m, k, mid) for c, m, k, final, mid in sends.values() if final is None]
    if plain:
        out.append((SENT, plain))
    both = [(c, m, k, *final, mid) for c, m, k, final, mid in sends.values() if final is not None]
    if both:
        out.append((_SENT_FINAL, both))
    if finals:
        out.append((FINAL, list(finals.values())))
    return out


def _multi_row(kind: int, rows: list[tuple[Any, ...]]) -> Iterator[_Statement]:
    width = _MULTI_ROW[kind][0]
    key = 0 if kind in (ADD, _ADD_FOLDED) else width - 1  # the id column
    unique = kind != HOLD  # a held row has no key of its own
    chunk: list[tuple[Any, ...]] = []
    ids: set[Any] = set()
    for row in rows:
        if len(chunk) == _ROWS[-1] or (unique and key and row[key] in ids):
            yield from _padded(kind, chunk, width)
            chunk, ids = [], set()
        chunk.append(row)
        ids.add(row[key])
    if chunk:
        yield from _padded(kind, chunk, width)


def _padded(kind: int, chunk: list[tuple[Any, ...]], width: int) -> Iterator[_Statement]:
    """``chunk`` in statements of the fixed sizes, largest first, the last one padded:
    500 rows are 256 + 3 x 64 + 3 x 16 + 4, not one statement of 1,024 with 524 NULL
    rows (the padding cost more than the rows: storebench, 20-message batches, 118 -> 44 us
    of CPU per message)."""
    start = 0
    left = len(chunk)
    while left > 0:
        size = next((n for n in reversed(_ROWS) if n <= left), _ROWS[0])
        part = chunk[start : start + size]
        params = [value for row in part for value in row]
        if len(part) < size:
            params += [None] * (width * (size - len(part)))
        yield kind, _multi_row_sql(kind, size), params, False
        start += size
        left -= size


_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS messages (
        id TEXT PRIMARY KEY NOT NULL,
        account TEXT NOT NULL,
        state INTEGER NOT NULL,
        error INTEGER NOT NULL DEFAULT 0,
        carrier TEXT NOT NULL DEFAULT '',
        carrier_message_id TEXT NOT NULL DEFAULT '',
        carrier_key TEXT,
        submitted_at REAL NOT NULL,
        done_at REAL,
        body BLOB NOT NULL,
        owner TEXT NOT NULL DEFAULT ''
    )""",
    # receipt correlation: (carrier, normalised carrier id) → our id
    "CREATE INDEX IF NOT EXISTS messages_carrier_key ON messages (carrier, carrier_key)"
    " WHERE carrier_key IS NOT NULL",
    # restart recovery reads the unfinished ones; purge the finished ones by age
    "DROP INDEX IF EXISTS messages_unfinished",  # schema 1: by submitted_at only
    "CREATE INDEX IF NOT EXISTS messages_owner_unfinished ON messages (owner, submitted_at)"
    " WHERE done_at IS NULL",
    "CREATE INDEX IF NOT EXISTS messages_done ON messages (done_at) WHERE done_at IS NOT NULL",
    """CREATE TABLE IF NOT EXISTS held (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        account TEXT NOT NULL,
        expires_at REAL NOT NULL,
        item BLOB NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS held_account ON held (account, id)",
    "CREATE INDEX IF NOT EXISTS held_expires ON held (expires_at)",
    "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL)",
)

_STORED_COLUMNS: Final = "body, state, error, carrier, carrier_message_id, done_at"
#: A purge's statements, one batch (``LIMIT ?``) per transaction.
_PURGE_HELD: Final = (
    "DELETE FROM held WHERE id IN (SELECT id FROM held WHERE expires_at <= ? LIMIT ?)"
)
_PURGE_MESSAGES: Final = (
    "DELETE FROM messages WHERE rowid IN (SELECT rowid FROM messages"
    " WHERE done_at IS NOT NULL AND done_at < ? LIMIT ?)"
)
#: A final state as a compare-and-set (``claim_final``).
_CLAIM_FINAL: Final = (
    "UPDATE messages SET state = ?, error = ?, done_at = ? WHERE id = ? AND done_at IS NULL"
)
#: Moves a node's unfinished messages to another (``take_over``).
_TAKE_OVER: Final = "UPDATE messages SET owner = ? WHERE owner = ? AND done_at IS NULL"
#: The write that tells whether the database takes writes again, when no record waits.
_PROBE_SQL: Final = (
    "INSERT INTO counters (name, value) VALUES ('write_probe', ?)"
    " ON CONFLICT (name) DO UPDATE SET value = excluded.value"
)


class SqliteStore(WriteBehind):
    """``Store`` on one aiosqlite connection (WAL), with one batching writer task.

    ``clock`` gives wall-clock Unix seconds (held items' expiry, a report without done_at);
    ``held_max`` bounds the deliveries held per account (the oldest are dropped beyond it;
    default: the config's ``held_max``); ``node_id`` owns the messages added.
    """

    def __init__(
        self,
        config: StoreConfig,
        *,
        clock: Callable[[], float] = time.time,
        held_max: int | None = None,
        node_id: str = "",
    ) -> None:
        held_max = config.held_max if held_max is None else held_max
        if held_max < 1:
            raise ValueError("held_max must be at least 1")
        super().__init__(
            config, clock=clock, node_id=node_id, write_error_reasons=WRITE_ERROR_REASONS
        )
        self._held_max = held_max
        self._db: aiosqlite.Connection | None = None
        #: The writer's own connection, used only on its own thread (see _write_sync).
        self._wdb: sqlite3.Connection | None = None
        self._wthread: ThreadPoolExecutor | None = None
        self._lock = asyncio.Lock()  # one read at a time on self._db
        self._path = ""
        #: Claims running (claim_soon), until each is done.
        self._claims: set[asyncio.Future[int]] = set()

    # -- life cycle --------------------------------------------------------------------------

    async def open(self) -> None:
        if self._db is not None:
            raise StoreClosed("store is already open")
        path = self._config.path
        uri = False
        if path == ":memory:":
            # Two connections (reads, the writer) must share one database in memory.
            path, uri = f"file:smsc-store-{id(self)}?mode=memory&cache=shared", True
        else:
            _create_private(path)
        db = await aiosqlite.connect(path, isolation_level=None, uri=uri)
        wthread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")
        loop = asyncio.get_running_loop()
        try:
            await _prepare(db, self._node_id)
            self._wdb = await loop.run_in_executor(wthread, _connect_writer, path, uri)
            counts = await db.execute_fetchall(
                "SELECT (SELECT count(*) FROM messages), (SELECT count(*) FROM held)"
            )
            self.message_rows, self.held_rows = (int(n) for n in next(iter(counts)))
        except BaseException:
            await db.close()
            wthread.shutdown(wait=False)
            raise
        self._db = db
        self._wthread = wthread
        self._path = "" if uri else path
        self._start_writer()

    async def close(self, timeout: float | None = None) -> None:
        """Commit everything queued, stop the writer, close the connection. Idempotent.

        After ``timeout`` seconds (None: no limit) — the database hangs, or the disk stays
        full — the writer is stopped: what it still holds is logged as lost (an ERROR line
        with the count) and failed; the connections get a second more to close."""
        if self._db is None:
            return
        if self._claims:  # claims in flight end first (they write through the writer)
            await asyncio.wait(set(self._claims), timeout=timeout)
        hung = True  # cancelled while waiting: the connections get the short grace too
        try:
            hung = await self._stop_writer(timeout)
        finally:
            db, self._db = self._db, None
            wdb, self._wdb = self._wdb, None
            wthread, self._wthread = self._wthread, None
            # After a missed deadline the connections get a second to close: their threads
            # may be stuck in SQLite, and a close must not hang for them.
            grace = 1.0 if hung else None
            stuck = False
            if wthread is not None:
                if wdb is not None:
                    closing = asyncio.get_running_loop().run_in_executor(wthread, wdb.close)
                    stuck = not await _within(closing, grace)
                wthread.shutdown(wait=not stuck)
            if not await _within(db.close(), grace):
                stuck = True
                db.stop()
            if stuck:
                log.error("store: a database connection did not close (SQLite hangs)")
            for claim in self._claims:  # past the deadline: failed (StoreError), not left
                claim.cancel()

    def file_sizes(self) -> tuple[int, int]:
        """Bytes of the database file and of its WAL (0 for a store in memory, or a file
        not there). Two ``stat`` calls: cheap enough to read at scrape time."""
        if not self._path:
            return 0, 0
        return _size(self._path), _size(self._path + "-wal")

    # -- reads ---------------------------------------------------------------------------------

    async def get(self, message_id: str) -> StoredMessage | None:
        async with self._deadline("get"):
            seq = self._pending_ids.get(message_id)
            if seq is not None:
                await self._until(seq)
            rows = await self._read(
                f"SELECT {_STORED_COLUMNS} FROM messages WHERE id = ?", (message_id,)
            )
        return self._stored(rows[0]) if rows else None

    async def find_sent(self, carrier: str, key: str) -> str | None:
        pending = self._pending_sent.get((carrier, key))
        if pending is not None:
            return pending[0]
        async with self._deadline("find_sent"):
            rows = await self._read(
                "SELECT id FROM messages WHERE carrier = ? AND carrier_key = ?"
                " ORDER BY submitted_at DESC LIMIT 1",
                (carrier, key),
            )
        return str(rows[0][0]) if rows else None

    async def unfinished(self) -> list[StoredMessage]:
        """The wait for queued writes has the read deadline; the read itself (recovery at
        start, every unfinished message) has none."""
        await self.flush()
        rows = await self._read(
            f"SELECT {_STORED_COLUMNS} FROM messages WHERE owner = ? AND done_at IS NULL"
            " ORDER BY submitted_at",
            (self._node_id,),
        )
        return [self._stored(row) for row in rows]

    async def take_over(self, node_id: str) -> int:
        """One UPDATE on the writer's connection, between two of its batches (queued
        writes of ``node_id``'s messages are committed first: ``flush``)."""
        await self.flush()
        wdb, wthread = self._wdb, self._wthread
        if wdb is None or wthread is None or self._closing:
            raise StoreClosed("store is not open")
        if node_id == self._node_id:
            return 0
        loop = asyncio.get_running_loop()
        async with self._deadline("take_over"):
            return await loop.run_in_executor(
                wthread, _write_one, wdb, _TAKE_OVER, (self._node_id, node_id)
            )

    def settle_final(self, message_id: str) -> asyncio.Future[None]:
        """One node owns this store: its claims need no lease (done at once)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def take_over_messages(self, node_id: str) -> list[StoredMessage]:
        """The unfinished messages of ``node_id``, read, then taken over (one file belongs
        to one node: nobody else takes them meanwhile)."""
        if node_id == self._node_id:
            return []
        await self.flush()
        rows = await self._read(
            f"SELECT {_STORED_COLUMNS} FROM messages WHERE owner = ? AND done_at IS NULL"
            " ORDER BY submitted_at",
            (node_id,),
        )
        await self.take_over(node_id)
        return [self._stored(row) for row in rows]

    async def claim_final(self, message_id: str, report: DeliveryReport) -> bool:
        """One conditional UPDATE on the writer's connection, after the writes queued
        before it (``flush``), within ``read_timeout``."""
        if not is_final(report.state):
            raise ValueError(f"not a final state: {report.state!r}")
        return self.claim_won(message_id, await self._claim_rows(message_id, report))

    def claim_soon(self, message_id: str, report: DeliveryReport) -> asyncio.Future[int]:
        """:meth:`claim_final`'s UPDATE as a task (one node owns this file: its claims are
        few, a cluster's node claims on Redis); the task is the store's until it is done."""
        if not is_final(report.state):
            raise ValueError(f"not a final state: {report.state!r}")
        task = asyncio.ensure_future(self._claim_rows(message_id, report))
        self._claims.add(task)
        task.add_done_callback(self._claims.discard)
        return task

    def claim_won(self, message_id: str, answer: int) -> bool:
        """``answer``: the rows the claim's UPDATE changed."""
        return answer > 0

    async def _claim_rows(self, message_id: str, report: DeliveryReport) -> int:
        await self.flush()
        wdb, wthread = self._wdb, self._wthread
        if wdb is None or wthread is None or self._closing:
            raise StoreClosed("store is not open")
        done_at = report.done_at if report.done_at > 0 else self._clock()
        params = (int(report.state), report.error, done_at, message_id)
        loop = asyncio.get_running_loop()
        async with self._deadline("claim_final"):
            rows: int = await loop.run_in_executor(wthread, _write_one, wdb, _CLAIM_FINAL, params)
        return rows

    async def held(self, account: str, limit: int) -> list[tuple[int, bytes]]:
        async with self._deadline("held"):
            await self._until(self._held_seq)
            rows = await self._read(
                "SELECT id, item FROM held WHERE account = ? AND expires_at > ?"
                " ORDER BY id LIMIT ?",
                (account, self._clock(), limit),
            )
        return [(int(row[0]), bytes(row[1])) for row in rows]

    async def held_counts(self) -> dict[str, int]:
        async with self._deadline("held_counts"):
            await self._until(self._held_seq)
            rows = await self._read(
                "SELECT account, COUNT(*) FROM held WHERE expires_at > ? GROUP BY account",
                (self._clock(),),
            )
        return {str(row[0]): int(row[1]) for row in rows}

    async def reserve_ids(self, n: int) -> int:
        """One transaction on the writer's connection and thread (between two of its
        batches: no second writer to wait for), within ``read_timeout``. Past it
        StoreTimeout; the reservation may still commit, and then its ids are skipped —
        never handed out twice."""
        if n < 1:
            raise ValueError("reserve at least one id")
        wdb, wthread = self._wdb, self._wthread
        if wdb is None or wthread is None or self._closing:
            raise StoreClosed("store is not open")
        loop = asyncio.get_running_loop()
        async with self._deadline("reserve_ids"):
            return await loop.run_in_executor(wthread, _reserve_sync, wdb, n)

    async def _read(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        async with self._lock:
            rows = await self._connection().execute_fetchall(sql, params)
        return list(rows)

    def _stored(self, row: Any) -> StoredMessage:
        body, state, error, carrier, carrier_message_id, done_at = row
        return StoredMessage(
            message=self._decode(body),
            state=MessageState(state),
            error=error,
            carrier=carrier,
            carrier_message_id=carrier_message_id,
            done_at=done_at,
        )

    def _connection(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreClosed("store is not open")
        return self._db

    def _why(self, exc: Exception) -> str | None:
        """``unwritable_reason``; SQLite reports a file system that refuses writes (ext4
        turns itself read-only on disk errors) or is full only as "disk I/O error" at
        times: such an error is looked into, by creating a file next to the database."""
        reason = unwritable_reason(exc)
        if reason == "io_error" and self._path:
            return _file_system_says(self._path) or reason
        return reason

    async def _transaction(self, ops: list[Op], *, probe: bool = False) -> None:
        """Write ``ops`` in one transaction, in ONE hop to the writer's thread.

        Not a statement per await: each await on another thread's work resumes only at the
        loop's next turn, and under load a turn takes tens of milliseconds — a transaction
        of five awaited statements took half a second and the writer fell behind.
        ``probe``: add a write of one row (does the database take writes again?)."""
        wdb, wthread = self._wdb, self._wthread
        if wdb is None or wthread is None:
            raise StoreClosed("store is not open")
        statements = list(_statements(ops))
        if probe:
            statements.append((-1, _PROBE_SQL, [time.time_ns()], False))
        started = time.perf_counter()
        dropped, added, held = await asyncio.get_running_loop().run_in_executor(
            wthread, _write_sync, wdb, statements, self._held_max
        )
        self.commit_seconds.observe(time.perf_counter() - started)
        self.transactions += 1
        self.records += len(ops)
        self.message_rows += added
        self.held_rows += held
        for account, count in dropped:
            # Logged when an account starts and stops losing held items, not per batch.
            if count:
                self.dropped_held += count
                if account not in self._dropping:
                    self._dropping.add(account)
                    log.warning(
                        "store: held deliveries of %s over the bound of %d: the oldest are"
                        " dropped (smsc_store_held_dropped_total counts them)",
                        account,
                        self._held_max,
                    )
            elif account in self._dropping:
                self._dropping.discard(account)
                log.warning("store: held deliveries of %s within their bound again", account)

    async def _purge_step(self) -> None:
        """One transaction of the oldest purge: up to ``purge_batch`` expired held items,
        once none is left up to ``purge_batch`` old final messages."""
        job = self._purges[0]
        if job.future.done():  # its caller gave up
            self._purges.popleft()
            return
        wdb, wthread = self._wdb, self._wthread
        if wdb is None or wthread is None:
            raise StoreClosed("store is not open")
        n = self._config.purge_batch
        sql, bound = (_PURGE_MESSAGES, job.cutoff) if job.held_done else (_PURGE_HELD, job.now)
        try:
            deleted = await asyncio.get_running_loop().run_in_executor(
                wthread, _write_one, wdb, sql, (bound, n)
            )
        except Exception as exc:
            self._purges.popleft()
            log.warning("store: purge stopped after %d rows: %s", job.deleted, exc)
            job.future.set_exception(StoreError(f"purge failed: {exc}"))
            return
        job.deleted += deleted
        if job.held_done:
            self.purged_messages += deleted
            self.message_rows -= deleted
        else:
            self.expired_held += deleted
            self.held_rows -= deleted
        if deleted < n:
            if not job.held_done:
                job.held_done = True
            else:
                self._purges.popleft()
                job.future.set_result(job.deleted)


def _create_private(path: str) -> None:
    """Create the database file owner-only (0600) before SQLite opens it; tighten an existing
    one. SQLite creates the -wal and -shm files with the database file's permissions."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for leftover in (f"{path}-wal", f"{path}-shm"):  # from a run that crashed
        try:
            os.chmod(leftover, 0o600)
        except FileNotFoundError:
            pass


def _connect_writer(path: str, uri: bool) -> sqlite3.Connection:
    """The writer's connection, opened on (and used only by) the writer's thread."""
    wdb = sqlite3.connect(path, isolation_level=None, uri=uri)
    wdb.execute("PRAGMA synchronous=NORMAL")
    wdb.execute("PRAGMA busy_timeout=5000")
    return wdb


def _write_sync(
    wdb: sqlite3.Connection, statements: list[_Statement], held_max: int
) -> tuple[list[tuple[str, int]], int, int]:
    """One transaction on the writer's thread; rolled back whole if anything fails.
    Returns, per account that held items, how many the per-account bound dropped; the
    message rows added; and the change in held rows."""
    dropped: list[tuple[str, int]] = []
    added = held = 0
    held_accounts: set[str] = set()
    _begin(wdb)
    try:
        for kind, sql, params, many in statements:
            cursor = wdb.executemany(sql, params) if many else wdb.execute(sql, params)
            if kind in (ADD, _ADD_FOLDED):
                added += max(0, cursor.rowcount)
            elif kind == RELEASE:
                held -= max(0, cursor.rowcount)
            elif kind == HOLD:  # multi-row: (account, expires_at, item) per row, NULL padded
                held += max(0, cursor.rowcount)
                held_accounts.update(a for a in params[::3] if a is not None)
        for account in sorted(held_accounts):  # once per account and transaction
            cursor = wdb.execute(
                "DELETE FROM held WHERE account = ? AND id <= (SELECT id FROM held"
                " WHERE account = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (account, account, held_max),
            )
            count = max(cursor.rowcount, 0)
            dropped.append((account, count))
            held -= count
        wdb.execute("COMMIT")
    except BaseException:
        _rollback(wdb)
        raise
    return dropped, added, held


def _reserve_sync(wdb: sqlite3.Connection, n: int) -> int:
    """Move the message id counter on by ``n`` in one transaction; its old value."""
    _begin(wdb)
    try:
        rows = wdb.execute("SELECT value FROM counters WHERE name = 'message_id'").fetchall()
        first = int(rows[0][0]) if rows else 0
        wdb.execute(
            "INSERT INTO counters (name, value) VALUES ('message_id', ?)"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (first + n,),
        )
        wdb.execute("COMMIT")
    except BaseException:
        _rollback(wdb)
        raise
    return first


def _write_one(wdb: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> int:
    """One statement in a transaction of its own on the writer's thread (a purge step, a
    take-over): the rows it changed."""
    _begin(wdb)
    try:
        changed = wdb.execute(sql, params).rowcount
        wdb.execute("COMMIT")
    except BaseException:
        _rollback(wdb)
        raise
    return max(0, changed)


def _begin(wdb: sqlite3.Connection) -> None:
    if wdb.in_transaction:  # a rollback that failed earlier (the disk, say): try it again,
        wdb.execute("ROLLBACK")  # else every BEGIN would fail, as if the records were bad
    wdb.execute("BEGIN IMMEDIATE")


def _rollback(wdb: sqlite3.Connection) -> None:
    if wdb.in_transaction:
        try:
            wdb.execute("ROLLBACK")
        except sqlite3.Error as exc:
            log.error("store: rollback failed: %s", exc)


def _file_system_says(path: str) -> str | None:
    """Why ``path``'s file system refuses writes ("read_only", "disk_full"), if it does:
    found by creating (and removing) ``<path>-probe``."""
    probe = f"{path}-probe"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"\0" * 4096)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        return {errno.EROFS: "read_only", errno.ENOSPC: "disk_full"}.get(exc.errno or 0)
    return None


async def _within(awaitable: Awaitable[Any], timeout: float | None) -> bool:
    """Await ``awaitable`` for at most ``timeout`` seconds (None: no limit); False if it
    did not finish in time (it is cancelled)."""
    try:
        async with asyncio.timeout(timeout):
            await awaitable
    except TimeoutError:
        return False
    return True


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


async def _prepare(db: aiosqlite.Connection, node_id: str) -> None:
    mode = await db.execute_fetchall("PRAGMA journal_mode=WAL")
    journal = str(next(iter(mode))[0]).lower()
    if journal not in ("wal", "memory"):
        raise RuntimeError(f"store: SQLite refused WAL mode (journal_mode={journal})")
    await db.execute("PRAGMA synchronous=NORMAL")
    await db.execute("PRAGMA busy_timeout=5000")
    await db.execute("PRAGMA temp_store=MEMORY")
    version_rows = await db.execute_fetchall("PRAGMA user_version")
    version = int(next(iter(version_rows))[0])
    if version > SCHEMA_VERSION:
        raise RuntimeError(
            f"store: database schema {version} is newer than this program's ({SCHEMA_VERSION})"
        )
    await db.execute("BEGIN IMMEDIATE")
    try:
        if 0 < version < 2:  # schema 1 had no owners: its messages are this node's
            await db.execute("ALTER TABLE messages ADD COLUMN owner TEXT NOT NULL DEFAULT ''")
            await db.execute("UPDATE messages SET owner = ? WHERE done_at IS NULL", (node_id,))
        for statement in _SCHEMA:
            await db.execute(statement)
        await db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        await db.execute("COMMIT")
    except BaseException:
        await db.execute("ROLLBACK")
        raise
