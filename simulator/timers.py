"""Many timed callbacks on one event-loop timer.

The carrier schedules a receipt (and maybe an ENROUTE notification and a late response)
for every message. One ``loop.call_at`` each costs a TimerHandle and a heap entry in the
loop; at tens of thousands of messages a second that was a tenth of the carrier's time.
Here they share a heap of plain tuples and one loop timer, armed for the earliest; at
equal times, callbacks run in the order they were scheduled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from heapq import heappop, heappush
from itertools import count
from typing import Any

log = logging.getLogger(__name__)

# libuv runs timers with millisecond resolution: a timer may fire up to this much early.
_SLACK = 0.001


class TimerQueue:
    """``call_at`` / ``call_later`` for the running loop, sharing one loop timer."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self._heap: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._order = count()
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at = float("inf")
        self._closed = False

    def __len__(self) -> int:
        return len(self._heap)

    def call_at(self, when: float, callback: Callable[..., None], *args: Any) -> None:
        """Run ``callback(*args)`` once the loop's clock reaches ``when``."""
        if self._closed:
            return
        heappush(self._heap, (when, next(self._order), callback, args))
        if when < self._armed_at:
            self._arm(when)

    def call_later(self, delay: float, callback: Callable[..., None], *args: Any) -> None:
        self.call_at(self._loop.time() + delay, callback, *args)

    def close(self) -> None:
        """Drop everything scheduled; later calls are ignored."""
        self._closed = True
        self._heap.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed_at = when
        self._timer = self._loop.call_at(when, self._run)

    def _run(self) -> None:
        self._timer = None
        self._armed_at = float("inf")
        heap = self._heap
        due = self._loop.time() + _SLACK
        while heap and heap[0][0] <= due:
            _, _, callback, args = heappop(heap)
            try:
                callback(*args)
            except Exception:
                log.exception("timed callback %r failed", callback)
        if heap and self._timer is None:
            self._arm(heap[0][0])
