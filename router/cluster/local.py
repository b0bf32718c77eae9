"""The coordinator of a node that runs alone: everything in this process, nothing to
reach. What the Redis backend shares across nodes, this one keeps for one node with the
same meaning (the contract tests run both), so the code above it has one path."""

from __future__ import annotations

import asyncio
import itertools
import math

from router.ports import NodeReport, NodeState, ReloadNotice


class LocalCoordinator:
    """One node, its leases in memory (``now`` is the caller's wall clock)."""

    def __init__(self, node_id: str, *, lease: float = 10.0) -> None:
        self.node_id = node_id
        self.lease = lease
        self._report = NodeReport()
        self._beat: float | None = None
        self._seq = itertools.count(1)
        #: account -> slot token -> expiry
        self._sessions: dict[str, dict[str, float]] = {}
        #: bucket -> (tokens, last refill)
        self._buckets: dict[str, tuple[float, float]] = {}
        #: carrier -> (total, want, held)
        self._binds: dict[str, tuple[int, int, int]] = {}
        self._closed = asyncio.Event()

    async def open(self, now: float) -> None:
        self._beat = now

    async def close(self, *, leave: bool = True) -> None:
        self._sessions.clear()
        self._binds.clear()
        self._beat = None
        self._closed.set()

    async def heartbeat(self, report: NodeReport, now: float) -> dict[str, int]:
        self._report = report
        self._beat = now
        until = now + self.lease
        for slots in self._sessions.values():
            for token in slots:
                slots[token] = until
        return {name: held for name, (_t, _w, held) in self._binds.items() if held}

    async def nodes(self, now: float) -> tuple[NodeState, ...]:
        if self._beat is None:
            return ()
        age = max(0.0, now - self._beat)
        return (
            NodeState(
                node_id=self.node_id,
                report=self._report,
                bind_slots={name: held for name, (_t, _w, held) in self._binds.items() if held},
                heartbeat_at=self._beat,
                age=age,
                alive=age <= self.lease,
            ),
        )

    def _live(self, account: str, now: float) -> dict[str, float]:
        slots = self._sessions.setdefault(account, {})
        for token in [t for t, until in slots.items() if until <= now]:
            del slots[token]
        return slots

    async def acquire_session(self, account: str, limit: int, now: float) -> str | None:
        slots = self._live(account, now)
        if len(slots) >= limit:
            return None
        token = f"{self.node_id}:{next(self._seq)}"
        slots[token] = now + self.lease
        return token

    async def release_session(self, account: str, slot: str) -> None:
        self._sessions.get(account, {}).pop(slot, None)

    async def sessions(self, account: str, now: float) -> int:
        return len(self._live(account, now))

    async def take_tokens(
        self, bucket: str, rate: float, burst: float, want: int, now: float
    ) -> int:
        tokens, last = self._buckets.get(bucket, (burst, now))
        if now > last:
            tokens, last = min(burst, tokens + (now - last) * rate), now
        grant = max(0, min(want, math.floor(tokens)))
        self._buckets[bucket] = (tokens - grant, last)
        return grant

    async def claim_binds(self, carrier: str, total: int, want: int, now: float) -> int:
        held = max(0, min(want, total))
        self._binds[carrier] = (total, want, held)
        return held

    async def release_binds(self, carrier: str) -> None:
        self._binds.pop(carrier, None)

    async def publish_reload(self, reason: str) -> None:
        """No other node to tell."""

    async def next_reload(self, timeout: float) -> ReloadNotice | None:
        """Never one (no other node); waits ``timeout`` (or until closed)."""
        try:
            async with asyncio.timeout(timeout):
                await self._closed.wait()
        except TimeoutError:
            pass
        return None
