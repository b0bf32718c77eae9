"""Signals between the nodes of a cluster (``router.ports.Signals``) on one Redis stream,
``{P}:signals`` (capped, about ``_KEPT`` entries): each signal one entry (its msgpack in
field ``s``); each node reads every entry from where it joined (``XREAD BLOCK``) and keeps
those from the other nodes that are for it or for every node.

A stream, not pub/sub: a node whose connection drops for a moment reads on from its last
entry (pub/sub would lose what was published meanwhile). Signals are few: one per account
and batch of held deliveries on a node without a receiver of it, one (and its answer) per
cancel_sm or replace_sm of a message another node holds."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import msgspec
import redis.asyncio as aioredis

from router.cluster.config import ClusterConfig
from router.cluster.redis import block_ms, connect, reaching
from router.ports import Signal

#: Entries kept in the stream (about): far more than the nodes read between two reads.
_KEPT = 10_000
#: Entries read at a time.
_BATCH = 256

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Signal).decode


class RedisSignals:
    """``Signals`` through the client ``client`` (closed on :meth:`close` when
    ``owns_client``)."""

    def __init__(
        self,
        client: aioredis.Redis,
        node_id: str,
        *,
        key_prefix: str = "smsc",
        owns_client: bool = True,
    ) -> None:
        self.node_id = node_id
        self._redis = client
        self._owns = owns_client
        self._key = f"{{{key_prefix}}}:signals"
        #: The last entry read; "$" until the first read (what came before is not ours).
        self._from = "$"
        #: Sends (each a round trip; a signal counts one command).
        self.commands = 0

    @classmethod
    def from_config(cls, config: ClusterConfig, node_id: str) -> RedisSignals:
        return cls(connect(config), node_id, key_prefix=config.key_prefix)

    async def open(self) -> None:
        """Start reading at the stream's end now (signals sent before are not for us)."""
        async with reaching("signals"):
            got: Any = await self._redis.xrevrange(self._key, count=1)
        self._from = got[0][0].decode() if got else "0-0"

    async def send(self, signals: Sequence[Signal]) -> None:
        if not signals:
            return
        async with (
            reaching("signals"),
            self._redis.pipeline(transaction=False) as pipe,  # reset when left
        ):
            for signal in signals:
                pipe.xadd(self._key, {"s": _encode(signal)}, maxlen=_KEPT, approximate=True)
            await pipe.execute()
        self.commands += len(signals)

    async def next(self, timeout: float) -> list[Signal]:
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            block = block_ms(self._redis, left)
            async with reaching("signals"):
                got: Any = await self._redis.xread(
                    {self._key: self._from}, count=_BATCH, block=block
                )
            out: list[Signal] = []
            for _stream, entries in got or ():
                for entry_id, fields in entries:
                    self._from = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                    try:
                        signal = _decode(fields[b"s"])
                    except (KeyError, msgspec.DecodeError):
                        continue  # not ours to read (another version): skipped
                    if signal.origin != self.node_id and signal.to in ("", self.node_id):
                        out.append(signal)
            if out:
                return out
        return []

    async def close(self) -> None:
        if self._owns:
            await self._redis.aclose()
