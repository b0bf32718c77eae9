"""The overview's data: one sample a second of smsc's counters, the last 15 minutes of
them in a ring (in process: no Prometheus needed), handed to every live subscriber (the
console's Server-Sent Events streams) as it is taken.

Taking a sample reads plain counters the server, router and delivery keep anyway (what
``/metrics`` reads at scrape time): nothing is added to the hot path. Rates are the
differences of two samples; submit latency quantiles come from the difference of the
submit latency histogram's buckets over the last second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import msgspec

from router.metrics import Histogram
from smppcore.constants import CommandId

if TYPE_CHECKING:
    from smsc.app import App

log = logging.getLogger(__name__)

#: Samples kept: 15 minutes of one a second.
RING: Final = 900
#: Live subscribers at most (each a browser tab on the overview).
MAX_SUBSCRIBERS: Final = 32
#: Samples a subscriber may fall behind before it is dropped (its stream ends).
SUBSCRIBER_BACKLOG: Final = 8
_SUBMITS: Final = (CommandId.SUBMIT_SM, CommandId.DATA_SM, CommandId.SUBMIT_MULTI)


class Sample(msgspec.Struct, frozen=True, kw_only=True):
    """One second of the node, as the overview plots it."""

    t: float
    """Unix seconds."""
    accepted: int
    """Submits accepted (submit_sm, data_sm, submit_multi answered ESME_ROK) so far."""
    sent: int
    """Messages routed to a carrier (each attempt) so far."""
    finals: dict[str, int]
    """Messages that reached each final state so far."""
    accepted_s: float
    sent_s: float
    finals_s: dict[str, float]
    queue: int
    """Messages waiting (ready, scheduled, parked)."""
    p50_ms: float | None
    p99_ms: float | None
    """Submit latency (received → answered) over the last second; None: no submit."""
    binds: int
    carriers_up: int
    carriers: int
    held: int
    """Receipts and MO held for accounts with no receive-capable bind."""


class _Counts(msgspec.Struct, frozen=True):
    at: float
    accepted: int
    sent: int
    finals: dict[str, int]
    latency: tuple[int, ...]


def quantile(bounds: tuple[float, ...], counts: list[int], q: float) -> float | None:
    """The ``q`` quantile of a bucketed distribution (linear within the bucket, as
    Prometheus' histogram_quantile); None when it is empty. The +Inf bucket answers its
    lower bound."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            low = bounds[i - 1] if i > 0 else 0.0
            if i >= len(bounds):
                return low
            return low + (bounds[i] - low) * (rank - seen) / n
        seen += n
    return bounds[-1] if bounds else None


class Sampler:
    """``start()`` takes a sample every ``interval`` seconds while the node runs;
    ``subscribe()`` gives a bounded queue of the samples to come; ``await stop()``."""

    def __init__(
        self, app: App, *, interval: float = 1.0, clock: Callable[[], float] = time.time
    ) -> None:
        self.app = app
        self.interval = interval
        self.clock = clock
        self.ring: deque[Sample] = deque(maxlen=RING)
        self._last: _Counts | None = None
        self._subscribers: set[asyncio.Queue[Sample | None]] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="console-sampler")

    async def stop(self) -> None:
        """Stop sampling and end every subscriber's stream."""
        for queue in list(self._subscribers):
            self._end(queue)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def subscribe(self) -> asyncio.Queue[Sample | None] | None:
        """A queue of the samples to come (None at its end); None: too many already."""
        if len(self._subscribers) >= MAX_SUBSCRIBERS:
            return None
        queue: asyncio.Queue[Sample | None] = asyncio.Queue(SUBSCRIBER_BACKLOG + 1)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Sample | None]) -> None:
        self._subscribers.discard(queue)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def _end(self, queue: asyncio.Queue[Sample | None]) -> None:
        self._subscribers.discard(queue)
        while queue.full():
            queue.get_nowait()
        queue.put_nowait(None)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            next_at += self.interval
            await asyncio.sleep(max(0.0, next_at - loop.time()))  # the sampling period
            if next_at < loop.time() - self.interval:  # the loop was held up: catch up
                next_at = loop.time()
            try:
                sample = self.take()
            except Exception:  # a bug must not end the console's charts for good
                log.exception("console sample failed")
                continue
            if sample is not None:
                self.publish(sample)

    def publish(self, sample: Sample) -> None:
        self.ring.append(sample)
        for queue in list(self._subscribers):
            if queue.qsize() >= SUBSCRIBER_BACKLOG:
                self._end(queue)  # a reader that does not keep up: its stream ends
            else:
                queue.put_nowait(sample)

    def take(self) -> Sample | None:
        """A sample now (None while the node is not running: nothing to read)."""
        app = self.app
        server, router, delivery = app.server, app.router, app.delivery
        if not app.started or server is None or router is None or delivery is None:
            self._last = None
            return None
        now = self.clock()
        pdus = server.metrics.pdus
        latency: Histogram = server.metrics.submit_latency
        finals: dict[str, int] = {}
        for (_account, state), n in router.metrics.final.items():
            finals[state] = finals.get(state, 0) + n
        counts = _Counts(
            at=now,
            accepted=sum(pdus.get((int(c), 0), 0) for c in _SUBMITS),
            sent=sum(c.decisions for c in router.metrics.carriers.values()),
            finals=finals,
            latency=tuple(latency.counts),
        )
        last, self._last = self._last, counts
        span = (counts.at - last.at) if last is not None else 0.0
        if last is None or span <= 0:
            last, span = counts, 1.0
        window = [a - b for a, b in zip(counts.latency, last.latency, strict=True)]
        p50 = quantile(latency.bounds, window, 0.5)
        p99 = quantile(latency.bounds, window, 0.99)
        pools = router.pools
        return Sample(
            t=now,
            accepted=counts.accepted,
            sent=counts.sent,
            finals=finals,
            accepted_s=(counts.accepted - last.accepted) / span,
            sent_s=(counts.sent - last.sent) / span,
            finals_s={state: (n - last.finals.get(state, 0)) / span for state, n in finals.items()},
            queue=len(router.queue),
            p50_ms=None if p50 is None else p50 * 1000,
            p99_ms=None if p99 is None else p99 * 1000,
            binds=len(server.binds),
            carriers_up=sum(1 for pool in pools.values() if pool.bound > 0),
            carriers=len(pools),
            held=sum(delivery.waiting_by_account.values()),
        )
