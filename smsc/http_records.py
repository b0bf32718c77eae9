"""What the HTTP API remembers of its own: the messages sent through it (to list an
account's messages, and to know each one's parts, reference and callback URL), and the
answers to requests with an ``Idempotency-Key`` (replayed for ``idempotency_ttl`` seconds).

:class:`HttpRecords` is the interface the API needs; :class:`SqliteRecords` keeps them in
an SQLite file next to the store (a node alone); smsc/http_records_redis.py in the
cluster's Redis (every node sees every node's messages and answers).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import msgspec

from smsc.callbacks import Target
from smsc.sqlitefile import SqliteFile

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    account TEXT NOT NULL,
    to_addr TEXT NOT NULL,
    from_addr TEXT NOT NULL,
    parts INTEGER NOT NULL,
    created REAL NOT NULL,
    reference TEXT,
    target BLOB
);
CREATE INDEX IF NOT EXISTS messages_by_account ON messages (account, created, id);
CREATE TABLE IF NOT EXISTS idempotency (
    account TEXT NOT NULL,
    key TEXT NOT NULL,
    body_hash TEXT NOT NULL,
    status INTEGER NOT NULL,
    response BLOB NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (account, key)
);
"""


class SentMessage(msgspec.Struct, frozen=True, kw_only=True):
    """One message (one destination) sent through the API; its parts are ``id``,
    ``id-2`` ... ``id-<parts>`` in the store."""

    id: str
    account: str
    to: str
    source: str
    parts: int
    created: float
    reference: str | None = None
    target: Target | None = None
    """What its status events ask (callback URL, reference, a legacy dialect)."""

    @property
    def part_ids(self) -> list[str]:
        return [part_id(self.id, n) for n in range(1, self.parts + 1)]


def part_id(message_id: str, n: int) -> str:
    """The store's id of part ``n`` (from 1) of ``message_id``."""
    return message_id if n == 1 else f"{message_id}-{n}"


class Answer(msgspec.Struct, frozen=True):
    """A remembered answer to an idempotent request."""

    body_hash: str
    status: int
    response: bytes


class RecordsUnavailable(Exception):
    """The records cannot be read now (their Redis does not answer): the API answers 503."""


class HttpRecords(Protocol):
    @property
    def shared(self) -> bool:
        """Other nodes read these records too: a message's record is written before the
        message is submitted (its receipt may land on another node at once)."""
        ...

    async def open(self) -> None: ...

    async def close(self, timeout: float = 5.0) -> None: ...

    def add(self, messages: list[SentMessage]) -> asyncio.Future[bool] | None:
        """Record ``messages``; the future says True once durable. None: refused (full)."""
        ...

    async def get(self, message_id: str) -> SentMessage | None:
        """The message ``message_id`` (RecordsUnavailable)."""
        ...

    async def page(
        self,
        account: str,
        *,
        to: str | None,
        since: float | None,
        until: float | None,
        after: tuple[float, str] | None,
        limit: int,
    ) -> list[SentMessage]:
        """The account's messages, newest first (``created``, then ``id``, descending),
        created in [since, until), to ``to``, after the cursor ``after`` (created, id);
        at most ``limit`` (RecordsUnavailable)."""
        ...

    async def with_callbacks(self, since: float, limit: int) -> list[SentMessage]:
        """Messages whose targets a node keeps in memory from the start (oldest first)."""
        ...

    async def answer(self, account: str, key: str, since: float) -> Answer | None:
        """The answer remembered for ``key`` of ``account`` since ``since``
        (RecordsUnavailable)."""
        ...

    def remember(
        self, account: str, key: str, answer: Answer, now: float
    ) -> asyncio.Future[bool] | None:
        """Remember the answer to ``key``; the future says True once durable."""
        ...

    async def reserve(self, account: str, key: str, now: float) -> bool:
        """Mark ``key`` as being answered now, for every node sharing the records (asked
        only when :attr:`shared`; a node alone knows its own requests); False: it is being
        answered, or was (RecordsUnavailable)."""
        ...

    def release(self, account: str, key: str) -> asyncio.Future[bool] | None:
        """Undo :meth:`reserve` (the request was refused for now: no answer remembered);
        the future says True once done. None: refused (writes backed up), or nothing to
        undo (a node alone)."""
        ...

    def purge(self, before_messages: float, before_answers: float) -> None:
        """Forget messages created before ``before_messages`` and answers before
        ``before_answers``."""
        ...


class SqliteRecords:
    """The records in an SQLite file (a node alone)."""

    shared = False

    def __init__(self, path: str, *, max_pending: int = 100_000) -> None:
        self.file = SqliteFile(path, _SCHEMA, max_pending=max_pending)

    async def open(self) -> None:
        await self.file.open()

    async def close(self, timeout: float = 5.0) -> None:
        await self.file.close(timeout)

    def add(self, messages: list[SentMessage]) -> asyncio.Future[bool] | None:
        return self.file.write(
            "INSERT OR REPLACE INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    m.id,
                    m.account,
                    m.to,
                    m.source,
                    m.parts,
                    m.created,
                    m.reference,
                    None if m.target is None else msgspec.json.encode(m.target),
                )
                for m in messages
            ],
        )

    async def get(self, message_id: str) -> SentMessage | None:
        rows = await self.file.read("SELECT * FROM messages WHERE id = ?", (message_id,))
        return _sent(rows[0]) if rows else None

    async def page(
        self,
        account: str,
        *,
        to: str | None,
        since: float | None,
        until: float | None,
        after: tuple[float, str] | None,
        limit: int,
    ) -> list[SentMessage]:
        """The account's messages, newest first, from after the cursor ``after``."""
        sql = "SELECT * FROM messages WHERE account = ?"
        params: list[object] = [account]
        if to is not None:
            sql += " AND to_addr = ?"
            params.append(to)
        if since is not None:
            sql += " AND created >= ?"
            params.append(since)
        if until is not None:
            sql += " AND created < ?"
            params.append(until)
        if after is not None:
            sql += " AND (created < ? OR (created = ? AND id < ?))"
            params += [after[0], after[0], after[1]]
        sql += " ORDER BY created DESC, id DESC LIMIT ?"
        params.append(limit)
        return [_sent(r) for r in await self.file.read(sql, params)]

    async def with_callbacks(self, since: float, limit: int) -> list[SentMessage]:
        """The newest ``limit`` messages since ``since`` whose status events ask something
        (a target), oldest first."""
        rows = await self.file.read(
            "SELECT * FROM messages WHERE created >= ? AND target IS NOT NULL"
            " ORDER BY created DESC LIMIT ?",
            (since, limit),
        )
        return [_sent(r) for r in reversed(rows)]

    async def answer(self, account: str, key: str, since: float) -> Answer | None:
        rows = await self.file.read(
            "SELECT body_hash, status, response FROM idempotency"
            " WHERE account = ? AND key = ? AND created >= ?",
            (account, key, since),
        )
        return Answer(rows[0][0], rows[0][1], bytes(rows[0][2])) if rows else None

    def remember(
        self, account: str, key: str, answer: Answer, now: float
    ) -> asyncio.Future[bool] | None:
        return self.file.write(
            "INSERT OR REPLACE INTO idempotency VALUES (?, ?, ?, ?, ?, ?)",
            [(account, key, answer.body_hash, answer.status, answer.response, now)],
        )

    async def reserve(self, account: str, key: str, now: float) -> bool:
        return True  # (a node alone: HttpApi knows the requests being answered)

    def release(self, account: str, key: str) -> asyncio.Future[bool] | None:
        return None

    def purge(self, before_messages: float, before_answers: float) -> None:
        rows = [(before_messages,)]
        self.file.post("DELETE FROM messages WHERE created < ?", rows)
        rows = [(before_answers,)]
        self.file.post("DELETE FROM idempotency WHERE created < ?", rows)


def _sent(row: tuple[object, ...]) -> SentMessage:
    id_, account, to, source, parts, created, reference, target = row
    return SentMessage(
        id=str(id_),
        account=str(account),
        to=str(to),
        source=str(source),
        parts=int(parts),  # type: ignore[call-overload]
        created=float(created),  # type: ignore[arg-type]
        reference=None if reference is None else str(reference),
        target=None if target is None else msgspec.json.decode(bytes(target), type=Target),  # type: ignore[call-overload]
    )
