"""Intake: what the ESME-facing server hands the router — accepted into the queue (and
the store), paced when messages arrive faster than they leave, cancelled or replaced
while not yet sent upstream. :class:`PacedIntake` is the router's
:class:`router.ports.Intake`.

Pacing (``intake.pace_above``): while more ready messages are queued than that and a
carrier is bound to take them, a submit is answered later — when the dispatcher made room,
or after ``intake.max_wait`` regardless — so that each client's window slows it to the
rate messages leave, and the queue (and the time to a receipt) stays short. Paced submits
are bounded by the clients' windows (each waits unanswered) and by ``queue_max``.

``ack_after: store``: a submit is answered once the store has it durably; ``enqueue``: once
it is queued (the store writes behind).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable

from router.carriers import Carriers
from router.config import RouterConfig
from router.finals import Finals
from router.metrics import RouterMetrics
from router.model import Message
from router.ports import AcceptCallback, Store
from router.queue import MessageQueue
from smppcore.constants import CommandStatus, MessageState

log = logging.getLogger(__name__)


class PacedIntake:
    """Implements :class:`router.ports.Intake` over ``queue`` and ``store``; ``wake`` is
    called when a paced submit may be let in once the dispatcher runs. ``running`` (set by
    the owner): when False, paced submits are let in at once (stopping)."""

    def __init__(
        self,
        config: RouterConfig,
        *,
        queue: MessageQueue,
        store: Store,
        carriers: Carriers,
        finals: Finals,
        metrics: RouterMetrics,
        wake: Callable[[], None],
        wall: Callable[[], float] = time.time,
    ) -> None:
        #: Read live: a reload replaces it (pacing settings apply at once).
        self.config = config
        self.queue = queue
        self.store = store
        self.carriers = carriers
        self.finals = finals
        self.metrics = metrics
        self.wall = wall
        self._wake = wake
        #: Submits waiting for room in the queue, oldest first, with the loop time they
        #: arrived. Bounded by the clients' windows (each waits unanswered).
        self._paced: deque[tuple[Message, AcceptCallback, float]] = deque()
        self._pace_timer: asyncio.TimerHandle | None = None
        self._pace_at = 0.0  # when _pace_timer fires
        self.running = False

    @property
    def paced(self) -> int:
        """Submits waiting for room (intake pacing)."""
        return len(self._paced)

    def submit(self, message: Message, done: AcceptCallback) -> None:
        if self._paced or self.crowded():
            self._pace(message, done)
            return
        self._accept(message, done)

    def crowded(self) -> bool:
        """Pace intake now? More ready messages than ``intake.pace_above`` are queued while
        a carrier is bound to take them: they arrive faster than they leave. With no
        carrier bound nothing leaves: submits are queued at once, up to ``queue_max``, as
        without pacing."""
        above = self.config.intake.pace_above
        if not 0 < above <= self.queue.ready_count:
            return False
        return self.carriers.any_bound()

    def _pace(self, message: Message, done: AcceptCallback) -> None:
        if len(self._paced) >= self.config.queue_max:
            done(CommandStatus.ESME_RMSGQFUL)
            return
        loop = asyncio.get_running_loop()
        self._paced.append((message, done, loop.time()))
        self.metrics.event("paced")
        if not self.crowded():  # waiting only behind earlier ones: the dispatcher frees them
            self._wake()
        if self._pace_timer is None:
            self._pace_at = loop.time() + self.config.intake.max_wait
            self._pace_timer = loop.call_at(self._pace_at, self._pace_fired)

    def _pace_fired(self) -> None:
        self._pace_timer = None
        self.release()

    def release(self) -> None:
        """Queue (and answer) the paced submits there is room for, oldest first; those
        that waited ``intake.max_wait`` go in regardless; all of them when not running.

        Runs on every dispatcher pass while submits are paced: the timer for the oldest
        one is kept while that one waits, not cancelled and armed again each pass."""
        paced = self._paced
        loop = asyncio.get_running_loop()
        max_wait = self.config.intake.max_wait
        overdue = loop.time() - max_wait
        while paced and (not self.running or paced[0][2] <= overdue or not self.crowded()):
            message, done, _ = paced.popleft()
            self._accept(message, done)
        due = paced[0][2] + max_wait if paced else None
        timer = self._pace_timer
        if timer is not None and (due is None or due != self._pace_at):
            timer.cancel()
            timer = self._pace_timer = None
        if due is not None and timer is None:
            self._pace_at = due
            self._pace_timer = loop.call_at(due, self._pace_fired)

    def _accept(self, message: Message, done: AcceptCallback) -> None:
        if self.config.ack_after == "store":

            def durable(ok: bool) -> None:
                if not ok:
                    done(CommandStatus.ESME_RSYSERR)
                elif not self.queue.put(message, self.wall()):
                    self.queue.requeue(message)  # already promised durably: never drop it
                    done(CommandStatus.ESME_ROK)
                else:
                    done(CommandStatus.ESME_ROK)

            if not self.store.add(message, durable):
                # Cannot be stored now (the database is away: the same answer as a write
                # that failed), or the writer's queue is full (try again later).
                unstorable = self.store.unwritable is not None
                done(CommandStatus.ESME_RSYSERR if unstorable else CommandStatus.ESME_RMSGQFUL)
            return
        if not self.queue.put(message, self.wall()):
            done(CommandStatus.ESME_RMSGQFUL)
            return
        if not self.store.add(message, None):
            self.queue.remove(message.id)
            done(CommandStatus.ESME_RMSGQFUL)
            return
        done(CommandStatus.ESME_ROK)

    def cancel(self, message_id: str) -> bool:
        msg = self.queue.remove(message_id)
        if msg is None:
            return False
        self.finals.decide(msg, MessageState.DELETED, 0, "")
        return True

    def replace(self, message: Message) -> bool:
        if self.queue.replace(message):
            self.store.update_message(message)
            return True
        return False

    async def close(self, timeout: float) -> None:
        """Answer every submit still waiting — paced, or (``ack_after: store``) for its
        durable write — within ``timeout`` seconds. At shutdown, while the clients are
        still bound: an answer that finds its client gone is a message sent twice (the
        client resubmits what it never saw acknowledged)."""
        if self._pace_timer is not None:
            self._pace_timer.cancel()
            self._pace_timer = None
        paced, self._paced = self._paced, deque()
        for message, done, _ in paced:
            self._accept(message, done)
        if self.config.ack_after == "store":
            try:
                async with asyncio.timeout(timeout):
                    await self.store.flush()
            except TimeoutError:
                log.warning("shutdown: the store did not commit in %.1f s", timeout)
