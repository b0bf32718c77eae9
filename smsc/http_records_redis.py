"""The HTTP API's records in the cluster's Redis (see smsc/http_records.py for what they
are): every node lists, shows and follows the messages sent through any node's API, and an
``Idempotency-Key`` answered on one node is replayed on every other.

Key layout (``P`` the cluster's ``key_prefix``; the part in braces is the hash tag, for
Redis Cluster):

- ``P:{hr:<id>}:m``              STRING, one message (msgpack of SentMessage), by its id;
  expires ``retention`` seconds after it was written (``store.keep_days``, as the SQLite
  records are purged).
- ``P:{ha:<account>}:list``      ZSET, the account's messages, score ``created``, member
  ``<id> NUL <msgpack of SentMessage>`` (a page is one read; equal scores sort by id).
  Trimmed to ``retention`` at each add; the key expires ``retention`` after the last one.
- ``P:{ha:<account>}:i:<key>``   STRING, an Idempotency-Key: while a node answers it a
  reservation (``SET NX`` with a TTL of ``reserve_ttl``: the longest a send may take; status
  0), then its answer (msgpack of (body_hash, status, response, created)) for
  ``idempotency_ttl``: one node sends, the others answer 409 meanwhile, replay it after.

Commands: an add is one pipeline (one round trip) of 3 + 1 per message (SET per message,
ZADD of all, ZREMRANGEBYSCORE, PEXPIRE); the targets of the reports of a turn of the loop one
pipeline (GET per message: :meth:`get_many`); a request with an Idempotency-Key three (GET,
``SET NX PX``, ``SET PX``); reads one command each. Every call has ``timeout`` seconds;
Redis away: writes resolve False (the API answers 503 and submits nothing), reads raise
RecordsUnavailable (503)."""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

import msgspec
import redis.asyncio as aioredis

from smsc.http_records import Answer, RecordsUnavailable, SentMessage
from smsc.redis_pipeline import FAILURES, Serial

log = logging.getLogger(__name__)

_SEP = b"\x00"
_encode = msgspec.msgpack.Encoder().encode
_sent_decoder = msgspec.msgpack.Decoder(SentMessage)
_answer_decoder = msgspec.msgpack.Decoder(tuple[str, int, bytes, float])


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _decode_sent(raw: bytes) -> SentMessage:
    """A record (RecordsUnavailable when it is not one this version reads)."""
    try:
        return _sent_decoder.decode(raw)
    except msgspec.DecodeError as exc:  # (ValidationError is one)
        raise RecordsUnavailable(f"a message record this node cannot read: {exc}") from exc


def _decode_answer(raw: bytes) -> tuple[str, int, bytes, float]:
    """An Idempotency-Key answer (RecordsUnavailable when it is not one this version
    reads)."""
    try:
        return _answer_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise RecordsUnavailable(f"an Idempotency-Key answer this node cannot read: {exc}") from exc
#: The status of a key's reservation (an answer has an HTTP status).
_RESERVED = 0


class RedisRecords:
    """The records on ``client`` (not closed here: its owner closes it)."""

    shared = True

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "smsc",
        retention: float = 7 * 86_400.0,
        answer_ttl: float = 86_400.0,
        reserve_ttl: float = 120.0,
        timeout: float = 2.0,
        max_pending: int = 10_000,
    ) -> None:
        self.redis = client
        self.prefix = prefix
        self.retention = retention
        self.answer_ttl = answer_ttl
        self.reserve_ttl = reserve_ttl
        self.timeout = timeout
        self.max_pending = max_pending
        #: The writes, a pipeline at a time (those of a turn of the loop together).
        self.serial = Serial(client, timeout=timeout, limit=max_pending)

    def message_key(self, message_id: str) -> str:
        return f"{self.prefix}:{{hr:{message_id}}}:m"

    def list_key(self, account: str) -> str:
        return f"{self.prefix}:{{ha:{account}}}:list"

    def to_key(self, account: str, to: str) -> str:
        """The account's messages to ``to`` (ids by created): a page filtered by ``to``
        reads these, not the whole list."""
        return f"{self.prefix}:{{ha:{account}}}:to:{to}"

    def answer_key(self, account: str, key: str) -> str:
        return f"{self.prefix}:{{ha:{account}}}:i:{key}"

    async def open(self) -> None:
        """Start the writer (the client connects on first use)."""
        self.serial.start()

    async def close(self, timeout: float = 5.0) -> None:
        """Send the writes queued (at most ``timeout``); what is left is not written."""
        await self.serial.close(timeout)

    def _write(self, what: str, calls: list[tuple[Any, ...]]) -> asyncio.Future[bool] | None:
        if self.serial.room < len(calls):
            return None
        replies = [r for call in calls if (r := self.serial.call(*call)) is not None]
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bool] = loop.create_future()
        gathered = asyncio.gather(*replies, return_exceptions=True)
        gathered.add_done_callback(lambda g: _settle(what, g, done))
        # (queued behind other pipelines: an answer within two of them, else False)
        late = loop.call_later(2 * self.timeout, _late, what, done)
        done.add_done_callback(lambda _: late.cancel())
        return done

    async def _read(self, *call: Any) -> Any:
        try:
            async with asyncio.timeout(self.timeout):
                return await self.redis.execute_command(*call)  # type: ignore[no-untyped-call]
        except FAILURES as exc:
            raise RecordsUnavailable(f"redis: {exc or type(exc).__name__}") from exc

    def add(self, messages: list[SentMessage]) -> asyncio.Future[bool] | None:
        keep_ms = max(1, math.ceil(self.retention * 1000))
        calls: list[tuple[Any, ...]] = []
        lists: dict[str, list[Any]] = {}
        tos: dict[tuple[str, str], list[Any]] = {}
        newest: dict[str, float] = {}
        for m in messages:
            packed = _encode(m)
            calls.append(("SET", self.message_key(m.id), packed, "PX", keep_ms))
            lists.setdefault(m.account, []).extend((m.created, m.id.encode() + _SEP + packed))
            tos.setdefault((m.account, m.to), []).extend((m.created, m.id))
            newest[m.account] = max(newest.get(m.account, m.created), m.created)
        keys = [(self.list_key(a), pairs, a) for a, pairs in lists.items()]
        keys += [(self.to_key(a, to), pairs, a) for (a, to), pairs in tos.items()]
        for key, pairs, account in keys:
            calls.append(("ZADD", key, *pairs))
            oldest = newest[account] - self.retention
            calls.append(("ZREMRANGEBYSCORE", key, "-inf", f"({oldest!r}"))
            calls.append(("PEXPIRE", key, keep_ms))
        return self._write(f"{len(messages)} messages", calls)

    async def get(self, message_id: str) -> SentMessage | None:
        raw = await self._read("GET", self.message_key(message_id))
        return None if raw is None else _decode_sent(raw)

    async def get_many(self, message_ids: list[str]) -> list[SentMessage | None]:
        """The records of ``message_ids`` (None: not found), in one round trip."""
        try:
            async with asyncio.timeout(self.timeout):
                async with self.redis.pipeline(transaction=False) as pipe:
                    for message_id in message_ids:
                        pipe.get(self.message_key(message_id))
                    raws = await pipe.execute()
        except FAILURES as exc:
            raise RecordsUnavailable(f"redis: {exc or type(exc).__name__}") from exc
        return [None if raw is None else _decode_sent(raw) for raw in raws]

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
        top = "+inf" if until is None else f"({until!r}"
        if after is not None and (until is None or after[0] < until):
            top = repr(after[0])
        bottom = "-inf" if since is None else repr(since)
        if to is not None:
            return await self._page_to(account, to, top, bottom, after, limit)
        out: list[SentMessage] = []
        offset = 0
        chunk = limit + 1
        while len(out) < limit:
            rows = await self._read(
                "ZREVRANGEBYSCORE", self.list_key(account), top, bottom, "LIMIT", offset, chunk
            )
            for row in rows:
                m = _decode_sent(row.partition(_SEP)[2])
                if after is not None and (m.created, m.id) >= after:
                    continue
                out.append(m)
                if len(out) == limit:
                    break
            if len(rows) < chunk:
                break
            offset += chunk
        return out

    async def _page_to(
        self,
        account: str,
        to: str,
        top: str,
        bottom: str,
        after: tuple[float, str] | None,
        limit: int,
    ) -> list[SentMessage]:
        """A page of the account's messages to ``to``: from its own index (ids), the
        records in one round trip per chunk; work in proportion to the page, not to the
        account's list."""
        out: list[SentMessage] = []
        offset = 0
        chunk = limit + 1
        while len(out) < limit:
            rows = await self._read(
                "ZREVRANGEBYSCORE", self.to_key(account, to), top, bottom,
                "WITHSCORES", "LIMIT", offset, chunk,
            )  # fmt: skip
            if rows and isinstance(rows[0], list | tuple):  # (RESP3: [member, score] each)
                rows = [x for row in rows for x in row]
            pairs = [(float(rows[k + 1]), _text(rows[k])) for k in range(0, len(rows), 2)]
            ids = [mid for created, mid in pairs if after is None or (created, mid) < after]
            for m in await self.get_many(ids):
                if m is not None:  # (None: past its retention)
                    out.append(m)
                    if len(out) == limit:
                        break
            if len(pairs) < chunk:
                break
            offset += chunk
        return out

    async def with_callbacks(self, since: float, limit: int) -> list[SentMessage]:
        """None: in a cluster a message's target is read from Redis when a report needs it
        (:meth:`get`), whichever node sent it."""
        return []

    async def answer(self, account: str, key: str, since: float) -> Answer | None:
        raw = await self._read("GET", self.answer_key(account, key))
        if raw is None:
            return None
        body_hash, status, response, created = _decode_answer(raw)
        if status == _RESERVED or created < since:
            return None
        return Answer(body_hash, status, response)

    async def reserve(self, account: str, key: str, now: float) -> bool:
        packed = _encode(("", _RESERVED, b"", now))
        ttl_ms = max(1, math.ceil(self.reserve_ttl * 1000))
        done = await self._read("SET", self.answer_key(account, key), packed, "NX", "PX", ttl_ms)
        return done is not None

    def release(self, account: str, key: str) -> asyncio.Future[bool] | None:
        return self._write("a reservation's release", [("DEL", self.answer_key(account, key))])

    def remember(
        self, account: str, key: str, answer: Answer, now: float
    ) -> asyncio.Future[bool] | None:
        """Replaces this node's reservation of ``key``."""
        packed = _encode((answer.body_hash, answer.status, answer.response, now))
        ttl_ms = max(1, math.ceil(self.answer_ttl * 1000))
        call = ("SET", self.answer_key(account, key), packed, "PX", ttl_ms)
        return self._write("an idempotent answer", [call])

    def purge(self, before_messages: float, before_answers: float) -> None:
        """Nothing: Redis forgets them itself (TTLs; each list trimmed at each add)."""


def _settle(what: str, gathered: asyncio.Future[list[Any]], done: asyncio.Future[bool]) -> None:
    """``done`` True when every call of a write went through."""
    if done.done():
        return
    if gathered.cancelled():
        done.set_result(False)
        return
    errors = [r for r in gathered.result() if isinstance(r, BaseException)]
    if errors:
        log.warning("HTTP records: %s not written: %s", what, errors[0])
    done.set_result(not errors)


def _late(what: str, done: asyncio.Future[bool]) -> None:
    if not done.done():
        log.warning("HTTP records: %s not written in time", what)
        done.set_result(False)
