"""The coordinator of a cluster: the nodes share their registry and their limits through
Redis (redis-py's asyncio client; hiredis parses). Each operation is one script or one
pipeline, so that it is atomic where it must be and costs one round trip.

Keys (``P`` is ``cluster.key_prefix``), laid out for Redis Cluster: the keys a script
touches share one hash tag (``{...}``), so they live in one slot; different accounts,
buckets and carriers spread over slots.

==============================  =======  =====================================================
key                             type     holds
==============================  =======  =====================================================
``{P}:nodes``                   hash     node id -> JSON (its report, bind slots, heartbeat)
``{P}:beats``                   zset     node id -> wall-clock time of its last heartbeat
``{P}:owners``                  hash     node id -> the instance (random) that runs it
``{P}:reload``                  stream   reloads published (origin, reason), capped ~100
``{P:acct:A}:sessions``         zset     session slot of account A -> expiry (wall clock)
``{P:tb:B}``                    hash     token bucket B: ``tokens``, ``ts`` (last refill)
``{P:carrier:C}:holders``       zset     node id -> expiry of its bind slots of carrier C
``{P:carrier:C}:counts``        hash     node id -> bind slots of carrier C it holds
==============================  =======  =====================================================

Time: every script takes ``now`` from the caller (the node's wall clock); a node is dead,
and its slots free, once ``now`` on another node passes its last heartbeat plus ``lease``.
Nodes' clocks are to agree (NTP) to well within ``lease``. Keys that only a live node
renews also get a Redis expiry, so that a deployment that goes away leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import math
import secrets
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from router.cluster.config import ClusterConfig
from router.ports import ClusterUnavailable, NodeIdTaken, NodeReport, NodeState, ReloadNotice

#: Registry entries of nodes dead this many leases (and at least a minute) are dropped.
_FORGET_LEASES = 10.0
#: Reload notices kept in the stream (about).
_RELOADS_KEPT = 100

# KEYS: nodes, beats, owners. ARGV: id, instance, now, lease, payload, forget_before.
# Returns 0 when another instance holds the id with a live heartbeat, else 1.
_BEAT = """
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
local owner = redis.call('HGET', KEYS[3], ARGV[1])
if score and owner and owner ~= ARGV[2]
    and tonumber(score) + tonumber(ARGV[4]) > tonumber(ARGV[3]) then
  return 0
end
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[6])
for _, id in ipairs(old) do
  redis.call('HDEL', KEYS[1], id)
  redis.call('HDEL', KEYS[3], id)
  redis.call('ZREM', KEYS[2], id)
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[5])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return 1
"""

# KEYS: sessions. ARGV: limit, now, expiry, token, ttl_ms. Returns 1 (taken) or 0 (full).
_SESSION = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""

# KEYS: bucket. ARGV: rate, burst, want, now, ttl_ms. Returns the tokens granted.
_TOKENS = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local want, now = tonumber(ARGV[3]), tonumber(ARGV[4])
local v = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens, ts = tonumber(v[1]), tonumber(v[2])
if tokens == nil or ts == nil then
  tokens, ts = burst, now
end
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate)
  ts = now
end
local grant = math.min(want, math.floor(tokens))
if grant < 0 then grant = 0 end
tokens = tokens - grant
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens),
           'ts', string.format('%.17g', ts))
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return grant
"""

# KEYS: holders, counts. ARGV: node, total, want, now, expiry, ttl_ms.
# Returns the bind slots the node holds after the claim.
_BINDS = """
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[4])
for _, id in ipairs(dead) do
  redis.call('HDEL', KEYS[2], id)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[4])
local others = 0
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  if all[i] ~= ARGV[1] then others = others + tonumber(all[i + 1]) end
end
local held = math.min(tonumber(ARGV[3]), tonumber(ARGV[2]) - others)
if held <= 0 then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
redis.call('HSET', KEYS[2], ARGV[1], held)
redis.call('ZADD', KEYS[1], ARGV[5], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
return held
"""


class _Entry(msgspec.Struct, frozen=True):
    """A node's registry entry."""

    report: NodeReport
    bind_slots: dict[str, int]
    heartbeat_at: float
    left_at: float | None = None


@contextlib.asynccontextmanager
async def reaching(what: str) -> AsyncIterator[None]:
    """Redis's connection errors and timeouts as ClusterUnavailable."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, TimeoutError, OSError) as exc:
        raise ClusterUnavailable(f"redis unreachable ({what}): {exc}") from exc


def block_ms(client: aioredis.Redis, left: float) -> int:
    """Milliseconds a blocking read (XREAD BLOCK) may wait: what is ``left``, in slices of
    at most 1 s and half the client's socket timeout (else the socket times out first)."""
    timeout = client.connection_pool.connection_kwargs.get("socket_timeout") or 2.0
    return max(1, int(min(left, 1.0, float(timeout) / 2) * 1000))


def connect(config: ClusterConfig) -> aioredis.Redis:
    """A client (a pool of connections) for ``config.redis``; every command has
    ``config.timeout`` seconds."""
    if config.redis is None:
        raise ValueError("cluster.redis is not set")
    options: dict[str, Any] = {
        "socket_timeout": config.timeout,
        "socket_connect_timeout": config.timeout,
        "max_connections": 64,
    }
    if config.password is not None:
        options["password"] = config.password
    if config.username is not None:
        options["username"] = config.username
    if config.redis.startswith("rediss:"):
        options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
        if config.tls_ca is not None:
            options["ssl_ca_certs"] = config.tls_ca
    return aioredis.Redis.from_url(config.redis, **options)


class RedisCoordinator:
    """One node's view of the cluster, through the Redis client ``client`` (which it
    closes on :meth:`close` when ``owns_client``)."""

    def __init__(
        self,
        client: aioredis.Redis,
        node_id: str,
        *,
        lease: float = 10.0,
        key_prefix: str = "smsc",
        owns_client: bool = True,
    ) -> None:
        self.node_id = node_id
        self.lease = lease
        self._redis = client
        self._owns = owns_client
        self._p = key_prefix
        self._instance = secrets.token_hex(8)
        self._seq = 0
        self._ttl_ms = max(60_000, math.ceil(lease * 3000))
        self._report = NodeReport()
        #: account -> this node's session slot tokens
        self._mine: dict[str, set[str]] = {}
        #: carrier -> (total, want) of its claim, and what it holds
        self._claims: dict[str, tuple[int, int]] = {}
        self._held: dict[str, int] = {}
        self._reload_from = "0-0"
        #: open() succeeded: the registry entry under this id is this node's.
        self._joined = False
        #: ``now`` of the last heartbeat written.
        self._beat_at = 0.0
        self._beat = client.register_script(_BEAT)
        self._session = client.register_script(_SESSION)
        self._tokens = client.register_script(_TOKENS)
        self._binds = client.register_script(_BINDS)

    @classmethod
    def from_config(cls, config: ClusterConfig, node_id: str) -> RedisCoordinator:
        return cls(connect(config), node_id, lease=config.lease, key_prefix=config.key_prefix)

    # --- keys ----------------------------------------------------------------------------

    def _registry(self) -> list[str]:
        p = self._p
        return [f"{{{p}}}:nodes", f"{{{p}}}:beats", f"{{{p}}}:owners"]

    def _sessions_key(self, account: str) -> str:
        return f"{{{self._p}:acct:{account}}}:sessions"

    def _carrier_keys(self, carrier: str) -> list[str]:
        tag = f"{{{self._p}:carrier:{carrier}}}"
        return [f"{tag}:holders", f"{tag}:counts"]

    # --- registry ------------------------------------------------------------------------

    async def _register(self, now: float) -> None:
        entry = _Entry(self._report, {k: n for k, n in self._held.items() if n}, now)
        self._beat_at = now
        forget = now - max(60.0, _FORGET_LEASES * self.lease)
        async with reaching("heartbeat"):
            ok = await self._beat(
                keys=self._registry(),
                args=[
                    self.node_id,
                    self._instance,
                    repr(now),
                    repr(self.lease),
                    msgspec.json.encode(entry),
                    repr(forget),
                ],
            )
        if not ok:
            raise NodeIdTaken(f"node id {self.node_id!r} is in use by a live node")

    async def open(self, now: float) -> None:
        await self._register(now)
        self._joined = True
        async with reaching("open"):
            last: Any = await self._redis.xrevrange(f"{{{self._p}}}:reload", count=1)
        if last:
            self._reload_from = _text(last[0][0])

    async def close(self, *, leave: bool = True) -> None:
        try:
            if not self._joined:  # never joined: the id may be another live node's
                return
            self._joined = False
            async with (
                reaching("close"),
                self._redis.pipeline(transaction=False) as pipe,  # reset when left
            ):
                # The entry stays. Leaving, it is marked as left: the other nodes count
                # this node dead at their next heartbeat and take over what it has not
                # finished (messages still queued here, or sent and waiting for their
                # receipts) at once, not after its lease; it is forgotten as a dead node's
                # is. The owner goes either way, so the same id may join again at once.
                nodes, _, owners = self._registry()
                if leave:
                    entry = _Entry(self._report, {}, self._beat_at, left_at=time.time())
                    pipe.hset(nodes, self.node_id, msgspec.json.encode(entry))
                pipe.hdel(owners, self.node_id)
                for account, tokens in self._mine.items():
                    if tokens:
                        pipe.zrem(self._sessions_key(account), *tokens)
                for carrier in self._claims:
                    holders, counts = self._carrier_keys(carrier)
                    pipe.zrem(holders, self.node_id)
                    pipe.hdel(counts, self.node_id)
                await pipe.execute()
        finally:
            self._mine.clear()
            self._claims.clear()
            self._held.clear()
            if self._owns:
                await self._redis.aclose()

    async def heartbeat(self, report: NodeReport, now: float) -> dict[str, int]:
        self._report = report
        until = now + self.lease
        async with (
            reaching("heartbeat"),
            self._redis.pipeline(transaction=False) as pipe,  # reset when left
        ):
            for account, tokens in self._mine.items():
                if tokens:
                    key = self._sessions_key(account)
                    # Added back, not only renewed: after a Redis restart the sessions
                    # bound here count again (``tokens`` are exactly this node's live ones).
                    pipe.zadd(key, dict.fromkeys(tokens, until))
                    pipe.pexpire(key, self._ttl_ms)
            claims = list(self._claims.items())
            for carrier, (total, want) in claims:
                await self._claim(pipe, carrier, total, want, now)  # queued in pipe
            results = await pipe.execute() if len(pipe) else []
        held_now = results[len(results) - len(claims) :]
        for (carrier, _claim), held in zip(claims, held_now, strict=True):
            self._held[carrier] = int(held)
        await self._register(now)
        return {name: n for name, n in self._held.items() if n}

    async def nodes(self, now: float) -> tuple[NodeState, ...]:
        async with reaching("nodes"):
            raw = await self._redis.hgetall(self._registry()[0])
        out = []
        for node_id, payload in raw.items():
            try:
                entry = msgspec.json.decode(payload, type=_Entry)
            except msgspec.ValidationError:
                continue  # written by another version: not ours to read
            age = max(0.0, now - entry.heartbeat_at)
            out.append(
                NodeState(
                    node_id=_text(node_id),
                    report=entry.report,
                    bind_slots=entry.bind_slots,
                    heartbeat_at=entry.heartbeat_at,
                    age=age,
                    alive=entry.left_at is None and age <= self.lease,
                    left=entry.left_at is not None,
                )
            )
        return tuple(sorted(out, key=lambda n: n.node_id))

    # --- session slots -------------------------------------------------------------------

    async def acquire_session(self, account: str, limit: int, now: float) -> str | None:
        self._seq += 1
        token = f"{self.node_id}:{self._instance}:{self._seq}"
        async with reaching("session"):
            taken = await self._session(
                keys=[self._sessions_key(account)],
                args=[limit, repr(now), repr(now + self.lease), token, self._ttl_ms],
            )
        if not taken:
            return None
        self._mine.setdefault(account, set()).add(token)
        return token

    async def release_session(self, account: str, slot: str) -> None:
        mine = self._mine.get(account)
        if mine is not None:
            mine.discard(slot)
            if not mine:
                del self._mine[account]
        async with reaching("session"):
            await self._redis.zrem(self._sessions_key(account), slot)

    async def sessions(self, account: str, now: float) -> int:
        async with reaching("sessions"):
            return int(await self._redis.zcount(self._sessions_key(account), f"({now!r}", "+inf"))

    # --- token buckets -------------------------------------------------------------------

    async def take_tokens(
        self, bucket: str, rate: float, burst: float, want: int, now: float
    ) -> int:
        ttl = max(60_000, math.ceil(burst / rate * 1000) + 60_000)
        async with reaching("tokens"):
            granted = await self._tokens(
                keys=[f"{{{self._p}:tb:{bucket}}}"],
                args=[repr(rate), repr(burst), want, repr(now), ttl],
            )
        return int(granted)

    # --- carrier bind slots --------------------------------------------------------------

    def _claim(self, client: Any, carrier: str, total: int, want: int, now: float) -> Any:
        return self._binds(
            keys=self._carrier_keys(carrier),
            args=[self.node_id, total, want, repr(now), repr(now + self.lease), self._ttl_ms],
            client=client,
        )

    async def claim_binds(self, carrier: str, total: int, want: int, now: float) -> int:
        self._claims[carrier] = (total, want)
        async with reaching("binds"):
            held = int(await self._claim(self._redis, carrier, total, want, now))
        self._held[carrier] = held
        return held

    async def release_binds(self, carrier: str) -> None:
        self._claims.pop(carrier, None)
        self._held.pop(carrier, None)
        holders, counts = self._carrier_keys(carrier)
        async with (
            reaching("binds"),
            self._redis.pipeline(transaction=True) as pipe,  # reset when left
        ):
            pipe.zrem(holders, self.node_id)
            pipe.hdel(counts, self.node_id)
            await pipe.execute()

    # --- reload fan-out ------------------------------------------------------------------

    async def publish_reload(self, reason: str) -> None:
        async with reaching("reload"):
            await self._redis.xadd(
                f"{{{self._p}}}:reload",
                {"origin": self.node_id, "reason": reason},
                maxlen=_RELOADS_KEPT,
                approximate=True,
            )

    async def next_reload(self, timeout: float) -> ReloadNotice | None:
        key = f"{{{self._p}}}:reload"
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            block = block_ms(self._redis, left)
            async with reaching("reload"):
                got: Any = await self._redis.xread({key: self._reload_from}, count=16, block=block)
            for _stream, entries in got or ():
                for entry_id, fields in entries:
                    self._reload_from = _text(entry_id)
                    origin = _text(fields.get(b"origin", b""))
                    if origin != self.node_id:
                        return ReloadNotice(origin=origin, reason=_text(fields.get(b"reason", b"")))
        return None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
