"""The router: intake → bounded priority queue → least-cost choice → carrier pools, and
receipts back. It implements :class:`router.ports.Intake` and calls a
:class:`router.ports.ReportSink` with every final outcome.

One dispatcher task moves messages from the queue to carriers while they have window
slots and rate tokens; outcomes arrive as future callbacks. A temporary refusal, a
timeout or a dropped bind sends the message to the next candidate (within the retry
budget and its validity); a permanent refusal is final and reported as a failure
receipt. All parts of one long message go over the same carrier.

A message that no carrier can take now (every carrier of its route is down, its breaker
open, or paused) is parked in the queue under the set of carriers that could take it and
costs nothing while it waits: the lot is woken when one of those carriers can take messages
again (a bind up, resume, the breaker closing), or ONE message of it when the carrier's
breaker lets a trial through. Nothing rescans parked messages; their validity still runs.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from functools import partial

import msgspec

from router.config import CarrierConfig, RouterConfig
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
from router.store import Store
from router.upstream import CarrierPool
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
    ) -> None:
        self.config = config
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
        self.correlator: Correlator[DeliveryReport] = Correlator(
            store, max_cache=500_000, early_ttl=120.0, max_early=50_000
        )
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
            self.pools[name] = CarrierPool(
                cfg, on_deliver=self._on_deliver, on_state=self._on_state, rng=self._rng
            )
        for pool in self.pools.values():
            await pool.start()
        await self._recover()
        self._running = True
        self._wake_up()

    async def _recover(self) -> None:
        """After a restart: re-queue what was accepted but never sent; wait for the
        receipts of what was sent (their correlation is in the store)."""
        requeued = 0
        for stored in await self.store.unfinished():
            if not stored.carrier:
                self.queue.requeue(stored.message)
                requeued += 1
        if requeued:
            log.info("recovered %d accepted messages not yet sent upstream", requeued)

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop dispatching, let in-flight submits finish (bounded), unbind carriers, and
        finish matching the receipts already acknowledged to carriers (bounded too)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._running = False
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
        """Return once every carrier (or each of ``carriers``) has all its configured binds
        up and submit-capable; TimeoutError after ``timeout`` seconds. Woken by bind state
        changes, never by polling."""
        names = list(self.pools) if carriers is None else list(carriers)
        pools = [self.pools[name] for name in names]
        async with asyncio.timeout(timeout):
            while not all(pool.bound >= pool.config.binds for pool in pools):
                self._binds_changed.clear()
                await self._binds_changed.wait()

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

    async def add_carrier(self, config: CarrierConfig) -> None:
        """Start binding to a new carrier (routes may name it once this returns)."""
        if config.name in self.pools:
            raise ValueError(f"carrier {config.name!r} exists")
        self._carriers[config.name] = config
        self.health[config.name] = self._health(config.name, self.wall())
        self.pools[config.name] = pool = self._pool(config)
        await pool.start()
        self._wake_up()

    async def remove_carrier(self, name: str, timeout: float) -> None:
        """Take ``name`` out of routing at once, wait (at most ``timeout``) for its submits
        in flight, unbind it. Queued messages were never tied to it: they go over the
        remaining carriers; its unanswered submits come back (``Failed``) and are
        re-routed. Receipts it would send after the unbind are not received."""
        pool = self.pools.pop(name)
        self.health.pop(name, None)
        self.paused.discard(name)
        self.drained.discard(name)
        for group in [g for g, c in self._pinned.items() if c == name]:
            del self._pinned[group]
        # ``self._carriers`` keeps its config: outcomes and receipts in flight look it up.
        timer = self._watch_timers.pop(name, None)
        if timer is not None:
            timer.cancel()
        await pool.stop(timeout)
        # What waited for it (among others) is routed again: over the others, or parked
        # anew for the rest.
        self._unpark(lambda key: name in key)

    async def replace_carrier(self, config: CarrierConfig, timeout: float) -> None:
        """Bind to ``config.name`` with a new config: the new binds start at once, the old
        ones are drained (submits in flight awaited, at most ``timeout``) and unbound. Its
        health and pause state are kept."""
        old = self.pools[config.name]
        self._carriers[config.name] = config
        self.drained.discard(config.name)
        self.pools[config.name] = pool = self._pool(config)
        await pool.start()
        await old.stop(timeout)
        self._on_state(config.name, pool.bound)

    def reconfigure(self, config: RouterConfig, policies: Mapping[str, AccountPolicy]) -> None:
        """Swap the route table and prices, the retry budget and the account policies.
        Carriers are added and removed with :meth:`add_carrier` / :meth:`remove_carrier`;
        queue size, ack mode, health and store settings need a restart."""
        self.table = RouteTable(config.routes)
        self.config = config
        self.policies = dict(policies)
        for cfg in config.carriers:
            self._carriers[cfg.name] = cfg
        self._unpark(lambda key: True)  # routes changed: what each message waits for too

    def _pool(self, config: CarrierConfig) -> CarrierPool:
        return CarrierPool(
            config, on_deliver=self._on_deliver, on_state=self._on_state, rng=self._rng
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
        for early in self.correlator.expire(now):
            self.metrics.event("receipt_unmatched", early.carrier)
            log.info("receipt from %s for unknown id %s dropped", early.carrier, early.key)
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
        self.pools[carrier].send(msg, mono, partial(self._outcome, msg, started))

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
            early = self.correlator.expect(
                outcome.carrier, outcome.carrier_message_id, msg.id, cfg.submit_id
            )
            for report in early:
                self._receipt(msg, report)
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
        self.store.set_final(msg.id, report)
        self._finished(msg, report, None)
        self.sink.report(StoredMessage(message=msg, state=state, error=error), report)

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

    def _on_deliver(self, carrier: str, pdu: DeliverSm) -> int:
        if not pdu.esm_class & _RECEIPT_BITS:
            self._mobile_originated(carrier, pdu)
            return CommandStatus.ESME_ROK
        read = read_receipt(pdu)
        if read is None:
            self.metrics.event("receipt_unreadable", carrier)
            return CommandStatus.ESME_ROK
        receipt_id, state, error = read
        if len(self._tasks) >= _MAX_RESOLVING and self.correlator.lookup(
            carrier, receipt_id, self._carriers[carrier].receipt_id
        ) is None:
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
        self._match_receipt(carrier, receipt_id, report, _MEMORY_TURNS)
        return CommandStatus.ESME_ROK

    def _match_receipt(
        self, carrier: str, receipt_id: str, report: DeliveryReport, turns: int
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
            self._receipt_for(our_id, report)
        elif turns > 0:
            asyncio.get_running_loop().call_soon(
                self._match_receipt, carrier, receipt_id, report, turns - 1
            )
        else:
            task = asyncio.create_task(self._resolve_later(carrier, receipt_id, report))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _resolve_later(self, carrier: str, receipt_id: str, report: DeliveryReport) -> None:
        cfg = self._carriers[carrier]
        our_id = await self.correlator.resolve(carrier, receipt_id, cfg.receipt_id)
        if our_id is None:
            key = correlation_key(receipt_id, cfg.receipt_id)
            our_id = self.correlator.park(carrier, key, report, self.wall())
            if our_id is None:
                return  # parked until its submit_sm_resp is processed (or it expires)
        self._receipt_for(our_id, report)

    def _receipt_for(self, our_id: str, report: DeliveryReport) -> None:
        sent = self._sent.get(our_id)
        if sent is not None:
            self._receipt(sent[0], report)
            return
        task = asyncio.create_task(self._receipt_from_store(our_id, report))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _receipt_from_store(self, our_id: str, report: DeliveryReport) -> None:
        stored = await self.store.get(our_id)
        if stored is None:
            self.metrics.event("receipt_unmatched", report.carrier)
            return
        if stored.done_at is not None:
            # Final already (its receipt went to the client): a carrier repeating a
            # receipt, say because our deliver_sm_resp was late. Not a second receipt.
            self.metrics.event("receipt_duplicate", report.carrier)
            return
        self._receipt(stored.message, report)

    def _receipt(self, msg: Message, report: DeliveryReport) -> None:
        report = msgspec.structs.replace(report, message_id=msg.id)
        state = report.state
        final = is_final(state)
        if final:
            health = self.health.get(report.carrier)
            if health is not None:
                health.record_receipt(self.wall(), state == _DELIVERED)
            sent = self._sent.pop(msg.id, None)
            self.store.set_final(msg.id, report)
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
        self.sink.report(stored, report)

    def _mobile_originated(self, carrier: str, pdu: DeliverSm) -> None:
        account = self._carriers[carrier].mo_account
        if account is None:
            self.metrics.event("mo_unrouted", carrier)
            return
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
        self.sink.mobile_originated(account, msg)



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
