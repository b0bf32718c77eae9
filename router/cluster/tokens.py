"""A node's share of a cluster-wide token bucket (an account's ``throughput``, a carrier's
``rate``), held in this process so that spending a token costs no round trip: the node
takes tokens from the shared bucket in batches (one script call each, see
:meth:`router.ports.Coordinator.take_tokens`) and asks for the next batch while it still
has a few left.

A batch is about ``BATCH_SECONDS`` of the rate, so a busy node makes about
1 / BATCH_SECONDS calls per second per bucket whatever its message rate; tokens a node
took and did not spend are lost to the others (at most one batch per node)."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

from router.ports import ClusterUnavailable, Coordinator

log = logging.getLogger(__name__)

#: Seconds of the rate taken at once.
BATCH_SECONDS = 0.05


class LeasedBucket:
    """``take()`` spends one local token (False: none left now); refills come from the
    shared bucket ``name`` of ``coordinator``."""

    def __init__(
        self,
        coordinator: Coordinator,
        name: str,
        rate: float,
        burst: float,
        *,
        batch: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.rate = rate
        self.burst = burst
        self.batch = batch or max(1, min(math.floor(burst), math.ceil(rate * BATCH_SECONDS)))
        self._low = self.batch // 4
        self._coordinator = coordinator
        self._clock = clock
        self._tokens = 0
        self._refill: asyncio.Task[int] | None = None
        #: Calls made to the shared bucket (refills).
        self.calls = 0

    @property
    def tokens(self) -> float:
        """Tokens held locally, not spent yet."""
        return float(self._tokens)

    def take(self, now: float | None = None, n: float = 1.0) -> bool:
        """Spend ``n`` local tokens (``now`` is not needed: the shared bucket keeps time; it
        is taken for the call shape of smppcore's TokenBucket). False (nothing spent): not
        that many here now (a refill is asked for)."""
        if self._tokens >= n:
            self._tokens -= math.ceil(n)
            if self._tokens <= self._low:
                self._start_refill()
            return True
        self._start_refill()
        return False

    def delay(self, now: float | None = None, n: float = 1.0) -> float:
        """Seconds until ``n`` tokens may be here: what is missing at the shared rate (an
        estimate: other nodes spend from the same bucket)."""
        missing = n - self._tokens
        return 0.0 if missing <= 0 else missing / self.rate

    def prime(self) -> None:
        """Ask for a first batch now (on the running loop), before the first take."""
        self._start_refill()

    def _start_refill(self) -> asyncio.Task[int]:
        """The refill under way, or a new one: never two calls at once for one bucket."""
        if self._refill is None or self._refill.done():
            self._refill = asyncio.get_running_loop().create_task(
                self._take_batch(), name=f"tokens-{self.name}"
            )
        return self._refill

    async def refill(self) -> int:
        """Take up to one batch from the shared bucket now (or join the refill under way);
        the tokens granted (0 when it is empty or unreachable: then take() says no until a
        later refill succeeds). Bounded by the coordinator's command timeout."""
        return await asyncio.shield(self._start_refill())

    async def _take_batch(self) -> int:
        self.calls += 1
        try:
            granted = await self._coordinator.take_tokens(
                self.name, self.rate, self.burst, self.batch, self._clock()
            )
        except ClusterUnavailable as exc:
            log.warning("token bucket %s not refilled: %s", self.name, exc)
            return 0
        self._tokens += granted
        return granted

    async def close(self) -> None:
        """Stop a refill under way."""
        if self._refill is not None:
            self._refill.cancel()
            await asyncio.gather(self._refill, return_exceptions=True)
            self._refill = None
