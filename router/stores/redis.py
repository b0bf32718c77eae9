"""The Redis store backend: ``RedisStore`` implements ``router.ports.Store`` on redis-py's
asyncio client (hiredis parses), with the write-behind core of ``router.stores.writebehind``:
the nodes of a cluster share one Redis (7.x, or Valkey) and read and finish each other's
messages.

Batches. The writer sends a batch (up to ``store.batch_max`` records; unset, 10,000:
``BATCH_MAX``) as ONE pipeline (one round trip): ONE call of a Lua script
per bucket of message ids the batch touches (``_BATCH_LUA``; a message's records in the batch
folded into one record, all records of the bucket packed in one msgpack argument), one script
call per account that holds deliveries and per account that releases some, one ``SADD`` of
the accounts that held some, and ``WAIT numreplicas timeout`` when ``wait_replicas`` is set.
Every script is idempotent (an add of the same message again does nothing, a final state is
a compare-and-set, held items keep the ids given them once, a final state's container day is
chosen once), so a batch that failed half-way is sent again whole. An add of an id that holds
another message is refused (-1) when that message is unfinished, or final in this call's day
containers; one final in an older day's container is not looked for (ids come from
``reserve_ids`` and do not repeat). ``on_durable(True)`` is called once the pipeline returned (with
``WAIT``: once that many replicas have it). Adds that were failed (refused to their clients)
after a pipeline that may have reached Redis are marked DELETED, so no node sends them.

Commands per message. ``commands`` counts every command sent (a script call counts one): at
most one per record — 3 for add, send and final state, 4 with ``set_sending`` (``ack_after:
store``), when each comes alone in a batch (a send's receipt index may fall in another
bucket: one more call); under load a batch of a thousand records costs at most one call per
bucket, 64, a few hundredths of a command per message. What Redis EXECUTES (the commands
the scripts run included) is what costs Redis's one thread, so the messages of a bucket are
grouped in a few containers, each read and written with ONE variadic command per script
call, whatever the number of records in it: a batch call runs one HMGET of the live hash
(every id of the call), one HSET and one HDEL of it, per day container it reads or writes
one HMGET / HSET / EXPIRE NX, and of its lease hash one HSET / HDEL (a HGET per claim of a
message final already: a duplicate receipt), per owner one ZADD and one ZREM, one HSET (and
EXPIRE NX) of today's receipt index: about ten commands per call, however many messages it
carries
(bench/cluster.py: ~1.3 per message with batches of 2,000 records, ~0.4–1.1 with the
default 10,000 (``BATCH_MAX``), against ~9.4 with a hash per message). Reads: ``get``
is one script call (an HGET of the live hash, else of the day containers, most recent
first); ``find_sent`` one script call (HGET of the receipt index of tomorrow, today and
back to the oldest day kept: a receipt of a message another node sent; the sending node
answers from memory while its write is queued).

Final receipts in a cluster (``claim_final``, ``settle_final``) are records of the batches
too, not round trips of their own: a claim (a C record: the compare-and-set and the report
lease) makes the writer send its batch at once and waits for that batch's answer; a settle
(an S record: HDEL of the lease) likewise. Under load a claim and a settle cost a share of
their bucket's script call, as the other records do. In the node, a claim is a record (an
``Op``) and a future the writer settles with the batch (``claim_soon``: the script's
answer; no coroutine, no callback of its own), and a place in a deque of deadlines (one
timer for all of them: ``read_timeout``); a settle is a record, and the settles queued
between two batches share one future and one deadline (done once the last of them is
written).

Key layout (for Redis Cluster: the part in braces is the hash tag; all keys one script call
touches share its tag, hence its slot). ``P`` is the prefix (``smsc`` by default), ``b`` a
bucket: crc32 of the message id (of ``carrier:key`` for a receipt index) modulo 64; ``<day>``
a UTC day number (Unix time // 86,400, from the node's clock). The batch script is given its
bucket's live hash and derives the other keys of the bucket from the tag (they are in the
same slot; Redis Cluster serves them from the node that has the slot):

- ``P:{m<b>}:live``          HASH id → record: the bucket's unfinished messages.
- ``P:{m<b>}:f:<day>``       HASH id → record: the bucket's messages that became final with a
  done_at of that day — clamped to [today - (ceil(keep_days) + 1), today]: a done_at ahead
  of the node's clock counts as today, one older than that is past ``keep_days`` already.
  A record moves from ``live`` to its day once, when its state becomes final; a container
  is written only on the days up to window days after its own, and expires (``EXPIRE NX``,
  set by the call that makes it) keep_days + a day after the last of them, after ``purge``
  would have deleted it: no per-message TTL.
- ``P:{m<b>}:days``          ZSET, the days the bucket has a final container of (added when
  a container is made): ``get`` and the batch script look there for a message not live,
  ``purge`` deletes the containers of the days before the cutoff's (day by day: a message
  done on the cutoff's own day goes at the first purge after that day; a large container
  ``purge_batch`` records at a time, HRANDFIELD + HDEL).
- ``P:{m<b>}:l:<day>``       HASH id → report lease, ``<node>|<until ms>``, of the messages of
  ``f:<day>`` from a claim until its settle (or until it lapses: the time is compared, the
  field stays); same expiry as ``f:<day>``. Apart from the record, so that a settle is one
  HDEL (the claiming node remembers the day), no read of the message.
- ``P:{m<b>}:rk:<day>``      HASH ``carrier:key`` → our id: the receipt index of the messages
  sent that day (by the node's clock); expires keep_days + a day after the end of its day.
- ``P:{m<b>}:u:<owner>``     ZSET, the owner's unfinished messages (score submitted_at):
  ``unfinished`` reads this node's 64 (one script per bucket: the index, one HMGET of the
  live hash; a member not live: the version before's hash, see Format), ``take_over``
  moves a dead node's into this node's; ``>carrier``: messages
  handed over to a carrier's nodes (router.stores.handover).
- ``P:format``               STRING, the stored format, ``2`` (see Format).
- ``P:{h:<account>}:q``      ZSET, the account's held deliveries in order (score = held id).
- ``P:{h:<account>}:i``      HASH by held id: the item.
- ``P:{h:<account>}:x``      ZSET, held ids by expiry (Unix seconds: the account's
  ``receipt_ttl``): ``held`` skips the expired, ``purge`` deletes them.
- ``P:{h:<account>}:c``      HASH by held id: the node that claimed it, and until when.
- ``P:held:accounts``        SET, accounts that have held deliveries (``held_counts``, purge).
- ``P:held:seq``             STRING, held ids (``INCRBY`` a block of 1,000 at a time).
- ``P:ids``                  STRING, message ids (``reserve_ids``: ``INCRBY n``).

A record (``RECORD_LUA`` reads and writes it in the scripts, ``_Head`` in Python): 2 bytes,
big-endian, the length of its header; the header, a msgpack array: account, submitted_at,
owner node, state, error, carrier, carrier's id, correlation key, done_at (0 until final);
then the body, the Message in msgpack as the node encoded it
(Redis's cmsgpack has no binary type: the body stays out of the header, and is passed to
the scripts as an argument of its own). About 40 bytes more than the body.

Format. The version before kept a hash per message (``P:{m<b>}:m:<id>``), a string per
receipt index entry (``P:{m<b>}:k:<carrier>:<key>``), a ``done`` zset per bucket and its
report leases in keys of their own (``P:{m<b>}:r:<id>``). A node that opens a Redis with no
``P:format`` moves its unfinished messages into this layout first, under a lock
(``P:migrate``; another node starting meanwhile waits for ``P:format``, a minute at most):
every owner index (``SCAN`` of ``P:{m*}:u:*``), a script per bucket and 1,000 members (each
old hash with no done_at becomes a record of ``live`` and is deleted; a member with neither
leaves the index); the receipt index entries of every live member are written again
(today's: also those of the messages a node that died half-way had moved already, so a
move that starts over is complete); then ``P:format`` is set. The old final messages,
receipt index entries and leases are left to expire (their TTLs): ``get`` no longer finds
them, and a late receipt of one is unknown; the ``done`` zsets (no TTL) are deleted.
Stop every node of the version before first: one still running keeps writing the old
layout. Its unfinished messages are still found through its owner index (the same keys):
its recovery, once restarted with this version, and a take-over of it move them as the
start does (one HMGET of the old hash per index member not live; none otherwise), and so
does the adoption of one it handed over (router.stores.handover); but
what it writes of its messages' final states, receipt index and leases meanwhile no node
of this version reads (a receipt of one of its messages that reaches a node of this
version is unknown), and its take-over of a node of this version drops that node's index
(the version before looks for old hashes only).

Held deliveries are claimed by the node that reads them (``held``) for ``claim_seconds``:
another node skips them meanwhile (two nodes never drain one account at once), the claiming
node sees them again until it releases them, and a node that died leaves them to the next
reader once its claims lapse.

Redis unreachable (connection refused or lost, timeouts, loading, busy running a script past
its ``busy-reply-threshold``, a read-only replica, out of memory, ``WAIT`` short of
replicas or fewer than its ``min-replicas-to-write``): the store is unwritable
(``unwritable`` names why: ``unreachable``, ``loading``, ``busy``, ``read_only``,
``no_memory``, ``replicas``), adds and holds are refused, the batch is kept and tried
again with the write-behind core's back-off, and it recovers by itself when Redis answers
again (scripts are loaded again after a restart). Reads raise StoreError (StoreTimeout
past ``read_timeout``).

What a Redis crash loses depends on its persistence: with AOF ``appendfsync always``
nothing acknowledged; with ``everysec`` up to a second of writes; ``WAIT`` on replicas
(``wait_replicas``) bounds it to what no replica had received.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from functools import lru_cache
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
WRITE_ERROR_REASONS: Final = (
    "unreachable", "loading", "busy", "read_only", "no_memory", "replicas",
)  # fmt: skip
#: Records per batch (one pipeline) unless ``store.batch_max`` says otherwise: a batch is
#: not a transaction here, its fixed cost is a script call per bucket (64), so it is
#: larger than SQLite's. Bounded all the same: its memory (the records and their encoding,
#: a few MB), and the claims in it are answered within the read deadline.
BATCH_MAX: Final = 10_000
#: Held ids a node takes from ``P:held:seq`` at a time.
_HELD_BLOCK: Final = 1000

# The record codec and helpers every script that reads or writes message records starts
# with (router.stores.handover's too). A record: 2 bytes (big-endian) the length of its
# header, the header (a msgpack array, see RECORD_FIELDS), the body (the Message, msgpack
# as the node encoded it; Redis's cmsgpack has no binary type, so the body stays outside).
RECORD_LUA: Final = """
local function decode(s)
  local n = string.byte(s, 1) * 256 + string.byte(s, 2)
  return {h = cmsgpack.unpack(string.sub(s, 3, n + 2)), b = string.sub(s, n + 3)}
end
-- A record read or given whole (m.raw) is decoded only when something reads or changes it.
local function full(m)
  if m.raw then
    local d = decode(m.raw); m.h, m.b, m.raw = d.h, d.b, nil
  end
  return m
end
local function encode(m)
  if m.raw then return m.raw end
  local head = cmsgpack.pack(m.h)
  return string.char(math.floor(#head / 256), #head % 256) .. head .. m.b
end
-- One command per 4,000 arguments at most (Lua's unpack has a stack limit).
local function each(command, key, list)
  for k = 1, #list, 4000 do
    redis.call(command, key, unpack(list, k, math.min(k + 3999, #list)))
  end
end
-- HMGET of ids (in chunks): the values in the order of ids (false: none).
local function fetch(key, ids)
  local out = {}
  for k = 1, #ids, 4000 do
    local got = redis.call('HMGET', key, unpack(ids, k, math.min(k + 3999, #ids)))
    for j = 1, #got do out[k + j - 1] = got[j] end
  end
  return out
end
local function push(lists, name, a, b)
  local list = lists[name]
  if not list then list = {}; lists[name] = list end
  list[#list + 1] = a
  if b then list[#list + 1] = b end
end
"""

# One call per bucket and batch: every record of the batch whose keys are in the bucket,
# packed in ONE msgpack argument (one argument to encode, not dozens per message).
# KEYS: [1] the bucket's live hash (P:{m<b>}:live); the script names the other keys of the
#   bucket (f:<day>, days, u:<owner>, rk:<day>) from the bucket's tag: all in its slot.
# ARGV: [1] the tag (P:{m<b>}), [2] today (the node's UTC day number), [3] the offset of a
#   final container's expiry (f:<d> expires at d * 86400 + offset), [4] the expiry of
#   today's receipt index (and the least expiry of a final container), [5] now (Unix
#   seconds: the expiries are set as TTLs, from the node's clock), [6] msgpack of the
#   records, each an array; then the bodies (one argument each):
#   K <carrier:key> <id>          receipt index: HSET rk:<today> carrier:key id
#   M <id> <create> <owner> <submitted_at> <final> <state> <error> <done_at> <day> <sets>
#     create 1: an add (nothing if the same message is there: a batch sent again; -1 if
#     another message has the id), its sets: -1 and the index in ARGV of its whole record
#     (the node builds it: what this batch writes of the message folded in, its final
#     state too); 0: the message must exist (else nothing), its sets (position, value,
#     ...) are set unconditionally: header positions (1 account, 2 submitted_at,
#     6 carrier, 7 carrier's id, 8 correlation key), 0 the body (its value: its index in
#     ARGV).
#     final 1: a state change, compare-and-set on done_at (2: it lost, the message was
#     final already); done_at 0 for a state that is not final; day: the container a final
#     state moves the message to.
#   C <id> <state> <error> <done_at> <node> <now ms> <lease until ms> <day>
#     a final state claimed by this node (claim_final): a compare-and-set on done_at that
#     also takes the report lease ("<node>|<until ms>", in l:<day> of the message's day;
#     read, HGET, only for a claim of a message final already), held until the receipt is
#     delivered or held (S); a node that dies first leaves a lease that lapses, and the
#     carrier's resend, on any node, is claimed again.
#   S <id> <day or -1>            settle_final: HDEL of the lease from l:<day> (-1: the
#     day is unknown to the node; the script finds the message's).
# Reads: ONE HMGET of live for every id of the call; the ids not live (final), the creates
# final in this call (a batch sent again) in their own day's container: HMGET of the days
# named (today's first, then those of the call's records), then of every day the bucket
# holds (the days zset), until all are found. Records are changed in memory, in order
# (a record sees what the ones before it did); then ONE HSET of live, ONE HDEL of live
# (those that became final), per day one HSET and one EXPIRE NX (a new container: ZADD
# days), per day one HSET (EXPIRE NX) / HDEL of the leases, per owner one ZADD and one
# ZREM, one HSET of today's receipt index (EXPIRE NX).
# Returns two arrays: one result per M record: 1 written, 0 nothing to do, 2 lost the CAS,
# -1 duplicate; and per C record: 1 claimed (or taken over from a lapsed lease, or this
# very claim in a batch sent again), 0 no such message, 2 final and settled (a duplicate),
# 3 final and being reported by a live claim (try again later), in the order of the
# records; then per C record the day of its message's lease (-1: no message).
_BATCH_LUA: Final = (
    RECORD_LUA
    + """
local tag, today = ARGV[1], tonumber(ARGV[2])
local f_offset, k_expire, now = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local live = KEYS[1]
local records = cmsgpack.unpack(ARGV[6])
local recs, origin = {}, {}  -- id: its record {h, b, at}; where it was ('live' or a day)
local ids, seen = {}, {}
for _, r in ipairs(records) do
  local kind = r[1]
  if kind ~= 'K' and not (kind == 'S' and r[3] >= 0) and not seen[r[2]] then
    seen[r[2]] = true; ids[#ids + 1] = r[2]
  end
end
if #ids > 0 then
  local got = fetch(live, ids)
  for k, id in ipairs(ids) do
    if got[k] then recs[id] = {raw = got[k], at = 'live'}; origin[id] = 'live' end
  end
end
-- Not live: looked for in the day containers.
local wanted, created, own, named, order = {}, {}, {}, {}, {today}
named[today] = true
local function name(day)
  if day and day >= 0 and not named[day] then named[day] = true; order[#order + 1] = day end
end
for _, r in ipairs(records) do
  local kind, id = r[1], r[2]
  if kind == 'C' then name(r[9])
  elseif kind == 'M' and r[6] == 1 and r[9] ~= 0 then name(r[10]) end
  if kind == 'K' or (kind == 'S' and r[3] >= 0) then  -- (a settle with its day: no record)
  elseif not recs[id] and not wanted[id] and not created[id] then
    if kind ~= 'M' or r[3] ~= 1 then
      wanted[id] = true
    else  -- an add: new (what comes after it in this call finds it in memory) ...
      created[id] = true
      -- ... unless final in this call, and this call was sent before: in its day
      if r[6] == 1 and r[9] ~= 0 then push(own, r[10], id) end
    end
  end
end
local function look(day, list)
  local key = tag .. ':f:' .. day
  local got = fetch(key, list)
  for k, id in ipairs(list) do
    if got[k] and not recs[id] then
      recs[id] = {raw = got[k], at = day}; origin[id] = day
      wanted[id] = nil
    end
  end
end
local function missing()
  local list = {}
  for id in pairs(wanted) do list[#list + 1] = id end
  return list
end
for _, day in ipairs(order) do
  local list = missing()
  for _, id in ipairs(own[day] or {}) do list[#list + 1] = id end
  if #list > 0 then look(day, list) end
end
if next(wanted) then
  for _, day in ipairs(redis.call('ZREVRANGE', tag .. ':days', 0, -1)) do
    day = tonumber(day)
    if not named[day] then
      look(day, missing())
      if not next(wanted) then break end
    end
  end
end
-- The records, in order, on the messages in memory.
local out, dirty, keyed, claimed = {}, {}, {}, {}
-- Report leases: id -> lease, or false (none); read when a claim needs one (HGET; nil:
-- not read yet); written at the end, in the day's lease hash of the message.
local leases, lease_day = {}, {}
local function lease_of(id, day)
  if leases[id] == nil then
    leases[id] = redis.call('HGET', tag .. ':l:' .. day, id)
  end
  return leases[id]
end
local unfinished, finished = {}, {}  -- owner: ids (with scores) in / out of its index
local function apply(m, sets)
  for k = 1, #sets, 2 do
    if sets[k] == 0 then m.b = ARGV[sets[k + 1]] else m.h[sets[k]] = sets[k + 1] end
  end
end
for _, r in ipairs(records) do
  local kind, id = r[1], r[2]
  if kind == 'K' then
    keyed[#keyed + 1] = id; keyed[#keyed + 1] = r[3]
  elseif kind == 'S' then
    local day = r[3]
    if day < 0 then
      local m = recs[id]
      if m and m.at ~= 'live' then day = m.at end
    end
    if day >= 0 then leases[id] = false; lease_day[id] = day end
  elseif kind == 'C' then
    local m, res = recs[id], 1
    if m then full(m) end
    local claim = r[6] .. '|' .. r[8]
    if not m then
      res = 0
    elseif m.h[9] ~= 0 then
      local held = lease_of(id, m.at)
      if not held then
        res = 2
      elseif held ~= claim then  -- equal: this claim, in a batch sent again
        local sep = string.find(held, '|', 1, true)
        if tonumber(string.sub(held, sep + 1)) > tonumber(r[7]) then
          res = 3
        else
          leases[id] = claim; lease_day[id] = m.at
        end
      end
    else
      m.h[4], m.h[5], m.h[9] = r[3], r[4], r[5]
      push(finished, m.h[3], id); m.at = r[9]; dirty[id] = true
      leases[id] = claim; lease_day[id] = m.at
    end
    out[#out + 1] = res
    claimed[#claimed + 1] = m and m.at or -1
  else
    local create, final, state, err, done, sets = r[3], r[6], r[7], r[8], r[9], r[11]
    local m, res = recs[id], 1
    if create == 1 then  -- sets: -1, the whole record's index in ARGV
      local raw = ARGV[sets[2]]
      if m then
        local n = string.byte(raw, 1) * 256 + string.byte(raw, 2)
        if full(m).b == string.sub(raw, n + 3) then res = 0 else res = -1 end
      else
        m = {raw = raw, at = 'live'}
        if final == 1 and done ~= 0 then m.at = r[10] else push(unfinished, r[4], r[5], id) end
        recs[id] = m; dirty[id] = true
      end
    elseif not m then
      res = 0
    else
      full(m)
      if #sets > 0 then apply(m, sets); dirty[id] = true end
      if final == 1 then
        if m.h[9] ~= 0 then
          res = 2
        else
          m.h[4], m.h[5] = state, err; dirty[id] = true
          if done ~= 0 then m.h[9] = done; push(finished, m.h[3], id); m.at = r[10] end
        end
      end
    end
    out[#out + 1] = res
  end
end
-- The writes: one variadic command per container.
local live_set, live_del, by_day = {}, {}, {}
for id in pairs(dirty) do
  local m = recs[id]
  if m.at == 'live' then
    live_set[#live_set + 1] = id; live_set[#live_set + 1] = encode(m)
  else
    push(by_day, m.at, id, encode(m))
    if origin[id] == 'live' then live_del[#live_del + 1] = id end
  end
end
each('HSET', live, live_set)
each('HDEL', live, live_del)
local function ttl(day)
  return string.format('%d', math.max(day * 86400 + f_offset, k_expire) - now)
end
for day, list in pairs(by_day) do
  local key = tag .. ':f:' .. day
  each('HSET', key, list)
  if redis.call('EXPIRE', key, ttl(day), 'NX') == 1 then
    redis.call('ZADD', tag .. ':days', day, day)  -- a new container
  end
end
local lease_set, lease_del = {}, {}
for id, day in pairs(lease_day) do
  if leases[id] then push(lease_set, day, id, leases[id]) else push(lease_del, day, id) end
end
for day, list in pairs(lease_set) do
  local key = tag .. ':l:' .. day
  each('HSET', key, list)
  redis.call('EXPIRE', key, ttl(day), 'NX')
end
for day, list in pairs(lease_del) do each('HDEL', tag .. ':l:' .. day, list) end
for owner, list in pairs(unfinished) do each('ZADD', tag .. ':u:' .. owner, list) end
for owner, list in pairs(finished) do each('ZREM', tag .. ':u:' .. owner, list) end
if #keyed > 0 then
  local key = tag .. ':rk:' .. today
  each('HSET', key, keyed)
  redis.call('EXPIRE', key, string.format('%d', k_expire - now), 'NX')
end
return {out, claimed}
"""
)
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

# KEYS: the bucket's days zset. ARGV: the tag, the cutoff's day, limit. Deletes the final
# containers (and lease hashes) of the days before the cutoff's (up to limit records: a
# container larger than what is left loses that many, HRANDFIELD + HDEL); how many records.
_PURGE_MESSAGES_LUA: Final = """
local days = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[2])
local left, n = tonumber(ARGV[3]), 0
for _, day in ipairs(days) do
  if left <= 0 then break end
  local key, leases = ARGV[1] .. ':f:' .. day, ARGV[1] .. ':l:' .. day
  local size = redis.call('HLEN', key)
  if size <= left then
    redis.call('UNLINK', key, leases)
    redis.call('ZREM', KEYS[1], day)
    n, left = n + size, left - size
  else
    local ids = redis.call('HRANDFIELD', key, left)
    for k = 1, #ids, 4000 do
      local part = {unpack(ids, k, math.min(k + 3999, #ids))}
      redis.call('HDEL', key, unpack(part))
      redis.call('HDEL', leases, unpack(part))
    end
    n, left = n + #ids, 0
  end
end
return n
"""

# The version before's unfinished message (see Format), for the scripts that find an
# owner index member not live: the hash P:{m<b>}:m:<id>, with no final state, made a record
# of this layout ({h, b}); nil when there is none (or it is final). ``moved`` deletes the
# hash and adds its receipt index pair (carrier:key, id) to ``index``. A node of the
# version before that ran on after the move (a rolling upgrade) left such messages: this
# node's recovery and a take-over move them too, so none is lost.
OLD_MESSAGE_LUA: Final = """
local function old_message(tag, id)
  local f = redis.call('HMGET', tag .. ':m:' .. id,
                       'a', 't', 'o', 's', 'e', 'c', 'ci', 'k', 'd', 'b')
  if not (f[3] and f[10]) or f[9] then return nil end
  return {h = {f[1] or '', tonumber(f[2]) or 0, f[3], tonumber(f[4]) or 0,
               tonumber(f[5]) or 0, f[6] or '', f[7] or '', f[8] or '', 0}, b = f[10]}
end
local function pair(index, h, id)
  if h[6] ~= '' and h[8] ~= '' then
    index[#index + 1] = h[6] .. ':' .. h[8]; index[#index + 1] = id
  end
end
local function moved(tag, id, m, index)
  redis.call('DEL', tag .. ':m:' .. id)
  pair(index, m.h, id)
end
"""

# KEYS: [1] the bucket's live hash, [2] an owner's index. ARGV: the tag. The owner's
# messages: {id, record, id, record, ...} (one HMGET per 4,000), and the carrier:key, id
# pairs of the receipt index of those moved from the version before's layout (OLD_MESSAGE_LUA;
# written by the caller: another bucket).
_OWNED_LUA: Final = (
    RECORD_LUA
    + OLD_MESSAGE_LUA
    + """
local ids = redis.call('ZRANGE', KEYS[2], 0, -1)
local got = fetch(KEYS[1], ids)
local out, sets, index = {}, {}, {}
for k, id in ipairs(ids) do
  local record = got[k]
  if not record then
    local m = old_message(ARGV[1], id)
    if m then
      record = encode(m)
      sets[#sets + 1] = id; sets[#sets + 1] = record
      moved(ARGV[1], id, m, index)
    end
  end
  if record then out[#out + 1] = id; out[#out + 1] = record end
end
each('HSET', KEYS[1], sets)
return {out, index}
"""
)

# KEYS: [1] the bucket's live hash, [2] the dead node's index, [3] this node's. ARGV: this
# node, the dead node, the tag. The messages the dead node still owns become this node's
# (their owner rewritten, one HSET; one ZADD to this node's index; those of the version
# before's layout moved, OLD_MESSAGE_LUA); the dead node's index goes. Returns {id, record, ...}
# of those taken, and the receipt index pairs of those moved (as _OWNED_LUA).
_TAKE_OVER_LUA: Final = (
    RECORD_LUA
    + OLD_MESSAGE_LUA
    + """
local all = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
local ids = {}
for k = 1, #all, 2 do ids[#ids + 1] = all[k] end
local got = fetch(KEYS[1], ids)
local out, sets, mine, index = {}, {}, {}, {}
for k, id in ipairs(ids) do
  local m
  if got[k] then
    m = decode(got[k])
  else
    m = old_message(ARGV[3], id)
    if m and m.h[3] == ARGV[2] then moved(ARGV[3], id, m, index) end
  end
  if m and m.h[3] == ARGV[2] and m.h[9] == 0 then
    m.h[3] = ARGV[1]
    local record = encode(m)
    sets[#sets + 1] = id; sets[#sets + 1] = record
    mine[#mine + 1] = all[2 * k]; mine[#mine + 1] = id
    out[#out + 1] = id; out[#out + 1] = record
  end
end
each('HSET', KEYS[1], sets)
each('ZADD', KEYS[3], mine)
redis.call('DEL', KEYS[2])
return {out, index}
"""
)

# KEYS: [1] the bucket's live hash. ARGV: the tag, the id. The message's record, live or
# in the most recent day container that has it (ZREVRANGE of the days); nil: none.
_GET_LUA: Final = """
local found = redis.call('HGET', KEYS[1], ARGV[2])
if found then return found end
for _, day in ipairs(redis.call('ZREVRANGE', ARGV[1] .. ':days', 0, -1)) do
  found = redis.call('HGET', ARGV[1] .. ':f:' .. day, ARGV[2])
  if found then return found end
end
return false
"""

# KEYS: [1] the bucket's receipt index of the first day to look in. ARGV: the tag, the
# first day, the last (older), carrier:key. Our id, from the most recent day that has it.
_FIND_SENT_LUA: Final = """
for day = tonumber(ARGV[2]), tonumber(ARGV[3]), -1 do
  local found = redis.call('HGET', ARGV[1] .. ':rk:' .. day, ARGV[4])
  if found then return found end
end
return false
"""

# Moving the version before's unfinished messages into this layout (RedisStore.open).
# KEYS: [1] the bucket's live hash, [2] an owner's index (P:{m<b>}:u:<owner>). ARGV: the
# tag, the first rank, how many. Each member from that rank: live already (kept); an old
# hash P:{m<b>}:m:<id> with no final state (made a record in live, the hash deleted, kept);
# else (final, or nothing) out of the index. Returns the members kept, those moved, then
# carrier:key, id pairs of the receipt index of those kept (written by the caller: another
# bucket; those live already too, whose index a node that died half-way may not have
# written: a move sent again is complete).
_MIGRATE_LUA: Final = (
    RECORD_LUA
    + OLD_MESSAGE_LUA
    + """
local tag, first = ARGV[1], tonumber(ARGV[2])
local ids = redis.call('ZRANGE', KEYS[2], first, first + tonumber(ARGV[3]) - 1)
local got = fetch(KEYS[1], ids)
local kept, sets, gone, index = 0, {}, {}, {}
for k, id in ipairs(ids) do
  if got[k] then  -- moved by a node that may have died before writing its receipt index
    pair(index, decode(got[k]).h, id)
    kept = kept + 1
  else
    local m = old_message(tag, id)
    if m then
      sets[#sets + 1] = id; sets[#sets + 1] = encode(m)
      moved(tag, id, m, index)
      kept = kept + 1
    else
      gone[#gone + 1] = id
    end
  end
end
each('HSET', KEYS[1], sets)
each('ZREM', KEYS[2], gone)
local out = {kept, #sets / 2}
for _, v in ipairs(index) do out[#out + 1] = v end
return out
"""
)

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
    "owned": _OWNED_LUA,
    "take_over": _TAKE_OVER_LUA,
    "get": _GET_LUA,
    "find_sent": _FIND_SENT_LUA,
    "migrate": _MIGRATE_LUA,
}


class _Head(msgspec.Struct, array_like=True, frozen=True):
    """A record's header (see RECORD_LUA), as the scripts pack it: its positions (Lua's,
    from 1) are ``RECORD_FIELDS``."""

    account: str
    submitted_at: float
    owner: str
    state: int
    error: int
    carrier: str
    carrier_message_id: str
    key: str
    done_at: float  # 0: not final


#: The header's fields, by their position in Lua (1 account ... 9 done_at).
RECORD_FIELDS: Final = _Head.__struct_fields__
_decode_head = msgspec.msgpack.Decoder(_Head).decode
#: Positions (Lua's) an M record's ``sets`` name; 0 is the body.
_BODY, _ACCOUNT, _SUBMITTED_AT, _CARRIER, _CARRIER_ID, _KEY = 0, 1, 2, 6, 7, 8
#: Index in an M record (see _BATCH_LUA) of its final flag (then state, error, done_at,
#: day).
_FINAL_AT: Final = 5
#: Won claims whose lease's day this node remembers for their settle (bounded: a settle
#: whose claim was forgotten has its script find the message's day).
_CLAIMED_DAYS_MAX: Final = 65_536
_encode_records = msgspec.msgpack.Encoder().encode
#: The stored format (``P:format``); the version before had none.
FORMAT: Final = "2"
#: How long a node moves the version before's messages (or waits for another doing it).
_MIGRATE_SECONDS: Final = 60.0


class _Bucket:
    """The records of one batch in one bucket: one script call (see _BATCH_LUA)."""

    __slots__ = ("answers", "bodies", "claims", "messages", "records")

    def __init__(self) -> None:
        #: M records are lists (folded into while the batch is gathered), the others
        #: tuples; msgpack encodes both as arrays.
        self.records: list[list[Any] | tuple[Any, ...]] = []
        self.messages: list[list[Any]] = []  # the M records among them, in order
        self.bodies: list[bytes] = []
        self.answers = 0  # records the script answers (M and C), in order
        self.claims: list[tuple[int, Op]] = []  # a C record's place in the answers, its op

    def body(self, body: bytes) -> int:
        """Where ``body`` is in ARGV (after the tag, today, two expiries, now, the records)."""
        self.bodies.append(body)
        return len(self.bodies) + 6

    def _arguments(self) -> None:
        """An add's record made whole (see _whole); a body of an update put in ARGV."""
        for record in self.messages:
            sets = record[-1]
            if record[2] == 1:
                record[-1] = [-1, self.body(_whole(record))]
                continue
            for k in range(0, len(sets), 2):
                if sets[k] == _BODY:
                    sets[k + 1] = self.body(sets[k + 1])

    def message(
        self, mid: str, create: int, owner: str, submitted_at: float, state: int
    ) -> list[Any]:
        """A new M record; its last item is the list of position/value pairs to set."""
        record = ["M", mid, create, owner, submitted_at, 0, state, 0, 0, -1, []]
        self.records.append(record)
        self.messages.append(record)
        self.answers += 1
        return record

    def index(self, carrier_key: str, mid: str) -> None:
        self.records.append(("K", carrier_key, mid))

    def claim(self, op: Op) -> None:
        """A C record: ``op`` is a CLAIM, whose params are the record (see claim_soon)."""
        self.records.append(op.params)
        self.claims.append((self.answers, op))
        self.answers += 1

    def call(self, sha: str, tag: str, times: tuple[int, int, int, int]) -> tuple[Any, ...]:
        """``times``: today, the final containers' expiry offset, the receipt index's
        expiry, now (see _BATCH_LUA)."""
        self._arguments()
        return (
            "EVALSHA", sha, 1, f"{tag}:live", tag, *times, _encode_records(self.records),
            *self.bodies,
        )  # fmt: skip


class _Duplicate(ResponseError):
    """An add of a message id that holds another message (a record's fault)."""


class _TooFewReplicas(RedisError):
    """``WAIT`` returned before ``wait_replicas`` replicas had the batch."""


@lru_cache(maxsize=65_536)
def _bucket(name: str) -> int:
    """The bucket of a message id (or of ``carrier:key``, a receipt index). Cached: a
    message's records (add, send, final state, claim, settle) each need it, in batches
    apart; a look-up costs less than the crc32 of the encoded id. (A receipt index
    entry's ``carrier:key``, written once, is not looked up here: :func:`_index_bucket`.)"""
    return zlib.crc32(name.encode()) % BUCKETS


def _index_bucket(carrier_key: str) -> int:
    """The bucket of a receipt index entry (``carrier:key``): not cached (seen once; it
    would only push message ids out of :func:`_bucket`'s cache)."""
    return zlib.crc32(carrier_key.encode()) % BUCKETS


#: The bucket of a message id (its keys' hash tag is ``{m<bucket>}``).
bucket = _bucket


def _bucket_of(buckets: dict[int, _Bucket], b: int) -> _Bucket:
    found = buckets.get(b)
    if found is None:
        found = buckets[b] = _Bucket()
    return found


def _records(call: tuple[Any, ...]) -> list[list[Any]]:
    """The records of a batch script call (for error messages)."""
    records: list[list[Any]] = msgspec.msgpack.decode(call[9])
    return records


def _num(value: float) -> str:
    return repr(float(value))


def _whole(record: list[Any]) -> bytes:
    """The record (see RECORD_LUA) of an add's M record, with what its sets and its
    final state say (the body: the sets' position 0, bytes here)."""
    _, _, _, owner, submitted_at, final, state, error, done_at, _, sets = record
    if len(sets) == 4 and final == 0:  # the add's own sets alone (account, body): most adds
        encoded = _encode_records((sets[1], submitted_at, owner, state, error, "", "", "", 0))
        body: bytes = sets[3]
        return len(encoded).to_bytes(2, "big") + encoded + body
    head: list[Any] = ["", submitted_at, owner, state, error, "", "", "", 0]
    body = b""
    for k in range(0, len(sets), 2):
        if sets[k] == _BODY:
            body = sets[k + 1]
        else:
            head[sets[k] - 1] = sets[k + 1]
    if final == 1 and done_at != 0:
        head[8] = done_at
    encoded = _encode_records(head)
    return len(encoded).to_bytes(2, "big") + encoded + body


def _day(t: float) -> int:
    """The UTC day number of Unix time ``t``."""
    return int(t // DAY)


class _Deadlines:
    """Futures that fail (StoreTimeout) unless done within the read deadline, in the order
    they were given (one ``read_timeout`` each: their deadlines come in order), and the
    one timer for the first of them. Two deques, not a tuple per future: one per final
    receipt under load, each a live object the cyclic GC walks."""

    __slots__ = ("ends", "futures", "timer", "what")

    def __init__(self, what: str) -> None:
        self.what = what
        self.futures: deque[asyncio.Future[Any]] = deque()
        self.ends: deque[float] = deque()
        self.timer: asyncio.TimerHandle | None = None

    def clear(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.futures.clear()
        self.ends.clear()


class _Settles(msgspec.Struct, gc=False):
    """Settles (S records) that share one future: those queued between two of the
    writer's batches (see RedisStore.settle_final). Not tracked by the cyclic GC, as
    ``Op``: nothing it holds refers back to it."""

    future: asyncio.Future[None]
    first: int
    """The seq of its first record: the group takes settles while that one is queued."""
    last: int
    """The seq of its last record: the group is written once that one is."""


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
            config,
            clock=clock,
            node_id=node_id,
            write_error_reasons=WRITE_ERROR_REASONS,
            batch_max=BATCH_MAX,
        )
        self._url = url
        self._held_max = held_max
        self._wait_replicas = wait_replicas
        self._wait_timeout_ms = int(wait_timeout * 1000)
        self._claim_seconds = claim_seconds
        self._p = prefix
        self._max_connections = max_connections
        #: A final state's container day is its done_at's, but no older than this many
        #: days before today (older ones are past keep_days already: the next purge).
        self._window = math.ceil(config.keep_days) + 1
        self._keep_s = math.ceil(config.keep_days * DAY)
        #: Message id → the day of this node's won claim's lease, until its settle (the
        #: settle then needs no read; bounded, oldest forgotten first).
        self._claimed_days: dict[str, int] = {}
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
        #: Claims and settles waiting for their batch, by deadline (bounded by the
        #: writer's queue: each is a record of it), each with the timer that fails those
        #: past it.
        self._claims_waiting = _Deadlines("claim_final")
        self._settles_waiting = _Deadlines("settle_final")
        #: Settles queued and not yet written, a group (one future) per batch, in order.
        self._settle_groups: deque[_Settles] = deque()
        #: The loop the store was opened in (asyncio.get_running_loop costs a getpid
        #: system call per claim).
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- keys --------------------------------------------------------------------------------

    def _tag(self, b: int) -> str:
        return f"{self._p}:{{m{b}}}"

    def _batch_results(self, call: tuple[Any, ...], result: Any) -> tuple[list[int], list[int]]:
        """The results of a batch script call, and the container days of its claims (in
        their order); _Duplicate for an add of a taken id."""
        results: list[int] = result[0]  # integers already (the script's numbers)
        if -1 in results:
            ids = [r[1] for r in _records(call) if r[0] in ("M", "C")]
            raise _Duplicate(f"message id {ids[results.index(-1)]} holds another message")
        days: list[int] = result[1]
        return results, days

    def _held_keys(self, account: str) -> list[str]:
        tag = f"{self._p}:{{h:{account}}}"
        return [f"{tag}:q", f"{tag}:i", f"{tag}:x", f"{tag}:c"]

    def _times(self, now: float) -> tuple[int, int, int, int]:
        """A batch call's times (see _BATCH_LUA): today; a final container of day d
        expires at d * DAY + the offset: the end of the last day it is written (d + window)
        and keep_days + a day more; today's receipt index at the end of today and keep_days
        + a day more; now."""
        today = _day(now)
        f_offset = (self._window + 2) * int(DAY) + self._keep_s
        k_expire = (today + 2) * int(DAY) + self._keep_s
        return today, f_offset, k_expire, int(now)

    def _final_day(self, done_at: float, today: int) -> int:
        """The container day of a message final at ``done_at``: its UTC day, within
        [today - window, today] (a done_at ahead of this node's clock counts as today; one
        older than the window is past ``keep_days``, and the next purge takes it)."""
        day = int(done_at // DAY)  # (inline: one per final state)
        if day >= today:
            return today
        oldest = today - self._window
        return day if day > oldest else oldest

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
        try:
            await self._upgrade(client)
        except BaseException:
            await client.aclose()
            raise
        self._redis = client
        self._loop = asyncio.get_running_loop()
        self._start_writer()

    async def _upgrade(self, client: aioredis.Redis) -> None:
        """Make sure Redis holds this format (``P:format``): on a Redis the version before
        wrote (no format key), move its unfinished messages into this layout first, under
        a lock (``P:migrate``, one node at a time; another node waits for the format key):
        every owner index (``SCAN`` of ``P:{m*}:u:*``), a script per 1,000 members (old
        hashes made records of the live hash, their receipt index written again). Its
        final messages are left to expire (their TTL), its ``done`` zsets deleted; its
        report leases are dropped.
        StoreError when this cannot be done within a minute (the lock's holder takes
        longer, Redis fails; a node that fails releases the lock) or Redis holds a format
        this version does not know."""
        limit = max(self._config.read_timeout, _MIGRATE_SECONDS)
        key, lock = f"{self._p}:format", f"{self._p}:migrate"
        pause = 0.01
        locked = False  # this node holds the lock and has not finished
        try:
            async with asyncio.timeout(limit):
                while True:
                    found = await client.get(key)
                    self.commands += 1
                    if found is not None:
                        held = found.decode() if isinstance(found, bytes) else str(found)
                        if held != FORMAT:
                            raise StoreError(
                                f"store: Redis holds messages of format {held!r};"
                                f" this version reads format {FORMAT!r}"
                            )
                        return
                    self.commands += 1
                    if await client.set(lock, self._node_id, nx=True, px=int(limit * 1000)):
                        locked = True
                        break
                    await asyncio.sleep(pause)  # another node migrates: no event to await
                    pause = min(pause * 2, 0.5)
                moved = await self._migrate(client)
                self.commands += 2
                await client.set(key, FORMAT)
                locked = False
                await client.delete(lock)
        except TimeoutError:
            raise StoreError(
                f"store: Redis at {_safe(self._url)}: its messages could not be moved to"
                f" format {FORMAT} within {limit:g} s (stop the nodes of the version before"
                " and start again)"
            ) from None
        except RedisError as exc:
            raise StoreError(f"store: Redis at {_safe(self._url)}: {exc}") from exc
        finally:
            if locked:  # failed: the next node starting moves at once, not after the lock
                with contextlib.suppress(RedisError, OSError, TimeoutError):
                    async with asyncio.timeout(self._config.read_timeout):
                        self.commands += 1
                        await client.eval(_RELEASE_LOCK_LUA, 1, lock, self._node_id)
        if moved:
            log.warning("store: %d unfinished messages moved to format %s", moved, FORMAT)

    async def _migrate(self, client: aioredis.Redis) -> int:
        """The version before's unfinished messages moved (see _upgrade); how many."""
        pattern = "".join("\\" + c if c in "*?[]\\" else c for c in self._p) + ":{m*}:u:*"
        moved = 0
        buckets: dict[int, _Bucket] = {}  # receipt index entries: K records (today's)
        async for raw in client.scan_iter(match=pattern, count=1000):
            name = raw.decode()
            tag = name[: name.index("}:u:") + 1]
            first = 0
            while True:
                self.commands += 1
                got = await client.evalsha(
                    self._sha["migrate"], 2, f"{tag}:live", name, tag, first, 1000
                )
                kept, moved = int(got[0]), moved + int(got[1])
                pairs = [v.decode() for v in got[2:]]
                for n in range(0, len(pairs), 2):
                    _bucket_of(buckets, _index_bucket(pairs[n])).index(pairs[n], pairs[n + 1])
                first += kept
                self.commands += 1
                if first >= await client.zcard(name):
                    break
        # The version before's purge index of its final messages (no TTL of its own; the
        # messages have theirs): nothing reads it any more.
        calls: list[tuple[Any, ...]] = [("UNLINK", f"{self._tag(b)}:done") for b in range(BUCKETS)]
        calls += self._index_calls(buckets)
        for result in await self._send(client, calls):
            if isinstance(result, Exception):
                raise result
        return moved

    def _index_calls(self, buckets: dict[int, _Bucket]) -> list[tuple[Any, ...]]:
        """The batch script calls that write ``buckets``' receipt index entries (K
        records: today's)."""
        if not buckets:
            return []
        times = self._times(self._clock())
        return [
            bucket.call(self._sha["batch"], self._tag(b), times) for b, bucket in buckets.items()
        ]

    async def _moved_out(self, client: aioredis.Redis, results: list[Any]) -> list[StoredMessage]:
        """The messages of _OWNED_LUA / _TAKE_OVER_LUA answers; the receipt index entries of
        those they moved from the version before's layout written (one pipeline)."""
        buckets: dict[int, _Bucket] = {}
        for _, index in results:
            pairs = [v.decode() for v in index]
            for n in range(0, len(pairs), 2):
                _bucket_of(buckets, _index_bucket(pairs[n])).index(pairs[n], pairs[n + 1])
        await self._read_all(client, self._index_calls(buckets))
        return [s for flat, _ in results for s in self._stored_pairs(flat)]

    async def close(self, timeout: float | None = None) -> None:
        """Send everything queued, stop the writer, close the connections. Idempotent."""
        if self._redis is None:
            return
        try:
            await self._stop_writer(timeout)
        finally:
            # every claim and settle is answered or failed by now, but for settle groups
            # whose records were abandoned (a writer stopped before it wrote them)
            for group in self._settle_groups:
                if not group.future.done():
                    group.future.set_exception(StoreError("store: record not written"))
            self._settle_groups.clear()
            self._claims_waiting.clear()
            self._settles_waiting.clear()
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
        holds = adds = releases = 0  # one pass over the batch
        for op in ops:
            kind = op.kind
            if kind == ADD:
                adds += 1
            elif kind == HOLD:
                holds += 1
            elif kind == RELEASE:
                releases += 1
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
        # Per bucket call with claims: its claims, the script's answers and their days.
        answered: list[tuple[list[tuple[int, Op]], list[int], list[int]]] = []
        for n, (call, result) in enumerate(zip(calls, results, strict=True)):
            if isinstance(result, Exception):
                raise result
            if call[1] == batch_sha:
                answers, days = self._batch_results(call, result)
                if claims[n]:
                    answered.append((claims[n], answers, days))
            elif call[1] == hold_sha and result:
                account = call[3].removeprefix(f"{self._p}:{{h:").removesuffix("}:q")
                dropped[account] = dropped.get(account, 0) + int(result)
        if self._wait_replicas and calls and int(results[-1]) < self._wait_replicas:
            raise _TooFewReplicas(
                f"WAIT: {results[-1]} of {self._wait_replicas} replicas within"
                f" {self._wait_timeout_ms} ms"
            )
        if releases:
            for op in ops:
                if op.kind == RELEASE:
                    self._held_account.pop(op.params[0], None)
        self._settles_written(ops)
        remembered = self._claimed_days
        for of_call, answers, days in answered:  # the claims' results, now it is committed
            for (at, op), day in zip(of_call, days, strict=True):
                answer = answers[at]
                if answer == 1 and op.message_id is not None:  # where its settle finds the lease
                    if len(remembered) >= _CLAIMED_DAYS_MAX:
                        del remembered[next(iter(remembered))]
                    remembered[op.message_id] = day
                outcome = op.outcome
                if outcome is not None and not outcome.done():
                    outcome.set_result(answer)
        self.commit_seconds.observe(time.perf_counter() - started)
        self.transactions += 1
        self.records += len(ops)
        self.message_rows += adds
        self.held_rows += holds - releases
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
        calls), its claims: where each one's result is in the call's answer, and its op.

        A final state's container day is chosen once, the first time its record is
        encoded (kept in its params, as a hold's id: a batch sent again names the same); a
        claim's when it is queued (its params are its C record, see claim_soon); a settle's
        lease day the first time (its params become its S record)."""
        now = self._clock()
        today = _day(now)
        buckets: dict[int, _Bucket] = {}
        in_bucket = buckets.get
        folded: dict[str, list[Any]] = {}  # message id → its M record
        fold = folded.get
        holds: dict[str, list[Any]] = {}
        releases: dict[str, list[int]] = {}
        # The kinds as locals, the most frequent first: a batch is thousands of records.
        add, sent, claim, settle, final = ADD, SENT, CLAIM, SETTLE, FINAL
        for op in ops:
            kind, params = op.kind, op.params
            if kind == add:
                added, account, state, submitted_at, body, owner = params  # added: its id
                b = _bucket(added)
                bucket = in_bucket(b) or buckets.setdefault(b, _Bucket())
                record = bucket.message(added, 1, owner, float(submitted_at), int(state))
                record[-1] += (_ACCOUNT, account, _BODY, body)
                folded.setdefault(added, record)  # an id added twice: its own record
                continue
            if kind == settle:
                if len(params) == 1:  # its S record, with the day of its lease, once (-1:
                    # the script finds it)
                    settled = params[0]
                    op.params = params = ("S", settled, self._claimed_days.pop(settled, -1))
                else:
                    settled = params[1]
                b = _bucket(settled)
                (in_bucket(b) or buckets.setdefault(b, _Bucket())).records.append(params)
                continue
            if kind == claim:
                if op.outcome is not None and op.outcome.done():
                    continue  # its caller gave up (a deadline): not claimed for nobody
                claimed = params[1]  # its id (the params are its C record)
                b = _bucket(claimed)
                (in_bucket(b) or buckets.setdefault(b, _Bucket())).claim(op)
                # What this node writes of the message after the claim comes after it.
                folded.pop(claimed, None)
                continue
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
            mid = op.message_id
            assert mid is not None
            found = fold(mid)
            if found is None:
                b = _bucket(mid)
                bucket = in_bucket(b) or buckets.setdefault(b, _Bucket())
                record = folded[mid] = bucket.message(mid, 0, "", 0.0, 0)
            else:
                record = found
            if kind == sent:
                carrier, carrier_message_id, key, _ = params
                record[-1] += (_CARRIER, carrier, _CARRIER_ID, carrier_message_id, _KEY, key or "")
                if key is not None:
                    name = f"{carrier}:{key}"
                    b = zlib.crc32(name.encode()) % BUCKETS  # (seen once: not cached)
                    (in_bucket(b) or buckets.setdefault(b, _Bucket())).index(name, mid)
            elif kind == UPDATE:
                account, submitted_at, body, _ = params
                record[-1] += (_ACCOUNT, account, _SUBMITTED_AT, float(submitted_at), _BODY, body)
            elif kind == final:
                if len(params) == 4:  # its container day, once
                    done = params[2]
                    day = -1 if done is None else self._final_day(done, today)
                    op.params = params = (*params, day)
                state, error, done_at, _, day = params
                record[_FINAL_AT : _FINAL_AT + 5] = (
                    1,
                    int(state),
                    int(error),
                    0 if done_at is None else float(done_at),
                    day,
                )
            elif not (record[_FINAL_AT] == 1 and record[_FINAL_AT + 3] != 0):
                # CANCEL, unless a final state came first in this batch
                if len(params) == 3:  # its container day, once
                    op.params = params = (*params, self._final_day(params[1], today))
                state, done_at, _, day = params
                record[_FINAL_AT : _FINAL_AT + 5] = (1, int(state), 0, float(done_at), day)
        times = self._times(now)
        calls: list[tuple[Any, ...]] = [
            bucket.call(self._sha["batch"], self._tag(b), times) for b, bucket in buckets.items()
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
        if isinstance(exc, ResponseError) and str(exc).startswith("BUSY "):
            return "busy"  # a script runs past busy-reply-threshold: every command waits
        if isinstance(exc, ResponseError) and str(exc).startswith("NOREPLICAS"):
            return "replicas"  # fewer replicas than its min-replicas-to-write
        if isinstance(exc, ResponseError) and str(exc).startswith("MASTERDOWN"):
            return "unreachable"  # a replica that lost its master serves nothing
        if isinstance(exc, ResponseError) and str(exc).startswith(("OOM", "MISCONF")):
            return "no_memory" if str(exc).startswith("OOM") else "read_only"
        return None

    async def _purge_step(self) -> None:
        """One round of the oldest purge, two round trips: up to ``purge_batch`` expired
        held items of every account that has held items, and up to ``purge_batch`` final
        messages of the day containers before the cutoff's day of every bucket (day by day:
        a message done on the cutoff's own day goes with its day, at the next purge after
        it). The purge is done after a round that
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
            cutoff_day = _day(job.cutoff)
            for tag in map(self._tag, range(BUCKETS)):
                calls.append(
                    ("EVALSHA", self._sha["purge_messages"], 1, f"{tag}:days", tag,
                     cutoff_day, limit)
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
        """One script call: ``HGET`` of the bucket's live hash, else of its day containers,
        the most recent first."""
        async with self._deadline("get"):
            seq = self._pending_ids.get(message_id)
            if seq is not None:
                await self._until(seq)
            tag = self._tag(_bucket(message_id))
            found = await self._call(
                "get", "EVALSHA", self._sha["get"], 1, f"{tag}:live", tag, message_id
            )
        return None if found is None else self._stored(found)

    def _stored(self, record: bytes) -> StoredMessage:
        """A message from its record (see RECORD_LUA)."""
        size = int.from_bytes(record[:2], "big")
        head = _decode_head(record[2 : 2 + size])
        return StoredMessage(
            message=self._decode(record[2 + size :]),
            state=MessageState(head.state),
            error=head.error,
            carrier=head.carrier,
            carrier_message_id=head.carrier_message_id,
            done_at=head.done_at or None,
            owner=head.owner,
        )

    def _stored_pairs(self, flat: Sequence[Any]) -> list[StoredMessage]:
        """Messages from id, record, id, record, ... (a script's answer)."""
        return [self._stored(flat[n + 1]) for n in range(0, len(flat), 2)]

    async def find_sent(self, carrier: str, key: str) -> str | None:
        """One script call: ``HGET`` of the receipt index of tomorrow (a node whose clock
        is ahead), today, and back to the oldest day an index may still be kept."""
        pending = self._pending_sent.get((carrier, key))
        if pending is not None:
            return pending[0]
        name = f"{carrier}:{key}"
        tag = self._tag(_bucket(name))
        first = _day(self._clock()) + 1
        last = first - self._window - 3
        async with self._deadline("find_sent"):
            found = await self._call(
                "find_sent", "EVALSHA", self._sha["find_sent"], 1, f"{tag}:rk:{first}", tag,
                first, last, name,
            )  # fmt: skip
        return None if found is None else found.decode()

    async def unfinished(self) -> list[StoredMessage]:
        """This node's unfinished messages: one pipeline of a script per bucket (its index
        of this node's, one HMGET of the live hash; a member not live that the version
        before wrote, as a node of it that ran on after the format's change, is moved into
        this layout, and its receipt index written: one more pipeline). The wait for queued
        writes has the read deadline; the reads none.

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
            sha = self._sha["owned"]
            calls: list[tuple[Any, ...]] = [
                ("EVALSHA", sha, 2, f"{tag}:live", f"{tag}:u:{self._node_id}", tag)
                for tag in map(self._tag, range(BUCKETS))
            ]
            out = await self._moved_out(client, await self._read_all(client, calls))
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
        taken once; one the version before wrote is moved into this layout, as in
        :meth:`unfinished`) and returns them."""
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
            sha = self._sha["take_over"]
            calls: list[tuple[Any, ...]] = [
                ("EVALSHA", sha, 3, f"{tag}:live", f"{tag}:u:{node_id}",
                 f"{tag}:u:{self._node_id}", self._node_id, node_id, tag)
                for tag in map(self._tag, range(BUCKETS))
            ]  # fmt: skip
            out = await self._moved_out(client, await self._read_all(client, calls))
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

    def stored(self, record: bytes) -> StoredMessage:
        """A message from its record (see RECORD_LUA)."""
        return self._stored(record)

    async def claim_final(self, message_id: str, report: DeliveryReport) -> bool:
        """A C record of the writer's next batch (after this node's queued writes of the
        message): the batch script's compare-and-set, with a report lease of
        ``claim_seconds`` until :meth:`settle_final`. No round trip of its own: the claim
        makes the writer send its batch at once (as an add whose ack waits for its commit
        does) and waits for that batch's answer, within ``read_timeout``.

        Redis unwritable: StoreError at once, as a read (a claim is not kept queued for a
        caller that has moved on; the carrier sends the receipt again)."""
        return self.claim_won(message_id, await self.claim_soon(message_id, report))

    def claim_soon(self, message_id: str, report: DeliveryReport) -> asyncio.Future[int]:
        """:meth:`claim_final`'s C record, queued now; the future has the script's answer
        for it (see _BATCH_LUA: 1 won, 0 no such message, 2 a duplicate, 3 another live
        claim) once its batch is committed, or fails (StoreError) when it is not written,
        or (StoreTimeout) past the read deadline."""
        if not is_final(report.state):
            raise ValueError(f"not a final state: {report.state!r}")
        if self._unwritable is not None:
            raise StoreError(f"store: claim_final: Redis cannot be written ({self._unwritable})")
        now = self._clock()
        done_at = report.done_at if report.done_at > 0 else now
        outcome: asyncio.Future[int] = self._running_loop().create_future()
        # Each claim's lease value is its own (the script takes an equal value for this
        # claim sent again): two claims of one node in one millisecond differ by the end.
        until = max(int((now + self._claim_seconds) * 1000), self._last_until + 1)
        self._last_until = until
        # The params are the C record itself (see _BATCH_LUA), its container day chosen
        # now, once (a batch sent again names the same).
        params = (
            "C",
            message_id,
            int(report.state),
            report.error,
            float(done_at),
            self._node_id,
            str(int(now * 1000)),
            str(until),
            self._final_day(done_at, _day(now)),
        )
        # The writer settles ``outcome``: the script's answer once the batch is committed
        # (_transaction), else StoreError (not written, or no answer: never a hang).
        self._put(Op(CLAIM, params, message_id=message_id, outcome=outcome))
        # The read deadline: past it ``outcome`` fails (and a claim not sent yet is then
        # not sent). One timer for all the claims waiting (a claim per final receipt: a
        # timeout scope or a timer each costs more than the rest of the claim).
        self._wait_for_written(outcome, self._claims_waiting)
        return outcome

    def claim_won(self, message_id: str, answer: int) -> bool:
        if answer == 3:
            raise StoreError(f"message {message_id}: its final receipt is being reported")
        return answer == 1

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop if self._loop is not None else asyncio.get_running_loop()

    def _wait_for_written(self, future: asyncio.Future[Any], waiting: _Deadlines) -> None:
        """``future`` fails (StoreTimeout) if its record is not written within the read
        deadline. One timer for all the claims (settles) waiting (one per final receipt:
        a timeout scope or a timer each costs more than the rest of the claim)."""
        loop = self._running_loop()
        futures, ends = waiting.futures, waiting.ends
        while futures and futures[0].done():  # answered (mostly in order)
            futures.popleft()
            ends.popleft()
        futures.append(future)
        ends.append(loop.time() + self._config.read_timeout)
        if waiting.timer is None:
            waiting.timer = loop.call_at(ends[0], self._expire, waiting)

    def _expire(self, waiting: _Deadlines) -> None:
        """Fail the futures waiting past their deadline; the timer is set again for the
        next one waiting, if any (deadlines come in order: one ``read_timeout`` each)."""
        waiting.timer = None
        futures, ends = waiting.futures, waiting.ends
        loop = self._running_loop()
        now = loop.time()
        while futures and (futures[0].done() or ends[0] <= now):
            future = futures.popleft()
            ends.popleft()
            if not future.done():
                self.read_timeouts += 1
                why = f" (cannot write: {self._unwritable})" if self._unwritable else ""
                limit = self._config.read_timeout
                future.set_exception(
                    StoreTimeout(f"store: {waiting.what} took more than {limit:g} s{why}")
                )
        if futures:
            waiting.timer = loop.call_at(ends[0], self._expire, waiting)

    def settle_final(self, message_id: str) -> asyncio.Future[None]:
        """The claimed final state's receipt is delivered or held: its lease goes, and a
        later claim is a duplicate. An S record of the writer's next batch (no round trip
        of its own), which it sends at once, as for a claim; the future is done once it is
        written, or fails (StoreTimeout) past the read deadline — the record stays queued,
        also while Redis cannot be written, and is written when it can (a late one is
        harmless: the receipt was delivered or held). Not written at all (a node that dies
        first): the lease lapses after ``claim_seconds`` instead.

        The settles queued between two of the writer's batches share one future (a
        ``_Settles`` group, done once the batch that has the group's last record is
        committed): one future, one deadline and one done callback per batch, not per
        final receipt. A group takes settles while its first record is still queued."""
        groups = self._settle_groups
        group = groups[-1] if groups else None
        queue = self._queue
        joins = (
            group is not None
            and bool(queue)
            and queue[0].seq <= group.first
            and not group.future.done()  # (past its deadline: a new one for a new wait)
        )
        op = Op(SETTLE, (message_id,))
        self._put(op, hurry=not joins)  # the group's first record sends the batch at once
        if group is not None and joins:
            group.last = op.seq
            return group.future
        written: asyncio.Future[None] = self._running_loop().create_future()
        groups.append(_Settles(written, op.seq, op.seq))
        self._wait_for_written(written, self._settles_waiting)
        return written

    def _settles_written(self, ops: list[Op]) -> None:
        """``ops`` are committed: the settle groups whose last record is among them or
        before them are done (batches are written in the order they were queued)."""
        groups = self._settle_groups
        if not groups or not ops:
            return
        written = ops[-1].seq
        while groups and groups[0].last <= written:
            future = groups.popleft().future
            if not future.done():
                future.set_result(None)

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
