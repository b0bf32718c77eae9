"""The router: intake → bounded priority queue → least-cost choice → carrier pools, and
receipts back. It implements :class:`router.ports.Intake` and calls a
:class:`router.ports.ReportSink` with every final outcome.

One dispatcher task moves messages from the queue to carriers while they have window
slots and rate tokens; outcomes arrive as future callbacks. A temporary refusal, a
timeout or a dropped bind sends the message to the next candidate (within the retry
budget and its validity); a permanent refusal is final and reported as a failure
receipt. All parts of one long message go over the same carrier.

Durability (``ack_after: store``): which carrier a message is handed to is committed
before its submit_sm goes out; a carrier's receipt or MO is answered ESME_ROK only once
the client has it (or it is held in the store) and the final state is committed. Every
message accepted by a carrier has a receipt deadline (``receipt_timeout``). See
"receipts and MO from carriers" and ``_recover`` for the windows SMPP leaves.

A message that no carrier can take now (every carrier of its route is down, its breaker
open, or paused) is parked in the queue under the set of carriers that could take it and
costs nothing while it waits: the lot is woken when one of those carriers can take messages
again (a bind up, resume, the breaker closing), or ONE message of it when the carrier's
breaker lets a trial through. Nothing rescans parked messages; their validity still runs.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine, Iterable, Mapping
from functools import partial

import msgspec

from router.config import DEFAULT_RECEIPT_TIMEOUT, CarrierConfig, RouterConfig
from router.correlation import Correlator, correlation_key
from router.health import CarrierHealth, HealthView
from router.metrics import RouterMetrics, no_route_reason
from router.model import (
    Accepted,
    DeliveryReport,
    Failed,
    Message,
    NoRoute,
    Rejected,
    RouteDecision,
    StoredMessage,
    SubmitOutcome,
)
from router.ports import AcceptCallback, ReportSink
from router.queue import MessageQueue, ParkKey
from router.routing import AccountPolicy, Chooser, Explanation, RouteTable, choose, explain
from router.store import Store, StoreError
from router.upstream import Answer, CarrierPool, Respond
from smppcore.aio import Connection
from smppcore.constants import CommandStatus, EsmClass, MessageState
from smppcore.pdu import DeliverSm
from smppcore.receipt import is_final
from smppcore.receipt_pdu import read_receipt
from smppcore.tlv import Tag

log = logging.getLogger(__name__)
#: One INFO line per message at its final state (``logging.components`` can silence it).
summary_log = logging.getLogger("router.messages")

_RECEIPT_BITS = int(EsmClass.DELIVERY_RECEIPT) | int(EsmClass.INTERMEDIATE_NOTIFICATION)
_MAX_PINNED = 100_000
#: Messages sent per dispatcher pass before it yields to the loop: a pass costs ~50 us a
#: message, and every connection, timer and the store writer wait for it to end.
_DISPATCH_BATCH = 256
#: Messages taken from the queue per pass at most (sent, parked or finished here): parking
#: one costs a few us, but a woken backlog that must be parked again is not one long stall.
_HANDLE_BATCH = 2048
#: When a carrier's breaker lets a trial through, its wake-up fires this long after, so
#: that the trial is let through and not missed by a hair.
_TRIAL_MARGIN = 0.001
_MAX_SENT_CACHE = 200_000
_DELIVERED = MessageState.DELIVERED
#: value → name (``MessageState.name`` is a slow descriptor; the hot metrics key on it)
_STATE_NAME: dict[int, str] = {int(s): s.name for s in MessageState}
#: Loop turns a receipt waits for its submit_sm_resp's outcome before the store is asked.
_MEMORY_TURNS = 3
#: Receipts being matched through the store at most (a task each); past it a receipt
#: that is not in memory is answered ESME_RX_T_APPN, for the carrier to send again.
_MAX_RESOLVING = 10_000
#: Seconds a receipt waits for its submit_sm_resp at least (see Router.__init__).
_EARLY_FLOOR = 20.0
#: Seconds between housekeeping ticks: receipt deadlines, receipts parked for a mapping.
_TICK = 1.0
#: Reads of an overdue message the store may fail (``read_timeout`` each) before it is
#: left unfinished (a restart's recovery finds it again).
_OVERDUE_TRIES = 10
_ROK = int(CommandStatus.ESME_ROK)
#: Answer to a carrier's deliver_sm whose effect could not be made durable: send it again.
_RETRY_LATER = int(CommandStatus.ESME_RX_T_APPN)
#: What the correlator parks for a receipt: the report, and how to answer the carrier.
_Parked = tuple[DeliveryReport, Respond | None]


class RouterStats(msgspec.Struct, frozen=True):
    queued: int
    scheduled: int
    in_flight: int
    carriers: dict[str, int]
    parked: int = 0


class CarrierState(msgspec.Struct, frozen=True):
    """One carrier as the operator sees it (admin API)."""

    name: str
    binds: int
    """Binds configured."""
    bound: int
    """Submit-capable binds up."""
    in_flight: int
    paused: bool
    drained: bool
    health: HealthView
    rate: float | None = None
    """Submits per second it may be sent now (its binds' adaptive rates); None: no limit."""


class QueueStats(msgspec.Struct, frozen=True):
    depth: int
    """Messages waiting: ready, scheduled and parked."""
    ready: int
    scheduled: int
    by_priority: tuple[int, ...]
    """Ready messages per priority 0..3."""
    oldest_age: float | None
    """Seconds since the oldest waiting message was submitted; None when empty."""
    in_flight: int
    paced: int = 0
    """Submits waiting for room before they are queued and answered (intake pacing)."""
    parked: int = 0
    """Messages waiting for a carrier of their route to come back (none can take them)."""


class Router:
    """Implements Intake. ``await start()``; ``submit(...)``; ``await stop()``."""

    def __init__(
        self,
        config: RouterConfig,
        *,
        store: Store,
        sink: ReportSink,
        policies: Mapping[str, AccountPolicy] | None = None,
        wall: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        bind_slots: Callable[[str], int] | None = None,
    ) -> None:
        self.config = config
        #: A carrier's bind slots this node holds (cluster); None: all its ``binds``.
        self.bind_slots = bind_slots
        self.store = store
        self.sink = sink
        self.policies = dict(policies or {})
        self.wall = wall
        self._rng = rng or random.Random()
        self.queue = MessageQueue(config.queue_max)
        self.queue.on_ready = self._wake_up
        self.table = RouteTable(config.routes)
        self._carriers: dict[str, CarrierConfig] = {c.name: c for c in config.carriers}
        self.health: dict[str, CarrierHealth] = {}
        self.pools: dict[str, CarrierPool] = {}
        # A receipt can come before its submit_sm_resp is processed only while that submit
        # is in flight: no longer than a response timeout. Parked longer, it matches
        # nothing (and in ``ack_after: store`` its carrier waits for our answer meanwhile:
        # give up before a carrier's usual 30 s deliver_sm timeout makes it resend).
        early_ttl = max(
            (c.response_timeout for c in config.carriers), default=_EARLY_FLOOR
        ) + 2.0
        self.correlator: Correlator[_Parked] = Correlator(
            store, max_cache=500_000, early_ttl=max(_EARLY_FLOOR, early_ttl), max_early=50_000
        )
        #: ``ack_after: store``: carriers' deliver_sm are answered once durable, and what
        #: is handed to a carrier is recorded before its submit goes out.
        self._durable = config.ack_after == "store"
        #: Final receipts being made durable: our id → answers owed to carriers (a
        #: repeated receipt joins the first one's answer instead of reporting twice).
        self._finishing: dict[str, list[Respond | None]] = {}
        #: Receipt deadlines: carrier → our id → wall time, in deadline order (one timeout
        #: per carrier); those cut short by their validity, in a heap (deadline, id, carrier).
        self._deadlines: dict[str, dict[str, float]] = {}
        self._capped: list[tuple[float, str, str]] = []
        self._capped_ids: set[str] = set()
        self._tick: asyncio.TimerHandle | None = None
        self._pinned: OrderedDict[str, str] = OrderedDict()
        #: our id → (message, loop-monotonic time its carrier accepted it)
        self._sent: OrderedDict[str, tuple[Message, float]] = OrderedDict()
        self._in_flight = 0
        #: Submits waiting for room in the queue (intake pacing), oldest first, with the
        #: loop time they arrived. Bounded by the clients' windows (each waits unanswered).
        self._paced: deque[tuple[Message, AcceptCallback, float]] = deque()
        self._pace_timer: asyncio.TimerHandle | None = None
        self._pace_at = 0.0  # when _pace_timer fires
        #: The dispatcher runs as loop callbacks, not a task: a pass is scheduled when
        #: something may be sendable (_wake_up), or by a timer when only time is missing.
        self._pass_due = False
        self._pass_timer: asyncio.TimerHandle | None = None
        self._binds_changed = asyncio.Event()
        #: carrier → the timer that looks again when its breaker lets a trial through
        #: (only while messages are parked waiting for it).
        self._watch_timers: dict[str, asyncio.TimerHandle] = {}
        #: Carriers taken out of routing by the operator (pause, drain); drained ones
        #: also have their binds stopped.
        self.paused: set[str] = set()
        self.drained: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._running = False
        #: counts and latency histograms, read by smsc/metrics.py at scrape time
        self.metrics = RouterMetrics(self._carriers)

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        now = self.wall()
        for name, cfg in self._carriers.items():
            self.health[name] = self._health(name, now)
            self.pools[name] = self._pool(cfg)
        for pool in self.pools.values():
            await pool.start()
        await self._recover()
        self._running = True
        self._tick = asyncio.get_running_loop().call_later(_TICK, self._housekeeping)
        self._wake_up()

    async def _recover(self) -> None:
        """After a restart, every message with no final state:

        - never handed to a carrier: queued again (its first send);
        - handed to a carrier with no answer recorded (``ack_after: store`` writes the
          carrier before the submit goes out; the answer, with the carrier's id, may
          not have been committed): the carrier may have it, and we cannot ask (query_sm
          needs the carrier's id) nor match its receipt. Policy: send it again (at least
          once: the handset may get it twice; a receipt of the first copy is counted as
          unmatched). Each one counts as ``resent`` (smsc_router_events) and is logged;
        - accepted by a carrier: its receipt is awaited (the correlation is in the
          store) until ``receipt_timeout`` from now, or its validity.
        """
        requeued = 0
        resent: dict[str, int] = {}
        now = self.wall()
        for stored in await self.store.unfinished():
            msg = stored.message
            if not stored.carrier:
                self.queue.requeue(msg)
                requeued += 1
            elif not stored.carrier_message_id:
                self.queue.requeue(msg)
                resent[stored.carrier] = resent.get(stored.carrier, 0) + 1
                self.metrics.event("resent", stored.carrier)
                log.warning(
                    "message %s: handed to %s before the restart, its answer unknown: sent again",
                    msg.id,
                    stored.carrier,
                )
            else:
                self._await_receipt(msg, stored.carrier, now)
        if requeued:
            log.info("recovered %d accepted messages not yet sent upstream", requeued)
        for carrier, count in sorted(resent.items()):
            log.warning(
                "recovered %d messages handed to %s with no answer recorded: sent again",
                count,
                carrier,
            )

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop dispatching, let in-flight submits finish (bounded), unbind carriers, and
        finish matching the receipts already acknowledged to carriers (bounded too)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._running = False
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        self._release_paced()  # queued (and stored) now: nothing accepted is dropped
        if self._pass_timer is not None:
            self._pass_timer.cancel()
            self._pass_timer = None
        for timer in self._watch_timers.values():
            timer.cancel()
        self._watch_timers.clear()
        await asyncio.gather(
            *(pool.stop(timeout) for pool in self.pools.values()), return_exceptions=True
        )
        # A carrier will not resend a receipt we answered: deliver or hold what is being
        # matched through the store (the store closes after the router) before giving up.
        await self.settle(max(0.0, deadline - loop.time()))
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close_intake(self, timeout: float) -> None:
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

    async def settle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the receipts being matched through the store
        (receipts of messages no longer in memory: sent long ago, before a restart, or
        repeated); True when none is left."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._tasks:
            left = deadline - loop.time()
            if left <= 0:
                return False
            await asyncio.wait(set(self._tasks), timeout=left)  # they may start others
        return True

    async def wait_carriers_bound(
        self, timeout: float, carriers: Iterable[str] | None = None
    ) -> None:
        """Return once every carrier (or each of ``carriers``) has all the binds it may have
        (its configured binds, or the bind slots this node holds) up and submit-capable;
        TimeoutError after ``timeout`` seconds. Woken by bind state changes, never by
        polling."""
        names = list(self.pools) if carriers is None else list(carriers)
        pools = [self.pools[name] for name in names]
        async with asyncio.timeout(timeout):
            while not all(pool.bound >= pool.allowed for pool in pools):
                self._binds_changed.clear()
                await self._binds_changed.wait()

    async def binds_changed(self, timeout: float) -> bool:
        """Wait for the next change in any carrier's binds; False once ``timeout`` passed."""
        self._binds_changed.clear()
        try:
            async with asyncio.timeout(timeout):
                await self._binds_changed.wait()
        except TimeoutError:
            return False
        return True

    # --- Intake -----------------------------------------------------------------------

    def submit(self, message: Message, done: AcceptCallback) -> None:
        if self._paced or self._crowded():
            self._pace(message, done)
            return
        self._accept(message, done)

    def _crowded(self) -> bool:
        """Pace intake now? More ready messages than ``intake.pace_above`` are queued while
        a carrier is bound to take them: they arrive faster than they leave. Answering
        later lets each client's window slow it to the rate messages leave, and keeps the
        queue (and the time to a receipt) short. With no carrier bound nothing leaves:
        submits are queued at once, up to ``queue_max``, as without pacing."""
        above = self.config.intake.pace_above
        if not 0 < above <= self.queue.ready_count:
            return False
        return any(pool.any_bound() for pool in self.pools.values())

    def _pace(self, message: Message, done: AcceptCallback) -> None:
        if len(self._paced) >= self.config.queue_max:
            done(CommandStatus.ESME_RMSGQFUL)
            return
        loop = asyncio.get_running_loop()
        self._paced.append((message, done, loop.time()))
        self.metrics.event("paced")
        if not self._crowded():  # waiting only behind earlier ones: the dispatcher frees them
            self._wake_up()
        if self._pace_timer is None:
            self._pace_at = loop.time() + self.config.intake.max_wait
            self._pace_timer = loop.call_at(self._pace_at, self._pace_fired)

    def _pace_fired(self) -> None:
        self._pace_timer = None
        self._release_paced()

    def _release_paced(self) -> None:
        """Queue (and answer) the paced submits there is room for, oldest first; those
        that waited ``intake.max_wait`` go in regardless; all of them when stopping.

        Runs on every dispatcher pass while submits are paced: the timer for the oldest
        one is kept while that one waits, not cancelled and armed again each pass."""
        paced = self._paced
        loop = asyncio.get_running_loop()
        max_wait = self.config.intake.max_wait
        overdue = loop.time() - max_wait
        while paced and (not self._running or paced[0][2] <= overdue or not self._crowded()):
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
                done(CommandStatus.ESME_RMSGQFUL)
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
        self._final(msg, MessageState.DELETED, 0, "")
        return True

    def replace(self, message: Message) -> bool:
        if self.queue.replace(message):
            self.store.update_message(message)
            return True
        return False

    # --- explaining -------------------------------------------------------------------

    def explain(self, destination: str, account: str) -> Explanation:
        now = self.wall()
        views = self._views(now)
        return explain(
            destination,
            account,
            table=self.table,
            policy=self.policies.get(account, AccountPolicy()),
            health=views,
            now=now,
            rates={name: pool.rate_limit for name, pool in self.pools.items()},
        )

    def stats(self) -> RouterStats:
        return RouterStats(
            queued=self.queue.ready_count,
            scheduled=self.queue.scheduled_count,
            in_flight=self._in_flight,
            carriers={name: pool.bound for name, pool in self.pools.items()},
            parked=self.queue.parked_count,
        )

    # --- control plane (admin API, live reconfiguration) ------------------------------

    def _views(self, now: float) -> dict[str, HealthView]:
        """Every carrier's health at ``now``; a paused carrier shows as unavailable, so
        routing skips it (and messages only it could take wait, deferred)."""
        views = {name: h.view(now) for name, h in self.health.items()}
        for name in self.paused:
            view = views.get(name)
            if view is not None:
                views[name] = msgspec.structs.replace(
                    view, available=False, reasons=(*view.reasons, "paused by the operator")
                )
        return views

    def carrier_states(self) -> list[CarrierState]:
        views = self._views(self.wall())
        return [
            CarrierState(
                name=name,
                binds=pool.config.binds,
                bound=pool.bound,
                in_flight=pool.in_flight,
                paused=name in self.paused,
                drained=name in self.drained,
                health=views[name],
                rate=pool.rate_limit,
            )
            for name, pool in self.pools.items()
        ]

    def queue_stats(self) -> QueueStats:
        oldest = self.queue.oldest_submitted()
        return QueueStats(
            depth=len(self.queue),
            ready=self.queue.ready_count,
            scheduled=self.queue.scheduled_count,
            by_priority=self.queue.by_priority(),
            oldest_age=None if oldest is None else max(0.0, self.wall() - oldest),
            in_flight=self._in_flight,
            paced=self.paced,
            parked=self.queue.parked_count,
        )

    @property
    def paced(self) -> int:
        """Submits waiting for room (intake pacing)."""
        return len(self._paced)

    def pause(self, name: str) -> None:
        """No new messages go to ``name`` (KeyError: no such carrier); in flight finish."""
        if name not in self.pools:
            raise KeyError(name)
        self.paused.add(name)

    async def resume(self, name: str) -> None:
        """Undo :meth:`pause` or :meth:`drain` (a drained carrier binds again)."""
        pool = self.pools[name]
        if name in self.drained:
            self.drained.discard(name)
            self.pools[name] = pool = self._pool(pool.config)
            await pool.start()
        self.paused.discard(name)
        self._watch(name, self.wall())

    async def drain(self, name: str, timeout: float) -> None:
        """Pause ``name``, wait (at most ``timeout``) for its submits in flight, unbind it."""
        self.pause(name)
        pool = self.pools[name]
        await pool.stop(timeout)
        if self.pools.get(name) is pool:
            self.drained.add(name)

    def new_pool(self, config: CarrierConfig) -> CarrierPool:
        """A pool for ``config``, not started (TlsError: its TLS files cannot be used): what
        a reload prepares before it changes anything."""
        return self._pool(config)

    def reconfigure(
        self,
        config: RouterConfig,
        policies: Mapping[str, AccountPolicy],
        pools: Mapping[str, CarrierPool] | None = None,
    ) -> list[CarrierPool]:
        """Apply a reloaded configuration at once (no await: nothing runs half-applied):
        the route table and prices, the retry budget, the account policies, and carriers.

        ``pools`` (from :meth:`new_pool`) are the carriers added or changed: each starts
        binding, unless its carrier is drained (it binds with its new config when
        resumed); a paused one stays paused. Carriers not in ``config`` are taken out of
        routing. Returns the pools replaced or removed, for :meth:`retire`. Queue size, ack
        mode, health and store settings need a restart."""
        names = {c.name for c in config.carriers}
        retired = [pool for name, pool in self.pools.items() if name not in names]
        for name in [n for n in self.pools if n not in names]:
            del self.pools[name]
            self.health.pop(name, None)
            self.paused.discard(name)
            self.drained.discard(name)
            for group in [g for g, c in self._pinned.items() if c == name]:
                del self._pinned[group]
            timer = self._watch_timers.pop(name, None)
            if timer is not None:
                timer.cancel()
            # ``self._carriers`` keeps its config: outcomes and receipts in flight look it up.
        for name, pool in (pools or {}).items():
            old = self.pools.get(name)
            if old is None:
                self.health[name] = self._health(name, self.wall())
            else:
                retired.append(old)
            self._carriers[name] = pool.config
            self.pools[name] = pool
            if name not in self.drained:
                pool.start_now()
            self.health[name].set_binds(pool.bound)
        self.table = RouteTable(config.routes)
        self.config = config
        self.policies = dict(policies)
        for cfg in config.carriers:
            self._carriers[cfg.name] = cfg
        self._unpark(lambda key: True)  # routes changed: what each message waits for too
        return retired

    async def retire(self, pools: Iterable[CarrierPool]) -> None:
        """Stop pools taken out by :meth:`reconfigure`: each waits (at most its carrier's
        response_timeout + 1 s) for its submits in flight, then unbinds. Queued messages
        were never tied to a carrier: they go over the current ones; unanswered submits
        come back (``Failed``) and are routed again. Receipts a removed carrier would send
        after the unbind are not received."""
        pools = list(pools)
        if pools:
            await asyncio.gather(
                *(pool.stop(pool.config.response_timeout + 1.0) for pool in pools),
                return_exceptions=True,
            )
        self._unpark(lambda key: True)  # what waited for a retired carrier, routed again

    def _pool(self, config: CarrierConfig) -> CarrierPool:
        slots = None if self.bind_slots is None else self.bind_slots(config.name)
        return CarrierPool(
            config,
            on_deliver=self._on_deliver,
            on_state=self._on_state,
            rng=self._rng,
            bind_slots=slots,
        )

    def _health(self, name: str, now: float) -> CarrierHealth:
        return CarrierHealth(name, self.config.health, now, on_breaker=self._on_breaker)

    # --- parked messages ------------------------------------------------------------------

    def _unpark(self, which: Callable[[ParkKey], bool]) -> None:
        """Wake every lot of parked messages whose key satisfies ``which`` (an operator's
        change: routes, carriers): they are routed again."""
        for key in [k for k in self.queue.lots() if which(k)]:
            self.queue.unpark(key)

    def _on_breaker(self, carrier: str, state: str) -> None:
        """An outcome moved ``carrier``'s breaker (opened, closed, re-opened)."""
        if self.queue.parked_count:
            self._watch(carrier, self.wall())

    def _watch_fired(self, carrier: str) -> None:
        self._watch_timers.pop(carrier, None)
        self._watch(carrier, self.wall())

    def _watch(self, carrier: str, now: float) -> None:
        """Wake what is parked waiting for ``carrier`` as far as it can take it now: every
        lot it could serve when it is bound, not paused and its breaker closed; ONE message
        (the trial) when its breaker is half-open; else, with its breaker holding submits
        back, a timer for when it lets a trial through. A carrier without a bind, or paused,
        needs nothing: a bind coming up (``_on_state``) or resume calls this again.

        Called on every event that can make a carrier available again, so parked messages
        are never looked at while nothing changed."""
        timer = self._watch_timers.pop(carrier, None)
        if timer is not None:
            timer.cancel()
        keys = [key for key in self.queue.lots() if carrier in key]
        health = self.health.get(carrier)
        if not keys or health is None or carrier in self.paused or carrier not in self.pools:
            return
        view = health.view(now)
        if view.binds <= 0:
            return
        if view.breaker == "closed":
            for key in keys:
                self.queue.unpark(key)
            return
        if view.available:  # half-open, its trial free: one message tries the carrier
            self.queue.unpark_first(keys)
            at: float | None = now + self.config.health.breaker_open  # if that one never went
        else:
            at = health.trial_at(now)
        if at is not None and self._running:
            delay = max(0.0, at - now) + _TRIAL_MARGIN
            loop = asyncio.get_running_loop()
            self._watch_timers[carrier] = loop.call_later(delay, self._watch_fired, carrier)

    def _park(self, msg: Message, key: ParkKey) -> None:
        """``msg`` waits, costing nothing, until a carrier of ``key`` can take it."""
        new = not self.queue.parked_in(key)
        self.queue.park(msg, key)
        self.metrics.event("deferred")
        if new:
            # A new lot: arrange to hear when its carriers can take messages (after this
            # pass, whose health snapshot found none of them could).
            loop = asyncio.get_running_loop()
            for carrier in key:
                if carrier not in self._watch_timers:
                    loop.call_soon(self._watch_if_unwatched, carrier)

    def _watch_if_unwatched(self, carrier: str) -> None:
        if carrier not in self._watch_timers:
            self._watch(carrier, self.wall())

    # --- dispatching --------------------------------------------------------------------

    def _wake_up(self) -> None:
        """Something may be sendable: a dispatcher pass runs at the end of this loop turn
        (once, however many wake-ups came)."""
        if not self._pass_due and self._running:
            self._pass_due = True
            asyncio.get_running_loop().call_soon(self._pass)

    def _on_state(self, carrier: str, bound: int) -> None:
        pool = self.pools.get(carrier)
        if pool is not None:
            bound = pool.bound  # a replaced pool still reports while it unbinds: not its count
        health = self.health.get(carrier)
        if health is not None:
            health.set_binds(bound)
        self._wake_up()
        self._binds_changed.set()
        if self.queue.parked_count:
            self._watch(carrier, self.wall())  # a bind up may wake what waits for it

    def _pass(self) -> None:
        """One dispatcher pass; then another at once, after a delay, or on the next wake-up.

        Wake-ups during the pass (a message put back because it must wait for capacity)
        are this pass's own: they are ignored, or the dispatcher would spin. A callback,
        not a task awaiting an event: at moderate rates a pass runs per message, and waking
        a task through an event costs ~3 us on uvloop against ~0.5 us for call_soon."""
        if self._pass_timer is not None:
            self._pass_timer.cancel()
            self._pass_timer = None
        if not self._running:
            self._pass_due = False
            return
        self._pass_due = True
        delay: float | None
        try:
            delay = self._dispatch_some()
        except Exception:  # a bug: log it, and try again shortly rather than stop for good
            log.exception("dispatcher pass failed")
            delay = 0.5
        self._pass_due = False
        if delay is None or not self._running:
            return
        if delay <= 0:
            self._wake_up()
        else:
            self._pass_timer = asyncio.get_running_loop().call_later(delay, self._pass)

    def _dispatch_some(self) -> float | None:
        """Send what can go now; the seconds until something may change, or None.

        Two clocks: ``now`` (wall, Unix seconds) for the queue's schedules and expiries and
        for health; ``mono`` (the loop's monotonic clock) for the carrier pools, whose rate
        buckets and ESME_RTHROTTLED pauses run on it (router.upstream)."""
        now = self.wall()
        mono = asyncio.get_running_loop().time()
        self._expire_parked(now)
        queue = self.queue
        queue.release_due(now)
        queue.expire(now)
        for msg in queue.take_expired():
            self._final(msg, MessageState.EXPIRED, 0, "")
        if self._paced:
            self._release_paced()
        sent = handled = 0
        # Health changes only when outcomes arrive (later loop turns): one snapshot per
        # batch, not one per message. A half-open breaker's single trial is still taken
        # per message by try_acquire_trial in _route.
        views = self._views(now) if queue.ready_count else {}
        chooser = Chooser(self.table, views, self.policies)
        while queue.ready_count and sent < _DISPATCH_BATCH and handled < _HANDLE_BATCH:
            popped = queue.pop_ready(now)
            if popped is None:
                break
            msg = popped
            handled += 1
            carrier = self._route(msg, now, mono, views, chooser)
            if carrier is None:
                continue
            if carrier == "":
                queue.requeue(msg)
                break
            self._send(carrier, msg, mono)
            sent += 1
        for msg in queue.take_expired():
            self._final(msg, MessageState.EXPIRED, 0, "")
        if (
            sent >= _DISPATCH_BATCH
            or handled >= _HANDLE_BATCH
            or (self._paced and not self._crowded())
        ):
            return 0.0  # yield to the loop, then carry on (paced submits first)
        due = queue.next_due()
        waits = [] if due is None else [due - now]
        # Only pools that become ready LATER (a rate token, the end of a throttle pause):
        # one ready now was no use to the message at the head, and waiting "0 s" for it
        # would spin. Slots freed and binds up wake the loop through events.
        waits += [
            t - mono
            for p in self.pools.values()
            if (t := p.ready_at(mono)) is not None and t > mono
        ]
        if not waits and queue.ready_count:
            waits.append(0.5)
        if queue.parked_count or queue.scheduled_count:
            # Parked and scheduled messages expire on time (a ready one when popped).
            expiry = queue.next_expiry()
            if expiry is not None:
                waits.append(expiry - now)
        if not waits:
            return None
        return max(0.0, min(waits)) + 0.0005

    def _route(
        self,
        msg: Message,
        now: float,
        mono: float,
        views: Mapping[str, HealthView],
        chooser: Chooser,
    ) -> str | None:
        """The carrier to send ``msg`` over now; "" when it must wait for capacity; None
        when it was finished here (no route) or parked (no carrier can take it now).
        ``now`` is wall time, ``mono`` the loop's; ``views`` is the carriers' health at the
        start of this dispatch batch, ``chooser`` :func:`choose` over them (and this pass's
        table and policies)."""
        concat = msg.concat
        pinned = self._pinned.get(concat.group) if concat else None
        decision = chooser.choose(msg, pinned)
        if type(decision) is RouteDecision:  # the usual case
            return self._take(decision, msg, pinned, now, mono)
        if msg.tried:
            # Every carrier of the route failed it once: go round again rather than fail
            # a message on temporary errors (max_attempts and its validity bound this).
            decision = chooser.choose(msg, pinned, ())
            if type(decision) is RouteDecision:
                return self._take(decision, msg, pinned, now, mono)
        # Would it route if every carrier were up? Then it waits, parked, for one of those
        # (a bind coming back, a breaker letting it through) or until it expires; if not,
        # nothing will ever take it (no route, the account's limits): it fails now.
        waits_for = chooser.waits_for(msg, pinned)
        if waits_for is None:
            later = choose(
                msgspec.structs.replace(msg, tried=()),
                table=self.table,
                policy=self.policies.get(msg.account, AccountPolicy()),
                health={name: HealthView(carrier=name) for name in views},
                pinned=pinned,
                now=now,
            )
            why = later.reason if isinstance(later, NoRoute) else "no route"
            reason = no_route_reason(why)
            self.metrics.no_route[reason] = self.metrics.no_route.get(reason, 0) + 1
            log.info("message %s: no route (%s)", msg.id, why)
            self._final(msg, MessageState.UNDELIVERABLE, 0, "")
            return None
        self._park(msg, waits_for)
        return None

    def _take(
        self, decision: RouteDecision, msg: Message, pinned: str | None, now: float, mono: float
    ) -> str:
        """The first carrier of ``decision`` (its choice, then its fallbacks) that can take
        ``msg`` now — ready and let through by its breaker — or "" to wait for capacity.
        A long message's parts stay on the carrier the first part took."""
        name = decision.carrier
        pool = self.pools.get(name)
        if pool is not None and pool.ready(mono) and self.health[name].try_acquire_trial(now):
            if msg.concat and pinned is None:
                self._pin(msg.concat.group, name)
            return name
        if pinned is not None:
            return ""  # its parts wait for their carrier
        for name in decision.fallbacks:
            pool = self.pools.get(name)
            if pool is not None and pool.ready(mono) and self.health[name].try_acquire_trial(now):
                if msg.concat:
                    self._pin(msg.concat.group, name)
                return name
        return ""

    def _pin(self, group: str, carrier: str) -> None:
        self._pinned[group] = carrier
        if len(self._pinned) > _MAX_PINNED:
            self._pinned.popitem(last=False)

    def _send(self, carrier: str, msg: Message, mono: float) -> None:
        msg = msgspec.structs.replace(msg, attempts=msg.attempts + 1)
        started = time.monotonic()
        self._in_flight += 1
        metrics = self.metrics
        metrics.carrier(carrier).decisions += 1
        if msg.tried and msg.tried[-1] != carrier:
            key = (msg.tried[-1], carrier)
            metrics.failovers[key] = metrics.failovers.get(key, 0) + 1
        done = partial(self._outcome, msg, started)
        if self._durable:
            # Write-ahead: which carrier it goes to is committed before the submit leaves.
            before = partial(self._sending, msg.id, carrier)
            self.pools[carrier].send(msg, mono, done, before=before)
        else:
            self.pools[carrier].send(msg, mono, done)

    def _sending(self, message_id: str, carrier: str, go: Callable[[bool], None]) -> None:
        """Record that ``message_id`` is handed to ``carrier``; ``go(True)`` once committed
        (its submit_sm is written then), ``go(False)`` when it cannot be (requeued)."""
        try:
            self.store.set_sending(message_id, carrier, go)
        except Exception:
            log.exception("message %s: its send could not be recorded", message_id)
            go(False)

    def _outcome(self, msg: Message, started: float, outcome: SubmitOutcome) -> None:
        self._in_flight -= 1
        self._wake_up()
        now = self.wall()
        answered = time.monotonic()
        latency = answered - started
        health = self.health.get(outcome.carrier)
        if isinstance(outcome, Accepted):
            if health is not None:
                health.record_submit(now, latency, "accepted")
            self.metrics.carrier(outcome.carrier).submit_latency.observe(latency)
            self._sent[msg.id] = (msg, answered)
            if len(self._sent) > _MAX_SENT_CACHE:
                self._sent.popitem(last=False)
            cfg = self._carriers[outcome.carrier]
            self._await_receipt(msg, outcome.carrier, now)
            early = self.correlator.expect(
                outcome.carrier, outcome.carrier_message_id, msg.id, cfg.submit_id
            )
            for report, respond in early:
                self._receipt(msg, report, respond)
            return
        if isinstance(outcome, Rejected) and not outcome.retryable:
            if health is not None:
                health.record_submit(now, latency, "rejected")
            self.metrics.carrier(outcome.carrier).submit_latency.observe(latency)
            self._final(msg, MessageState.REJECTED, outcome.status, outcome.carrier)
            return
        if isinstance(outcome, Failed) and outcome.reason == "not ready":
            # It never left us (no bind could take it): neither an attempt nor a failure
            # of the carrier's.
            self.queue.requeue(msgspec.structs.replace(msg, attempts=msg.attempts - 1))
            return
        kind = "temporary" if isinstance(outcome, Rejected) else "failed"
        if health is not None:
            health.record_submit(now, latency, kind)  # type: ignore[arg-type]
        status = outcome.status if isinstance(outcome, Rejected) else 0
        counts = self.metrics.carrier(outcome.carrier)
        counts.submit_latency.observe(latency)
        counts.retries += 1
        retry = msgspec.structs.replace(msg, tried=(*msg.tried, outcome.carrier))
        expires = msg.expires_at
        if retry.attempts >= self.config.retry.max_attempts or (
            expires is not None and expires <= now
        ):
            state = (
                MessageState.EXPIRED
                if expires is not None and expires <= now
                else (MessageState.UNDELIVERABLE)
            )
            self._final(msg, state, status, outcome.carrier)
            return
        if msg.concat and self._pinned.get(msg.concat.group) == outcome.carrier:
            # Temporary trouble on the pinned carrier: try it again, parts stay together.
            retry = msgspec.structs.replace(retry, tried=msg.tried)
        self.queue.requeue(retry)

    def _final(self, msg: Message, state: MessageState, error: int, carrier: str) -> None:
        """Finish ``msg`` here (no carrier receipt will come) and report it."""
        report = DeliveryReport(
            message_id=msg.id,
            state=state,
            error=error & 0xFFF,
            done_at=self.wall(),
            carrier=carrier,
        )
        self._finished(msg, report, None)
        stored = StoredMessage(message=msg, state=state, error=error, carrier=carrier)
        if not self._durable:
            self.store.set_final(msg.id, report)
            self.sink.report(stored, report)
            return
        # The client's receipt delivered or held first, then the final state: a kill -9
        # between the two sends it again (after a restart), never loses it.
        self.sink.report(stored, report, partial(self._commit_final, msg.id, report, None))

    def _finished(self, msg: Message, report: DeliveryReport, accepted: float | None) -> None:
        """Every message's final state passes here once (``_final``: decided by us, or
        ``_receipt``: a carrier's final receipt): its metrics and its summary line.
        ``accepted`` is when the carrier accepted it (monotonic), when known."""
        metrics = self.metrics
        key = (msg.account, _STATE_NAME[report.state])
        metrics.final[key] = metrics.final.get(key, 0) + 1
        carrier_s: float | None = None
        if accepted is not None:
            carrier_s = time.monotonic() - accepted
            metrics.carrier(report.carrier).receipt_latency.observe(carrier_s)
        if summary_log.isEnabledFor(logging.INFO):  # a cached lookup when silenced
            _summary(msg, report, carrier_s)

    # --- receipts and MO from carriers ------------------------------------------------
    #
    # ``ack_after: store``: a carrier's deliver_sm is answered ESME_ROK only once its
    # effect is durable — the receipt delivered to the client (its deliver_sm_resp) or
    # held in the store, THEN the final state committed — and ESME_RX_T_APPN when that
    # failed, so the carrier sends it again. In this order a kill -9 at any point loses
    # nothing: before the commit the carrier resends (and the client may get the receipt
    # twice: the window from the client's deliver_sm_resp to our commit, a few ms); after
    # it a repeated receipt finds the message final and is only answered. ``respond`` is
    # None in ``enqueue`` mode (answered at once) and for outcomes no carrier waits on.

    def _on_deliver(
        self, carrier: str, pdu: DeliverSm, conn: Connection, answer: Answer
    ) -> int | None:
        durable = self._durable
        respond: Respond | None = None
        if durable:
            respond = partial(answer, conn, pdu.sequence_number)
        if not pdu.esm_class & _RECEIPT_BITS:
            return self._mobile_originated(carrier, pdu, respond)
        read = read_receipt(pdu)
        if read is None:
            self.metrics.event("receipt_unreadable", carrier)
            return CommandStatus.ESME_ROK
        receipt_id, state, error = read
        if (
            len(self._tasks) >= _MAX_RESOLVING
            and self.correlator.lookup(carrier, receipt_id, self._carriers[carrier].receipt_id)
            is None
        ):
            # Too many receipts already wait for the store: the carrier keeps this one
            # and sends it again later (a temporary error), rather than our memory.
            self.metrics.event("receipt_deferred", carrier)
            return CommandStatus.ESME_RX_T_APPN
        report = DeliveryReport(
            message_id="",
            state=state,
            error=error,
            done_at=self.wall(),
            carrier=carrier,
            carrier_message_id=receipt_id,
        )
        self._match_receipt(carrier, receipt_id, report, _MEMORY_TURNS, respond)
        return None if durable else _ROK

    def _match_receipt(
        self,
        carrier: str,
        receipt_id: str,
        report: DeliveryReport,
        turns: int,
        respond: Respond | None,
    ) -> None:
        """Match a receipt in memory; the store only as a last resort.

        A carrier often sends the receipt in the same read as its submit_sm_resp, whose
        outcome reaches us a loop turn or two later: look again in memory for a few turns
        before asking the store (which is for receipts of messages sent long ago, or before
        a restart).
        """
        cfg = self._carriers[carrier]
        our_id = self.correlator.lookup(carrier, receipt_id, cfg.receipt_id)
        if our_id is not None:
            self._receipt_for(our_id, report, respond)
        elif turns > 0:
            asyncio.get_running_loop().call_soon(
                self._match_receipt, carrier, receipt_id, report, turns - 1, respond
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
        cfg = self._carriers[carrier]
        try:
            our_id = await self.correlator.resolve(carrier, receipt_id, cfg.receipt_id)
        except StoreError as exc:
            self._store_failed(report, exc)
            _answer(respond, _RETRY_LATER)
            return
        except Exception:
            log.exception("receipt from %s for %s: the store failed", carrier, receipt_id)
            _answer(respond, _RETRY_LATER)
            return
        if our_id is None:
            pool = self.pools.get(carrier)
            if pool is None or pool.in_flight == 0:
                # No submit to it awaits its answer: no mapping can come for this receipt.
                self._unmatched(carrier, receipt_id, respond)
                return
            key = correlation_key(receipt_id, cfg.receipt_id)
            our_id = self.correlator.park(carrier, key, (report, respond), self.wall())
            if our_id is None:
                return  # parked until its submit_sm_resp is processed (or it expires)
        self._receipt_for(our_id, report, respond)

    def _receipt_for(self, our_id: str, report: DeliveryReport, respond: Respond | None) -> None:
        sent = self._sent.get(our_id)
        if sent is not None:
            self._receipt(sent[0], report, respond)
            return
        self._spawn(self._receipt_from_store(our_id, report, respond))

    async def _receipt_from_store(
        self, our_id: str, report: DeliveryReport, respond: Respond | None
    ) -> None:
        if our_id in self._finishing and is_final(report.state):
            self._receipt_repeated(our_id, report, respond)
            return
        try:
            stored = await self.store.get(our_id)
        except StoreError as exc:
            self._store_failed(report, exc)
            _answer(respond, _RETRY_LATER)
            return
        except Exception:
            log.exception("receipt for %s: the store failed", our_id)
            _answer(respond, _RETRY_LATER)
            return
        if stored is None:
            self._unmatched(report.carrier, report.carrier_message_id, respond)
            return
        if stored.done_at is not None:
            # Final already (its receipt went to the client or is held): a carrier
            # repeating a receipt, say because our deliver_sm_resp was late or lost.
            self.metrics.event("receipt_duplicate", report.carrier)
            _answer(respond, _ROK)
            return
        self._receipt(stored.message, report, respond)

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
        _answer(respond, _ROK)

    def _expire_parked(self, now: float) -> None:
        """Receipts parked for a mapping that never came: unmatched."""
        for early in self.correlator.expire(now):
            report, respond = early.payload
            self._unmatched(early.carrier, report.carrier_message_id, respond)

    def _receipt_repeated(
        self, our_id: str, report: DeliveryReport, respond: Respond | None
    ) -> None:
        """A final receipt for a message whose final state is being made durable: its
        answer waits for that one's (no second receipt to the client)."""
        self.metrics.event("receipt_duplicate", report.carrier)
        self._finishing[our_id].append(respond)
        if self.store.unwritable is not None:
            self._answer_later(our_id)

    def _receipt(self, msg: Message, report: DeliveryReport, respond: Respond | None) -> None:
        report = msgspec.structs.replace(report, message_id=msg.id)
        state = report.state
        final = is_final(state)
        if final:
            if msg.id in self._finishing:
                self._receipt_repeated(msg.id, report, respond)
                return
            self._drop_deadline(msg.id, report.carrier)
            health = self.health.get(report.carrier)
            if health is not None:
                health.record_receipt(self.wall(), state == _DELIVERED)
            sent = self._sent.pop(msg.id, None)
            cfg = self._carriers.get(report.carrier)
            if cfg is not None and report.carrier_message_id:
                # Final: its mapping leaves memory (the store keeps it for a late duplicate);
                # else the in-memory map grows with every message up to max_cache.
                self.correlator.forget(report.carrier, report.carrier_message_id, cfg.receipt_id)
            key = (report.carrier, _STATE_NAME[state])
            receipts = self.metrics.receipts
            receipts[key] = receipts.get(key, 0) + 1
            self._finished(msg, report, None if sent is None else sent[1])
        stored = StoredMessage(
            message=msg,
            state=report.state,
            error=report.error,
            carrier=report.carrier,
            carrier_message_id=report.carrier_message_id,
            done_at=report.done_at if final else None,
        )
        if not self._durable:
            if final:
                self.store.set_final(msg.id, report)
            self.sink.report(stored, report)
            return
        if not final:  # intermediate: nothing to commit, answered once the client has it
            try:
                self.sink.report(stored, report, partial(_answer_ok, respond))
            except Exception:
                log.exception("message %s: its receipt could not be delivered nor held", msg.id)
                _answer(respond, _RETRY_LATER)
            return
        self._finishing[msg.id] = [respond]
        try:
            self.sink.report(stored, report, partial(self._commit_final, msg.id, report, respond))
        except Exception:  # the store is gone (closed, failed): the carrier sends it again
            log.exception("message %s: its receipt could not be delivered nor held", msg.id)
            self._finished_durably(msg.id, False)

    def _commit_final(
        self, message_id: str, report: DeliveryReport, respond: Respond | None, reported: bool
    ) -> None:
        """The client has the receipt (or it is held): commit the final state, then answer
        the carrier(s)."""
        if not reported and respond is not None:
            # Neither delivered nor held (the store failed): the carrier sends it again.
            self._finished_durably(message_id, False)
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
        self._finishing.setdefault(message_id, [respond])
        try:
            self.store.set_final(message_id, report, partial(self._finished_durably, message_id))
        except Exception:
            log.exception("message %s: its final state could not be stored", message_id)
            self._finished_durably(message_id, False)
            return
        if self.store.unwritable is not None:
            # The store cannot write now (a full disk): the final state stays queued until
            # it can, but the carrier is not kept waiting for it — its window would fill
            # with receipts and stop its MO too. It is answered to send it again later.
            self._answer_later(message_id)

    def _answer_later(self, message_id: str) -> None:
        """Answer the carriers waiting on ``message_id``'s final state: send it again."""
        waiting = self._finishing.get(message_id)
        if waiting:
            for respond in waiting:
                _answer(respond, _RETRY_LATER)
            waiting.clear()

    def _finished_durably(self, message_id: str, ok: bool) -> None:
        if not ok:
            log.error("message %s: its final state could not be stored", message_id)
        for respond in self._finishing.pop(message_id, ()):
            _answer(respond, _ROK if ok else _RETRY_LATER)

    # --- receipt deadlines ------------------------------------------------------------

    def _await_receipt(self, msg: Message, carrier: str, now: float) -> None:
        """``msg`` was accepted by ``carrier`` (at ``now``, wall time): its final receipt
        is due within the carrier's ``receipt_timeout``, and before its validity ends."""
        cfg = self._carriers.get(carrier)
        # (A message recovered for a carrier no longer configured gets the default.)
        deadline = now + (cfg.receipt_timeout if cfg is not None else DEFAULT_RECEIPT_TIMEOUT)
        expires = msg.expires_at
        if expires is not None and expires < deadline:
            heapq.heappush(self._capped, (expires, msg.id, carrier))
            self._capped_ids.add(msg.id)
            return
        deadlines = self._deadlines.get(carrier)
        if deadlines is None:
            deadlines = self._deadlines[carrier] = {}
        deadlines[msg.id] = deadline

    def _drop_deadline(self, message_id: str, carrier: str) -> None:
        deadlines = self._deadlines.get(carrier)
        if deadlines is not None and deadlines.pop(message_id, None) is not None:
            return
        capped = self._capped_ids
        if message_id in capped:
            capped.discard(message_id)  # its heap entry is skipped when due...
            if len(self._capped) > 2 * len(capped) + 1024:
                # ...but not kept that long: the heap holds at most twice the live ones
                self._capped = [e for e in self._capped if e[1] in capped]
                heapq.heapify(self._capped)

    def _housekeeping(self) -> None:
        """Every ``_TICK`` seconds: receipts parked too long are unmatched; messages past
        their receipt deadline become final."""
        self._tick = asyncio.get_running_loop().call_later(_TICK, self._housekeeping)
        now = self.wall()
        try:
            if self._finishing and self.store.unwritable is not None:
                # Final states wait for a store that cannot write: their carriers are
                # told to send the receipts again rather than kept waiting (see
                # _commit_final).
                for message_id in list(self._finishing):
                    self._answer_later(message_id)
            self._expire_parked(now)
            due: list[tuple[str, str, MessageState]] = []
            for carrier, deadlines in self._deadlines.items():
                cfg = self._carriers.get(carrier)
                state = (
                    MessageState[cfg.receipt_timeout_state]
                    if cfg is not None
                    else MessageState.UNKNOWN
                )
                while deadlines:
                    message_id = next(iter(deadlines))
                    if deadlines[message_id] > now:
                        break
                    del deadlines[message_id]
                    due.append((message_id, carrier, state))
            capped = self._capped
            while capped and capped[0][0] <= now:
                _, message_id, carrier = heapq.heappop(capped)
                if message_id in self._capped_ids:
                    self._capped_ids.discard(message_id)
                    due.append((message_id, carrier, MessageState.EXPIRED))
            for message_id, carrier, state in due:
                self._receipt_overdue(message_id, carrier, state, now)
        except Exception:  # a bug: log it, the next tick tries again
            log.exception("router housekeeping failed")

    def _receipt_overdue(
        self, message_id: str, carrier: str, state: MessageState, now: float
    ) -> None:
        """No final receipt came in time: the message is final as ``state`` (the client
        gets that receipt); a receipt that comes later is a duplicate."""
        self.metrics.event("receipt_timeout", carrier)
        report = DeliveryReport(message_id="", state=state, done_at=now, carrier=carrier)
        sent = self._sent.get(message_id)
        if sent is not None:
            self._receipt(sent[0], report, None)
        else:
            self._spawn(self._overdue_from_store(message_id, report))

    async def _overdue_from_store(self, message_id: str, report: DeliveryReport) -> None:
        for attempt in range(_OVERDUE_TRIES):
            try:
                stored = await self.store.get(message_id)
                break
            except StoreError as exc:
                if attempt == 0:
                    log.warning("message %s: overdue, but the store failed (%s)", message_id, exc)
                await asyncio.sleep(_TICK)  # a backoff: the store says when it is back
        else:
            log.error("message %s: overdue, the store did not answer: left unfinished", message_id)
            return
        if stored is None or stored.done_at is not None or message_id in self._finishing:
            return
        report = msgspec.structs.replace(report, carrier_message_id=stored.carrier_message_id)
        self._receipt(stored.message, report, None)

    def _mobile_originated(
        self, carrier: str, pdu: DeliverSm, respond: Respond | None
    ) -> int | None:
        """An MO message to the carrier's ``mo_account``: answered at once, or (with
        ``respond``) once delivered to the account or held in the store."""
        account = self._carriers[carrier].mo_account
        if account is None:
            self.metrics.event("mo_unrouted", carrier)
            return _ROK
        from router.model import Address

        payload = pdu.tlv(Tag.MESSAGE_PAYLOAD)
        msg = Message(
            id="",
            account=account,
            source=Address(pdu.source_addr_ton, pdu.source_addr_npi, pdu.source_addr),
            destination=Address(pdu.dest_addr_ton, pdu.dest_addr_npi, pdu.destination_addr),
            short_message=pdu.short_message or (payload if isinstance(payload, bytes) else b""),
            data_coding=pdu.data_coding,
            esm_class=pdu.esm_class,
            protocol_id=pdu.protocol_id,
            submitted_at=self.wall(),
        )
        self.metrics.event("mo", carrier)
        settled = None if respond is None else partial(_answer_ok, respond)
        if self.sink.mobile_originated(account, msg, settled) is False:
            # Neither sent nor held (the store is full or cannot write): the carrier
            # keeps it and sends it again later, rather than our memory.
            self.metrics.event("mo_refused", carrier)
            return _RETRY_LATER
        return _ROK if respond is None else None


def _answer(respond: Respond | None, status: int) -> None:
    if respond is not None:
        respond(status)


def _answer_ok(respond: Respond | None, ok: bool) -> None:
    """Answer a carrier once its deliver_sm reached the client or the store (``ok``), or
    with a temporary error so that it sends it again."""
    if respond is not None:
        respond(_ROK if ok else _RETRY_LATER)


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
