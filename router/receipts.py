"""Receipts from carriers, matched to our ids; and the receipts that never come.

A carrier's receipt names the carrier's id. It is matched in memory first (the
:class:`Correlator`'s map, filled as carriers accept our submits); a carrier often sends
the receipt in the same read as its submit_sm_resp, whose outcome reaches us a loop turn
or two later, so memory is asked again for a few turns before the store is (the store is
for receipts of messages sent long ago, or before a restart). A receipt for a submit still
in flight is parked until its submit_sm_resp is processed (or gives up as unmatched).

Every message a carrier accepted has a receipt deadline (``receipt_timeout``, or its
validity): past it the message is final without one (``receipt_timeout_state``, or
EXPIRED) and a receipt that comes later is a duplicate.

``respond`` answers the carrier's deliver_sm (``ack_after: store``; None otherwise): see
:mod:`router.finals` for when.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from typing import Any

import msgspec

from router.carriers import Carriers
from router.config import DEFAULT_RECEIPT_TIMEOUT, RouterConfig
from router.correlation import Correlator, correlation_key
from router.deadlines import ReceiptDeadlines
from router.finals import RETRY_LATER, ROK, STATE_NAME, Finals, answer
from router.metrics import RouterMetrics
from router.model import DeliveryReport, Message
from router.ports import Store, StoreError
from router.upstream import Respond
from smppcore.constants import CommandStatus, MessageState
from smppcore.pdu import DeliverSm
from smppcore.receipt import is_final
from smppcore.receipt_pdu import read_receipt

log = logging.getLogger(__name__)

_DELIVERED = MessageState.DELIVERED
#: Messages accepted by a carrier kept in memory (with their acceptance time) for their
#: receipts; older ones are read from the store when their receipt comes.
_MAX_SENT_CACHE = 200_000
#: Messages taken back from a carrier (a long message failed or sent elsewhere) whose
#: receipts from it are ignored, at most (the oldest forgotten first).
_MAX_WITHDRAWN = 100_000
#: Loop turns a receipt waits for its submit_sm_resp's outcome before the store is asked.
MEMORY_TURNS = 3
#: Receipts being matched through the store at most (a task each); past it a receipt
#: that is not in memory is answered ESME_RX_T_APPN, for the carrier to send again.
MAX_RESOLVING = 10_000
#: Seconds a receipt waits for its submit_sm_resp at least (see Receipts.__init__).
_EARLY_FLOOR = 20.0
#: Seconds between tries of a store read for an overdue message.
_RETRY_READ = 1.0
#: Reads of an overdue message the store may fail (``read_timeout`` each) before it is
#: left unfinished (a restart's recovery finds it again).
_OVERDUE_TRIES = 10
#: Seconds before a cluster's unmatched receipt is looked up again (then doubling, up to
#: _RECHECK_MAX): the node that sent its message commits the carrier's id within its
#: store's commit_interval of the submit_sm_resp.
_RECHECK_FIRST = 0.02
_RECHECK_MAX = 1.0
#: What the correlator parks for a receipt: the report, and how to answer the carrier.
_Parked = tuple[DeliveryReport, Respond | None]


class Receipts:
    """Matches carriers' receipts to our messages and finishes them (through ``finals``);
    keeps every accepted message's receipt deadline (:meth:`tick` makes the overdue ones
    final). Store reads run as tasks this owns: :meth:`settle` waits for them,
    :meth:`cancel` ends them."""

    def __init__(
        self,
        config: RouterConfig,
        *,
        store: Store,
        carriers: Carriers,
        finals: Finals,
        metrics: RouterMetrics,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.carriers = carriers
        self.configs = carriers.configs
        self.finals = finals
        self.metrics = metrics
        self.wall = wall
        # A receipt can come before its submit_sm_resp is processed only while that submit
        # is in flight: no longer than a response timeout. Parked longer, it matches
        # nothing (and in ``ack_after: store`` its carrier waits for our answer meanwhile:
        # give up before a carrier's usual 30 s deliver_sm timeout makes it resend).
        early_ttl = max((c.response_timeout for c in config.carriers), default=_EARLY_FLOOR) + 2.0
        #: Seconds a receipt waits for its submit_sm_resp at most.
        self.early_ttl = max(_EARLY_FLOOR, early_ttl)
        self.correlator: Correlator[_Parked] = Correlator(
            store, max_cache=500_000, early_ttl=self.early_ttl, max_early=50_000
        )
        #: our id → (message, ``time.monotonic`` when its carrier accepted it, the
        #: carrier's id for it)
        self.sent: OrderedDict[str, tuple[Message, float, str]] = OrderedDict()
        self.deadlines = ReceiptDeadlines()
        #: our id → the carrier it was taken back from (:meth:`withdraw`)
        self.withdrawn: OrderedDict[str, str] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        #: The store is shared by the nodes of a cluster (it names this node): a receipt
        #: may be for a message another node sent (see _recheck).
        self.shared = bool(store.node_id)

    @property
    def resolving(self) -> int:
        """Receipts (and overdue messages) being looked up in the store."""
        return len(self._tasks)

    # --- accepted messages ------------------------------------------------------------

    def accepted(
        self, msg: Message, carrier: str, carrier_message_id: str, now: float, at: float
    ) -> None:
        """``carrier`` accepted ``msg`` as ``carrier_message_id`` (at ``now``, wall time;
        ``at``, monotonic): its receipt is awaited, and one that came early is matched."""
        sent = self.sent
        sent[msg.id] = (msg, at, carrier_message_id)
        if len(sent) > _MAX_SENT_CACHE:
            sent.popitem(last=False)
        cfg = self.configs[carrier]
        self.await_receipt(msg, carrier, now)
        early = self.correlator.expect(carrier, carrier_message_id, msg.id, cfg.submit_id)
        for report, respond in early:
            self.receipt(msg, report, respond)

    def await_receipt(self, msg: Message, carrier: str, now: float) -> None:
        """``msg`` was accepted by ``carrier`` (at ``now``, wall time): its final receipt
        is due within the carrier's ``receipt_timeout``, and before its validity ends."""
        cfg = self.configs.get(carrier)
        # (A message recovered for a carrier no longer configured gets the default.)
        deadline = now + (cfg.receipt_timeout if cfg is not None else DEFAULT_RECEIPT_TIMEOUT)
        self.deadlines.add(msg.id, carrier, deadline, msg.expires_at)

    def withdraw(self, message_id: str, carrier: str) -> bool:
        """``carrier`` accepted ``message_id`` but it is taken back (its long message failed,
        or is sent again over another carrier): no receipt is awaited from that carrier,
        and one that comes is ignored (counted as ``receipt_withdrawn``). False (and
        nothing done) when its final receipt came already: it is final."""
        if not self.deadlines.awaits(message_id, carrier):
            return False
        self.deadlines.drop(message_id, carrier)
        self.sent.pop(message_id, None)
        withdrawn = self.withdrawn
        withdrawn[message_id] = carrier
        if len(withdrawn) > _MAX_WITHDRAWN:
            withdrawn.popitem(last=False)
        return True

    # --- receipts from carriers -------------------------------------------------------

    def deliver(self, carrier: str, pdu: DeliverSm, respond: Respond | None) -> int | None:
        """A receipt ``carrier`` sent: the status to answer it with now, or None when
        ``respond`` will be called (``ack_after: store``)."""
        read = read_receipt(pdu)
        if read is None:
            self.metrics.event("receipt_unreadable", carrier)
            return ROK
        receipt_id, state, error = read
        if (
            len(self._tasks) >= MAX_RESOLVING
            and self.correlator.lookup(carrier, receipt_id, self.configs[carrier].receipt_id)
            is None
        ):
            # Too many receipts already wait for the store: the carrier keeps this one
            # and sends it again later (a temporary error), rather than our memory.
            self.metrics.event("receipt_deferred", carrier)
            return int(CommandStatus.ESME_RX_T_APPN)
        report = DeliveryReport(
            message_id="",
            state=state,
            error=error,
            done_at=self.wall(),
            carrier=carrier,
            carrier_message_id=receipt_id,
        )
        self._match(carrier, receipt_id, report, MEMORY_TURNS, respond)
        return None if respond is not None else ROK

    def _match(
        self,
        carrier: str,
        receipt_id: str,
        report: DeliveryReport,
        turns: int,
        respond: Respond | None,
    ) -> None:
        """Match a receipt in memory (for ``turns`` more loop turns); the store only as a
        last resort."""
        cfg = self.configs[carrier]
        our_id = self.correlator.lookup(carrier, receipt_id, cfg.receipt_id)
        if our_id is not None:
            self._receipt_for(our_id, report, respond)
        elif turns > 0:
            asyncio.get_running_loop().call_soon(
                self._match, carrier, receipt_id, report, turns - 1, respond
            )
        else:
            self._spawn(self._resolve_later(carrier, receipt_id, report, respond))

    def _spawn(self, coro: Coroutine[None, None, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve_later(
        self, carrier: str, receipt_id: str, report: DeliveryReport, respond: Respond | None
    ) -> None:
        cfg = self.configs[carrier]
        try:
            our_id = await self.correlator.resolve(carrier, receipt_id, cfg.receipt_id)
        except StoreError as exc:
            self._store_failed(report, exc)
            answer(respond, RETRY_LATER)
            return
        except Exception:
            log.exception("receipt from %s for %s: the store failed", carrier, receipt_id)
            answer(respond, RETRY_LATER)
            return
        if our_id is None and self.shared:
            our_id = await self._recheck(carrier, receipt_id, report, respond)
            if our_id is None:
                return
        if our_id is None:
            pool = self.carriers.pools.get(carrier)
            if pool is None or pool.in_flight == 0:
                # No submit to it awaits its answer: no mapping can come for this receipt
                # — unless it came while the store was read (the last submit_sm_resp
                # processed meanwhile: in flight 0 AND the mapping in memory).
                our_id = self.correlator.lookup(carrier, receipt_id, cfg.receipt_id)
                if our_id is None:
                    self._unmatched(carrier, receipt_id, respond)
                    return
            else:
                key = correlation_key(receipt_id, cfg.receipt_id)
                our_id = self.correlator.park(carrier, key, (report, respond), self.wall())
                if our_id is None:
                    return  # parked until its submit_sm_resp is processed (or it expires)
        self._receipt_for(our_id, report, respond)

    async def _recheck(
        self, carrier: str, receipt_id: str, report: DeliveryReport, respond: Respond | None
    ) -> str | None:
        """In a cluster, a receipt that matches nothing yet may be for a message another
        node (or this one) sent and whose submit_sm_resp is not processed or committed
        yet: memory and the store are asked again, at growing intervals, for
        ``early_ttl`` seconds. Then it is unmatched: answered ESME_RX_T_APPN when its
        carrier waits for our answer (``ack_after: store``: it sends it again), else
        counted and logged. None when it was answered here."""
        cfg = self.configs[carrier]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.early_ttl
        pause = _RECHECK_FIRST
        while (left := deadline - loop.time()) > 0:
            await asyncio.sleep(min(pause, left))  # a back-off between reads
            pause = min(pause * 2, _RECHECK_MAX)
            try:
                our_id = await self.correlator.resolve(carrier, receipt_id, cfg.receipt_id)
            except StoreError as exc:
                self._store_failed(report, exc)
                answer(respond, RETRY_LATER)
                return None
            if our_id is not None:
                self.correlator.matched_early += 1
                return our_id
        if respond is not None:
            self.metrics.event("receipt_deferred", carrier)
            answer(respond, RETRY_LATER)
        else:
            self._unmatched(carrier, receipt_id, None)
        return None

    def _receipt_for(self, our_id: str, report: DeliveryReport, respond: Respond | None) -> None:
        sent = self.sent.get(our_id)
        if sent is not None:
            self.receipt(sent[0], report, respond)
            return
        self._spawn(self._receipt_from_store(our_id, report, respond))

    async def _receipt_from_store(
        self, our_id: str, report: DeliveryReport, respond: Respond | None
    ) -> None:
        if our_id in self.finals.finishing and is_final(report.state):
            self.finals.repeated(our_id, report, respond)
            return
        try:
            stored = await self.store.get(our_id)
        except StoreError as exc:
            self._store_failed(report, exc)
            answer(respond, RETRY_LATER)
            return
        except Exception:
            log.exception("receipt for %s: the store failed", our_id)
            answer(respond, RETRY_LATER)
            return
        if stored is None:
            self._unmatched(report.carrier, report.carrier_message_id, respond)
            return
        if stored.done_at is not None:
            if self.finals.shared and is_final(report.state):
                if our_id in self.finals.finishing:  # a copy while its claim runs: joins it
                    self.finals.repeated(our_id, report, respond)
                    return
                # In a cluster the final state is written when a node claims it, before
                # its receipt is delivered or held: the claim says whether this is a
                # duplicate, one being reported (sent again later), or one whose node
                # died before reporting it (reported now).
                report = msgspec.structs.replace(report, message_id=our_id)
                self.finals.report(stored.message, report, True, respond)
                return
            # Final already (its receipt went to the client or is held): a carrier
            # repeating a receipt, say because our deliver_sm_resp was late or lost. (A
            # mapping kept in memory for it — a message finished here, past its deadline —
            # has done its job.)
            self.metrics.event("receipt_duplicate", report.carrier)
            cfg = self.configs.get(report.carrier)
            if cfg is not None and report.carrier_message_id:
                self.correlator.forget(report.carrier, report.carrier_message_id, cfg.receipt_id)
            answer(respond, ROK)
            return
        self.receipt(stored.message, report, respond)

    def _store_failed(self, report: DeliveryReport, exc: StoreError) -> None:
        """A receipt could not be matched: the store did not answer in time (its
        ``read_timeout``) or is closed. Counted and logged (the first, then every 1000th:
        the store says why). It is not delivered now: with ``ack_after: store`` the carrier
        is answered ESME_RX_T_APPN and sends it again; with ``enqueue`` it was answered
        already, and is lost."""
        self.metrics.event("receipt_store_timeout", report.carrier)
        n = self.metrics.events.get(("receipt_store_timeout", report.carrier), 0)
        if n == 1 or n % 1000 == 0:
            log.warning(
                "receipt %s from %s not matched (%d so far): %s",
                report.carrier_message_id,
                report.carrier,
                n,
                exc,
            )

    def _unmatched(self, carrier: str, carrier_message_id: str, respond: Respond | None) -> None:
        """A receipt that matches no message of ours: counted, logged once, answered
        (ESME_ROK: sending it again would not make it match)."""
        self.metrics.event("receipt_unmatched", carrier)
        log.warning("receipt from %s for unknown id %r dropped", carrier, carrier_message_id)
        answer(respond, ROK)

    def expire_parked(self, now: float) -> None:
        """Receipts parked for a mapping that never came: unmatched."""
        for early in self.correlator.expire(now):
            report, respond = early.payload
            self._unmatched(early.carrier, report.carrier_message_id, respond)

    def receipt(
        self, msg: Message, report: DeliveryReport, respond: Respond | None, *, ours: bool = False
    ) -> None:
        """A receipt for ``msg``: an intermediate one is passed on; a final one ends its
        deadline, counts, and finishes the message. ``ours``: the final state is this
        router's own (no receipt came in time): the carrier's id stays mapped in memory, so
        that its late receipt is known at once for a duplicate."""
        if self.withdrawn and self.withdrawn.get(msg.id) == report.carrier:
            self.metrics.event("receipt_withdrawn", report.carrier)
            answer(respond, ROK)
            return
        report = msgspec.structs.replace(report, message_id=msg.id)
        state = report.state
        final = is_final(state)
        if final:
            if msg.id in self.finals.finishing:
                self.finals.repeated(msg.id, report, respond)
                return
            self.deadlines.drop(msg.id, report.carrier)
            health = self.carriers.health.get(report.carrier)
            if health is not None:
                health.record_receipt(self.wall(), state == _DELIVERED)
            sent = self.sent.pop(msg.id, None)
            cfg = self.configs.get(report.carrier)
            if cfg is not None and report.carrier_message_id and not ours:
                # Final: its mapping leaves memory (the store keeps it for a late duplicate);
                # else the in-memory map grows with every message up to max_cache.
                self.correlator.forget(report.carrier, report.carrier_message_id, cfg.receipt_id)
            key = (report.carrier, STATE_NAME[state])
            receipts = self.metrics.receipts
            receipts[key] = receipts.get(key, 0) + 1
            accepted = None if sent is None else sent[1]
            if not self.finals.shared:  # (in a cluster: once its claim is won)
                self.finals.finished(msg, report, accepted)
            self.finals.report(msg, report, final, respond, accepted=accepted)
            return
        self.finals.report(msg, report, final, respond)

    # --- receipt deadlines ------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Housekeeping at ``now`` (wall time): carriers are not kept waiting on a store
        that cannot write; receipts parked too long are unmatched; messages past their
        receipt deadline become final."""
        self.finals.answer_waiting()
        self.expire_parked(now)
        for message_id, carrier, expired in self.deadlines.due(now):
            if expired:
                state = MessageState.EXPIRED
            else:
                cfg = self.configs.get(carrier)
                state = (
                    MessageState[cfg.receipt_timeout_state]
                    if cfg is not None
                    else MessageState.UNKNOWN
                )
            self._overdue(message_id, carrier, state, now)

    def _overdue(self, message_id: str, carrier: str, state: MessageState, now: float) -> None:
        """No final receipt came in time: the message is final as ``state`` (the client
        gets that receipt); a receipt that comes later is a duplicate."""
        self.metrics.event("receipt_timeout", carrier)
        report = DeliveryReport(message_id="", state=state, done_at=now, carrier=carrier)
        sent = self.sent.get(message_id)
        if sent is not None and not self.shared:
            # (with the carrier's id: the message had reached a carrier)
            report = msgspec.structs.replace(report, carrier_message_id=sent[2])
            self.receipt(sent[0], report, None, ours=True)
        else:  # (in a cluster another node may have had its receipt: the store says)
            self._spawn(self._overdue_from_store(message_id, report))

    async def _overdue_from_store(self, message_id: str, report: DeliveryReport) -> None:
        for attempt in range(_OVERDUE_TRIES):
            try:
                stored = await self.store.get(message_id)
                break
            except StoreError as exc:
                if attempt == 0:
                    log.warning("message %s: overdue, but the store failed (%s)", message_id, exc)
                await asyncio.sleep(_RETRY_READ)  # a backoff: the store says when it is back
        else:
            log.error("message %s: overdue, the store did not answer: left unfinished", message_id)
            return
        if stored is None or stored.done_at is not None or message_id in self.finals.finishing:
            return
        report = msgspec.structs.replace(report, carrier_message_id=stored.carrier_message_id)
        self.receipt(stored.message, report, None)

    # --- the tasks --------------------------------------------------------------------

    async def settle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the receipts being matched through the store
        (receipts of messages no longer in memory: sent long ago, before a restart, or
        repeated) and for a cluster's final receipts being claimed; True when none is
        left."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        finals = self.finals
        while self._tasks or finals.tasks or finals.claiming:
            left = deadline - loop.time()
            if left <= 0:
                return False
            # (they may start others)
            waits: set[asyncio.Future[Any]] = set(self._tasks | finals.tasks)
            if finals.claiming:  # claims in the store's queue: answered by its next batches
                waits.add(finals.claims_ended())
            await asyncio.wait(waits, timeout=left)
        return True

    async def cancel(self) -> None:
        """End the store reads still running (at shutdown, after :meth:`settle`)."""
        tasks = self._tasks | self.finals.tasks
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
