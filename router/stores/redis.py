"""The Redis store backend: ``RedisStore`` implements ``router.ports.Store`` on redis-py's
asyncio client (hiredis parses), with the write-behind core of ``router.stores.writebehind``:
the nodes of a cluster share one Redis (7.x, or Valkey) and read and finish each other's
messages.

Batches. The writer sends a batch as ONE pipeline (one round trip): ONE call of a Lua script
per bucket of message ids the batch touches (``_BATCH_LUA``; a message's records in the batch
folded into one record, all records of the bucket packed in one msgpack argument), one script
call per account that holds deliveries and per account that releases some, one ``SADD`` of
the accounts that held some, and ``WAIT numreplicas timeout`` when ``wait_replicas`` is set.
Every script is idempotent (an add of the same message again does nothing, a final state is
a compare-and-set, held items keep the ids given them once), so a batch that failed half-way
is sent again whole. ``on_durable(True)`` is called once the pipeline returned (with
``WAIT``: once that many replicas have it). Adds that were failed (refused to their clients)
after a pipeline that may have reached Redis are marked DELETED, so no node sends them.

Commands per message (``commands`` counts every command sent, a script call counts one): at
most one per record — 3 for add, send and final state, 4 with ``set_sending`` (``ack_after:
store``), when each comes alone in a batch (a send's receipt index may fall in another
bucket: one more call); under load a batch of a thousand records costs at most one call per
bucket, 64, a few hundredths of a command per message. Reads cost one each: ``get``
(``HMGET``), and ``find_sent`` (``GET``) for a receipt of a message another node sent (the
sending node answers from memory while its write is queued).

Final receipts in a cluster (``claim_final``, ``settle_final``) are records of the batches
too, not round trips of their own: a claim (a C record: the compare-and-set and the report
lease) makes the writer send its batch at once and waits for that batch's answer; a settle
(an S record: ``HDEL`` of the lease's field) likewise. Under load a claim and a
settle cost a share of their bucket's script call, as the other records do.

Key layout (for Redis Cluster: the part in braces is the hash tag; all keys one script call
touches share its tag, hence its slot). ``P`` is the prefix (``smsc`` by default), ``b`` a
bucket: crc32 of the message id (of ``carrier:key`` for a receipt index) modulo 64. The batch
script is given its bucket's ``done`` key and derives the other keys of the bucket from the
tag (they are in the same slot; Redis Cluster serves them from the node that has the slot):

- ``P:{m<b>}:m:<id>``        HASH, the message: ``a`` account, ``t`` submitted_at, ``b`` body
  (msgpack), ``o`` owner node, ``s`` state, ``e`` error, ``c`` carrier, ``ci`` carrier's id,
  ``k`` correlation key, ``d`` done_at (absent until final), ``r`` the final state's
  report lease, ``<node>|<until ms>``, from the claim until the settle (or until it
  lapses: the time is compared, the field stays). A final state sets a TTL of
  ``keep_days`` + a day, after ``purge`` would have removed it.
- ``P:{m<b>}:u:<owner>``     ZSET, the owner's unfinished messages (score submitted_at):
  ``unfinished`` reads this node's 64, ``take_over`` moves a dead node's into this node's.
- ``P:{m<b>}:done``          ZSET, final messages by done_at (``purge`` past ``keep_days``).
- ``P:{m<b>}:r:<id>``        STRING, a report lease as the version before this one wrote it
  (``<node>|<until ms>``, TTL ``keep_days`` + a day): still honoured by a claim (it is
  deleted when a claim takes the lease over); no longer written. A node of that version
  does not see the leases this one writes (it takes a claimed message for settled:
  during a rolling upgrade a receipt repeated to an old node while a new one reports it
  is answered as a duplicate).
- ``P:{m<b>}:k:<carrier>:<key>``  STRING, the receipt index: carrier's id → our id; TTL
  ``keep_days`` + a day.
- ``P:{h:<account>}:q``      ZSET, the account's held deliveries in order (score = held id).
- ``P:{h:<account>}:i``      HASH by held id: the item.
- ``P:{h:<account>}:x``      ZSET, held ids by expiry (Unix seconds: the account's
  ``receipt_ttl``): ``held`` skips the expired, ``purge`` deletes them.
- ``P:{h:<account>}:c``      HASH by held id: the node that claimed it, and until when.
- ``P:held:accounts``        SET, accounts that have held deliveries (``held_counts``, purge).
- ``P:held:seq``             STRING, held ids (``INCRBY`` a block of 1,000 at a time).
- ``P:ids``                  STRING, message ids (``reserve_ids``: ``INCRBY n``).

Held deliveries are claimed by the node that reads them (``held``) for ``claim_seconds``:
another node skips them meanwhile (two nodes never drain one account at once), the claiming
node sees them again until it releases them, and a node that died leaves them to the next
reader once its claims lapse.

Redis unreachable (connection refused or lost, timeouts, loading, a read-only replica, out of
memory, ``WAIT`` short of replicas): the store is unwritable (``unwritable`` names why:
``unreachable``, ``loading``, ``read_only``, ``no_memory``, ``replicas``), adds and holds
are refused, the batch is kept and tried again with the write-behind core's back-off, and it
recovers by itself when Redis answers again (scripts are loaded again after a restart).
Reads raise StoreError (StoreTimeout past ``read_timeout``).

What a Redis crash loses depends on its persistence: with AOF ``appendfsync always``
nothing acknowledged; with ``everysec`` up to a second of writes; ``WAIT`` on replicas
(``wait_replicas``) bounds it to what no replica had received.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Final

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    BusyLoadingError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from router.config import StoreConfig
from router.model import DeliveryReport, StoredMessage
from router.ports import StoreClosed, StoreError, StoreTimeout
from router.stores.writebehind import (
    ADD,
    CLAIM,
    DAY,
    FINAL,
    HOLD,
    RELEASE,
    SENT,
    SETTLE,
    UPDATE,
    Op,
    WriteBehind,
)
from smppcore.constants import MessageState
from smppcore.receipt import is_final

__all__ = ["BUCKETS", "WRITE_ERROR_REASONS", "RedisStore", "bucket"]

log = logging.getLogger(__name__)

#: Buckets of message ids (hash tags): a message and its owner's index share a slot.
#: Changing it moves every message: it is part of the data format.
BUCKETS: Final = 64
#: Labels of ``write_errors`` for Redis.
WRITE_ERROR_REASONS: Final = ("unreachable", "loading", "read_only", "no_memory", "replicas")
#: Held ids a node takes from ``P:held:seq`` at a time.
_HELD_BLOCK: Final = 1000

# One call per bucket and batch: every record of the batch whose keys are in the bucket,
# packed in ONE msgpack argument (one argument to encode, not dozens per message).
# KEYS: [1] the bucket's done zset (P:{m<b>}:done); the script names the message keys
#   (P:{m<b>}:m:<id>), owner indexes (P:{m<b>}:u:<owner>) and receipt-index keys
#   (P:{m<b>}:k:<carrier>:<key>) from the bucket's tag: all in the slot of KEYS[1].
# ARGV: [1] the tag (P:{m<b>}), [2] ttl ms, [3] msgpack of the records, each an array:
#   K <carrier:key> <id>          receipt index: SET key id PX ttl
#   M <id> <create> <owner> <submitted_at> <final> <state> <error> <done_at> <pairs>
#     create 1: an add (nothing if the same message is there: a batch sent again; -1 if
#     another message has the id); 0: the message must exist (else nothing).
#     pairs (field, value, ...) are set unconditionally (account, body, carrier fields);
#     the body's value is the index in ARGV of the body (Redis's cmsgpack has no binary
#     type: bodies follow the records, one argument each).
#     final 1: a state change, compare-and-set on done_at (2: it lost, the message was
#     final already); done_at "" for a state that is not final.
#   C <id> <state> <error> <done_at> <node> <now ms> <lease until ms>
#     a final state claimed by this node (claim_final): a compare-and-set on done_at that
#     also takes the report lease (the message's field r, "<node>|<until ms>"), held until
#     the receipt is delivered or held (S); a node that dies first leaves a lease that
#     lapses, and the carrier's resend, on any node, is claimed again. A lease written by
#     the version before (its own key P:{m<b>}:r:<id>) is read where the field is absent.
#   S <id>                        settle_final: HDEL of the field r.
# Returns one result per M record: 1 written, 0 nothing to do, 2 lost the CAS, -1 duplicate;
# and per C record: 1 claimed (or taken over from a lapsed lease, or this very claim in a
# batch sent again), 0 no such message, 2 final and settled (a duplicate), 3 final and
# being reported by a live claim (try again later). In the order of the records.
_BATCH_LUA: Final = """
local tag, ttl = ARGV[1], ARGV[2]
local out = {}
-- The index changes of the whole call, made at the end with one variadic command each
-- (ZADD/ZREM per owner, ZADD of the done index): a command per bucket, not per message.
local unfinished, finished, done_index = {}, {}, {}
local function push(lists, name, a, b)
  local list = lists[name]
  if not list then list = {}; lists[name] = list end
  list[#list + 1] = a
  if b then list[#list + 1] = b end
end
-- One command per 4,000 arguments at most (Lua's unpack has a stack limit).
local function each(command, key, list)
  for k = 1, #list, 4000 do
    redis.call(command, key, unpack(list, k, math.min(k + 3999, #list)))
  end
end
for _, r in ipairs(cmsgpack.unpack(ARGV[3])) do
  if r[1] == 'K' then
    redis.call('SET', tag .. ':k:' .. r[2], r[3], 'PX', ttl)
  elseif r[1] == 'C' then
    local id, key = r[2], tag .. ':m:' .. r[2]
    local claim = r[6] .. '|' .. r[8]
    local got = redis.call('HMGET', key, 'd', 'o', 'r')
    local res = 1
    if not got[2] then
      res = 0
    elseif got[1] then
      local held, old = got[3], nil
      if not held then  -- a lease written by the version before this one: its own key
        old = tag .. ':r:' .. id
        held = redis.call('GET', old)
      end
      if not held then
        res = 2
      elseif held ~= claim then  -- equal: this claim, in a batch sent again
        local sep = string.find(held, '|', 1, true)
        if tonumber(string.sub(held, sep + 1)) > tonumber(r[7]) then
          res = 3
        else
          redis.call('HSET', key, 'r', claim)
          if old then redis.call('DEL', old) end
        end
      end
    else
      redis.call('HSET', key, 's', r[3], 'e', r[4], 'd', r[5], 'r', claim)
      push(finished, got[2], id)
      done_index[#done_index + 1] = r[5]; done_index[#done_index + 1] = id
      redis.call('PEXPIRE', key, ttl)
    end
    out[#out + 1] = res
  elseif r[1] == 'S' then
    redis.call('HDEL', tag .. ':m:' .. r[2], 'r')
  else
    local id, create, owner, t = r[2], r[3], r[4], r[5]
    local final, state, err, done = r[6], r[7], r[8], r[9]
    local fields = r[10]
    for k = 1, #fields, 2 do
      if fields[k] == 'b' then fields[k + 1] = ARGV[fields[k + 1]] end
    end
    local key = tag .. ':m:' .. id
    local res = 1
    local had_done, had_owner = false, false
    if create == 1 then
      if redis.call('EXISTS', key) == 1 then
        if redis.call('HGET', key, 'b') == fields[4] then res = 0 else res = -1 end
      end
    else
      local got = redis.call('HMGET', key, 'd', 'o')  -- every message has an owner
      had_done, had_owner = got[1], got[2]
      if not had_owner then res = 0 end
    end
    if res == 1 then
      -- One HSET per message: its fields, and the state when it changes (not when it lost).
      local settle = final == 1 and done ~= ''
      if final == 1 and had_done then
        res = 2
        if #fields > 0 then redis.call('HSET', key, unpack(fields)) end
      else
        if final == 1 and create ~= 1 then
          fields[#fields + 1] = 's'; fields[#fields + 1] = state
          fields[#fields + 1] = 'e'; fields[#fields + 1] = err
        end
        if settle then fields[#fields + 1] = 'd'; fields[#fields + 1] = done end
        if create == 1 then
          redis.call('HSET', key, 'o', owner, 't', t, 's', state, 'e', err, unpack(fields))
          if not settle then push(unfinished, owner, t, id) end
        elseif #fields > 0 then
          redis.call('HSET', key, unpack(fields))
        end
        if settle then  -- final: out of the owner's index (a new one never went in)
          if create ~= 1 then push(finished, had_owner or owner, id) end
          done_index[#done_index + 1] = done; done_index[#done_index + 1] = id
          redis.call('PEXPIRE', key, ttl)
        end
      end
    end
    out[#out + 1] = res
  end
end
for owner, list in pairs(unfinished) do each('ZADD', tag .. ':u:' .. owner, list) end
for owner, list in pairs(finished) do each('ZREM', tag .. ':u:' .. owner, list) end
each('ZADD', KEYS[1], done_index)
return out
"""

# KEYS: q, i, x, c of an account. ARGV: held_max, then held id, expires_at, item for each.
# Returns how many of the oldest the bound dropped.
_HOLD_LUA: Final = """
for k = 2, #ARGV, 3 do
  if redis.call('ZADD', KEYS[1], ARGV[k], ARGV[k]) == 1 then
    redis.call('HSET', KEYS[2], ARGV[k], ARGV[k + 2])
    redis.call('ZADD', KEYS[3], ARGV[k + 1], ARGV[k])
  end
end
local over = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[1])
if over <= 0 then return 0 end
local old = redis.call('ZPOPMIN', KEYS[1], over)
for n = 1, #old, 2 do
  redis.call('HDEL', KEYS[2], old[n]); redis.call('ZREM', KEYS[3], old[n])
  redis.call('HDEL', KEYS[4], old[n])
end
return over
"""

# KEYS: q, i, x, c. ARGV: node, now, claim until, limit.
# Returns id, item, id, item, ...: the oldest unexpired items not claimed by another node
# (claimed now for this one).
_HELD_LUA: Final = """
local out = {}
local start = 0
local want = tonumber(ARGV[4])
local now = tonumber(ARGV[2])
while want > 0 do
  local ids = redis.call('ZRANGE', KEYS[1], start, start + 99)
  if #ids == 0 then break end
  start = start + #ids
  for _, id in ipairs(ids) do
    local exp = tonumber(redis.call('ZSCORE', KEYS[3], id) or '0')
    local free = exp > now
    if free then
      local claim = redis.call('HGET', KEYS[4], id)
      if claim then
        local sep = string.find(claim, '|', 1, true)
        local who = string.sub(claim, 1, sep - 1)
        local till = tonumber(string.sub(claim, sep + 1))
        free = who == ARGV[1] or till <= now
      end
    end
    if free then
      redis.call('HSET', KEYS[4], id, ARGV[1] .. '|' .. ARGV[3])
      out[#out + 1] = id
      out[#out + 1] = redis.call('HGET', KEYS[2], id)
      want = want - 1
      if want == 0 then break end
    end
  end
end
return out
"""

# KEYS: q, i, x, c. ARGV: held ids. Returns how many were there.
_RELEASE_LUA: Final = """
local n = 0
for _, id in ipairs(ARGV) do
  n = n + redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id); redis.call('ZREM', KEYS[3], id); redis.call('HDEL', KEYS[4], id)
end
return n
"""

# KEYS: q, i, x, c. ARGV: now, limit. Deletes up to limit expired items; how many.
_PURGE_HELD_LUA: Final = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id); redis.call('HDEL', KEYS[2], id)
  redis.call('ZREM', KEYS[3], id); redis.call('HDEL', KEYS[4], id)
end
return #ids
"""

# KEYS: done zset. ARGV: cutoff, limit, message key prefix. Deletes final messages done
# before cutoff; how many.
_PURGE_MESSAGES_LUA: Final = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1], 'LIMIT', 0, ARGV[2])
for _, id in ipairs(ids) do
  redis.call('DEL', ARGV[3] .. id)
  redis.call('ZREM', KEYS[1], id)
end
return #ids
"""

# KEYS: the dead node's index, this node's. ARGV: this node, message key prefix, the dead
# node. Moves the messages the dead node still owns to this node's index (their owner
# rewritten); returns their ids.
_TAKE_OVER_IDS_LUA: Final = """
local all = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local out = {}
for k = 1, #all, 2 do
  local key = ARGV[2] .. all[k]
  if redis.call('HGET', key, 'o') == ARGV[3] then
    redis.call('HSET', key, 'o', ARGV[1])
    redis.call('ZADD', KEYS[2], all[k + 1], all[k])
    out[#out + 1] = all[k]
  end
end
redis.call('DEL', KEYS[1])
return out
"""

# KEYS: a lock. ARGV: its holder. Deletes it if that node holds it.
_RELEASE_LOCK_LUA: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_SCRIPTS: Final = {
    "batch": _BATCH_LUA,
    "hold": _HOLD_LUA,
    "held": _HELD_LUA,
    "release": _RELEASE_LUA,
    "purge_held": _PURGE_HELD_LUA,
    "purge_messages": _PURGE_MESSAGES_LUA,
    "take_over_ids": _TAKE_OVER_IDS_LUA,
}

_FIELDS: Final = (b"b", b"s", b"e", b"c", b"ci", b"d", b"o")


#: Index in an M record (see _BATCH_LUA) of its final flag (then state, error, done_at).
_FINAL_AT: Final = 5
_encode_records = msgspec.msgpack.Encoder().encode


class _Bucket:
    """The records of one batch in one bucket: one script call (see _BATCH_LUA)."""

    __slots__ = ("answers", "bodies", "claims", "records")

    def __init__(self) -> None:
        self.records: list[list[Any]] = []
        self.bodies: list[bytes] = []
        self.answers = 0  # records the script answers (M and C), in order
        self.claims: list[tuple[int, Op]] = []  # a C record's place in the answers, its op

    def body(self, body: bytes) -> int:
        """Where ``body`` is in ARGV (after the tag, the ttl and the records)."""
        self.bodies.append(body)
        return len(self.bodies) + 3

    def message(
        self, mid: str, create: int, owner: str, submitted_at: str, state: int
    ) -> list[Any]:
        """A new M record; its last item is the list of field/value pairs to set."""
        record = ["M", mid, create, owner, submitted_at, 0, state, 0, "", []]
        self.records.append(record)
        self.answers += 1
        return record

    def index(self, carrier_key: str, mid: str) -> None:
        self.records.append(["K", carrier_key, mid])

    def claim(self, mid: str, op: Op) -> None:
        """A C record: ``op`` is a CLAIM (its params after the id's bucket was chosen)."""
        state, error, done_at, node, now_ms, until_ms, _ = op.params
        self.records.append(["C", mid, state, error, done_at, node, now_ms, until_ms])
        self.claims.append((self.answers, op))
        self.answers += 1

    def settle(self, mid: str) -> None:
        self.records.append(["S", mid])

    def call(self, sha: str, tag: str, ttl_ms: int) -> tuple[Any, ...]:
        return (
            "EVALSHA", sha, 1, f"{tag}:done", tag, ttl_ms, _encode_records(self.records),
            *self.bodies,
        )  # fmt: skip


class _Duplicate(ResponseError):
    """An add of a message id that holds another message (a record's fault)."""


class _TooFewReplicas(RedisError):
    """``WAIT`` returned before ``wait_replicas`` replicas had the batch."""


def _bucket(name: str) -> int:
    """The bucket of a message id (or of ``carrier:key``, a receipt index)."""
    return zlib.crc32(name.encode()) % BUCKETS


#: The bucket of a message id (its keys' hash tag is ``{m<bucket>}``).
bucket = _bucket


def _bucket_of(buckets: dict[int, _Bucket], b: int) -> _Bucket:
    found = buckets.get(b)
    if found is None:
        found = buckets[b] = _Bucket()
    return found


def _records(call: tuple[Any, ...]) -> list[list[Any]]:
    """The records of a batch script call (for error messages)."""
    records: list[list[Any]] = msgspec.msgpack.decode(call[6])
    return records


def _num(value: float) -> str:
    return repr(float(value))


def _settled(written: asyncio.Future[None], ok: bool) -> None:
    """A settle's batch is committed, or failed."""
    if written.done():
        return
    if ok:
        written.set_result(None)
    else:
        written.set_exception(StoreError("store: settle_final: not written"))


def _claim_written(outcome: asyncio.Future[int], store: RedisStore, ok: bool) -> None:
    """A claim's batch is committed (its result is in ``outcome`` already) or failed."""
    if outcome.done():
        return
    if ok:  # committed without an answer for it: not expected, but never a hang
        outcome.set_exception(StoreError("store: claim_final: no answer from the batch"))
        return
    why = f" (cannot write: {store.unwritable})" if store.unwritable else ""
    outcome.set_exception(StoreError(f"store: claim_final: not written{why}"))


class RedisStore(WriteBehind):
    """``Store`` on Redis at ``url`` (``redis://``, ``rediss://``, with a password).

    ``node_id`` owns the messages this node adds (and names its claims); ``wait_replicas``
    > 0 makes every batch wait (``WAIT``, ``wait_timeout`` seconds at most) until that many
    replicas have it before its acks; ``claim_seconds`` is how long a node's claim on held
    deliveries it read lasts; ``prefix`` starts every key; ``max_connections`` bounds the
    connections to Redis (the writer uses one; reads wait for one, within ``read_timeout``).
    """

    def __init__(
        self,
        config: StoreConfig,
        *,
        url: str,
        node_id: str,
        clock: Callable[[], float] = time.time,
        held_max: int | None = None,
        wait_replicas: int = 0,
        wait_timeout: float = 1.0,
        claim_seconds: float = 30.0,
        prefix: str = "smsc",
        max_connections: int = 16,
    ) -> None:
        if not node_id or "|" in node_id:
            raise ValueError("node_id: a non-empty name without '|'")
        held_max = config.held_max if held_max is None else held_max
        if held_max < 1:
            raise ValueError("held_max must be at least 1")
        super().__init__(
            config, clock=clock, node_id=node_id, write_error_reasons=WRITE_ERROR_REASONS
        )
        self._url = url
        self._held_max = held_max
        self._wait_replicas = wait_replicas
        self._wait_timeout_ms = int(wait_timeout * 1000)
        self._claim_seconds = claim_seconds
        self._p = prefix
        self._max_connections = max_connections
        self._keep_ms = int((config.keep_days + 1) * DAY * 1000)
        self._redis: aioredis.Redis | None = None
        self._sha: dict[str, str] = {}
        #: Held ids taken from ``P:held:seq``: the next one, and the end of the block.
        self._held_next = 0
        self._held_end = 0
        #: Held id → account, for ``release`` (filled by ``held``; an entry goes when its
        #: release is written: bounded by the held items read and not yet released).
        self._held_account: dict[int, str] = {}
        #: The end of the last claim's lease (ms): each claim's lease value is unique.
        self._last_until = 0
        self.commands = 0
        """Redis commands sent (scripts count one each): the bench divides by messages."""
        #: Claims waiting for their batch, by deadline (bounded by the writer's queue: a
        #: claim is a record of it), and the one timer that fails those past it.
        self._claim_deadlines: deque[tuple[float, asyncio.Future[Any], str]] = deque()
        self._claim_timer: asyncio.TimerHandle | None = None

    # -- keys --------------------------------------------------------------------------------

    def _message_key(self, message_id: str) -> str:
        return f"{self._p}:{{m{_bucket(message_id)}}}:m:{message_id}"

    def _batch_results(self, call: tuple[Any, ...], result: Any) -> list[int]:
        """The results of a batch script call; _Duplicate for an add of a taken id."""
        results = [int(r) for r in result]
        if -1 in results:
            ids = [r[1] for r in _records(call) if r[0] in ("M", "C")]
            raise _Duplicate(f"message id {ids[results.index(-1)]} holds another message")
        return results

    def _held_keys(self, account: str) -> list[str]:
        tag = f"{self._p}:{{h:{account}}}"
        return [f"{tag}:q", f"{tag}:i", f"{tag}:x", f"{tag}:c"]

    def _index_key(self, carrier: str, key: str) -> str:
        name = f"{carrier}:{key}"
        return f"{self._p}:{{m{_bucket(name)}}}:k:{name}"

    # -- life cycle --------------------------------------------------------------------------

    async def open(self) -> None:
        if self._redis is not None:
            raise StoreClosed("store is already open")
        timeout = self._config.read_timeout
        pool = aioredis.BlockingConnectionPool.from_url(
            self._url,
            # Bounded: a call waits for a free connection (read_timeout at most).
            max_connections=self._max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # Once more at once (a pooled connection that Redis closed when it restarted);
            # beyond that the writer retries with its own back-off, and reads fail.
            retry=Retry(NoBackoff(), 1),
        )
        client = aioredis.Redis.from_pool(pool)  # closing the client closes the pool
        try:
            async with asyncio.timeout(timeout):
                await self._load_scripts(client)
        except (RedisError, OSError, TimeoutError) as exc:
            await client.aclose()
            raise StoreError(f"store: Redis at {_safe(self._url)} does not answer: {exc}") from exc
        self._redis = client
        self._start_writer()

    async def close(self, timeout: float | None = None) -> None:
        """Send everything queued, stop the writer, close the connections. Idempotent."""
        if self._redis is None:
            return
        try:
            await self._stop_writer(timeout)
        finally:
            if self._claim_timer is not None:  # every claim is answered or failed by now
                self._claim_timer.cancel()
                self._claim_timer = None
            self._claim_deadlines.clear()
            client, self._redis = self._redis, None
            await client.aclose()

    async def _load_scripts(self, client: aioredis.Redis) -> None:
        pipe = client.pipeline(transaction=False)
        names = list(_SCRIPTS)
        for name in names:
            pipe.script_load(_SCRIPTS[name])
        shas = await pipe.execute()
        self.commands += len(names)
        self._sha = {
            name: sha.decode() if isinstance(sha, bytes) else sha
            for name, sha in zip(names, shas, strict=True)
        }

    def _client(self) -> aioredis.Redis:
        if self._redis is None:
            raise StoreClosed("store is not open")
        return self._redis

    # -- the write-behind core's hooks ----------------------------------------------------------

    async def _transaction(self, ops: list[Op], *, probe: bool = False) -> None:
        client = self._client()
        started = time.perf_counter()
        holds = sum(op.kind == HOLD for op in ops)
        if holds:
            await self._take_held_ids(client, holds)
        calls, claims = self._calls(ops)
        if probe:
            calls.append(("SET", f"{self._p}:probe", str(time.time_ns())))
        if self._wait_replicas and calls:
            calls.append(("WAIT", self._wait_replicas, self._wait_timeout_ms))
        results = await self._send(client, calls)
        dropped: dict[str, int] = {}
        batch_sha, hold_sha = self._sha["batch"], self._sha["hold"]
        answered: list[tuple[Op, int]] = []
        for n, (call, result) in enumerate(zip(calls, results, strict=True)):
            if isinstance(result, Exception):
                raise result
            if call[1] == batch_sha:
                answers = self._batch_results(call, result)
                answered.extend((op, answers[at]) for at, op in claims[n])
            elif call[1] == hold_sha and result:
                account = call[3].removeprefix(f"{self._p}:{{h:").removesuffix("}:q")
                dropped[account] = dropped.get(account, 0) + int(result)
        if self._wait_replicas and calls and int(results[-1]) < self._wait_replicas:
            raise _TooFewReplicas(
                f"WAIT: {results[-1]} of {self._wait_replicas} replicas within"
                f" {self._wait_timeout_ms} ms"
            )
        for op in ops:
            if op.kind == RELEASE:
                self._held_account.pop(op.params[0], None)
        for op, answer in answered:  # the claims' results, now that the batch is committed
            if op.outcome is not None and not op.outcome.done():
                op.outcome.set_result(answer)
        self.commit_seconds.observe(time.perf_counter() - started)
        self.transactions += 1
        self.records += len(ops)
        added = sum(op.kind == ADD for op in ops)
        self.message_rows += added
        self.held_rows += holds - sum(op.kind == RELEASE for op in ops)
        for account, count in dropped.items():
            self.dropped_held += count
            self.held_rows -= count
            if account not in self._dropping:
                self._dropping.add(account)
                log.warning(
                    "store: held deliveries of %s over the bound of %d: the oldest are dropped",
                    account,
                    self._held_max,
                )

    async def _send(self, client: aioredis.Redis, calls: list[tuple[Any, ...]]) -> list[Any]:
        """One pipeline of ``calls``; after a Redis restart (scripts gone) once more, with
        the scripts loaded again. Results in order, errors as values."""
        for attempt in (1, 2):
            pipe = client.pipeline(transaction=False)
            for call in calls:
                pipe.execute_command(*call)
            self.commands += len(calls)
            results = await pipe.execute(raise_on_error=False)
            if attempt == 1 and any(isinstance(r, NoScriptError) for r in results):
                await self._load_scripts(client)
                continue
            return list(results)
        return list(results)

    async def _take_held_ids(self, client: aioredis.Redis, n: int) -> None:
        """Make sure ``n`` held ids are at hand (one INCRBY per block of _HELD_BLOCK)."""
        if self._held_end - self._held_next >= n:
            return
        block = max(n, _HELD_BLOCK)
        end = int(await client.incrby(f"{self._p}:held:seq", block))
        self.commands += 1
        self._held_next, self._held_end = end - block + 1, end + 1

    def _calls(self, ops: list[Op]) -> tuple[list[tuple[Any, ...]], list[list[tuple[int, Op]]]]:
        """The commands that write ``ops``: ONE script call per bucket their messages and
        receipt-index keys fall in (each message's records in this batch folded into one
        record, see _BATCH_LUA; a claim and a settle are records of their own, in order),
        one script per account's held deliveries and per account's releases, one ``SADD``
        of the accounts that held some. With them, for each bucket's call (the first
        calls), its claims: where each one's result is in the call's answer, and its op."""
        buckets: dict[int, _Bucket] = {}
        folded: dict[str, list[Any]] = {}  # message id → its M record
        holds: dict[str, list[Any]] = {}
        releases: dict[str, list[int]] = {}
        for op in ops:
            kind, params = op.kind, op.params
            if kind == HOLD:
                if len(params) == 3:  # its held id, once: a batch sent again keeps it
                    op.params = params = (*params, self._held_next)
                    self._held_next += 1
                account, expires_at, item, held_id = params
                holds.setdefault(account, []).extend((held_id, _num(expires_at), item))
                continue
            if kind == RELEASE:
                account_of = self._held_account.get(params[0])
                if account_of is not None:
                    releases.setdefault(account_of, []).append(params[0])
                continue
            if kind == SETTLE:
                settled = params[0]
                _bucket_of(buckets, _bucket(settled)).settle(settled)
                continue
            mid = op.message_id
            assert mid is not None
            if kind == CLAIM:
                if op.outcome is not None and op.outcome.done():
                    continue  # its caller gave up (a deadline): not claimed for nobody
                _bucket_of(buckets, _bucket(mid)).claim(mid, op)
                # What this node writes of the message after the claim comes after it.
                folded.pop(mid, None)
                continue
            if kind == ADD:
                _, account, state, submitted_at, body, owner = params
                bucket = _bucket_of(buckets, _bucket(mid))
                record = bucket.message(mid, 1, owner, _num(submitted_at), int(state))
                record[-1] += ("a", account, "b", bucket.body(body))
                folded.setdefault(mid, record)  # an id added twice: its own record
                continue
            found = folded.get(mid)
            if found is None:
                record = _bucket_of(buckets, _bucket(mid)).message(mid, 0, "", "0", 0)
                folded[mid] = record
            else:
                record = found
            if kind == SENT:
                carrier, carrier_message_id, key, _ = params
                record[-1] += ("c", carrier, "ci", carrier_message_id, "k", key or "")
                if key is not None:
                    name = f"{carrier}:{key}"
                    _bucket_of(buckets, _bucket(name)).index(name, mid)
            elif kind == UPDATE:
                account, submitted_at, body, _ = params
                body_at = _bucket_of(buckets, _bucket(mid)).body(body)
                record[-1] += ("a", account, "t", _num(submitted_at), "b", body_at)
            elif kind == FINAL:
                state, error, done_at, _ = params
                record[_FINAL_AT : _FINAL_AT + 4] = (
                    1,
                    int(state),
                    int(error),
                    "" if done_at is None else _num(done_at),
                )
            elif not (record[_FINAL_AT] == 1 and record[_FINAL_AT + 3] != ""):
                # CANCEL, unless a final state came first in this batch
                state, done_at, _ = params
                record[_FINAL_AT : _FINAL_AT + 4] = (1, int(state), 0, _num(done_at))
        calls: list[tuple[Any, ...]] = [
            bucket.call(self._sha["batch"], f"{self._p}:{{m{b}}}", self._keep_ms)
            for b, bucket in buckets.items()
        ]
        claims = [bucket.claims for bucket in buckets.values()]
        for account, items in holds.items():
            calls.append(
                ("EVALSHA", self._sha["hold"], 4, *self._held_keys(account), self._held_max,
                 *items)
            )  # fmt: skip
        for account, ids in releases.items():
            calls.append(("EVALSHA", self._sha["release"], 4, *self._held_keys(account), *ids))
        if holds:
            calls.append(("SADD", f"{self._p}:held:accounts", *holds))
        return calls, claims

    def _failed_in_flight(self, adds: list[Op]) -> None:
        """A pipeline that failed half-way may have written some of ``adds`` although their
        clients are refused: each is marked DELETED (a compare-and-set that does nothing to a
        message never written), so that no node ever sends it."""
        if self._closing:
            log.warning("store: %d refused messages may be in Redis unfinished", len(adds))
            return
        now = self._clock()
        for op in adds:
            if op.message_id is not None:
                self.mark_cancelled(op.message_id, now)

    def _why(self, exc: Exception) -> str | None:
        if isinstance(exc, _TooFewReplicas):
            return "replicas"
        if isinstance(exc, BusyLoadingError):
            return "loading"
        if isinstance(exc, ReadOnlyError):
            return "read_only"
        if isinstance(exc, OutOfMemoryError):
            return "no_memory"
        if isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError | TimeoutError):
            return "unreachable"
        if isinstance(exc, StoreClosed):
            return None
        if isinstance(exc, ResponseError) and str(exc).startswith(("OOM", "MISCONF")):
            return "no_memory" if str(exc).startswith("OOM") else "read_only"
        return None

    async def _purge_step(self) -> None:
        """One round of the oldest purge, two round trips: up to ``purge_batch`` expired
        held items of every account that has held items, and up to ``purge_batch`` final
        messages past ``keep_days`` of every bucket. The purge is done after a round that
        found fewer than that everywhere; else the next round comes after the writer's
        next batch."""
        job = self._purges[0]
        if job.future.done():  # its caller gave up
            self._purges.popleft()
            return
        limit = self._config.purge_batch
        try:
            client = self._client()
            accounts = sorted(await self._call("purge", "SMEMBERS", f"{self._p}:held:accounts"))
            calls: list[tuple[Any, ...]] = [
                ("EVALSHA", self._sha["purge_held"], 4, *self._held_keys(a.decode()),
                 _num(job.now), limit)
                for a in accounts
            ]  # fmt: skip
            for b in range(BUCKETS):
                tag = f"{self._p}:{{m{b}}}"
                calls.append(
                    ("EVALSHA", self._sha["purge_messages"], 1, f"{tag}:done",
                     _num(job.cutoff), limit, f"{tag}:m:")
                )  # fmt: skip
            results = [int(r) for r in await self._read_all(client, calls)]
        except Exception as exc:
            self._purges.popleft()
            log.warning("store: purge stopped after %d rows: %s", job.deleted, exc)
            job.future.set_exception(StoreError(f"purge failed: {exc}"))
            return
        held = sum(results[: len(accounts)])
        messages = sum(results[len(accounts) :])
        self.expired_held += held
        self.held_rows -= held
        self.purged_messages += messages
        self.message_rows -= messages
        job.deleted += held + messages
        if max(results, default=0) < limit:
            self._purges.popleft()
            job.future.set_result(job.deleted)

    # -- reads ---------------------------------------------------------------------------------

    async def _call(self, what: str, *args: Any) -> Any:
        """One command, as a read: StoreError when Redis does not answer."""
        client = self._client()
        self.commands += 1
        try:
            try:
                return await client.execute_command(*args)  # type: ignore[no-untyped-call]
            except NoScriptError:  # Redis restarted: its scripts are gone
                await self._load_scripts(client)
                self.commands += 1
                return await client.execute_command(*args)  # type: ignore[no-untyped-call]
        except RedisError as exc:
            raise StoreError(f"store: {what}: Redis: {exc}") from exc

    async def get(self, message_id: str) -> StoredMessage | None:
        async with self._deadline("get"):
            seq = self._pending_ids.get(message_id)
            if seq is not None:
                await self._until(seq)
            values = await self._call("get", "HMGET", self._message_key(message_id), *_FIELDS)
        return self._stored(values)

    def _stored(self, values: Sequence[Any]) -> StoredMessage | None:
        body, state, error, carrier, carrier_message_id, done_at, owner = values
        if body is None:
            return None
        return StoredMessage(
            message=self._decode(body),
            state=MessageState(int(state)),
            error=int(error),
            carrier=(carrier or b"").decode(),
            carrier_message_id=(carrier_message_id or b"").decode(),
            done_at=None if done_at is None else float(done_at),
            owner=(owner or b"").decode(),
        )

    async def find_sent(self, carrier: str, key: str) -> str | None:
        pending = self._pending_sent.get((carrier, key))
        if pending is not None:
            return pending[0]
        async with self._deadline("find_sent"):
            found = await self._call("find_sent", "GET", self._index_key(carrier, key))
        return None if found is None else found.decode()

    async def unfinished(self) -> list[StoredMessage]:
        """This node's unfinished messages: one pipeline over the 64 indexes, one over the
        messages. The wait for queued writes has the read deadline; the reads none.

        Read under this node's take-over lock (see :meth:`take_over_messages`): a node
        that restarts while another takes its messages over (it had left, or its lease had
        run out) waits until that one is done, and then recovers what is still its own —
        never a message the other node took too. The wait is bounded by the lock's life
        (``claim_seconds``) and a read timeout."""
        await self.flush()
        client = self._client()
        lock = self._take_over_lock(self._node_id)
        ms = max(1, int(self._claim_seconds * 1000))
        limit = self._claim_seconds + 2 * self._config.read_timeout
        pause = 0.01
        async with self._deadline("recover (another node takes this one's messages over)", limit):
            while not await self._call("recover", "SET", lock, self._node_id, "NX", "PX", ms):
                await asyncio.sleep(pause)  # polling another node's lock: no event to await
                pause = min(pause * 2, 0.5)
        try:
            index = [
                ("ZRANGE", f"{self._p}:{{m{b}}}:u:{self._node_id}", 0, -1) for b in range(BUCKETS)
            ]
            ids = [i.decode() for r in await self._read_all(client, index) for i in r]
            reads = [("HMGET", self._message_key(mid), *_FIELDS) for mid in ids]
            out = [s for s in map(self._stored, await self._read_all(client, reads)) if s]
        finally:
            await self._release_lock(lock)
        out.sort(key=lambda s: s.message.submitted_at)
        return out

    def _take_over_lock(self, node_id: str) -> str:
        """The lock under which ``node_id``'s messages are taken over, or recovered by it."""
        return f"{self._p}:takeover:{node_id}"

    async def _release_lock(self, lock: str) -> None:
        """Delete ``lock`` if this node holds it (else it lapses by itself)."""
        with contextlib.suppress(StoreError):
            async with self._deadline("release take-over lock"):
                await self._call("release", "EVAL", _RELEASE_LOCK_LUA, 1, lock, self._node_id)

    async def _read_all(self, client: aioredis.Redis, calls: list[tuple[Any, ...]]) -> list[Any]:
        if not calls:
            return []
        try:
            results = await self._send(client, calls)
        except RedisError as exc:
            raise StoreError(f"store: Redis: {exc}") from exc
        for r in results:
            if isinstance(r, Exception):
                raise StoreError(f"store: Redis: {r}") from r
        return results

    async def take_over(self, node_id: str) -> int:
        """:meth:`take_over_messages`, counted (one way to take a node over: under its
        take-over lock, which its own recovery takes too)."""
        return len(await self.take_over_messages(node_id))

    async def take_over_messages(self, node_id: str) -> list[StoredMessage]:
        """One node at a time takes a dead node's messages over (a lock, ``SET NX``, for
        ``claim_seconds``: another node finds it taken and gets none); then one script per
        bucket, in one pipeline, moves the messages the dead node still owns (a message is
        taken once), and one pipeline reads them."""
        if node_id == self._node_id:
            return []
        await self.flush()
        client = self._client()
        lock = self._take_over_lock(node_id)
        ms = max(1, int(self._claim_seconds * 1000))
        async with self._deadline("take_over"):
            got = await self._call("take_over", "SET", lock, self._node_id, "NX", "PX", ms)
            if not got:  # another node takes them over; or this one, failed half-way
                holder = await self._call("take_over", "GET", lock)
                if holder is None or holder.decode() != self._node_id:
                    return []
            calls: list[tuple[Any, ...]] = []
            for b in range(BUCKETS):
                tag = f"{self._p}:{{m{b}}}"
                calls.append(
                    (
                        "EVALSHA",
                        self._sha["take_over_ids"],
                        2,
                        f"{tag}:u:{node_id}",
                        f"{tag}:u:{self._node_id}",
                        self._node_id,
                        f"{tag}:m:",
                        node_id,
                    )
                )
            ids = [i.decode() for r in await self._read_all(client, calls) for i in r]
            reads = [("HMGET", self._message_key(mid), *_FIELDS) for mid in ids]
            out = [s for s in map(self._stored, await self._read_all(client, reads)) if s]
        # Done: the node, if it comes back, recovers at once what is still its own.
        await self._release_lock(lock)
        out.sort(key=lambda s: s.message.submitted_at)
        return out

    # -- for the hand-over between nodes (router.stores.handover) ----------------------------

    def client(self) -> aioredis.Redis:
        """The open client (StoreClosed when not open)."""
        return self._client()

    @property
    def prefix(self) -> str:
        return self._p

    @property
    def read_timeout(self) -> float:
        return self._config.read_timeout

    def stored(self, values: Sequence[Any]) -> StoredMessage | None:
        """A message from the values of its hash's fields b s e c ci d o, in that order."""
        return self._stored(values)

    async def claim_final(self, message_id: str, report: DeliveryReport) -> bool:
        """A C record of the writer's next batch (after this node's queued writes of the
        message): the batch script's compare-and-set, with a report lease of
        ``claim_seconds`` until :meth:`settle_final`. No round trip of its own: the claim
        makes the writer send its batch at once (as an add whose ack waits for its commit
        does) and waits for that batch's answer, within ``read_timeout``.

        Redis unwritable: StoreError at once, as a read (a claim is not kept queued for a
        caller that has moved on; the carrier sends the receipt again)."""
        if not is_final(report.state):
            raise ValueError(f"not a final state: {report.state!r}")
        if self._unwritable is not None:
            raise StoreError(f"store: claim_final: Redis cannot be written ({self._unwritable})")
        done_at = report.done_at if report.done_at > 0 else self._clock()
        now = self._clock()
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[int] = loop.create_future()
        # Each claim's lease value is its own (the script takes an equal value for this
        # claim sent again): two claims of one node in one millisecond differ by the end.
        until = max(int((now + self._claim_seconds) * 1000), self._last_until + 1)
        self._last_until = until
        params = (
            int(report.state),
            report.error,
            _num(done_at),
            self._node_id,
            str(int(now * 1000)),
            str(until),
            message_id,
        )
        op = Op(CLAIM, params, message_id=message_id, outcome=outcome)
        op.on_durable = partial(_claim_written, outcome, self)
        self._put(op)
        # The read deadline: past it ``outcome`` fails (and a claim not sent yet is then
        # not sent). One timer for all the claims waiting (a claim per final receipt: a
        # timeout scope or a timer each costs more than the rest of the claim).
        self._wait_for_written(outcome, "claim_final")
        result = await outcome
        if result == 3:
            raise StoreError(f"message {message_id}: its final receipt is being reported")
        return result == 1

    def _wait_for_written(self, future: asyncio.Future[Any], what: str) -> None:
        """``future`` fails (StoreTimeout) if its record is not written within the read
        deadline. One timer for all the claims and settles waiting (one per final receipt:
        a timeout scope or a timer each costs more than the rest of the claim)."""
        loop = asyncio.get_running_loop()
        waiting = self._claim_deadlines
        while waiting and waiting[0][1].done():  # answered (mostly in order)
            waiting.popleft()
        waiting.append((loop.time() + self._config.read_timeout, future, what))
        if self._claim_timer is None:
            self._claim_timer = loop.call_at(waiting[0][0], self._expire_claims)

    def _expire_claims(self) -> None:
        """Fail the claims waiting past their deadline; the timer is set again for the
        next one waiting, if any (deadlines come in order: one ``read_timeout`` each)."""
        self._claim_timer = None
        waiting = self._claim_deadlines
        loop = asyncio.get_running_loop()
        now = loop.time()
        while waiting and (waiting[0][1].done() or waiting[0][0] <= now):
            _, outcome, what = waiting.popleft()
            if not outcome.done():
                self.read_timeouts += 1
                why = f" (cannot write: {self._unwritable})" if self._unwritable else ""
                limit = self._config.read_timeout
                outcome.set_exception(
                    StoreTimeout(f"store: {what} took more than {limit:g} s{why}")
                )
        if waiting:
            self._claim_timer = loop.call_at(waiting[0][0], self._expire_claims)

    def settle_final(self, message_id: str) -> asyncio.Future[None]:
        """The claimed final state's receipt is delivered or held: its lease goes, and a
        later claim is a duplicate. An S record of the writer's next batch (no round trip
        of its own), which it sends at once, as for a claim; the future is done once it is
        written, or fails (StoreTimeout) past the read deadline — the record stays queued,
        also while Redis cannot be written, and is written when it can (a late one is
        harmless: the receipt was delivered or held). Not written at all (a node that dies
        first): the lease lapses after ``claim_seconds`` instead."""
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._put(Op(SETTLE, (message_id,), on_durable=partial(_settled, written)))
        self._wait_for_written(written, "settle_final")
        return written

    async def held(self, account: str, limit: int) -> list[tuple[int, bytes]]:
        async with self._deadline("held"):
            await self._until(self._held_seq)
            now = self._clock()
            flat = await self._call(
                "held",
                "EVALSHA",
                self._sha["held"],
                4,
                *self._held_keys(account),
                self._node_id,
                _num(now),
                _num(now + self._claim_seconds),
                limit,
            )
        items: list[tuple[int, bytes]] = []
        for n in range(0, len(flat), 2):
            held_id = int(flat[n])
            self._held_account[held_id] = account
            items.append((held_id, bytes(flat[n + 1])))
        return items

    async def held_counts(self) -> dict[str, int]:
        async with self._deadline("held_counts"):
            await self._until(self._held_seq)
            client = self._client()
            accounts = sorted(
                a.decode()
                for a in await self._call("held_counts", "SMEMBERS", f"{self._p}:held:accounts")
            )
            now = "(" + _num(self._clock())  # expires_at > now
            calls: list[tuple[Any, ...]] = [
                ("ZCOUNT", self._held_keys(a)[2], now, "+inf") for a in accounts
            ]
            counts = await self._read_all(client, calls)
        return {a: int(n) for a, n in zip(accounts, counts, strict=True) if int(n)}

    async def reserve_ids(self, n: int) -> int:
        """``INCRBY`` on ``P:ids``: atomic, and durable as Redis's persistence is."""
        if n < 1:
            raise ValueError("reserve at least one id")
        if self._closing:
            raise StoreClosed("store is not open")
        async with self._deadline("reserve_ids"):
            end = await self._call("reserve_ids", "INCRBY", f"{self._p}:ids", n)
        return int(end) - n


def _safe(url: str) -> str:
    """``url`` without its password (for logs)."""
    head, sep, tail = url.rpartition("@")
    if not sep:
        return url
    scheme, _, _ = head.partition("://")
    return f"{scheme}://***@{tail}"
