"""Messages handed over between the nodes of a cluster, through the shared Redis store:
``RedisHandover`` implements ``router.ports.Handover`` next to ``RedisStore``.

A node that routes a message to a carrier whose bind slots other nodes hold (``binds: 1``
held by another node) offers it here. The hand-over is a Redis stream per carrier, read by
a consumer group of the nodes (each node reads the carriers it holds a bind of):

1. offering node, one batch: after the store has the messages (``flush``), ONE script call
   appends the batch's entries (our id, the offering node) to the carriers' streams —
   refused whole for a carrier whose stream holds ``max_stream`` entries already (the batch
   waits and tries again) — then one script per bucket of message ids moves each message's
   owner from this node to the carrier's hand-over queue (``>carrier``: a restart of this
   node does not recover it, a take-over of this node does not take it);
2. taking node: ``XREADGROUP`` (blocking up to ``timeout``; the router's task does not
   block, it polls: router.handover) of the carriers it holds binds of; one
   script per bucket ADOPTS each message: a compare-and-set of its owner (the offering
   node, or ``>carrier``) to this node, returning the message, or nothing when another node
   has it already or it is final; then one script per stream acknowledges and deletes the
   entries (``XACK`` + ``XDEL``: the stream stays bounded);
3. a node that read entries and died before step 2 ends leaves them pending: another node
   holding the carrier's binds claims them (``XAUTOCLAIM``) once they are a lease old; its
   compare-and-set decides, so a message is adopted once.

At least once: the order (stream entry, then owner) means a node that dies between the two
leaves its message owned by it with an entry in the stream: either the entry's adopter or
the node taking over the dead one gets it, never both (each is a compare-and-set on the
owner). A batch whose owner scripts failed is sent again whole (entries twice: the second
adoption finds the message taken, and is acknowledged).

Redis commands per message handed over, each batch of n messages to c carriers over b
buckets: 1 + b (offer) + 1 + b + c (take): at n = 1, 5; under load, batches of hundreds,
well under one. Keys (Redis Cluster: every stream shares the tag ``{x}``, so one
``XREADGROUP`` reads several carriers): ``P:{x}:s:<carrier>``, group ``nodes``, consumers
named by node id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

from redis.exceptions import RedisError, ResponseError

from router.model import Message
from router.ports import HandedOver, StoreError
from router.stores.redis import OLD_MESSAGE_LUA, RECORD_LUA, RedisStore, bucket

__all__ = ["RedisHandover"]

log = logging.getLogger(__name__)

_GROUP: Final = "nodes"
#: Messages sent in one offering batch; read in one take at most.
_BATCH: Final = 512

# KEYS: the carriers' streams. ARGV: [1] max entries per stream, [2] this node, then for
# each key: the number of ids, the ids. One result per key: 1 appended, 0 refused (full).
_APPEND_LUA: Final = """
local limit, me = tonumber(ARGV[1]), ARGV[2]
local at, out = 3, {}
for k = 1, #KEYS do
  local n = tonumber(ARGV[at])
  if redis.call('XLEN', KEYS[k]) + n > limit then
    out[k] = 0
  else
    for j = 1, n do redis.call('XADD', KEYS[k], '*', 'i', ARGV[at + j], 'f', me) end
    out[k] = 1
  end
  at = at + n + 1
end
return out
"""

# KEYS: [1] the bucket's live hash. ARGV: [1] the bucket's tag, [2] this node, then (id,
# carrier) pairs: each message this node still owns (and not final) moves to the carrier's
# hand-over queue, ``>carrier``. How many moved. One HMGET and one HSET of the live hash,
# per owner one ZREM / ZADD.
_HAND_LUA: Final = (
    RECORD_LUA
    + """
local tag, me = ARGV[1], ARGV[2]
local ids = {}
for k = 3, #ARGV, 2 do ids[#ids + 1] = ARGV[k] end
local got = fetch(KEYS[1], ids)
local sets, gone, queued, moved = {}, {}, {}, {}
for n, id in ipairs(ids) do
  if got[n] and not moved[id] then  -- (an id twice in a call: the first carrier has it)
    local m = decode(got[n])
    if m.h[3] == me and m.h[9] == 0 then
      moved[id] = true
      local queue = '>' .. ARGV[2 * n + 2]
      m.h[3] = queue
      sets[#sets + 1] = id; sets[#sets + 1] = encode(m)
      gone[#gone + 1] = id
      push(queued, queue, m.h[2], id)
    end
  end
end
each('HSET', KEYS[1], sets)
each('ZREM', tag .. ':u:' .. me, gone)
for queue, list in pairs(queued) do each('ZADD', tag .. ':u:' .. queue, list) end
return #gone
"""
)

# KEYS: [1] the bucket's live hash. ARGV: [1] tag, [2] this node, then (id, from, carrier)
# triples. Each message owned by ``from`` or by ``>carrier``, and not final, becomes this
# node's: its record is returned; 0 for one another node has, or final, or one this call
# adopted already (the records are read once, at the start: a second entry of a message
# would find it still as it was). One not live that a
# node of the version before handed over (it ran on after the format's change) is moved
# into this layout (OLD_MESSAGE_LUA; not sent yet: no receipt index to write).
_ADOPT_LUA: Final = (
    RECORD_LUA
    + OLD_MESSAGE_LUA
    + """
local tag, me = ARGV[1], ARGV[2]
local ids = {}
for k = 3, #ARGV, 3 do ids[#ids + 1] = ARGV[k] end
local got = fetch(KEYS[1], ids)
local out, sets, left, mine, taken = {}, {}, {}, {}, {}
for n, id in ipairs(ids) do
  local at = 3 * n + 1
  out[n] = 0
  local m, old = nil, false
  if taken[id] then  -- a second entry of it in this call (its hand-over sent again): 0
  elseif got[n] then
    m = decode(got[n])
  else
    m = old_message(tag, id); old = true
  end
  if m then
    local owner = m.h[3]
    if m.h[9] == 0 and (owner == ARGV[at] or owner == '>' .. ARGV[at + 1]) then
      if old then moved(tag, id, m, {}) end
      taken[id] = true
      m.h[3] = me
      local record = encode(m)
      sets[#sets + 1] = id; sets[#sets + 1] = record
      push(left, owner, id)
      mine[#mine + 1] = m.h[2]; mine[#mine + 1] = id
      out[n] = record
    end
  end
end
each('HSET', KEYS[1], sets)
for owner, list in pairs(left) do each('ZREM', tag .. ':u:' .. owner, list) end
each('ZADD', tag .. ':u:' .. me, mine)
return out
"""
)

# KEYS: [1] a stream. ARGV: the group, then entry ids: acknowledged and deleted.
_DONE_LUA: Final = """
local ids = {unpack(ARGV, 2)}
redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
return redis.call('XDEL', KEYS[1], unpack(ids))
"""

_SCRIPTS: Final = {
    "append": _APPEND_LUA,
    "hand": _HAND_LUA,
    "adopt": _ADOPT_LUA,
    "done": _DONE_LUA,
}

#: An entry read: (stream, entry id, message id, the node that offered it).
_Entry = tuple[str, str, str, str]


class RedisHandover:
    """``router.ports.Handover`` on ``store``'s Redis. ``lease``: a node's entries read
    and not adopted are claimed by another after this many seconds; ``max_pending``
    bounds the messages offered and not yet in Redis; ``max_stream`` a carrier's stream."""

    def __init__(
        self,
        store: RedisStore,
        *,
        lease: float,
        max_pending: int = 4096,
        max_stream: int = 100_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._me = store.node_id
        self._lease = lease
        self._max_pending = max_pending
        self._max_stream = max_stream
        self._clock = clock
        #: Offered, not yet in Redis: (carrier, message id), oldest first.
        self._out: list[tuple[str, str]] = []
        self._task: asyncio.Task[None] | None = None
        self._sha: dict[str, str] = {}
        self._groups: set[str] = set()
        #: Read this node's own pending entries once (left by its previous run).
        self._own_read = False
        self._next_claim = 0.0
        self._closed = False
        self.handed = 0
        """Messages handed over (in a stream)."""
        self.adopted = 0
        """Messages adopted from another node."""
        self.commands = 0
        """Redis commands sent (also counted in the store's ``commands``)."""

    def _stream(self, carrier: str) -> str:
        return f"{self._store.prefix}:{{x}}:s:{carrier}"

    def _tag(self, b: int) -> str:
        return f"{self._store.prefix}:{{m{b}}}"

    def _count(self, n: int) -> None:
        self.commands += n
        self._store.commands += n

    # -- offering ----------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        return len(self._out)

    def offer(self, carrier: str, message: Message) -> bool:
        if self._closed or len(self._out) >= self._max_pending:
            return False
        self._out.append((carrier, message.id))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._offering(), name="handover-offer"
            )
        return True

    async def _offering(self) -> None:
        """Hand the buffer over, batch by batch; on trouble (Redis away, a stream full)
        the batch stays first and is tried again after a growing pause (2 s at most)."""
        pause = 0.05
        while self._out:
            batch = self._out[:_BATCH]
            try:
                async with asyncio.timeout(2 * self._store.read_timeout):
                    refused = await self._hand(batch)
            except (StoreError, RedisError, OSError, TimeoutError) as exc:
                log.warning("hand-over: %d messages wait: %s", len(batch), exc)
                refused = batch
            self._out[: len(batch)] = refused
            if refused:
                await asyncio.sleep(pause)
                pause = min(2.0, pause * 2)
            else:
                pause = 0.05

    async def _hand(self, batch: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """One batch; the entries refused (their carrier's stream is full)."""
        await self._store.flush()  # the messages are in Redis before any node reads them
        client = self._store.client()
        await self._load(client)
        by_carrier: dict[str, list[str]] = {}
        for carrier, mid in batch:
            by_carrier.setdefault(carrier, []).append(mid)
        carriers = list(by_carrier)
        args: list[Any] = [self._max_stream, self._me]
        for carrier in carriers:
            args += [len(by_carrier[carrier]), *by_carrier[carrier]]
        keys = [self._stream(c) for c in carriers]
        self._count(1)
        flags = await self._eval(client, "append", keys, args)
        taken = {c for c, ok in zip(carriers, flags, strict=True) if int(ok)}
        buckets: dict[int, list[str]] = {}
        for carrier, mid in batch:
            if carrier in taken:
                buckets.setdefault(bucket(mid), []).extend((mid, carrier))
        sha = self._sha["hand"]
        calls = [
            ("EVALSHA", sha, 1, f"{self._tag(b)}:live", self._tag(b), self._me, *pairs)
            for b, pairs in buckets.items()
        ]
        await self._pipeline(client, calls)
        handed = sum(1 for carrier, _ in batch if carrier in taken)
        self.handed += handed
        return [(c, mid) for c, mid in batch if c not in taken]

    # -- taking ------------------------------------------------------------------------------

    async def take(self, carriers: Sequence[str], count: int, timeout: float) -> list[HandedOver]:
        if not carriers or count <= 0:
            return []
        client = self._store.client()
        streams = {self._stream(c): c for c in carriers}
        try:
            await self._load(client)
            for key in streams:
                if key not in self._groups:
                    with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists
                        self._count(1)
                        await client.xgroup_create(key, _GROUP, id="0", mkstream=True)
                    self._groups.add(key)
            entries = await self._read(client, streams, count, timeout)
        except ResponseError as exc:
            if "NOGROUP" in str(exc):  # Redis lost its data: make the groups again
                self._groups.clear()
                return []
            raise StoreError(f"hand-over: Redis: {exc}") from exc
        except RedisError as exc:
            raise StoreError(f"hand-over: Redis: {exc}") from exc
        if not entries:
            return []
        try:
            return await self._adopt(client, streams, entries)
        except RedisError as exc:  # the entries stay pending: read again (own, or claimed)
            self._own_read = False
            raise StoreError(f"hand-over: Redis: {exc}") from exc

    async def _read(
        self, client: Any, streams: dict[str, str], count: int, timeout: float
    ) -> list[_Entry]:
        entries: list[_Entry] = []
        if not self._own_read:  # what this node's previous run read and did not finish
            self._count(1)
            replies = await client.xreadgroup(
                _GROUP, self._me, dict.fromkeys(streams, "0"), count=count
            )
            entries += _entries(replies)
            self._own_read = True
        now = self._clock()
        if now >= self._next_claim:
            self._next_claim = now + self._lease / 2
            idle = int(self._lease * 1000)
            for key in streams:
                self._count(1)
                reply = await client.xautoclaim(key, _GROUP, self._me, idle, count=count)
                entries += _entries([[key, reply[1]]])
        if entries:
            return entries
        block = int(min(timeout, self._store.read_timeout / 2) * 1000)
        self._count(1)
        replies = await client.xreadgroup(
            _GROUP, self._me, dict.fromkeys(streams, ">"), count=count, block=block or None
        )
        return _entries(replies)

    async def _adopt(
        self, client: Any, streams: dict[str, str], entries: list[_Entry]
    ) -> list[HandedOver]:
        buckets: dict[int, list[_Entry]] = {}
        for entry in entries:
            buckets.setdefault(bucket(entry[2]), []).append(entry)
        calls = []
        order: list[list[_Entry]] = []
        for b, group in buckets.items():
            args: list[Any] = [self._tag(b), self._me]
            for stream, _, mid, origin in group:
                args += [mid, origin, streams[stream]]
            calls.append(("EVALSHA", self._sha["adopt"], 1, f"{self._tag(b)}:live", *args))
            order.append(group)
        results = await self._pipeline(client, calls)
        out: list[HandedOver] = []
        for group, result in zip(order, results, strict=True):
            for (stream, _, _, _), record in zip(group, result, strict=True):
                if isinstance(record, bytes):
                    stored = self._store.stored(record)
                    out.append(HandedOver(carrier=streams[stream], stored=stored))
        by_stream: dict[str, list[str]] = {}
        for stream, entry_id, _, _ in entries:
            by_stream.setdefault(stream, []).append(entry_id)
        sha = self._sha["done"]
        await self._pipeline(
            client, [("EVALSHA", sha, 1, key, _GROUP, *ids) for key, ids in by_stream.items()]
        )
        self.adopted += len(out)
        out.sort(key=lambda h: h.stored.message.submitted_at)
        return out

    # -- Redis -------------------------------------------------------------------------------

    async def _load(self, client: Any, *, again: bool = False) -> None:
        if self._sha and not again:
            return
        for name, lua in _SCRIPTS.items():
            self._count(1)
            self._sha[name] = await client.script_load(lua)

    async def _eval(self, client: Any, name: str, keys: list[str], args: list[Any]) -> Any:
        call = ("EVALSHA", self._sha[name], len(keys), *keys, *args)
        return (await self._pipeline(client, [call]))[0]

    async def _pipeline(self, client: Any, calls: list[tuple[Any, ...]]) -> list[Any]:
        """``calls`` in one pipeline (scripts loaded again once, after a Redis restart);
        StoreError for any error."""
        if not calls:
            return []
        for attempt in (1, 2):
            pipe = client.pipeline(transaction=False)
            for call in calls:
                pipe.execute_command(*call)
            self._count(len(calls))
            results = await pipe.execute(raise_on_error=False)
            errors = [r for r in results if isinstance(r, Exception)]
            if errors and attempt == 1 and all("NOSCRIPT" in str(e) for e in errors):
                await self._load(client, again=True)  # same scripts, same digests
                continue
            if errors:
                raise StoreError(f"hand-over: Redis: {errors[0]}")
            return list(results)
        raise AssertionError("unreachable")

    async def close(self, timeout: float) -> None:
        self._closed = True
        task = self._task
        if task is None or task.done():
            return
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(task)
        except TimeoutError:
            log.warning("hand-over: %d messages not handed over at stop", len(self._out))
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _entries(replies: Any) -> list[_Entry]:
    """Entries from an XREADGROUP (or XAUTOCLAIM) reply: [[stream, [(id, fields)...]]...]."""
    out: list[_Entry] = []
    for stream, items in replies or ():
        key = stream.decode() if isinstance(stream, bytes) else stream
        for entry_id, fields in items:
            if not fields:  # deleted meanwhile
                continue
            eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            out.append((key, eid, fields[b"i"].decode(), fields[b"f"].decode()))
    return out
