"""In a cluster, the status events of a message sent through another node's HTTP API: its
receipt may land on any node, and only the sending node has its target (callback URL,
reference, legacy dialect) in memory (smsc/callbacks.py). :class:`TargetLookup` sits in
front of the webhook sink (smsc/webhooks.py): a report of a message the HTTP API created
(``Message.via``) whose target is not in memory waits while the target is read from the
shared records (smsc/http_records_redis.py); once read it is remembered (a message
without a target, or whose record is gone, as :data:`NO_TARGET`: its record is written
before it is submitted, so a miss stays a miss), and the report goes on to the sink,
which finds it in memory.

Messages that came over SMPP have no target: their reports go on at once, with no read
and behind nothing. A message's own reports stay in the order they came (its
intermediate receipt before its final one): while its target is read, those after it
wait with it; other messages' reports do not wait for it. The reads of a turn of the
loop go together (one round trip for up to ``batch`` messages), ``concurrency`` reads at
most on their way at once. At most ``limit`` calls wait; past that, and when a read fails
or takes longer than ``timeout``, the carrier is answered a temporary error
(``settled(False)``: it sends the receipt again); with nobody to answer, the report goes
on without a target (the account's webhook, or SMPP).

It is the router's SubmitWatch too (the carrier's acceptance or a refusal: Kannel's and
Jasmin's callbacks, smsc/legacy_dlr.py): those wait for their message's target the same
way, in the same order as its receipts."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Protocol

from router.model import DeliveryReport, Message, Refusal, StoredMessage
from router.ports import ReportSink, SettledCallback, SubmitWatch
from smsc.callbacks import NO_TARGET, VIA_API, Callbacks, Target
from smsc.tasks import stop_tasks

log = logging.getLogger(__name__)

#: Calls waiting at once for their message's target, at most.
LIMIT = 10_000
#: Messages whose targets one read asks for, at most.
BATCH = 500
#: Reads on their way at once, at most.
CONCURRENCY = 4

#: What waits: what to do once the target is known, and when it cannot be read.
_Call = tuple[Callable[[], object], Callable[[], object]]
#: The targets of messages (by id), in the order asked: one round trip.
Lookup = Callable[[list[str]], Awaitable[list[Target | None]]]


class Downstream(ReportSink, SubmitWatch, Protocol):
    """The webhook sink: a ReportSink and a SubmitWatch."""


class TargetLookup:
    """A ReportSink and SubmitWatch: each call to ``inner`` once its message's target is
    in ``callbacks`` (at once for a message that cannot have one)."""

    def __init__(
        self,
        inner: Downstream,
        callbacks: Callbacks,
        lookup: Lookup,
        *,
        timeout: float = 2.0,
        limit: int = LIMIT,
        batch: int = BATCH,
        concurrency: int = CONCURRENCY,
    ) -> None:
        self.inner = inner
        self.callbacks = callbacks
        self.lookup = lookup
        self.timeout = timeout
        self.limit = limit
        self.batch = batch
        self.concurrency = concurrency
        #: The calls waiting, by message id, each message's in the order they came.
        self._waiting: dict[str, list[_Call]] = {}
        self._count = 0
        #: Messages whose targets are to be read (not asked yet), in order.
        self._wanted: list[str] = []
        #: The reads on their way (owned here: stop()).
        self._reads: set[asyncio.Task[None]] = set()
        self._scheduled = False
        self._stopped = False
        #: Reads sent (one round trip each).
        self.reads = 0
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

        go = partial(self.inner.report, stored, report, settled)
        self._when_known(stored.message, go, refuse)

    def submit_accepted(self, message: Message, carrier: str, carrier_message_id: str) -> None:
        go = partial(self.inner.submit_accepted, message, carrier, carrier_message_id)
        self._when_known(message, go, go)

    def submit_refused(self, message: Message, refusal: Refusal) -> None:
        go = partial(self.inner.submit_refused, message, refusal)
        self._when_known(message, go, go)

    def mobile_originated(
        self, account: str, message: Message, settled: SettledCallback | None = None
    ) -> bool | None:
        return self.inner.mobile_originated(account, message, settled)

    def _when_known(
        self, message: Message, go: Callable[[], object], refuse: Callable[[], object]
    ) -> None:
        message_id = message.reported_id
        waiting = self._waiting.get(message_id)
        if waiting is None and (
            message.via != VIA_API or self.callbacks.get(message_id) is not None
        ):
            go()  # no target to read, or known: nothing of this message waits before it
            return
        if self._count >= self.limit or self._stopped:
            log.warning("target lookup: %d calls waiting: one refused", self._count)
            refuse()
            return
        if waiting is None:
            waiting = self._waiting[message_id] = []
            self._wanted.append(message_id)
            if not self._scheduled:  # (the reads of this turn of the loop go together)
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self._read_wanted)
        waiting.append((go, refuse))
        self._count += 1

    def _read_wanted(self) -> None:
        self._scheduled = False
        while self._wanted and len(self._reads) < self.concurrency and not self._stopped:
            ids, self._wanted = self._wanted[: self.batch], self._wanted[self.batch :]
            task = asyncio.create_task(self._read(ids), name="target-lookup")
            self._reads.add(task)
            task.add_done_callback(self._read_ended)

    def _read_ended(self, task: asyncio.Task[None]) -> None:
        self._reads.discard(task)
        self._read_wanted()

    async def _read(self, ids: list[str]) -> None:
        self.reads += 1
        try:
            async with asyncio.timeout(self.timeout):
                targets = await self.lookup(ids)
            if len(targets) != len(ids):
                raise ValueError(f"{len(targets)} targets read for {len(ids)} messages")
        except Exception as exc:  # Redis away or slow (or a bug): refused for now
            log.warning("target lookup: %d messages' targets not read: %r", len(ids), exc)
            for message_id in ids:
                self._end(message_id, None, read=False)
            return
        except asyncio.CancelledError:
            for message_id in ids:
                self._end(message_id, None, read=False)
            raise
        for message_id, target in zip(ids, targets, strict=True):
            self._end(message_id, target, read=True)

    def _end(self, message_id: str, target: Target | None, *, read: bool) -> None:
        """The calls waiting for ``message_id`` go on (``read``) or are refused, in order."""
        calls = self._waiting.pop(message_id, [])
        self._count -= len(calls)
        if read:
            self.callbacks.add(message_id, target or NO_TARGET)
        for go, refuse in calls:
            (go if read else refuse)()

    async def stop(self, timeout: float) -> None:
        """Let the reads on their way end (at most ``timeout``), then cancel the rest;
        every call still waiting is refused for now."""
        self._stopped = True
        if self._reads:
            await asyncio.wait(set(self._reads), timeout=timeout)
            await stop_tasks(set(self._reads), max(0.05, timeout), "target-lookup")
        for message_id in list(self._waiting):
            self._end(message_id, None, read=False)
        self._wanted = []
