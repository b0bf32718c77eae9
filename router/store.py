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
longer — and no longer than ``read_timeout`` (see Deadlines). Id blocks (``reserve_ids``) are
reserved on the writer's connection too, between two of its transactions.

Durability. The connection runs ``journal_mode=WAL`` with ``synchronous=NORMAL``: a commit
appends the transaction to the WAL file with ``write()`` and the WAL is fsynced at checkpoints.
A committed transaction therefore survives the process being killed (``kill -9``, OOM killer,
a crash): its pages are in the operating system's cache and reach the disk without us. It may
not survive a power loss or kernel panic (the database then stays consistent and loses the
last transactions). That is exactly what ``ack_after: store`` promises: ``add(message,
on_durable)`` calls ``on_durable(True)`` only after the transaction holding the message has
COMMITTED, and the server answers submit_sm then.

Failures of the database (disk full, read-only file system, I/O errors, locked by someone
else) are not the records' fault: the writer keeps the batch and tries it again and again,
the wait doubling from 0.05 s to ``retry_max``, until it commits. Meanwhile the store is
*unwritable*: one ERROR line says why (and one line when writes resume), ``add`` and ``hold``
refuse (the layers above answer a temporary error), the adds of the batch that wait for
their commit (``ack_after: store``) are failed at once (``on_durable(False)``: the client is
answered ESME_RSYSERR and never acknowledged) and taken out of the batch, and everything
else — records already acknowledged — stays queued, in memory, until space returns. Nothing
is dropped; only a process that dies before then loses what was queued.

A transaction that fails for any other reason (a record's fault) is rolled back, logged and
retried once. If it fails again the batch is split and each record is tried in a transaction
of its own, so one bad record (a duplicate id) does not fail its neighbours; a record that
still fails is logged, and its ``on_durable`` is called with False (the server answers
ESME_RSYSERR instead of ESME_ROK). No acknowledgement is ever lost silently.

Back-pressure. The writer queue holds at most ``queue_max`` records. ``add`` refuses a message
(returns False: the server answers ESME_RMSGQFUL) when it is full, and so does ``hold`` (the
carrier's deliver_sm is answered ESME_RX_T_APPN). State changes of messages already accepted
(``set_sent``, ``set_final``, ...) are never refused (they must not be lost and are bounded by
the messages accepted), but they count against the bound, so a writer that falls behind
pushes back on intake.

Deadlines. Every read waits ``read_timeout`` seconds at most, its wait for queued writes
included (read your writes), then raises :class:`StoreTimeout` (a ``TimeoutError``): a hung
database stalls a query_sm, not the server. ``close`` takes a deadline too.

Purge. ``purge(now)`` deletes final messages older than ``keep_days`` and held deliveries
past their expiry, ``purge_batch`` rows per transaction, on the writer, one such transaction
between two of its batches: a purge never stalls the writes. :func:`run_purges` calls it
every ``purge_interval`` (a task of whoever owns the store: ``smsc/app.py``).

The file is created owner-only (0600); SQLite gives its -wal and -shm files the same mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import heapq
import itertools
import logging
import os
import sqlite3
import time
from collections import deque
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Sequence,
)
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

__all__ = [
    "DurableCallback",
    "SqliteStore",
    "Store",
    "StoreClosed",
    "StoreError",
    "StoreTimeout",
    "run_purges",
]

log = logging.getLogger(__name__)

#: Called on the event loop once per ``add``: True after the transaction holding the message
#: committed, False if it could not be stored (after a retry).
DurableCallback = Callable[[bool], None]

SCHEMA_VERSION: Final = 1
_DAY: Final = 86_400.0
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


class StoreError(RuntimeError):
    """The store cannot serve a call."""


class StoreClosed(StoreError):
    """A write to a store that is not open (misuse: the store closes last at shutdown)."""


class StoreTimeout(StoreError, TimeoutError):
    """A read (or flush) did not complete within ``read_timeout``: the database hangs or
    cannot commit what the read must see. Temporary: answer the peer a temporary error."""


class Store(Protocol):
    """Where accepted messages, their outcomes and held deliveries are kept."""

    async def open(self) -> None: ...

    @property
    def unwritable(self) -> str | None:
        """Why the store cannot write now (a reason word); None while it can."""
        ...

    async def close(self, timeout: float | None = None) -> None:
        """Commit everything queued, then close; after ``timeout`` seconds (None: no limit)
        give up on what is still queued (logged) and close anyway."""
        ...

    async def flush(self, timeout: float | None = None) -> None:
        """Return once everything queued before the call is committed (or failed);
        StoreTimeout after ``timeout`` seconds (None: the store's ``read_timeout``)."""
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
    ) -> bool:
        """Keep an opaque delivery (receipt or MO) for ``account`` until it binds to
        receive; ``on_durable(ok)`` once it is committed (or failed). False (nothing kept,
        ``on_durable`` not called) when the store cannot take it now (its queue is full,
        or the database cannot be written): answer the sender a temporary error."""
        ...

    async def held(self, account: str, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` unexpired held items of ``account``, oldest first, with their ids."""
        ...

    def release(self, ids: Sequence[int]) -> None:
        """Forget held items (delivered)."""
        ...

    async def held_counts(self) -> dict[str, int]:
        """Unexpired held items per account (what a restart finds waiting)."""
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
    # Held deliveries: inserted in the order given (their ids, AUTOINCREMENT, keep it).
    _HOLD: (
        3,
        "INSERT INTO held (account, expires_at, item)"
        " SELECT column1, column2, column3 FROM (VALUES {values}) WHERE column1 IS NOT NULL",
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
    pick one of its rows at random); other kinds keep one row per step and stay barriers.

    Held deliveries touch nothing else (a release names a row already committed): they
    are taken out of the batch, in their order, and inserted first in multi-row
    statements. Left in place, each receipt held amid its messages' records was a barrier
    splitting those runs, and a statement of its own (measured: a writer that fell tens of
    thousands of records behind at 1,000 messages/s)."""
    holds = [op.params for op in ops if op.kind == _HOLD]
    if holds:
        yield from _multi_row(_HOLD, holds)
        ops = [op for op in ops if op.kind != _HOLD]
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
    unique = kind != _HOLD  # a held row has no key of its own
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
#: A purge's statements, one batch (``LIMIT ?``) per transaction.
_PURGE_HELD: Final = (
    "DELETE FROM held WHERE id IN (SELECT id FROM held WHERE expires_at <= ? LIMIT ?)"
)
_PURGE_MESSAGES: Final = (
    "DELETE FROM messages WHERE rowid IN (SELECT rowid FROM messages"
    " WHERE done_at IS NOT NULL AND done_at < ? LIMIT ?)"
)
#: The write that tells whether the database takes writes again, when no record waits.
_PROBE_SQL: Final = (
    "INSERT INTO counters (name, value) VALUES ('write_probe', ?)"
    " ON CONFLICT (name) DO UPDATE SET value = excluded.value"
)


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
    settled: bool = False
    """Failed and taken out of its batch (an ack that could not wait): not abandoned."""


@dataclass(slots=True)
class _Purge:
    """A purge the writer carries out a batch at a time (``purge``)."""

    now: float
    cutoff: float
    future: asyncio.Future[int]
    held_done: bool = False
    deleted: int = 0


def _waits(op: _Op) -> bool:
    """An add whose acknowledgement waits for its commit (``ack_after: store``)."""
    return op.kind == _ADD and op.on_durable is not None


@dataclass(order=True)
class _Waiter:
    seq: int
    future: asyncio.Future[None] = field(compare=False)


class SqliteStore:
    """``Store`` on one aiosqlite connection (WAL), with one batching writer task.

    ``clock`` gives wall-clock Unix seconds (held items' expiry, a report without done_at);
    ``held_max`` bounds the deliveries held per account (the oldest are dropped beyond it;
    default: the config's ``held_max``).
    """

    def __init__(
        self,
        config: StoreConfig,
        *,
        clock: Callable[[], float] = time.time,
        held_max: int | None = None,
    ) -> None:
        held_max = config.held_max if held_max is None else held_max
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
        self._purges: deque[_Purge] = deque()
        #: Why the database cannot be written now ("disk_full", ...); None: it can.
        self._unwritable: str | None = None
        self._unwritable_since = 0.0
        self._error_logged_at = -3600.0
        self._path = ""
        self._encode = msgspec.msgpack.Encoder().encode
        self._decode = msgspec.msgpack.Decoder(Message).decode
        self.transactions = 0
        """Transactions committed by the writer (observability; tests count batches with it)."""
        self.failed = 0
        """Records the writer could not store (each logged)."""
        self.dropped_held = 0
        """Held deliveries dropped by the per-account bound (logged when an account starts
        and stops dropping)."""
        self._dropping: set[str] = set()  # accounts whose last holds dropped the oldest
        self.records = 0
        """Records committed by the writer (with ``transactions``: the batch size)."""
        self.commit_seconds = Histogram(STORE_BUCKETS)
        """Seconds per writer transaction, BEGIN to COMMIT (observability)."""
        self.write_errors: dict[str, int] = dict.fromkeys(WRITE_ERROR_REASONS, 0)
        """Transactions that failed because the database could not be written, by reason."""
        self.refused_adds = 0
        """Messages ``add`` refused (queue full, or the database cannot be written)."""
        self.refused_holds = 0
        """Deliveries ``hold`` refused (likewise)."""
        self.read_timeouts = 0
        """Reads (and flushes) that gave up after ``read_timeout``."""
        self.purged_messages = 0
        """Final messages deleted by ``purge`` (older than ``keep_days``)."""
        self.expired_held = 0
        """Held deliveries deleted by ``purge`` past their expiry, never delivered."""
        self.message_rows = 0
        """Rows in the messages table (counted at open, kept by the writer)."""
        self.held_rows = 0
        """Rows in the held table (likewise)."""

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
        self._closing = False
        self._unwritable = None
        self._path = "" if uri else path
        self._writer = asyncio.create_task(self._write_loop(), name="store-writer")

    async def close(self, timeout: float | None = None) -> None:
        """Commit everything queued, stop the writer, close the connection. Idempotent.

        After ``timeout`` seconds (None: no limit) — the database hangs, or the disk stays
        full — the writer is stopped: what it still holds is logged as lost (an ERROR line
        with the count) and failed; the connections get a second more to close."""
        if self._db is None:
            return
        self._closing = True
        self._wake.set()
        self._hurry.set()
        hung = False
        try:
            if self._writer is not None:
                try:
                    async with asyncio.timeout(timeout):
                        await asyncio.shield(self._writer)
                except TimeoutError:
                    hung = True
                    log.error("store: not committed within %.1f s of closing; giving up", timeout)
                    self._writer.cancel()
                    await asyncio.gather(self._writer, return_exceptions=True)
        finally:
            self._writer = None
            for purge in self._purges:
                if not purge.future.done():
                    purge.future.set_exception(StoreClosed("store closed"))
            self._purges.clear()
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

    async def flush(self, timeout: float | None = None) -> None:
        async with self._deadline("flush", timeout):
            await self._until(self._queued_seq)

    @property
    def is_open(self) -> bool:
        """Open and not closing (readiness)."""
        return self._db is not None and not self._closing

    @property
    def queued(self) -> int:
        """Records waiting for the writer (a hot gauge)."""
        return len(self._queue)

    @property
    def unwritable(self) -> str | None:
        """Why the database cannot be written now (a reason word, as in
        ``write_errors``); None while it can. Adds and holds are refused meanwhile."""
        return self._unwritable

    def file_sizes(self) -> tuple[int, int]:
        """Bytes of the database file and of its WAL (0 for a store in memory, or a file
        not there). Two ``stat`` calls: cheap enough to read at scrape time."""
        if not self._path:
            return 0, 0
        return _size(self._path), _size(self._path + "-wal")

    # -- writes (queued) -----------------------------------------------------------------------

    def add(self, message: Message, on_durable: DurableCallback | None = None) -> bool:
        if self._db is None or self._closing:
            return False
        if self._unwritable is not None or len(self._queue) >= self._config.queue_max:
            self.refused_adds += 1
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
    ) -> bool:
        if (
            self._db is not None
            and not self._closing
            and (self._unwritable is not None or len(self._queue) >= self._config.queue_max)
        ):
            self.refused_holds += 1
            return False
        self._put(_Op(_HOLD, (account, expires_at, item), on_durable=on_durable))
        self._held_seq = self._queued_seq
        return True

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
            f"SELECT {_STORED_COLUMNS} FROM messages WHERE done_at IS NULL ORDER BY submitted_at",
            (),
        )
        return [self._stored(row) for row in rows]

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

    async def purge(self, now: float) -> int:
        """Carried out by the writer, ``purge_batch`` rows per transaction, one such
        transaction between two of its batches (see _purge_step): the writes are never
        held up for long. Expired held items first, then old final messages."""
        if self._writer is None or self._writer.done() or self._closing:
            raise StoreClosed("store writer is not running")
        job = _Purge(
            now=now,
            cutoff=now - self._config.keep_days * _DAY,
            future=asyncio.get_running_loop().create_future(),
        )
        self._purges.append(job)
        self._wake.set()
        return await job.future

    @contextlib.asynccontextmanager
    async def _deadline(self, what: str, timeout: float | None = None) -> AsyncIterator[None]:
        """Bound a read by ``timeout`` (None: ``read_timeout``); StoreTimeout past it."""
        limit = self._config.read_timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(limit):
                yield
        except TimeoutError as exc:
            if isinstance(exc, StoreTimeout):
                raise
            self.read_timeouts += 1
            why = f" (cannot write: {self._unwritable})" if self._unwritable else ""
            raise StoreTimeout(f"store: {what} took more than {limit:g} s{why}") from None

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

    async def _until(self, seq: int) -> None:
        """Wait until every record up to ``seq`` is committed (or failed). No deadline of
        its own: callers bound it (``_deadline``)."""
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
                    if self._purges:
                        await self._purge_step()
                        continue
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
                await self._write_batch(list(batch))
                self._inflight = []
                self._finish(batch)
                if self._purges and not self._closing:
                    await self._purge_step()  # one purge transaction between two batches
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
        """Commit ``batch`` (see _commit for a database that cannot be written); a batch
        that fails by a record's fault is tried once more, then record by record."""
        for attempt in (1, 2):
            exc = await self._commit(batch)
            if exc is None:
                self._durable(batch, ok=True)
                return
            log.warning(
                "store: transaction of %d records failed (attempt %d): %s",
                len(batch),
                attempt,
                exc,
            )
        # Still failing: one transaction per record, so only the bad ones fail.
        for op in batch:
            one = [op]
            exc = await self._commit(one)
            if not one:  # refused while the database could not be written (failed there)
                continue
            if exc is not None:
                self.failed += 1
                log.error(
                    "store: record lost (kind %d, message %s): %s", op.kind, op.message_id, exc
                )
                self._durable([op], ok=False)
            else:
                self._durable([op], ok=True)

    async def _commit(self, batch: list[_Op]) -> Exception | None:
        """Write ``batch`` in one transaction: None once committed, or the error of a
        failure that is the records' fault (a constraint, a value SQLite cannot bind).

        While the database cannot be written (disk full, read-only, I/O error, locked) the
        batch is kept and tried again, the wait doubling from RETRY_MIN to ``retry_max``,
        as long as it takes (``close`` has the deadline). The adds in it that wait for
        their commit to be acknowledged (``ack_after: store``) are failed at once and taken
        out (edited in place): their clients are answered ESME_RSYSERR, not kept waiting,
        and those messages are not written later either. An emptied batch is replaced by a
        probe write, so the store finds out by itself when it can write again."""
        delay = RETRY_MIN
        while True:
            try:
                await self._transaction(batch, probe=not batch)
            except Exception as exc:  # sqlite3.Error, or a value SQLite cannot bind
                reason = self._why(exc)
                if reason is None:
                    return exc
                self._cannot_write(reason, exc, len(batch))
                self._fail_waiting_adds(batch)
                await asyncio.sleep(delay)  # a backoff, not a wait for an event
                delay = min(delay * 2, self._config.retry_max)
            else:
                if self._unwritable is not None:
                    self._can_write()
                return None

    def _fail_waiting_adds(self, batch: list[_Op]) -> None:
        """The database cannot be written: the adds whose clients wait for their commit
        (``ack_after: store``), in ``batch`` and still queued behind it, are failed now
        (their clients are answered ESME_RSYSERR) and taken out: none is written later."""
        waiting = [op for op in batch if _waits(op)]
        if waiting:
            batch[:] = [op for op in batch if not _waits(op)]
        queued = [op for op in self._queue if _waits(op)]
        if queued:
            self._queue = deque(op for op in self._queue if not _waits(op))
            self._durable_queued -= len(queued)
            for op in queued:
                mid = op.message_id
                if mid is not None and self._pending_ids.get(mid) == op.seq:
                    del self._pending_ids[mid]
        waiting += queued
        if waiting:
            for op in waiting:
                op.settled = True
            self.failed += len(waiting)
            self._durable(waiting, ok=False)

    def _why(self, exc: Exception) -> str | None:
        """``unwritable_reason``; SQLite reports a file system that refuses writes (ext4
        turns itself read-only on disk errors) or is full only as "disk I/O error" at
        times: such an error is looked into, by creating a file next to the database."""
        reason = unwritable_reason(exc)
        if reason == "io_error" and self._path:
            return _file_system_says(self._path) or reason
        return reason

    def _cannot_write(self, reason: str, exc: Exception, records: int) -> None:
        self.write_errors[reason] = self.write_errors.get(reason, 0) + 1
        if self._unwritable is not None:
            self._unwritable = reason
            return
        self._unwritable = reason
        now = time.monotonic()
        self._unwritable_since = now
        # One ERROR line when writes stop — not one per record, nor one per retry; at
        # most one a minute while the database comes and goes.
        level = logging.ERROR if now - self._error_logged_at >= 60.0 else logging.DEBUG
        if level == logging.ERROR:
            self._error_logged_at = now
        log.log(
            level,
            "store: the database cannot be written (%s: %s); new submits and held deliveries"
            " are refused until it can; %d records already accepted are kept in memory and"
            " tried again",
            reason,
            exc,
            records + len(self._queue),
        )

    def _can_write(self) -> None:
        log.warning(
            "store: the database can be written again (after %.1f s, %s); %d records queued",
            time.monotonic() - self._unwritable_since,
            self._unwritable,
            len(self._queue),
        )
        self._unwritable = None

    async def _transaction(self, ops: list[_Op], *, probe: bool = False) -> None:
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
                wthread, _delete_sync, wdb, sql, (bound, n)
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

    def _durable(self, ops: Iterable[_Op], *, ok: bool) -> None:
        """Call each record's ``on_durable`` — once: it is cleared."""
        for op in ops:
            callback = op.on_durable
            if callback is not None:
                op.on_durable = None
                try:
                    callback(ok)
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
        abandoned = [op for op in self._inflight if not op.settled] + list(self._queue)
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
            if kind in (_ADD, _ADD_FOLDED):
                added += max(0, cursor.rowcount)
            elif kind == _RELEASE:
                held -= max(0, cursor.rowcount)
            elif kind == _HOLD:  # multi-row: (account, expires_at, item) per row, NULL padded
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


def _delete_sync(wdb: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> int:
    """One purge transaction on the writer's thread: the rows deleted."""
    _begin(wdb)
    try:
        deleted = wdb.execute(sql, params).rowcount
        wdb.execute("COMMIT")
    except BaseException:
        _rollback(wdb)
        raise
    return max(0, deleted)


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


async def run_purges(store: Store, interval: float, clock: Callable[[], float]) -> None:
    """Purge ``store`` now and then every ``interval`` seconds, until cancelled: a task of
    whoever owns the store's lifetime (``smsc/app.py`` cancels it before closing the store).
    ``clock`` gives wall-clock Unix seconds. A purge that fails is logged; the next one
    tries again."""
    while True:
        try:
            deleted = await store.purge(clock())
        except StoreError as exc:
            log.warning("store: purge failed: %s", exc)
        else:
            if deleted:
                log.info("store: purged %d rows (old final messages, expired held items)", deleted)
        await asyncio.sleep(interval)  # a schedule, not a wait for an event


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
