"""In a cluster, the status events of a message sent through another node's HTTP API: its
receipt may land on any node, and only the sending node has its target (callback URL,
reference, legacy dialect) in memory (smsc/callbacks.py). :class:`TargetLookup` sits in
front of the webhook sink (smsc/webhooks.py): a report whose target is not in memory
waits while the target is read from the shared records (smsc/http_records_redis.py); once
read it is remembered, and the report goes on to the sink, which finds it in memory.

Reports go on in the order they came (a message's intermediate receipt before its final
one): once one waits for a lookup, those after it wait behind it. At most ``limit`` wait;
past that, and when a lookup fails or takes longer than ``timeout``, the carrier is
answered a temporary error (``settled(False)``: it sends the receipt again); with nobody
to answer, the report goes on without a target (the account's webhook, or SMPP).

It is the router's SubmitWatch too (the carrier's acceptance or a refusal: Kannel's and
Jasmin's callbacks, smsc/legacy_dlr.py): those wait for their message's target the same
way, in the same order as its receipts."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Protocol

from router.model import DeliveryReport, Message, Refusal, StoredMessage
from router.ports import ReportSink, SettledCallback, SubmitWatch
from smsc.callbacks import Callbacks, Target

log = logging.getLogger(__name__)

#: Reports waiting at once for a target (or behind one that does), at most.
LIMIT = 10_000

#: What waits: its target's read, its message id, what to do once the target is known, and
#: what to do when it cannot be read.
_Waiting = tuple[
    "asyncio.Future[Target | None]", str, Callable[[], object], Callable[[], object]
]


class Downstream(ReportSink, SubmitWatch, Protocol):
    """The webhook sink: a ReportSink and a SubmitWatch."""


class TargetLookup:
    """A ReportSink and SubmitWatch: each call to ``inner`` once its message's target is
    in ``callbacks``."""

    def __init__(
        self,
        inner: Downstream,
        callbacks: Callbacks,
        lookup: Callable[[str], Awaitable[Target | None]],
        *,
        timeout: float = 2.0,
        limit: int = LIMIT,
    ) -> None:
        self.inner = inner
        self.callbacks = callbacks
        self.lookup = lookup
        self.timeout = timeout
        self.limit = limit
        self._waiting: deque[_Waiting] = deque()
        #: Lookups running, by message id (owned here: stop()).
        self._tasks: dict[str, asyncio.Task[Target | None]] = {}
        #: Reports refused for now (the carrier answered a temporary error).
        self.refused = 0

    def report(
        self,
        stored: StoredMessage,
        report: DeliveryReport,
        settled: SettledCallback | None = None,
    ) -> None:
        def refuse() -> None:
            if settled is not None:
                self.refused += 1
                settled(False)
            else:
                self.inner.report(stored, report, None)

        self._when_known(
            stored.message.reported_id, partial(self.inner.report, stored, report, settled), refuse
        )

    def submit_accepted(self, message: Message, carrier: str, carrier_message_id: str) -> None:
        go = partial(self.inner.submit_accepted, message, carrier, carrier_message_id)
        self._when_known(message.reported_id, go, go)

    def submit_refused(self, message: Message, refusal: Refusal) -> None:
        go = partial(self.inner.submit_refused, message, refusal)
        self._when_known(message.reported_id, go, go)

    def _when_known(
        self, message_id: str, go: Callable[[], object], refuse: Callable[[], object]
    ) -> None:
        target = self.callbacks.get(message_id)
        if target is not None and not self._waiting:
            go()
            return
        if len(self._waiting) >= self.limit:
            log.warning("target lookup: %d calls waiting: one refused", len(self._waiting))
            refuse()
            return
        found: asyncio.Future[Target | None]
        if target is not None:  # behind one that waits
            found = asyncio.get_running_loop().create_future()
            found.set_result(target)
        elif message_id in self._tasks:  # (its receipts come together: one read)
            found = self._tasks[message_id]
        else:
            task = asyncio.create_task(self._find(message_id))
            self._tasks[message_id] = task
            task.add_done_callback(lambda _: self._tasks.pop(message_id, None))
            found = task
        self._waiting.append((found, message_id, go, refuse))
        found.add_done_callback(self._go_on)

    async def _find(self, message_id: str) -> Target | None:
        async with asyncio.timeout(self.timeout):
            return await self.lookup(message_id)

    def _go_on(self, _: object = None) -> None:
        """The calls at the head whose lookups ended, in order."""
        while self._waiting and self._waiting[0][0].done():
            found, message_id, go, refuse = self._waiting.popleft()
            if found.cancelled() or found.exception() is not None:
                if not found.cancelled():
                    log.warning("target lookup: %s not read: %r", message_id, found.exception())
                refuse()
                continue
            target = found.result()
            if target is not None:
                self.callbacks.add(message_id, target)
            go()

    def mobile_originated(
        self, account: str, message: Message, settled: SettledCallback | None = None
    ) -> bool | None:
        return self.inner.mobile_originated(account, message, settled)

    async def stop(self, timeout: float) -> None:
        """Let the lookups running end (at most ``timeout``), then cancel the rest (their
        reports refused for now)."""
        if self._tasks:
            _, late = await asyncio.wait(list(self._tasks.values()), timeout=timeout)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        self._go_on()
