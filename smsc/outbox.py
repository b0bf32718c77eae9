"""The durable webhook outbox: every event to POST is written here (and committed) before
whoever produced it is told it is safe — a carrier's deliver_sm is acknowledged only
then — and stays until its receiver took it or it is dead-lettered.

:class:`Outbox` is the interface the sender (smsc/webhooks.py) needs; :class:`SqliteOutbox`
keeps it in an SQLite file of its own next to the store (a node alone); in a cluster
smsc/outbox_redis.py keeps it in Redis, shared by the nodes. Bounded: past ``max_pending``
waiting events, :meth:`Outbox.put` refuses.

The sender's common case costs no read: an event committed by :meth:`SqliteOutbox.put` is
also kept in memory (up to ``MEMORY`` of them) until :meth:`SqliteOutbox.due` hands it
out for its first attempt; the file is read only when it may hold waiting events that
memory does not (retries, events from before a restart, those past ``MEMORY``, revived
ones). The file stays the record: an event leaves it only once delivered.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Collection
from functools import lru_cache, partial
from typing import Protocol
from urllib.parse import urlsplit

import msgspec

from smsc.sqlitefile import SqliteFile


class OutboxEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One event waiting to be POSTed (or dead-lettered)."""

    id: int
    account: str
    url: str
    body: bytes
    attempts: int
    created: float
    next_at: float
    last_error: str = ""
    kind: str = "json"
    """json: POST ``body`` (JSON, signed); get: GET ``url`` (no body); form: POST
    ``body`` as application/x-www-form-urlencoded (Kannel's and Jasmin's callbacks)."""


class Outbox(Protocol):
    @property
    def waiting(self) -> int:
        """Events waiting to be delivered (not dead)."""
        ...

    def put(
        self, account: str, url: str, body: bytes, now: float, kind: str = "json"
    ) -> asyncio.Future[bool] | None:
        """Queue an event; the future says True once it is durable. None: refused (full)."""
        ...

    async def due(
        self, now: float, limit: int, skip: Collection[int], hosts: Collection[str] = ()
    ) -> list[OutboxEvent]:
        """Waiting events whose time has come, oldest first, but those in ``skip`` and
        those to the receiving ``hosts`` (at their cap, or their breaker open)."""
        ...

    def give_back(self, events: list[OutboxEvent]) -> None:
        """Events :meth:`due` handed out that were not POSTed after all (their host at
        its cap): the next :meth:`due` may hand them out again."""
        ...

    def take_next(self, host: str, skip: Collection[int]) -> OutboxEvent | None:
        """The oldest waiting event to ``host`` when it is at hand (committed, due, never
        handed out) and nothing waits elsewhere that :meth:`due` would read first (the
        file, other hosts); else None. For a sender whose POST to ``host`` just ended."""
        ...

    async def next_due(self, skip: Collection[int], hosts: Collection[str] = ()) -> float | None:
        """When the next waiting event (but those in ``skip`` or to ``hosts``) is due;
        None: none waits."""
        ...

    def delivered(self, event_id: int) -> None: ...

    def retry_at(self, event_id: int, attempts: int, at: float, error: str) -> None: ...

    def dead(self, event_id: int, attempts: int, error: str) -> None: ...

    async def failures(self, account: str, limit: int) -> list[OutboxEvent]:
        """The account's dead-lettered events, newest first."""
        ...

    async def revive(self, account: str, event_id: int, now: float) -> bool:
        """Send a dead-lettered event of ``account`` again (from now, a new max_age)."""
        ...

    def purge(self, before: float) -> None:
        """Forget dead-lettered events created before ``before``."""
        ...

    async def open(self) -> None: ...

    async def close(self, timeout: float) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    account TEXT NOT NULL,
    url TEXT NOT NULL,
    body BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    next_at REAL NOT NULL,
    dead INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    kind TEXT NOT NULL DEFAULT 'json',
    host TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS events_due ON events (dead, next_at, id);
CREATE INDEX IF NOT EXISTS events_dead ON events (account, dead, id);
"""
_COLUMNS = "id, account, url, body, attempts, created, next_at, last_error, kind"
#: Committed events kept in memory for their first attempt, at most.
MEMORY = 10_000
#: Seconds after which :meth:`SqliteOutbox.due` reads the file even when its counts say
#: that memory holds every waiting event (a safety net: a miscount delays, never loses).
RESCAN = 5.0


class SqliteOutbox:
    def __init__(self, path: str, *, max_pending: int = 1_000_000, memory: int = MEMORY) -> None:
        self.file = SqliteFile(path, _SCHEMA, max_pending=max_pending)
        self.max_pending = max_pending
        self.memory = memory
        self._waiting = 0
        #: Events put but not yet committed (counted in ``_waiting``).
        self._uncommitted = 0
        #: Committed events never handed out (at most MEMORY): by host, by id, oldest
        #: first; and how many.
        self._fresh: dict[str, deque[OutboxEvent]] = {}
        #: Ids of those (an event whose id is not here any more is skipped: handed out).
        self._fresh_ids: set[int] = set()
        #: When (the callers' clock) the file was last read for due events.
        self._read_at = float("-inf")
        self._last_id = 0
        #: The newest event whose commit is known here (ids commit in order).
        self._seen_id = 0

    @property
    def waiting(self) -> int:
        return self._waiting

    async def open(self) -> None:
        await self.file.open()
        rows = await self.file.read("SELECT COUNT(*) FROM events WHERE dead = 0")
        self._waiting = int(rows[0][0])
        rows = await self.file.read(
            "SELECT MAX(x) FROM (SELECT MAX(id) AS x FROM events"
            " UNION ALL SELECT seq FROM sqlite_sequence WHERE name = 'events')"
        )
        self._last_id = self._seen_id = int(rows[0][0] or 0)

    def _elsewhere(self, skip: Collection[int], taken: int = 0) -> bool:
        """May the file hold waiting events that are neither in memory nor in ``skip``
        (those being POSTed) nor ``taken`` (just handed out)?"""
        fresh = len(self._fresh_ids)
        return self._waiting - self._uncommitted > fresh + len(skip) + taken

    async def close(self, timeout: float = 5.0) -> None:
        await self.file.close(timeout)

    def put(
        self, account: str, url: str, body: bytes, now: float, kind: str = "json"
    ) -> asyncio.Future[bool] | None:
        if self._waiting >= self.max_pending:
            return None
        event_id = self._last_id + 1
        done = self.file.write(
            "INSERT INTO events (id, account, url, body, created, next_at, kind, host)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(event_id, account, url, body, now, now, kind, host_of(url))],
        )
        if done is None:
            return None
        self._last_id = event_id
        self._waiting += 1
        self._uncommitted += 1
        event = OutboxEvent(
            id=event_id,
            account=account,
            url=url,
            body=body,
            attempts=0,
            created=now,
            next_at=now,
            kind=kind,
        )
        done.add_done_callback(partial(self._committed, event))
        return done

    def _committed(self, event: OutboxEvent, done: asyncio.Future[bool]) -> None:
        ok = not done.cancelled() and done.result()
        self._uncommitted -= 1
        self._seen_id = max(self._seen_id, event.id)
        if not ok:  # not in the file: nothing waits (whoever put it is told False)
            self._waiting = max(0, self._waiting - 1)
        elif len(self._fresh_ids) < self.memory:
            self._fresh.setdefault(host_of(event.url), deque()).append(event)
            self._fresh_ids.add(event.id)

    async def due(
        self, now: float, limit: int, skip: Collection[int], hosts: Collection[str] = ()
    ) -> list[OutboxEvent]:
        out: list[OutboxEvent] = []
        ids = self._fresh_ids
        for host in [h for h in self._fresh if h not in hosts]:
            events = self._fresh[host]
            while events and len(out) < limit:
                event = events.popleft()
                if event.id in ids:
                    ids.remove(event.id)
                    out.append(event)
            if not events:
                del self._fresh[host]
        rescan = now - self._read_at >= RESCAN
        if len(out) >= limit or not (rescan or self._elsewhere(skip, len(out))):
            out.sort(key=_due_order)
            return out
        self._read_at = now
        hosts = list(hosts)
        taken = {e.id for e in out}
        rows = await self.file.read(
            f"SELECT {_COLUMNS} FROM events WHERE dead = 0 AND next_at <= ?"
            f" AND host NOT IN ({','.join('?' * len(hosts))})"
            f" ORDER BY next_at, id LIMIT ?",
            (now, *hosts, limit + len(skip) + len(taken)),  # those skipped come first
        )
        for event in map(_event, rows):
            if len(out) >= limit:
                break
            # (one committed but not yet known here comes through memory, shortly)
            if event.id in skip or event.id in taken or event.id > self._seen_id:
                continue
            self._fresh_ids.discard(event.id)  # handed out now: not again from memory
            out.append(event)
        out.sort(key=_due_order)
        return out

    def give_back(self, events: list[OutboxEvent]) -> None:
        for event in sorted(events, key=_due_order, reverse=True):  # first ones first
            if len(self._fresh_ids) >= self.memory:
                return  # (still in the file: read from there)
            if event.id not in self._fresh_ids:
                self._fresh.setdefault(host_of(event.url), deque()).appendleft(event)
                self._fresh_ids.add(event.id)

    def take_next(self, host: str, skip: Collection[int]) -> OutboxEvent | None:
        events = self._fresh.get(host)
        if events is None or len(self._fresh) > 1 or self._elsewhere(skip):
            return None
        ids = self._fresh_ids
        while events:
            event = events.popleft()
            if event.id in ids:
                ids.remove(event.id)
                if not events:
                    del self._fresh[host]
                return event
        del self._fresh[host]
        return None

    async def next_due(self, skip: Collection[int], hosts: Collection[str] = ()) -> float | None:
        fresh = []
        for host, events in self._fresh.items():
            while events and events[0].id not in self._fresh_ids:
                events.popleft()  # handed out from the file meanwhile
            if events and host not in hosts:
                fresh.append(events[0].next_at)
        if not self._elsewhere(skip):
            return min(fresh) if fresh else None
        hosts = list(hosts)
        rows = await self.file.read(
            "SELECT id, next_at FROM events WHERE dead = 0"
            f" AND host NOT IN ({','.join('?' * len(hosts))})"
            " ORDER BY next_at, id LIMIT ?",
            (*hosts, len(skip) + 1),
        )
        for event_id, at in rows:
            if event_id not in skip:
                return float(at)
        return None

    def delivered(self, event_id: int) -> None:
        self._waiting = max(0, self._waiting - 1)
        self.file.post("DELETE FROM events WHERE id = ?", [(event_id,)])

    def retry_at(self, event_id: int, attempts: int, at: float, error: str) -> None:
        self.file.post(
            "UPDATE events SET attempts = ?, next_at = ?, last_error = ? WHERE id = ?",
            [(attempts, at, error, event_id)],
        )

    def dead(self, event_id: int, attempts: int, error: str) -> None:
        self._waiting = max(0, self._waiting - 1)
        self.file.post(
            "UPDATE events SET dead = 1, attempts = ?, last_error = ? WHERE id = ?",
            [(attempts, error, event_id)],
        )

    def purge(self, before: float) -> None:
        sql = "DELETE FROM events WHERE dead = 1 AND created < ?"
        self.file.post(sql, [(before,)])

    async def failures(self, account: str, limit: int) -> list[OutboxEvent]:
        rows = await self.file.read(
            f"SELECT {_COLUMNS} FROM events WHERE account = ? AND dead = 1"
            " ORDER BY id DESC LIMIT ?",
            (account, limit),
        )
        return [_event(r) for r in rows]

    async def revive(self, account: str, event_id: int, now: float) -> bool:
        rows = await self.file.read(
            "SELECT id FROM events WHERE id = ? AND account = ? AND dead = 1", (event_id, account)
        )
        if not rows:
            return False
        done = self.file.write(
            "UPDATE events SET dead = 0, attempts = 0, created = ?, next_at = ?"
            " WHERE id = ? AND dead = 1",
            [(now, now, event_id)],
            force=True,
        )
        if done is None or not await done:
            return False
        self._waiting += 1  # once it is waiting again, not before
        return True


@lru_cache(maxsize=1024)
def host_of(url: str) -> str:
    """The receiving host of ``url`` (``netloc``): what caps and breakers count by."""
    return urlsplit(url).netloc


def _due_order(event: OutboxEvent) -> tuple[float, int]:
    return event.next_at, event.id


def _event(row: tuple[object, ...]) -> OutboxEvent:
    event_id, account, url, body, attempts, created, next_at, error, kind = row
    return OutboxEvent(
        id=int(event_id),  # type: ignore[call-overload]
        account=str(account),
        url=str(url),
        body=bytes(body),  # type: ignore[call-overload]
        attempts=int(attempts),  # type: ignore[call-overload]
        created=float(created),  # type: ignore[arg-type]
        next_at=float(next_at),  # type: ignore[arg-type]
        last_error=str(error),
        kind=str(kind),
    )
