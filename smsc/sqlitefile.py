"""A small SQLite file of smsc's own (the HTTP API's records, the webhook outbox), off the
event loop: one thread owns the connection; writes are gathered into one transaction
(group commit) and each caller learns when its write is durable (a future per write;
:meth:`SqliteFile.post` queues one nobody waits for, without a future: the outbox's
deletes of delivered events, purges); reads wait for the writes queued before them.
Bounded: past ``max_pending`` queued writes, :meth:`write` refuses (returns None) and
the caller answers a temporary error."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache, partial
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
#: Seconds a transaction waits for more writes to join it (unless a read waits).
GATHER = 0.002
#: One write: SQL and its rows (executemany).
Write = tuple[str, Sequence[Sequence[Any]]]
#: Rows per statement when a run of one ``INSERT ... VALUES (?, ...)`` or ``DELETE ...
#: WHERE key = ?`` is written as multi-row statements (largest first; what is left goes
#: row by row). sqlite3 releases the GIL around each statement's step, and with the event
#: loop busy each taking it back waits its turn: once per 64 rows rather than per row.
WIDE = (64, 8)
_VALUES = re.compile(r"(INSERT\b.*\bVALUES\s*)(\(\s*\?(?:\s*,\s*\?)*\s*\))\s*", re.S | re.I)
_BY_KEY = re.compile(r"(DELETE\b[^?]*\bWHERE\s+\w+\s*)=\s*\?\s*", re.S | re.I)


class SqliteFile:
    """``await open()``; ``write(...)`` → Future (True once committed, False if the
    transaction failed); ``post(...)`` (no future); ``await read(sql, params)``;
    ``await close(timeout)``."""

    def __init__(
        self,
        path: str,
        schema: str,
        *,
        max_pending: int = 100_000,
        gather: float = GATHER,
    ) -> None:
        self.path = path
        self.schema = schema
        self.max_pending = max_pending
        self.gather = gather
        self._db: sqlite3.Connection | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"sqlite-{os.path.basename(path)}")
        #: Writes and who waits for each (None: nobody, :meth:`post`).
        self._queue: list[tuple[Write, asyncio.Future[bool] | None]] = []
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        #: Writes queued, and writes done (committed or failed), since open: in order.
        self._queued = 0
        self._done = 0
        #: Set (and replaced) after each transaction.
        self._progress = asyncio.Event()
        #: A read waits: commit what is queued without gathering more.
        self._urgent = asyncio.Event()

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def open(self) -> None:
        self._db = await self._call(self._connect)
        self._writer = asyncio.create_task(self._write_loop(), name=f"sqlite-{self.path}")

    def _connect(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            directory = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(directory, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(self.schema)
        return db

    async def _call(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    def write(
        self, sql: str, rows: Sequence[Sequence[Any]], *, force: bool = False
    ) -> asyncio.Future[bool] | None:
        """Queue a write; None when ``max_pending`` writes already wait (nothing queued) —
        unless ``force`` (a change to what is already kept: it counts, but is never
        refused) — or when the file is closed."""
        if self._db is None or (len(self._queue) >= self.max_pending and not force):
            return None
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.append(((sql, rows), done))
        self._queued += 1
        self._wake.set()
        return done

    def post(self, sql: str, rows: Sequence[Sequence[Any]]) -> bool:
        """Queue a change to what is already kept (never refused, as ``write(...,
        force=True)``) when nobody waits for its outcome: no future (a failure is
        logged). False when the file is closed."""
        if self._db is None:
            return False
        self._queue.append(((sql, rows), None))
        self._queued += 1
        self._wake.set()
        return True

    async def read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Rows of ``sql``, after the writes queued before it are committed."""
        await self.flush()
        db = self._db
        if db is None:
            raise sqlite3.ProgrammingError("closed")
        return await self._call(lambda: db.execute(sql, params).fetchall())

    async def flush(self) -> None:
        """Wait until what was queued so far is committed (the caller sets a deadline) —
        not for what is queued meanwhile: a steady flow of writes does not hold it up."""
        target = self._queued
        while self._done < target:
            self._urgent.set()
            await self._progress.wait()

    async def _write_loop(self) -> None:
        db = self._db
        assert db is not None
        while True:
            await self._wake.wait()
            if self.gather > 0 and not self._urgent.is_set():
                # group commit: what comes within ``gather`` seconds joins this transaction
                # (fewer, larger ones: each costs a hand-off to the thread and a commit);
                # the deadline is a timer setting ``_urgent``: no cancellation to unwind
                timer = asyncio.get_running_loop().call_later(self.gather, self._urgent.set)
                try:
                    await self._urgent.wait()
                finally:  # (also when the writer is cancelled at close)
                    timer.cancel()
            self._urgent.clear()
            self._wake.clear()
            batch, self._queue = self._queue, []
            if not batch:
                continue
            writes = [w for w, _ in batch]
            try:
                await self._call(partial(_transaction, db, writes))
                ok = True
            except sqlite3.Error as exc:
                log.error("%s: a write of %d statements failed: %s", self.path, len(writes), exc)
                ok = False
            for _, fut in batch:
                if fut is not None and not fut.done():
                    fut.set_result(ok)
            self._done += len(batch)
            progress, self._progress = self._progress, asyncio.Event()
            progress.set()

    async def close(self, timeout: float = 5.0) -> None:
        try:
            async with asyncio.timeout(timeout):
                while self._done < self._queued:  # all of it, even what comes meanwhile
                    await self.flush()
        except TimeoutError:
            log.warning("%s: %d writes not committed at close", self.path, len(self._queue))
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None
        db, self._db = self._db, None
        if db is not None:
            await self._call(db.close)
        self._pool.shutdown(wait=False)


def _transaction(db: sqlite3.Connection, writes: list[Write]) -> None:
    db.execute("BEGIN")
    try:
        for sql, rows in _runs(writes):
            _execute(db, sql, rows)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _execute(db: sqlite3.Connection, sql: str, rows: Sequence[Sequence[Any]]) -> None:
    """``db.executemany(sql, rows)``, in multi-row statements where ``sql`` allows."""
    start = 0
    for size in WIDE:
        count = (len(rows) - start) // size
        wide = _widened(sql, size) if count else None
        if wide is None:
            continue
        end = start + count * size
        db.executemany(
            wide, [[v for row in rows[i : i + size] for v in row] for i in range(start, end, size)]
        )
        start = end
    if start < len(rows):
        db.executemany(sql, rows[start:] if start else rows)


@lru_cache(maxsize=64)
def _widened(sql: str, size: int) -> str | None:
    """``sql`` for ``size`` rows at once: ``INSERT ... VALUES (?, ?), (?, ?), ...`` or
    ``DELETE ... WHERE key IN (?, ?, ...)``; None for other statements."""
    found = _VALUES.fullmatch(sql)
    if found is not None:
        return found.group(1) + ", ".join([found.group(2)] * size)
    found = _BY_KEY.fullmatch(sql)
    if found is not None:
        return found.group(1) + "IN (" + ", ".join("?" * size) + ")"
    return None


def _runs(writes: list[Write]) -> list[Write]:
    """``writes`` with each run of the same statement as one executemany (in order: a
    statement's rows never move past another statement's)."""
    out: list[Write] = []
    rows: list[Sequence[Any]] | None = None
    for sql, more in writes:
        if out and out[-1][0] == sql:
            if rows is None:
                rows = list(out[-1][1])
                out[-1] = (sql, rows)
            rows.extend(more)
        else:
            out.append((sql, more))
            rows = None
    return out


def beside(store_path: str, suffix: str) -> str:
    """``smsc.db`` → ``smsc-<suffix>.db`` in the same directory (``:memory:`` stays)."""
    if store_path == ":memory:" or store_path.startswith("file:"):
        return ":memory:"
    root, ext = os.path.splitext(store_path)
    return f"{root}-{suffix}{ext or '.db'}"
