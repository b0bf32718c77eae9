"""Many timed callbacks on one event-loop timer.

The carrier schedules a receipt (and maybe an ENROUTE notification and a late response)
for every message. One ``loop.call_at`` each costs a TimerHandle and a heap entry in the
loop; at tens of thousands of messages a second that was a tenth of the carrier's time.
Here they share one loop timer, armed for the earliest; at equal times, callbacks run in
the order they were scheduled.

Callbacks already due when scheduled (no delay: the common case of a profile without
latency) skip the heap: they go to a FIFO, kept in (time, order) order (one due earlier
than the FIFO's last goes to the heap instead). A run merges the two.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from heapq import heappop, heappush
from itertools import count
from typing import Any

log = logging.getLogger(__name__)

# libuv runs timers with millisecond resolution: a timer may fire up to this much early.
_SLACK = 0.001

_Entry = tuple[float, int, Callable[..., None], tuple[Any, ...]]


class TimerQueue:
    """``call_at`` / ``call_later`` for the running loop, sharing one loop timer."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self._time = self._loop.time
        self._heap: list[_Entry] = []
        self._ready: deque[_Entry] = deque()
        self._order = count()
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at = float("inf")
        self._closed = False

    def __len__(self) -> int:
        return len(self._heap) + len(self._ready)

    def call_at(self, when: float, callback: Callable[..., None], *args: Any) -> None:
        """Run ``callback(*args)`` once the loop's clock reaches ``when``."""
        if self._closed:
            return
        ready = self._ready
        if when <= self._time() and (not ready or ready[-1][0] <= when):
            # Due already, and not before the last one queued: the FIFO stays sorted.
            ready.append((when, next(self._order), callback, args))
        else:
            heappush(self._heap, (when, next(self._order), callback, args))
        if when < self._armed_at:
            self._arm(when)

    def call_later(self, delay: float, callback: Callable[..., None], *args: Any) -> None:
        self.call_at(self._time() + delay, callback, *args)

    def close(self) -> None:
        """Drop everything scheduled; later calls are ignored."""
        self._closed = True
        self._heap.clear()
        self._ready.clear()
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
        ready = self._ready
        due = self._time() + _SLACK
        while True:
            if ready:
                entry = ready[0]
                if heap and heap[0] < entry and heap[0][0] <= due:
                    entry = heappop(heap)
                else:
                    ready.popleft()
            elif heap and heap[0][0] <= due:
                entry = heappop(heap)
            else:
                break
            try:
                entry[2](*entry[3])
            except Exception:
                log.exception("timed callback %r failed", entry[2])
        if heap and self._timer is None:
            self._arm(heap[0][0])
