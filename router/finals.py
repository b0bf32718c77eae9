"""A message's final state: counted, logged once, reported to the owning account (the
:class:`router.ports.ReportSink`) and stored — and the carriers whose receipt decided it
answered only once that is done.

``ack_after: store``: the client's receipt is delivered (its deliver_sm_resp) or held in
the store FIRST, THEN the final state is committed, and only then is the carrier's
deliver_sm answered ESME_ROK (ESME_RX_T_APPN when that failed, so the carrier sends it
again). In this order a kill -9 at any point loses nothing: before the commit the carrier
resends (and the client may get the receipt twice: the window from the client's
deliver_sm_resp to our commit, a few ms); after it a repeated receipt finds the message
final and is only answered. ``enqueue``: the final state is written behind and reported at
once; carriers were answered already.

In a cluster a final receipt costs, besides the store's records (a claim, then a settle):
no task nor coroutine (its claim is a done callback on the store's answer, see ``_Claim``),
and while it waits for that batch one small object of its own (the claim; then, while the
client has the receipt, a ``_Claimed``: both untracked by the cyclic GC) — the answers owed
are a shared tuple when no carrier waits, the settles in flight one map (a store batch's
settles may share one future: one entry, one done callback), and the callbacks all run in
one context given them. Thousands wait at once under load: each tracked object alive
meanwhile is walked by the cyclic GC's young collections.

``respond`` is how to answer the carrier's deliver_sm (None in ``enqueue`` mode, and for
outcomes no carrier waits on: decided by us, or a receipt deadline).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable
from functools import partial

import msgspec

from router.metrics import RouterMetrics
from router.model import DeliveryReport, Message, StoredMessage
from router.ports import ReportSink, Store, StoreClosed, StoreError
from router.upstream import Respond
from smppcore.constants import CommandStatus, MessageState

log = logging.getLogger(__name__)
#: One INFO line per message at its final state (``logging.components`` can silence it).
summary_log = logging.getLogger("router.messages")

ROK = int(CommandStatus.ESME_ROK)
#: Answer to a carrier's deliver_sm whose effect could not be made durable: send it again.
RETRY_LATER = int(CommandStatus.ESME_RX_T_APPN)
#: value → name (``MessageState.name`` is a slow descriptor; the hot metrics key on it)
STATE_NAME: dict[int, str] = {int(s): s.name for s in MessageState}


class Finals:
    """Finishes messages: :meth:`decide` (no carrier receipt will come) and :meth:`report`
    (a carrier's receipt, or a deadline's), with the answers owed to carriers meanwhile.

    ``durable`` is ``ack_after: store``; ``wall`` gives Unix seconds (``done_at``)."""

    def __init__(
        self,
        *,
        store: Store,
        sink: ReportSink,
        metrics: RouterMetrics,
        durable: bool,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.sink = sink
        self.metrics = metrics
        self.durable = durable
        self.wall = wall
        #: Final receipts being made durable: our id → answers owed to carriers (a
        #: repeated receipt joins the first one's answer instead of reporting twice).
        #: Tuples, replaced when one joins: most are ``_NOBODY``, shared (no carrier
        #: waits in ``ack_after: enqueue``), not a list made and kept per receipt.
        self.finishing: dict[str, tuple[Respond | None, ...]] = {}
        #: The store is shared by the nodes of a cluster (it names this node): a final
        #: receipt is a compare-and-set first (see _claim).
        self.shared = bool(store.node_id)
        #: Claims tried again after a failure (a task each; see _claim_failed).
        self.tasks: set[asyncio.Task[None]] = set()
        #: Claims queued in the store and not answered yet (done callbacks, not tasks:
        #: :meth:`claims_ended` is how a shutdown waits for them).
        self.claiming = 0
        self._claims_ended: asyncio.Future[None] | None = None
        #: Settles being written: their future → the messages (a store may answer the
        #: settles of one batch with one future; one done callback, bound once, for all of
        #: them: no callable made per final receipt).
        self._settling: dict[asyncio.Future[None], list[str]] = {}
        self._on_settled = self._settle_written
        #: What the claims' and settles' done callbacks run in (given, not copied per
        #: callback: thousands of claims wait at once under load, each a live object).
        self.context = contextvars.copy_context()

    def decide(
        self,
        msg: Message,
        state: MessageState,
        error: int,
        carrier: str,
        carrier_message_id: str = "",
    ) -> None:
        """Finish ``msg`` here (no carrier receipt will come) and report it.
        ``carrier_message_id``: the carrier's id when one had accepted it ("" when none
        did: the sink tells the two apart by it)."""
        report = DeliveryReport(
            message_id=msg.id,
            state=state,
            error=error & 0xFFF,
            done_at=self.wall(),
            carrier=carrier,
            carrier_message_id=carrier_message_id,
        )
        self.finished(msg, report, None)
        stored = StoredMessage(
            message=msg,
            state=state,
            error=error,
            carrier=carrier,
            carrier_message_id=carrier_message_id,
        )
        if not self.durable:
            self.store.set_final(msg.id, report)
            self.sink.report(stored, report)
            return
        # The client's receipt delivered or held first, then the final state: a kill -9
        # between the two sends it again (after a restart), never loses it.
        self.sink.report(stored, report, partial(self.commit, msg.id, report, None))

    def finished(self, msg: Message, report: DeliveryReport, accepted: float | None) -> None:
        """Every message's final state passes here once (:meth:`decide`, or a carrier's
        final receipt): its metrics and its summary line. ``accepted`` is when the carrier
        accepted it (``time.monotonic``), when known."""
        metrics = self.metrics
        key = (msg.account, STATE_NAME[report.state])
        metrics.final[key] = metrics.final.get(key, 0) + 1
        carrier_s: float | None = None
        if accepted is not None:
            carrier_s = time.monotonic() - accepted
            metrics.carrier(report.carrier).receipt_latency.observe(carrier_s)
        if summary_log.isEnabledFor(logging.INFO):  # a cached lookup when silenced
            _summary(msg, report, carrier_s)

    def report(
        self,
        msg: Message,
        report: DeliveryReport,
        final: bool,
        respond: Respond | None,
        *,
        accepted: float | None = None,
    ) -> None:
        """Report a receipt for ``msg`` (its id in ``report``) to the sink: an intermediate
        one (answered once the client has it), or a ``final`` one (already through
        :meth:`finished` — in a cluster, it goes there once its claim is won, with
        ``accepted``; answered once it is delivered or held and committed)."""
        stored = StoredMessage(
            message=msg,
            state=report.state,
            error=report.error,
            carrier=report.carrier,
            carrier_message_id=report.carrier_message_id,
            done_at=report.done_at if final else None,
        )
        if not self.durable and not (final and self.shared):
            if final:
                self.store.set_final(msg.id, report)
            self.sink.report(stored, report)
            return
        if not final:  # intermediate: nothing to commit, answered once the client has it
            try:
                self.sink.report(stored, report, partial(answer_ok, respond))
            except Exception:
                log.exception("message %s: its receipt could not be delivered nor held", msg.id)
                answer(respond, RETRY_LATER)
            return
        self.finishing[msg.id] = _NOBODY if respond is None else (respond,)
        if self.shared:
            self._claim(stored, report, accepted)
            return
        try:
            self.sink.report(stored, report, partial(self.commit, msg.id, report, respond))
        except Exception:  # the store is gone (closed, failed): the carrier sends it again
            log.exception("message %s: its receipt could not be delivered nor held", msg.id)
            self.durably(msg.id, False)

    def _claim(self, stored: StoredMessage, report: DeliveryReport, accepted: float | None) -> None:
        """In a cluster, a final receipt may reach two nodes (a carrier sends it again over
        another node's bind; a node's receipt deadline passes while another has the
        receipt): the final state is claimed first, a compare-and-set in the shared store,
        and only the node that wins reports it — the client gets it once. The winner holds
        a report lease until the receipt is delivered or held (then settled); a claim
        meanwhile, and a store that does not answer, get ESME_RX_T_APPN (the carrier sends
        it again); a node that dies before it settles leaves a lease that lapses, and the
        carrier's resend is claimed and reported again (at least once: the client may get
        that receipt twice, never none).

        The claim is queued now (``claim_soon``) and its answer taken by a done callback
        (see :class:`_Claim`), not awaited in a task: one per final receipt, a task's
        set-up and a coroutine's frame cost as much as the claim itself. A claim that
        fails and is tried again (rare: the store did not answer) runs as a task of its
        own."""
        try:
            answered = self.store.claim_soon(stored.message.id, report)
        except Exception as exc:  # the store cannot take it now (unwritable, closed)
            self._claim_failed(stored, report, accepted, exc)
            return
        answered.add_done_callback(_Claim(self, stored, report, accepted), context=self.context)
        self.claiming += 1

    def claims_ended(self) -> asyncio.Future[None]:
        """A future done once no claim waits for the store's answer (at shutdown the
        router waits for it, within its deadline, before the store closes: a claim
        answered after that could neither deliver nor hold its receipt)."""
        ended = self._claims_ended
        if ended is None or ended.done():
            ended = self._claims_ended = asyncio.get_running_loop().create_future()
            if not self.claiming:
                ended.set_result(None)
        return ended

    def _claim_answered(self) -> None:
        self.claiming -= 1
        if not self.claiming:
            ended = self._claims_ended
            if ended is not None and not ended.done():
                ended.set_result(None)

    def _claim_done(
        self, stored: StoredMessage, report: DeliveryReport, accepted: float | None, won: bool
    ) -> None:
        message_id = stored.message.id
        if not won:
            self.metrics.event("receipt_duplicate", report.carrier)
            self.durably(message_id, True)
            return
        self.finished(stored.message, report, accepted)  # counted and logged by one node
        try:
            self.sink.report(stored, report, _Claimed(self, message_id, report))
        except Exception:
            log.exception("message %s: its receipt could not be delivered nor held", message_id)
            self._claimed(message_id, report, False)

    def _claim_failed(
        self,
        stored: StoredMessage,
        report: DeliveryReport,
        accepted: float | None,
        exc: Exception,
    ) -> None:
        """A claim raised: a carrier that waits is asked to send the receipt again; with
        none waiting it is tried again, with back-off, by a task (see _claim_again)."""
        message_id = stored.message.id
        if not isinstance(exc, StoreError):  # a bug (in the store)
            log.error("message %s: claiming its final receipt failed", message_id, exc_info=exc)
        if self._carrier_waits(message_id):
            log.info("message %s: final receipt not claimed now: %s", message_id, exc)
            self._retry_later(message_id)
            return
        if isinstance(exc, StoreClosed):  # shutting down: trying again cannot help
            self._never_claimed(message_id, report, exc)
            return
        task = asyncio.create_task(self._claim_again(stored, report, accepted, exc))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _carrier_waits(self, message_id: str) -> bool:
        return any(respond is not None for respond in self.finishing.get(message_id, ()))

    async def _claim_again(
        self,
        stored: StoredMessage,
        report: DeliveryReport,
        accepted: float | None,
        exc: Exception,
    ) -> None:
        """Claim a final receipt that no carrier will send again (``ack_after: enqueue``,
        or one decided here) until the store answers, for ``_CLAIM_RETRY`` seconds at
        most (a bounded retry with back-off; a carrier's receipt that joins meanwhile is
        answered to send it again)."""
        message_id = stored.message.id
        loop = asyncio.get_running_loop()
        give_up = loop.time() + _CLAIM_RETRY
        pause = 0.05
        while True:
            if loop.time() + pause > give_up or isinstance(exc, StoreClosed):
                self._never_claimed(message_id, report, exc)
                return
            await asyncio.sleep(pause)  # a bounded retry with back-off, not a wait
            pause = min(2.0, pause * 2)
            try:
                won = await self.store.claim_final(message_id, report)
                break
            except Exception as again:
                if self._carrier_waits(message_id):
                    # A carrier waits for our answer: it sends the receipt again.
                    log.info("message %s: final receipt not claimed now: %s", message_id, again)
                    self._retry_later(message_id)
                    return
                exc = again
        self._claim_done(stored, report, accepted, won)

    def _never_claimed(self, message_id: str, report: DeliveryReport, exc: Exception) -> None:
        """Nobody would send it again (answered already, or decided here): said, counted."""
        log.error("message %s: final receipt never claimed: %s", message_id, exc)
        self.metrics.event("receipt_dropped", report.carrier)
        self.finishing.pop(message_id, None)

    def _claimed(self, message_id: str, report: DeliveryReport, reported: bool) -> None:
        """A claimed final receipt is delivered or held (``reported``): settle the claim,
        then answer the carriers. Neither: a carrier sends it again (its lease lapses
        first); one we decided ourselves, with no carrier to send it again, is dropped.

        The settle is a write behind (on Redis a record of the store's next batch, sent at
        once, not a round trip of its own); the carriers are answered once it is written,
        so that a copy of the receipt at another node is a duplicate by then (answered
        ESME_ROK, not asked to come again). Answering them once it is queued would be
        safe too — the claim committed the final state and the client has the receipt; a
        node that died before the settle's write leaves a lease that lapses, and the
        answered carrier sends nothing again — but such copies would be asked to come
        again once more. A settle that cannot be written (Redis unwritable) fails at once:
        the carriers are answered all the same, the lease lapses instead."""
        if reported:
            self._settle(message_id)
            return
        if self._carrier_waits(message_id):
            self._retry_later(message_id)
            return
        self.metrics.event("receipt_dropped", report.carrier)
        log.error(
            "message %s: its %s receipt could neither be delivered nor held: dropped",
            message_id,
            report.state.name,
        )
        self.durably(message_id, True)

    def _settle(self, message_id: str) -> None:
        """Settle ``message_id``'s claim, then answer its carriers (a settle not written is
        logged: its lease lapses instead)."""
        try:
            written = self.store.settle_final(message_id)
        except Exception as exc:  # the store is closed
            self._settled(message_id, exc)
            return
        waiting = self._settling.get(written)
        if waiting is None:  # the first settle of its store batch (see Store.settle_final)
            self._settling[written] = [message_id]
            written.add_done_callback(self._on_settled, context=self.context)
        else:
            waiting.append(message_id)

    def _settle_written(self, written: asyncio.Future[None]) -> None:
        exc = None if written.cancelled() else written.exception()
        for message_id in self._settling.pop(written):
            self._settled(message_id, exc)

    def _settled(self, message_id: str, exc: BaseException | None) -> None:
        if exc is not None:
            log.warning("message %s: its final receipt's claim not settled: %s", message_id, exc)
        self.durably(message_id, True)

    def _retry_later(self, message_id: str) -> None:
        """Ask the carriers waiting on ``message_id``'s final state to send it again."""
        for respond in self.finishing.pop(message_id, ()):
            answer(respond, RETRY_LATER)

    def repeated(self, our_id: str, report: DeliveryReport, respond: Respond | None) -> None:
        """A final receipt for a message whose final state is being made durable: its
        answer waits for that one's (no second receipt to the client)."""
        self.metrics.event("receipt_duplicate", report.carrier)
        self.finishing[our_id] += (respond,)
        if self.store.unwritable is not None:
            self.answer_later(our_id)

    def commit(
        self, message_id: str, report: DeliveryReport, respond: Respond | None, reported: bool
    ) -> None:
        """The client has the receipt (or it is held): commit the final state, then answer
        the carrier(s)."""
        if not reported and respond is not None:
            # Neither delivered nor held (the store failed): the carrier sends it again.
            self.durably(message_id, False)
            return
        if not reported:
            # A receipt we decided (expired, rejected, overdue) that the store refused to
            # hold (full, or cannot write): nobody can send it again. Said, not silent.
            self.metrics.event("receipt_dropped", report.carrier)
            log.error(
                "message %s: its %s receipt could neither be delivered nor held: dropped",
                message_id,
                report.state.name,
            )
        self.finishing.setdefault(message_id, _NOBODY if respond is None else (respond,))
        try:
            self.store.set_final(message_id, report, partial(self.durably, message_id))
        except Exception:
            log.exception("message %s: its final state could not be stored", message_id)
            self.durably(message_id, False)
            return
        if self.store.unwritable is not None:
            # The store cannot write now (a full disk): the final state stays queued until
            # it can, but the carrier is not kept waiting for it — its window would fill
            # with receipts and stop its MO too. It is answered to send it again later.
            self.answer_later(message_id)

    def answer_later(self, message_id: str) -> None:
        """Answer the carriers waiting on ``message_id``'s final state: send it again."""
        waiting = self.finishing.get(message_id)
        if waiting:
            for respond in waiting:
                answer(respond, RETRY_LATER)
            self.finishing[message_id] = ()

    def answer_waiting(self) -> None:
        """While the store cannot write, no carrier is kept waiting for a final state:
        each is told to send its receipt again (see :meth:`commit`)."""
        if self.finishing and self.store.unwritable is not None:
            for message_id in list(self.finishing):
                self.answer_later(message_id)

    def durably(self, message_id: str, ok: bool) -> None:
        """``message_id``'s final state is committed (``ok``) or could not be: answer the
        carriers waiting on it."""
        if not ok:
            log.error("message %s: its final state could not be stored", message_id)
        for respond in self.finishing.pop(message_id, ()):
            answer(respond, ROK if ok else RETRY_LATER)


#: What ``finishing`` holds for a final receipt no carrier waits on.
_NOBODY: tuple[Respond | None, ...] = (None,)

#: Seconds a node keeps trying to claim a final receipt that no carrier will send again
#: (``ack_after: enqueue``, or one decided here) while the store cannot answer or another
#: node's report lease (``claim_seconds``, 30 s) is live.
_CLAIM_RETRY = 90.0


class _Claim(msgspec.Struct, gc=False):
    """One final receipt's claim while the store answers it: the done callback of the
    store's ``claim_soon`` future (the claim itself is the callback: no bound method, no
    coroutine, no task made per claim). The store settles every such future (answered,
    failed by the read deadline, or failed at close), so a claim always ends, in
    :meth:`Finals._claim_done` or :meth:`Finals._claim_failed`.

    Not tracked by the cyclic GC (``gc=False``): thousands wait at once under load, each
    a live object every young collection walked; nothing it holds refers back to it."""

    finals: Finals
    stored: StoredMessage
    report: DeliveryReport
    accepted: float | None

    def __call__(self, answered: asyncio.Future[int]) -> None:
        finals = self.finals
        finals._claim_answered()
        try:
            if answered.cancelled():
                raise StoreError("store: claim_final: cancelled")
            won = finals.store.claim_won(self.stored.message.id, answered.result())
        except Exception as exc:
            finals._claim_failed(self.stored, self.report, self.accepted, exc)
            return
        try:
            finals._claim_done(self.stored, self.report, self.accepted, won)
        except Exception:  # a bug: said, and the carriers waiting told to send it again
            message_id = self.stored.message.id
            log.exception("message %s: its claimed final receipt failed", message_id)
            finals.durably(message_id, False)


class _Claimed(msgspec.Struct, gc=False):
    """What the sink calls once a won claim's receipt is delivered or held (or not):
    :meth:`Finals._claimed` of its message — one untracked object per final receipt
    where a ``partial`` of a bound method is two the cyclic GC walks while the client
    has not answered yet."""

    finals: Finals
    message_id: str
    report: DeliveryReport

    def __call__(self, reported: bool) -> None:
        self.finals._claimed(self.message_id, self.report, reported)


def answer(respond: Respond | None, status: int) -> None:
    if respond is not None:
        respond(status)


def answer_ok(respond: Respond | None, ok: bool) -> None:
    """Answer a carrier once its deliver_sm reached the client or the store (``ok``), or
    with a temporary error so that it sends it again."""
    if respond is not None:
        respond(ROK if ok else RETRY_LATER)


def _summary(msg: Message, report: DeliveryReport, carrier_s: float | None) -> None:
    """The line ``router.messages`` logs once per message: ids, account, carrier, final
    state, attempts, error, timings. Never the text, the numbers or a password."""
    total = max(0.0, report.done_at - msg.submitted_at) if msg.submitted_at else None
    summary_log.info(
        "message %s %s",
        msg.id,
        report.state.name,
        extra={
            "message_id": msg.id,
            "account": msg.account,
            "carrier": report.carrier,
            "state": report.state.name,
            "attempts": msg.attempts,
            "error": report.error,
            "tried": list(msg.tried),
            "part": f"{msg.concat.seq}/{msg.concat.total}" if msg.concat else None,
            "total_seconds": None if total is None else round(total, 6),
            "carrier_seconds": None if carrier_s is None else round(carrier_s, 6),
        },
    )
