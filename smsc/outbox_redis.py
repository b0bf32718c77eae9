"""The webhook outbox in the cluster's Redis (the interface: smsc/outbox.py): an event put
on any node is durable in Redis before whoever produced it is told so (a carrier's
deliver_sm is acknowledged only then), any node's sender may POST it, and one node at a
time does: :meth:`RedisOutbox.due` claims the events it hands out for ``lease`` seconds
(longer than a POST may take). A node that dies holding claims leaves its events to the
others once the lease has passed; dead letters are listed and sent again from any node.

Key layout (``P`` the cluster's ``key_prefix``; every key has the hash tag ``{wo}``, so one
script call touches one slot of a Redis Cluster; the scripts derive the keys from the tag):

- ``P:{wo}:seq``            STRING, event ids (INCR).
- ``P:{wo}:e:<id>``         HASH, the event: ``a`` account, ``u`` url, ``b`` body, ``k``
  kind, ``h`` receiving host, ``n`` attempts, ``c`` created, ``t`` next attempt, ``r`` last
  error, ``d`` 1 once dead-lettered.
- ``P:{wo}:due``            ZSET, the waiting events (not dead), member ``<id>@<host>``
  (a read skips the hosts held back without reading their events): score = when it may
  be handed out: its next attempt, or while claimed the end of the claim. Its size is
  what ``max_pending`` bounds, for the whole cluster.
- ``P:{wo}:dead``           ZSET, dead-lettered events by ``created`` (``purge``).
- ``P:{wo}:dead:<account>`` ZSET, the account's dead-lettered events by id.

Commands: a put is one script call; the sender's read of what is due one script call for a
batch of events (it also counts the waiting ones); each outcome (delivered, retry, dead)
one; the calls queued while a pipeline is on its way go in the next (smsc/redis_pipeline.py:
one round trip for a batch). Every pipeline has ``timeout`` seconds. Redis away: a put
resolves False (the carrier is answered a temporary error and sends its receipt again),
the sender reads nothing and tries again, an outcome not written leaves the event claimed
until its lease ends (then it is POSTed again: at least once, never lost); the failures
endpoints answer 503. A node that stops cleanly gives back the events whose POSTs it
cancelled (:meth:`RedisOutbox.give_back`, before the outbox closes): another node sends
them at once, not once the claim lapses.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from smsc.http_records import RecordsUnavailable
from smsc.outbox import OutboxEvent
from smsc.redis_pipeline import FAILURES, Serial

log = logging.getLogger(__name__)

#: Due events one read looks at, at most, beyond those it hands out (those to hosts held
#: back are skipped over).
SCAN = 1_000
#: Dead letters one purge removes, at most (the purges come every store.purge_interval).
PURGE_BATCH = 10_000
#: Calls (puts, outcomes, reads) queued at once, at most: past it a put is refused.
MAX_WRITES = 100_000

_PUT = """
local tag = ARGV[1]
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
local id = redis.call('INCR', tag .. ':seq')
redis.call('HSET', tag .. ':e:' .. id, 'a', ARGV[3], 'u', ARGV[4], 'b', ARGV[5], 'k', ARGV[6],
  'h', ARGV[7], 'n', '0', 'c', ARGV[8], 't', ARGV[8], 'r', '', 'd', '0')
redis.call('ZADD', KEYS[1], ARGV[8], id .. '@' .. ARGV[7])
return id
"""

# ARGV: tag, now, claim's end, limit, scan, per host, n, n ids to skip (this node's in
# flight), m, m (host, room) pairs (hosts with events handed out here: what is left of
# ``per host``), hosts held back... Returns {waiting, {id, account, url, body, attempts,
# created, next_at, error, kind, host}...}
_CLAIM = """
local tag, now, till = ARGV[1], ARGV[2], ARGV[3]
local limit, scan, per_host = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local n = tonumber(ARGV[7])
local skip, room, blocked = {}, {}, {}
for i = 8, 7 + n do skip[ARGV[i]] = true end
local at = 8 + n
local m = tonumber(ARGV[at])
for i = at + 1, at + 2 * m, 2 do room[ARGV[i]] = tonumber(ARGV[i + 1]) end
for i = at + 2 * m + 1, #ARGV do blocked[ARGV[i]] = true end
local out = {0}
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, scan + limit)
for _, member in ipairs(members) do
  if #out > limit then break end
  local id, host = string.match(member, '^(%d+)@(.*)$')
  local left = room[host] or per_host
  if id and not blocked[host] and not skip[id] and left > 0 then
    local f = redis.call('HMGET', tag .. ':e:' .. id, 'a', 'u', 'b', 'n', 'c', 't', 'r', 'k')
    if not f[1] then
      redis.call('ZREM', KEYS[1], member)
    else
      room[host] = left - 1
      redis.call('ZADD', KEYS[1], till, member)
      out[#out + 1] = {id, f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], host}
    end
  end
end
out[1] = redis.call('ZCARD', KEYS[1])
return out
"""

# ARGV: tag, op, id, op's arguments. Returns 1 done, 0 nothing to do.
_SETTLE = """
local tag, op, id = ARGV[1], ARGV[2], ARGV[3]
local key = tag .. ':e:' .. id
local f = redis.call('HMGET', key, 'h', 'd', 'a', 'c', 't')
if not f[1] then return 0 end
local member = id .. '@' .. f[1]
if op == 'done' then
  redis.call('ZREM', KEYS[1], member)
  return redis.call('DEL', key)
end
if op == 'revive' then
  if redis.call('ZREM', tag .. ':dead:' .. ARGV[4], id) == 0 then return 0 end
  redis.call('ZREM', tag .. ':dead', id)
  redis.call('HSET', key, 'n', '0', 'c', ARGV[5], 't', ARGV[5], 'd', '0')
  redis.call('ZADD', KEYS[1], ARGV[5], member)
  return 1
end
if f[2] == '1' then return 0 end
if op == 'retry' then
  redis.call('HSET', key, 'n', ARGV[4], 't', ARGV[5], 'r', ARGV[6])
  redis.call('ZADD', KEYS[1], ARGV[5], member)
elseif op == 'dead' then
  redis.call('HSET', key, 'n', ARGV[4], 'r', ARGV[5], 'd', '1')
  redis.call('ZREM', KEYS[1], member)
  redis.call('ZADD', tag .. ':dead', f[4], id)
  redis.call('ZADD', tag .. ':dead:' .. f[3], id, id)
elseif op == 'back' then
  local score = redis.call('ZSCORE', KEYS[1], member)
  if score and tonumber(score) == tonumber(ARGV[4]) then
    redis.call('ZADD', KEYS[1], f[5], member)
  end
end
return 1
"""

# ARGV: tag, account, limit. Returns the account's dead letters, newest first.
_FAILED = """
local tag = ARGV[1]
local out = {}
for _, id in ipairs(redis.call('ZREVRANGE', tag .. ':dead:' .. ARGV[2], 0, ARGV[3] - 1)) do
  local f = redis.call('HMGET', tag .. ':e:' .. id, 'a', 'u', 'b', 'n', 'c', 't', 'r', 'k')
  if f[1] then out[#out + 1] = {id, f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8]} end
end
return out
"""

# ARGV: tag, before, batch. Forgets dead letters created before ``before``; how many.
_PURGE = """
local tag = ARGV[1]
local dead = tag .. ':dead'
local ids = redis.call('ZRANGEBYSCORE', dead, '-inf', '(' .. ARGV[2], 'LIMIT', 0, ARGV[3])
for _, id in ipairs(ids) do
  local key = tag .. ':e:' .. id
  local account = redis.call('HGET', key, 'a')
  if account then redis.call('ZREM', dead .. ':' .. account, id) end
  redis.call('DEL', key)
  redis.call('ZREM', dead, id)
end
return #ids
"""


# ARGV: tag. Returns {score of the first due (or false), waiting}.
_NEXT = """
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {first[2] or false, redis.call('ZCARD', KEYS[1])}
"""


class RedisOutbox:
    """The outbox on ``client`` (not closed here: its owner closes it). Every call goes
    through one :class:`Serial` (smsc/redis_pipeline.py): the puts and outcomes of a turn
    of the loop in one pipeline, and each read sees the writes this node queued before
    it (as the SQLite outbox's reads do)."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "smsc",
        lease: float = 30.0,
        max_pending: int = 1_000_000,
        per_host: int = 32,
        timeout: float = 2.0,
    ) -> None:
        """``lease``: seconds an event handed out stays this node's (above the longest a
        POST may take). ``per_host``: events to one receiving host handed out here and not
        settled yet, at most (the sender's ``per_endpoint``: it would give the rest back)."""
        self.redis = client
        self.tag = f"{prefix}:{{wo}}"
        self.due_key = f"{self.tag}:due"
        self.lease = lease
        self.max_pending = max_pending
        self.per_host = per_host
        self.timeout = timeout
        self.serial = Serial(
            client,
            scripts=(_PUT, _CLAIM, _SETTLE, _FAILED, _PURGE, _NEXT),
            timeout=timeout,
            limit=MAX_WRITES,
        )
        #: Events handed out here and not settled yet: their hosts and when their claims
        #: end (then they are not this node's any more); and how many by host.
        self._out: dict[int, tuple[str, float]] = {}
        self._out_by_host: dict[str, int] = {}
        self._waiting = 0
        self._down = False

    @property
    def waiting(self) -> int:
        """Events waiting in the whole cluster, as of the last read."""
        return self._waiting

    async def open(self) -> None:
        """Count what waits (Redis away: counted at the first read that works)."""
        self.serial.start()
        try:
            _, self._waiting = await self._next()
        except FAILURES as exc:
            self._failure("counting the waiting events", exc)

    async def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (at most ``timeout``); what is left is not written (an
        outcome lost: the event is POSTed again once its claim lapses)."""
        await self.serial.close(timeout)

    # --- plumbing --------------------------------------------------------------------

    def _queue(self, script: str, *args: Any) -> asyncio.Future[Any] | None:
        return self.serial.script(script, [self.due_key], self.tag, *args)

    async def _call(self, script: str, *args: Any) -> Any:
        """Queue a call and await its reply (FAILURES; RedisError when refused)."""
        reply = self._queue(script, *args)
        if reply is None:
            raise RedisError(f"{MAX_WRITES} calls queued")
        async with asyncio.timeout(2 * self.timeout):  # (queued behind one pipeline)
            result = await reply
        if self._down:
            log.warning("webhook outbox: redis reachable again")
            self._down = False
        return result

    def _failure(self, what: str, exc: BaseException) -> None:
        if not self._down:
            log.error("webhook outbox: %s failed (redis: %s); trying again", what, exc)
        self._down = True

    def _later(self, what: str, *args: Any) -> None:
        """An outcome: queued, not awaited (a failure is logged)."""
        reply = self._queue(_SETTLE, *args)
        if reply is None:
            log.warning("webhook outbox: %s not written (%d calls queued)", what, MAX_WRITES)
            return
        reply.add_done_callback(lambda f: self._outcome(what, f))

    def _outcome(self, what: str, reply: asyncio.Future[Any]) -> None:
        if not reply.cancelled() and reply.exception() is not None:
            self._failure(what, reply.exception())  # type: ignore[arg-type]

    async def _next(self) -> tuple[float | None, int]:
        first, waiting = await self._call(_NEXT)
        return (None if first is None else float(first)), int(waiting)

    # --- the interface ---------------------------------------------------------------

    def put(
        self, account: str, url: str, body: bytes, now: float, kind: str = "json"
    ) -> asyncio.Future[bool] | None:
        host = urlsplit(url).netloc
        args = (self.max_pending, account, url, body, kind, host, repr(now))
        reply = self._queue(_PUT, *args)
        if reply is None:
            return None
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bool] = loop.create_future()
        reply.add_done_callback(lambda f: self._put_done(f, done))
        # (queued behind other pipelines: durable within two of them, else told False)
        late = loop.call_later(2 * self.timeout, _late, done)
        done.add_done_callback(lambda _: late.cancel())
        return done

    def _put_done(self, reply: asyncio.Future[Any], done: asyncio.Future[bool]) -> None:
        if done.done():  # (told False already: too late)
            return
        if reply.cancelled():
            done.set_result(False)
            return
        exc = reply.exception()
        if exc is not None:
            self._failure("an event's put", exc)
            done.set_result(False)
            return
        if not reply.result():
            log.warning("webhook outbox: full (max_pending %d): event refused", self.max_pending)
            done.set_result(False)
            return
        self._waiting += 1
        done.set_result(True)

    async def due(
        self, now: float, limit: int, skip: Collection[int], hosts: Collection[str] = ()
    ) -> list[OutboxEvent]:
        """Claims what it hands out for ``lease`` seconds from ``now``."""
        for event_id in [i for i, (_, end) in self._out.items() if end <= now]:
            self._settled(event_id)  # its claim lapsed (handed out, never settled)
        rooms = [x for host, n in self._out_by_host.items() for x in (host, self.per_host - n)]
        try:
            found = await self._call(
                _CLAIM,
                repr(now),
                repr(now + self.lease),
                limit,
                SCAN + len(skip),
                self.per_host,
                len(skip),
                *skip,
                len(rooms) // 2,
                *rooms,
                *hosts,
            )
        except FAILURES as exc:
            self._failure("reading the due events", exc)
            return []
        self._waiting = int(found[0])
        events = []
        for row in found[1:]:
            event = _event(row[:9])
            host = _text(row[9])
            events.append(event)
            if event.id not in self._out:
                self._out_by_host[host] = self._out_by_host.get(host, 0) + 1
            self._out[event.id] = (host, now + self.lease)
        events.sort(key=lambda e: (e.next_at, e.id))
        return events

    def _settled(self, event_id: int) -> None:
        """``event_id`` is no longer handed out here."""
        out = self._out.pop(event_id, None)
        if out is not None:
            host = out[0]
            n = self._out_by_host[host] - 1
            if n:
                self._out_by_host[host] = n
            else:
                del self._out_by_host[host]

    def give_back(self, events: list[OutboxEvent]) -> None:
        """Each event due again at once (its next attempt), if this node's claim on it
        still holds (its score is that claim's end: another node's claim is left alone)."""
        for event in events:
            out = self._out.get(event.id)
            self._settled(event.id)
            if out is not None:
                self._later("an event given back", "back", event.id, repr(out[1]))

    def take_next(self, host: str, skip: Collection[int]) -> OutboxEvent | None:
        """None: every event is claimed through :meth:`due` (one read for a batch)."""
        return None

    async def next_due(self, skip: Collection[int], hosts: Collection[str] = ()) -> float | None:
        try:
            first, self._waiting = await self._next()
        except FAILURES as exc:
            self._failure("reading when the next event is due", exc)
            return None
        return first

    def delivered(self, event_id: int) -> None:
        self._waiting = max(0, self._waiting - 1)
        self._settled(event_id)
        self._later("an event's delivery", "done", event_id)

    def retry_at(self, event_id: int, attempts: int, at: float, error: str) -> None:
        self._settled(event_id)
        self._later("an event's retry", "retry", event_id, attempts, repr(at), error)

    def dead(self, event_id: int, attempts: int, error: str) -> None:
        self._waiting = max(0, self._waiting - 1)
        self._settled(event_id)
        self._later("an event's dead letter", "dead", event_id, attempts, error)

    async def failures(self, account: str, limit: int) -> list[OutboxEvent]:
        try:
            rows = await self._call(_FAILED, account, limit)
        except FAILURES as exc:
            raise RecordsUnavailable(f"redis: {exc or type(exc).__name__}") from exc
        return [_event(row) for row in rows]

    async def revive(self, account: str, event_id: int, now: float) -> bool:
        try:
            done = await self._call(_SETTLE, "revive", event_id, account, repr(now))
        except FAILURES as exc:
            raise RecordsUnavailable(f"redis: {exc or type(exc).__name__}") from exc
        if done:
            self._waiting += 1
        return bool(done)

    def purge(self, before: float) -> None:
        """Forgets ``PURGE_BATCH`` dead letters at most (the next purge the next ones)."""
        reply = self._queue(_PURGE, repr(before), PURGE_BATCH)
        if reply is not None:
            reply.add_done_callback(lambda f: self._outcome("a purge", f))


def _late(done: asyncio.Future[bool]) -> None:
    if not done.done():
        log.warning("webhook outbox: an event's put not answered in time: refused")
        done.set_result(False)


def _text(value: bytes) -> str:
    return value.decode()


def _event(row: list[Any]) -> OutboxEvent:
    event_id, account, url, body, attempts, created, next_at, error, kind = row
    return OutboxEvent(
        id=int(event_id),
        account=_text(account),
        url=_text(url),
        body=bytes(body),
        attempts=int(attempts),
        created=float(created),
        next_at=float(next_at),
        last_error=_text(error),
        kind=_text(kind),
    )
