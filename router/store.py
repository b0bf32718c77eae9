"""The message store: what was accepted, where it went, what became of it; and deliveries held
for accounts that have no receive-capable bind.

``Store`` is the interface the router and the server use; ``SqliteStore`` implements it on one
aiosqlite connection in WAL mode (a Redis backend comes later, behind the same interface).

Writes are synchronous calls that queue a record; ONE writer task drains the queue into
transactions of up to ``batch_max`` records. It gathers records for ``commit_interval``
(group commit) — unless an ack or a read waits for them, or a batch is full — and then takes
whatever is queued, so the batches are large and the cost per message falls; records of one
message that meet in a batch are folded into one row. Reads are async; a read about
something with a queued write waits until that write is committed (read your writes), never
longer.

Durability. The connection runs ``journal_mode=WAL`` with ``synchronous=NORMAL``: a commit
appends the transaction to the WAL file with ``write()`` and the WAL is fsynced at checkpoints.
A committed transaction therefore survives the process being killed (``kill -9``, OOM killer,
a crash): its pages are in the operating system's cache and reach the disk without us. It may
not survive a power loss or kernel panic (the database then stays consistent and loses the
last transactions). That is exactly what ``ack_after: store`` promises: ``add(message,
on_durable)`` calls ``on_durable(True)`` only after the transaction holding the message has
COMMITTED, and the server answers submit_sm then.

Failures. A transaction that fails is rolled back, logged and retried once. If it fails again
the batch is split and each record is tried in a transaction of its own, so one bad record
(a duplicate id) does not fail its neighbours; a record that still fails is logged, and its
``on_durable`` is called with False (the server answers ESME_RSYSERR instead of ESME_ROK).
No acknowledgement is ever lost silently.

Back-pressure. The writer queue holds at most ``queue_max`` records. ``add`` refuses a message
(returns False: the server answers ESME_RMSGQFUL) when it is full. State changes of messages
already accepted (``set_sent``, ``set_final``, ...) and held deliveries are never refused (they
must not be lost and are bounded by the messages accepted), but they count against the bound,
so a writer that falls behind pushes back on intake.

The file is created owner-only (0600); SQLite gives its -wal and -shm files the same mode.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import os
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Final, Protocol

import aiosqlite
import msgspec

from router.config import StoreConfig
from router.metrics import STORE_BUCKETS, Histogram
from router.model import DeliveryReport, Message, StoredMessage
from smppcore.constants import MessageState
from smppcore.receipt import is_final

__all__ = ["DurableCallback", "SqliteStore", "Store", "StoreClosed"]

log = logging.getLogger(__name__)

#: Called on the event loop once per ``add``: True after the transaction holding the message
#: committed, False if it could not be stored (after a retry).
DurableCallback = Callable[[bool], None]

SCHEMA_VERSION: Final = 1
#: Default bound on deliveries held for one account; beyond it the oldest are dropped.
HELD_MAX_PER_ACCOUNT: Final = 100_000
#: Rows deleted per transaction by ``purge`` (the writer gets the connection between chunks).
PURGE_CHUNK: Final = 5_000
_DAY: Final = 86_400.0


class StoreClosed(RuntimeError):
    """A write to a store that is not open (misuse: the store closes last at shutdown)."""


class Store(Protocol):
    """Where accepted messages, their outcomes and held deliveries are kept."""

    async def open(self) -> None: ...

    async def close(self) -> None:
        """Commit everything queued, then close."""
        ...

    async def flush(self) -> None:
        """Return once everything queued before the call is committed (or failed)."""
        ...

    def add(self, message: Message, on_durable: DurableCallback | None = None) -> bool:
        """Queue a new message; False (nothing queued, no callback) when the queue is full."""
        ...

    def set_sent(
        self, message_id: str, carrier: str, carrier_message_id: str, *, key: str | None = None
    ) -> None:
        """The carrier accepted the message with its id; ``key`` is that id normalised for
        receipt correlation (``find_sent``), the id itself when None."""
        ...

    def set_sending(
        self, message_id: str, carrier: str, on_durable: DurableCallback | None = None
    ) -> None:
        """The message is being handed to ``carrier`` (no carrier id yet): written before
        the submit_sm goes out (``ack_after: store``), so that a restart knows which
        messages a carrier may have taken without our hearing of it (``unfinished``:
        ``carrier`` set, ``carrier_message_id`` empty)."""
        ...

    def set_final(
        self,
        message_id: str,
        report: DeliveryReport,
        on_durable: DurableCallback | None = None,
    ) -> None:
        """Record an outcome (a final one sets ``done_at``; an intermediate one only the
        state); ``on_durable(ok)`` once it is committed (or failed)."""
        ...

    def update_message(self, message: Message) -> None:
        """Replace the stored message (replace_sm, retry attempts and tried carriers)."""
        ...

    def mark_cancelled(self, message_id: str, done_at: float) -> None:
        """cancel_sm: the message becomes DELETED, if it had no final state yet."""
        ...

    async def get(self, message_id: str) -> StoredMessage | None: ...

    async def find_sent(self, carrier: str, key: str) -> str | None:
        """Our id of the message ``carrier`` accepted under the normalised id ``key``."""
        ...

    async def unfinished(self) -> list[StoredMessage]:
        """Messages with no final state, oldest first (restart recovery)."""
        ...

    def hold(
        self,
        account: str,
        item: bytes,
        expires_at: float,
        on_durable: DurableCallback | None = None,
    ) -> None:
        """Keep an opaque delivery (receipt or MO) for ``account`` until it binds to
        receive; ``on_durable(ok)`` once it is committed (or failed)."""
        ...

    async def held(self, account: str, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` unexpired held items of ``account``, oldest first, with their ids."""
        ...

    def release(self, ids: Sequence[int]) -> None:
        """Forget held items (delivered)."""
        ...

    async def purge(self, now: float) -> int:
        """Delete expired held items and final messages older than ``keep_days``; the count."""
        ...

    async def reserve_ids(self, n: int) -> int:
        """Durably reserve ``n`` message ids; the first of them (the next call starts after
        the last). Committed before it returns, so no id repeats even after kill -9."""
        ...


# -- records queued for the writer ---------------------------------------------------------

_ADD: Final = 0
_SENT: Final = 1
_FINAL: Final = 2
_UPDATE: Final = 3
_CANCEL: Final = 4
_HOLD: Final = 5
_RELEASE: Final = 6
# Statement shapes of records folded together in one batch (see _folded); never queued.
_ADD_FOLDED: Final = 7
_SENT_FINAL: Final = 8

_SQL: Final[dict[int, str]] = {
    _ADD: "INSERT INTO messages (id, account, state, submitted_at, body) VALUES (?, ?, ?, ?, ?)",
    _SENT: "UPDATE messages SET carrier = ?, carrier_message_id = ?, carrier_key = ? WHERE id = ?",
    _FINAL: "UPDATE messages SET state = ?, error = ?, done_at = ? WHERE id = ?",
    _UPDATE: "UPDATE messages SET account = ?, submitted_at = ?, body = ? WHERE id = ?",
    _CANCEL: "UPDATE messages SET state = ?, done_at = ? WHERE id = ? AND done_at IS NULL",
    _HOLD: "INSERT INTO held (account, expires_at, item) VALUES (?, ?, ?)",
    _RELEASE: "DELETE FROM held WHERE id = ?",
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
    _ADD: (
        5,
        "INSERT INTO messages (id, account, state, submitted_at, body)"
        " SELECT column1, column2, column3, column4, column5 FROM (VALUES {values})"
        " WHERE column1 IS NOT NULL",
    ),
    _ADD_FOLDED: (
        10,
        "INSERT INTO messages (id, account, state, submitted_at, body, carrier,"
        " carrier_message_id, carrier_key, error, done_at)"
        " SELECT column1, column2, column3, column4, column5, column6, column7, column8,"
        " column9, column10 FROM (VALUES {values}) WHERE column1 IS NOT NULL",
    ),
    _SENT: (
        4,
        "UPDATE messages SET carrier = v.column1, carrier_message_id = v.column2,"
        " carrier_key = v.column3 FROM (VALUES {values}) AS v WHERE messages.id = v.column4",
    ),
    _FINAL: (
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
}
# A batch's adds, then its sends, then its final states: the order per message is always
# add → (send, final), and sends and final states write different columns.
_REORDERABLE: Final = (_ADD, _SENT, _FINAL)


@cache
def _multi_row_sql(kind: int, rows: int) -> str:
    width, template = _MULTI_ROW[kind]
    row = "(" + ", ".join(["?"] * width) + ")"
    return template.format(values=", ".join([row] * rows))


_Statement = tuple[int, str, list[Any], bool]
"""(kind, sql, params, many): many → executemany over rows of params."""


def _statements(ops: list[_Op]) -> Iterator[_Statement]:
    """Statements that write ``ops`` with the same result as one
    statement per record in order. Runs of adds, sends and final states become multi-row
    statements (a message appears at most once per UPDATE, whose FROM join would otherwise
    pick one of its rows at random); other kinds keep one row per step and stay barriers."""
    i = 0
    while i < len(ops):
        if ops[i].kind not in _MULTI_ROW:
            j = i
            while j < len(ops) and ops[j].kind == ops[i].kind:
                j += 1
            kind = ops[i].kind
            yield kind, _SQL[kind], [op.params for op in ops[i:j]], True
            i = j
            continue
        j = i
        while j < len(ops) and ops[j].kind in _MULTI_ROW:
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


def _folded(segment: list[_Op]) -> list[tuple[int, list[tuple[Any, ...]]]] | None:
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
        if kind == _ADD:
            mid = params[0]
            if mid in adds or mid in sends or mid in finals:
                return None
            # id, account, state, submitted_at, body, carrier, carrier_message_id,
            # carrier_key, error, done_at (the table's defaults until folded over)
            adds[mid] = [*params, "", "", None, 0, None]
        elif kind == _SENT:
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
        else:  # _FINAL
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
        out.append((_SENT, plain))
    both = [(c, m, k, *final, mid) for c, m, k, final, mid in sends.values() if final is not None]
    if both:
        out.append((_SENT_FINAL, both))
    if finals:
        out.append((_FINAL, list(finals.values())))
    return out


def _multi_row(kind: int, rows: list[tuple[Any, ...]]) -> Iterator[_Statement]:
    width = _MULTI_ROW[kind][0]
    key = 0 if kind in (_ADD, _ADD_FOLDED) else width - 1  # the id column
    chunk: list[tuple[Any, ...]] = []
    ids: set[Any] = set()
    for row in rows:
        if len(chunk) == _ROWS[-1] or (key and row[key] in ids):
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
        body BLOB NOT NULL
    )""",
    # receipt correlation: (carrier, normalised carrier id) → our id
    "CREATE INDEX IF NOT EXISTS messages_carrier_key ON messages (carrier, carrier_key)"
    " WHERE carrier_key IS NOT NULL",
    # restart recovery reads the unfinished ones; purge the finished ones by age
    "CREATE INDEX IF NOT EXISTS messages_unfinished ON messages (submitted_at)"
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


@dataclass(slots=True)
class _Op:
    kind: int
    params: tuple[Any, ...]
    seq: int = 0
    message_id: str | None = None
    """The message this record writes (for read-your-writes in ``get``)."""
    sent_key: tuple[str, str] | None = None
    """(carrier, key) of a ``set_sent`` (for read-your-writes in ``find_sent``)."""
    on_durable: DurableCallback | None = None


@dataclass(order=True)
class _Waiter:
    seq: int
    future: asyncio.Future[None] = field(compare=False)


class SqliteStore:
    """``Store`` on one aiosqlite connection (WAL), with one batching writer task.

    ``clock`` gives wall-clock Unix seconds (held items' expiry, a report without done_at);
    ``held_max`` bounds the deliveries held per account (the oldest are dropped beyond it).
    """

    def __init__(
        self,
        config: StoreConfig,
        *,
        clock: Callable[[], float] = time.time,
        held_max: int = HELD_MAX_PER_ACCOUNT,
    ) -> None:
        if held_max < 1:
            raise ValueError("held_max must be at least 1")
        self._config = config
        self._clock = clock
        self._held_max = held_max
        self._db: aiosqlite.Connection | None = None
        #: The writer's own connection, used only on its own thread (see _write_sync).
        self._wdb: sqlite3.Connection | None = None
        self._wthread: ThreadPoolExecutor | None = None
        self._writer: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one transaction (or read) at a time on self._db
        self._queue: deque[_Op] = deque()
        self._inflight: list[_Op] = []  # the batch being written
        self._wake = asyncio.Event()
        #: Ends the group-commit wait early: a batch is full, an ack or a read waits.
        self._hurry = asyncio.Event()
        self._durable_queued = 0  # queued records whose add waits for its commit (ack)
        self._closing = False
        self._seq = itertools.count(1)
        self._queued_seq = 0  # last seq queued
        self._done_seq = 0  # last seq committed or failed
        self._waiters: list[_Waiter] = []
        self._pending_ids: dict[str, int] = {}  # message id → seq of its last queued write
        self._pending_sent: dict[tuple[str, str], tuple[str, int]] = {}
        self._held_seq = 0  # seq of the last queued hold/release
        self._encode = msgspec.msgpack.Encoder().encode
        self._decode = msgspec.msgpack.Decoder(Message).decode
        self.transactions = 0
        """Transactions committed by the writer (observability; tests count batches with it)."""
        self.failed = 0
        """Records the writer could not store (each logged)."""
        self.dropped_held = 0
        """Held deliveries dropped by the per-account bound (each batch logged)."""
        self.records = 0
        """Records committed by the writer (with ``transactions``: the batch size)."""
        self.commit_seconds = Histogram(STORE_BUCKETS)
        """Seconds per writer transaction, BEGIN to COMMIT (observability)."""

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
            await _prepare(db)
            self._wdb = await loop.run_in_executor(wthread, _connect_writer, path, uri)
        except BaseException:
            await db.close()
            wthread.shutdown(wait=False)
            raise
        self._db = db
        self._wthread = wthread
        self._closing = False
        self._writer = asyncio.create_task(self._write_loop(), name="store-writer")

    async def close(self) -> None:
        """Commit everything queued, stop the writer, close the connection. Idempotent."""
        if self._db is None:
            return
        self._closing = True
        self._wake.set()
        self._hurry.set()
        try:
            if self._writer is not None:
                await self._writer
        finally:
            self._writer = None
            db, self._db = self._db, None
            wdb, self._wdb = self._wdb, None
            wthread, self._wthread = self._wthread, None
            if wthread is not None:
                if wdb is not None:
                    await asyncio.get_running_loop().run_in_executor(wthread, wdb.close)
                wthread.shutdown(wait=True)
            await db.close()

    async def flush(self) -> None:
        await self._until(self._queued_seq)

    @property
    def is_open(self) -> bool:
        """Open and not closing (readiness)."""
        return self._db is not None and not self._closing

    @property
    def queued(self) -> int:
        """Records waiting for the writer (a hot gauge)."""
        return len(self._queue)

    # -- writes (queued) -----------------------------------------------------------------------

    def add(self, message: Message, on_durable: DurableCallback | None = None) -> bool:
        if self._db is None or self._closing or len(self._queue) >= self._config.queue_max:
            return False
        params = (
            message.id,
            message.account,
            int(MessageState.ENROUTE),
            message.submitted_at,
            self._encode(message),
        )
        self._put(_Op(_ADD, params, message_id=message.id, on_durable=on_durable))
        return True

    def set_sent(
        self, message_id: str, carrier: str, carrier_message_id: str, *, key: str | None = None
    ) -> None:
        key = carrier_message_id if key is None else key
        op = _Op(
            _SENT,
            (carrier, carrier_message_id, key, message_id),
            message_id=message_id,
            sent_key=(carrier, key),
        )
        self._put(op)
        self._pending_sent[(carrier, key)] = (message_id, op.seq)

    def set_sending(
        self, message_id: str, carrier: str, on_durable: DurableCallback | None = None
    ) -> None:
        # A send without the carrier's id (and no correlation key: nothing matches it).
        params = (carrier, "", None, message_id)
        self._put(_Op(_SENT, params, message_id=message_id, on_durable=on_durable))

    def set_final(
        self,
        message_id: str,
        report: DeliveryReport,
        on_durable: DurableCallback | None = None,
    ) -> None:
        done_at: float | None = None
        if is_final(report.state):
            done_at = report.done_at if report.done_at > 0 else self._clock()
        params = (int(report.state), report.error, done_at, message_id)
        self._put(_Op(_FINAL, params, message_id=message_id, on_durable=on_durable))

    def update_message(self, message: Message) -> None:
        params = (message.account, message.submitted_at, self._encode(message), message.id)
        self._put(_Op(_UPDATE, params, message_id=message.id))

    def mark_cancelled(self, message_id: str, done_at: float) -> None:
        params = (int(MessageState.DELETED), done_at, message_id)
        self._put(_Op(_CANCEL, params, message_id=message_id))

    def hold(
        self,
        account: str,
        item: bytes,
        expires_at: float,
        on_durable: DurableCallback | None = None,
    ) -> None:
        self._put(_Op(_HOLD, (account, expires_at, item), on_durable=on_durable))
        self._held_seq = self._queued_seq

    def release(self, ids: Sequence[int]) -> None:
        for held_id in ids:
            self._put(_Op(_RELEASE, (held_id,)))
        if ids:
            self._held_seq = self._queued_seq

    def _put(self, op: _Op) -> None:
        if self._db is None or self._closing:
            raise StoreClosed("store is not open")
        op.seq = self._queued_seq = next(self._seq)
        if op.message_id is not None:
            self._pending_ids[op.message_id] = op.seq
        self._queue.append(op)
        self._wake.set()
        if op.on_durable is not None:
            self._durable_queued += 1
            self._hurry.set()
        elif len(self._queue) >= self._config.batch_max:
            self._hurry.set()

    # -- reads ---------------------------------------------------------------------------------

    async def get(self, message_id: str) -> StoredMessage | None:
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
        rows = await self._read(
            "SELECT id FROM messages WHERE carrier = ? AND carrier_key = ?"
            " ORDER BY submitted_at DESC LIMIT 1",
            (carrier, key),
        )
        return str(rows[0][0]) if rows else None

    async def unfinished(self) -> list[StoredMessage]:
        await self.flush()
        rows = await self._read(
            f"SELECT {_STORED_COLUMNS} FROM messages WHERE done_at IS NULL ORDER BY submitted_at",
            (),
        )
        return [self._stored(row) for row in rows]

    async def held(self, account: str, limit: int) -> list[tuple[int, bytes]]:
        await self._until(self._held_seq)
        rows = await self._read(
            "SELECT id, item FROM held WHERE account = ? AND expires_at > ? ORDER BY id LIMIT ?",
            (account, self._clock(), limit),
        )
        return [(int(row[0]), bytes(row[1])) for row in rows]

    async def purge(self, now: float) -> int:
        """Delete in chunks, each its own transaction, so the writer is never held up long."""
        cutoff = now - self._config.keep_days * _DAY
        statements = (
            (
                "DELETE FROM held WHERE id IN (SELECT id FROM held WHERE expires_at <= ? LIMIT ?)",
                now,
            ),
            (
                "DELETE FROM messages WHERE rowid IN (SELECT rowid FROM messages"
                " WHERE done_at IS NOT NULL AND done_at < ? LIMIT ?)",
                cutoff,
            ),
        )
        total = 0
        for sql, bound in statements:
            while True:
                async with self._lock:
                    db = self._connection()
                    cursor = await db.execute(sql, (bound, PURGE_CHUNK))
                    deleted = cursor.rowcount
                    await cursor.close()
                total += deleted
                if deleted < PURGE_CHUNK:
                    break
        return total

    async def reserve_ids(self, n: int) -> int:
        if n < 1:
            raise ValueError("reserve at least one id")
        async with self._lock:
            db = self._connection()
            await db.execute("BEGIN IMMEDIATE")
            try:
                rows = list(
                    await db.execute_fetchall(
                        "SELECT value FROM counters WHERE name = 'message_id'"
                    )
                )
                first = int(rows[0][0]) if rows else 0
                await db.execute(
                    "INSERT INTO counters (name, value) VALUES ('message_id', ?)"
                    " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    (first + n,),
                )
                await db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    await db.execute("ROLLBACK")
                raise
        return first

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

    async def _until(self, seq: int) -> None:
        """Wait until every record up to ``seq`` is committed (or failed)."""
        if seq <= self._done_seq:
            return
        if self._writer is None or self._writer.done():
            raise StoreClosed("store writer is not running")
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, _Waiter(seq, future))
        self._hurry.set()
        await future

    # -- the writer ----------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        try:
            while True:
                if not self._queue:
                    if self._closing:
                        return
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                if self._config.commit_interval > 0 and not self._urgent():
                    # Group commit: gather records for a while, unless someone waits.
                    self._hurry.clear()
                    try:
                        async with asyncio.timeout(self._config.commit_interval):
                            await self._hurry.wait()
                    except TimeoutError:
                        pass
                take = min(len(self._queue), self._config.batch_max)
                batch = self._inflight = [self._queue.popleft() for _ in range(take)]
                if self._durable_queued:
                    self._durable_queued -= sum(op.on_durable is not None for op in batch)
                await self._write_batch(batch)
                self._inflight = []
                self._finish(batch)
        except asyncio.CancelledError:
            self._abandon(RuntimeError("store writer cancelled"))
            raise
        except BaseException as exc:  # a bug: fail everything instead of hanging callers
            log.exception("store writer stopped")
            self._abandon(exc)
            raise

    def _urgent(self) -> bool:
        """Write now, without the group-commit wait: an ack (``ack_after: store``) or a
        read (read your writes, flush) waits for queued records, a batch is full, or the
        store is closing."""
        return bool(
            self._durable_queued
            or self._waiters
            or self._closing
            or len(self._queue) >= self._config.batch_max
        )

    async def _write_batch(self, batch: list[_Op]) -> None:
        for attempt in (1, 2):
            try:
                await self._transaction(batch)
            except Exception as exc:  # sqlite3.Error, or a value SQLite cannot bind
                log.warning(
                    "store: transaction of %d records failed (attempt %d): %s",
                    len(batch),
                    attempt,
                    exc,
                )
            else:
                self._durable(batch, ok=True)
                return
        # Still failing: one transaction per record, so only the bad ones fail.
        for op in batch:
            try:
                await self._transaction([op])
            except Exception as exc:
                self.failed += 1
                log.error(
                    "store: record lost (kind %d, message %s): %s", op.kind, op.message_id, exc
                )
                self._durable([op], ok=False)
            else:
                self._durable([op], ok=True)

    async def _transaction(self, ops: list[_Op]) -> None:
        """Write ``ops`` in one transaction, in ONE hop to the writer's thread.

        Not a statement per await: each await on another thread's work resumes only at the
        loop's next turn, and under load a turn takes tens of milliseconds — a transaction
        of five awaited statements took half a second and the writer fell behind."""
        wdb, wthread = self._wdb, self._wthread
        if wdb is None or wthread is None:
            raise StoreClosed("store is not open")
        started = time.perf_counter()
        dropped = await asyncio.get_running_loop().run_in_executor(
            wthread, _write_sync, wdb, list(_statements(ops)), self._held_max
        )
        self.commit_seconds.observe(time.perf_counter() - started)
        self.transactions += 1
        self.records += len(ops)
        for account, count in dropped:
            self.dropped_held += count
            log.warning(
                "store: %d held deliveries of %s dropped (bound %d per account)",
                count,
                account,
                self._held_max,
            )

    def _durable(self, ops: Iterable[_Op], *, ok: bool) -> None:
        for op in ops:
            if op.on_durable is not None:
                try:
                    op.on_durable(ok)
                except Exception:
                    log.exception("store: on_durable callback failed")

    def _finish(self, batch: list[_Op]) -> None:
        """Forget read-your-writes marks of these records; wake waiters they satisfy."""
        for op in batch:
            if op.message_id is not None and self._pending_ids.get(op.message_id) == op.seq:
                del self._pending_ids[op.message_id]
            if op.sent_key is not None:
                pending = self._pending_sent.get(op.sent_key)
                if pending is not None and pending[1] == op.seq:
                    del self._pending_sent[op.sent_key]
        self._done_seq = batch[-1].seq
        while self._waiters and self._waiters[0].seq <= self._done_seq:
            future = heapq.heappop(self._waiters).future
            if not future.done():
                future.set_result(None)

    def _abandon(self, exc: BaseException) -> None:
        """The writer is gone: fail what it will never write, and everyone waiting."""
        abandoned = self._inflight + list(self._queue)
        self._inflight = []
        self._queue.clear()
        self._durable_queued = 0
        self.failed += len(abandoned)
        if abandoned:
            log.error("store: %d queued records abandoned", len(abandoned))
        self._durable(abandoned, ok=False)
        self._closing = True
        for waiter in self._waiters:
            if not waiter.future.done():
                waiter.future.set_exception(StoreClosed(f"store writer stopped: {exc!r}"))
        self._waiters.clear()


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
) -> list[tuple[str, int]]:
    """One transaction on the writer's thread; rolled back whole if anything fails.
    Returns the held deliveries dropped per account by the per-account bound."""
    dropped: list[tuple[str, int]] = []
    wdb.execute("BEGIN IMMEDIATE")
    try:
        for kind, sql, params, many in statements:
            if many:
                wdb.executemany(sql, params)
            else:
                wdb.execute(sql, params)
            if kind == _HOLD:
                for account in {row[0] for row in params}:
                    cursor = wdb.execute(
                        "DELETE FROM held WHERE account = ? AND id <= (SELECT id FROM held"
                        " WHERE account = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                        (account, account, held_max),
                    )
                    if cursor.rowcount > 0:
                        dropped.append((account, cursor.rowcount))
        wdb.execute("COMMIT")
    except BaseException:
        if wdb.in_transaction:
            try:
                wdb.execute("ROLLBACK")
            except sqlite3.Error as exc:
                log.error("store: rollback failed: %s", exc)
        raise
    return dropped


async def _prepare(db: aiosqlite.Connection) -> None:
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
        for statement in _SCHEMA:
            await db.execute(statement)
        await db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        await db.execute("COMMIT")
    except BaseException:
        await db.execute("ROLLBACK")
        raise
