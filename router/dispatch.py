"""The dispatcher: moves messages from the queue to carriers while they have window slots
and rate tokens, and handles each submit's outcome.

A pass runs as a loop callback, not a task: one is scheduled when something may be
sendable (:meth:`Dispatcher.wake_up`), or by a timer when only time is missing. It takes
ready messages from the queue, chooses a carrier for each (least cost among those healthy,
a long message's parts on the carrier the first part took) and sends it; a message no
carrier can take now is parked (:mod:`router.carriers`), one nothing will ever take is
finished as UNDELIVERABLE.

Outcomes arrive as future callbacks. A temporary refusal, a timeout or a dropped bind
sends the message to the next candidate (within the retry budget and its validity); a
permanent refusal is final and reported as a failure receipt; an acceptance hands the
message to :mod:`router.receipts` to await its receipt.

``ack_after: store``: which carrier a message is handed to is committed before its
submit_sm goes out (write-ahead).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from functools import partial

import msgspec

from router.carriers import Carriers
from router.config import RouterConfig
from router.finals import Finals
from router.health import HealthView, rejected_kind
from router.intake import PacedIntake
from router.metrics import RouterMetrics, no_route_reason
from router.model import (
    Accepted,
    Failed,
    Message,
    Rejected,
    RouteDecision,
    SubmitOutcome,
)
from router.ports import Store
from router.queue import MessageQueue
from router.rates import PriceBook
from router.receipts import Receipts
from router.routing import AccountPolicy, Chooser, RouteTable
from smppcore.constants import MessageState

log = logging.getLogger(__name__)

_MAX_PINNED = 100_000
#: Messages sent per dispatcher pass before it yields to the loop: a pass costs ~50 us a
#: message, and every connection, timer and the store writer wait for it to end.
_DISPATCH_BATCH = 256
#: Messages taken from the queue per pass at most (sent, parked or finished here): parking
#: one costs a few us, but a woken backlog that must be parked again is not one long stall.
_HANDLE_BATCH = 2048


class Dispatcher:
    """Sends queued messages to carriers and handles the outcomes. ``running`` (set by the
    owner) allows passes; :meth:`stop` cancels a pass waiting on its timer."""

    def __init__(
        self,
        config: RouterConfig,
        *,
        queue: MessageQueue,
        store: Store,
        carriers: Carriers,
        intake: PacedIntake,
        receipts: Receipts,
        finals: Finals,
        metrics: RouterMetrics,
        policies: Mapping[str, AccountPolicy] | None = None,
        prices: PriceBook | None = None,
        rng: random.Random | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.table = RouteTable(config.routes)
        #: The carriers' rate cards (router/rates.py), loaded by the owner; None: none.
        self.prices = prices
        #: Chooses which messages explore (see router/routing.py).
        self.rng = rng or random.Random()
        self.policies = dict(policies or {})
        self.queue = queue
        self.store = store
        self.carriers = carriers
        self.intake = intake
        self.receipts = receipts
        self.finals = finals
        self.metrics = metrics
        self.wall = wall
        self.durable = config.ack_after == "store"
        # The carriers' maps, changed in place by them (never replaced).
        self._pools = carriers.pools
        self._health = carriers.health
        #: A long message's group → the carrier its first part took.
        self._pinned: OrderedDict[str, str] = OrderedDict()
        self.in_flight = 0
        """Submits sent and not answered yet."""
        self._pass_due = False
        self._pass_timer: asyncio.TimerHandle | None = None
        self.running = False

    def reconfigure(
        self,
        config: RouterConfig,
        policies: Mapping[str, AccountPolicy],
        removed: list[str],
        prices: PriceBook | None,
    ) -> None:
        """Route with a reloaded ``config`` (routes, prices, retries) and ``policies``;
        the carriers ``removed`` keep no long message's parts."""
        for name in removed:
            for group in [g for g, c in self._pinned.items() if c == name]:
                del self._pinned[group]
        self.table = RouteTable(config.routes)
        self.prices = prices
        self.config = config
        self.policies = dict(policies)

    def stop(self) -> None:
        """No more passes (``running`` is False); a pass waiting on its timer is dropped."""
        if self._pass_timer is not None:
            self._pass_timer.cancel()
            self._pass_timer = None

    # --- passes -----------------------------------------------------------------------

    def wake_up(self) -> None:
        """Something may be sendable: a dispatcher pass runs at the end of this loop turn
        (once, however many wake-ups came)."""
        if not self._pass_due and self.running:
            self._pass_due = True
            asyncio.get_running_loop().call_soon(self._pass)

    def _pass(self) -> None:
        """One dispatcher pass; then another at once, after a delay, or on the next wake-up.

        Wake-ups during the pass (a message put back because it must wait for capacity)
        are this pass's own: they are ignored, or the dispatcher would spin. A callback,
        not a task awaiting an event: at moderate rates a pass runs per message, and waking
        a task through an event costs ~3 us on uvloop against ~0.5 us for call_soon."""
        if self._pass_timer is not None:
            self._pass_timer.cancel()
            self._pass_timer = None
        if not self.running:
            self._pass_due = False
            return
        self._pass_due = True
        loop = asyncio.get_running_loop()
        delay: float | None
        try:
            delay = self.dispatch(self.wall(), loop.time())
        except Exception:  # a bug: log it, and try again shortly rather than stop for good
            log.exception("dispatcher pass failed")
            delay = 0.5
        self._pass_due = False
        if delay is None or not self.running:
            return
        if delay <= 0:
            self.wake_up()
        else:
            self._pass_timer = loop.call_later(delay, self._pass)

    def dispatch(self, now: float, mono: float) -> float | None:
        """Send what can go now; the seconds until something may change, or None.

        Two clocks: ``now`` (wall, Unix seconds) for the queue's schedules and expiries and
        for health; ``mono`` (the loop's monotonic clock) for the carrier pools, whose rate
        buckets and ESME_RTHROTTLED pauses run on it (router.upstream)."""
        self.receipts.expire_parked(now)
        queue = self.queue
        queue.release_due(now)
        queue.expire(now)
        for msg in queue.take_expired():
            self.finals.decide(msg, MessageState.EXPIRED, 0, "")
        intake = self.intake
        if intake.paced:
            intake.release()
        sent = handled = 0
        # Health changes only when outcomes arrive (later loop turns): one snapshot per
        # batch, not one per message. A half-open breaker's single trial is still taken
        # per message by try_acquire_trial in _route.
        views = self.carriers.views(now) if queue.ready_count else {}
        chooser = Chooser(
            self.table, views, self.policies, settings=self.config.routing, prices=self.prices,
            now=now, rng=self.rng, on_explore=partial(self.metrics.event, "explored"),
        )  # fmt: skip
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
            self.finals.decide(msg, MessageState.EXPIRED, 0, "")
        if (
            sent >= _DISPATCH_BATCH
            or handled >= _HANDLE_BATCH
            or (intake.paced and not intake.crowded())
        ):
            return 0.0  # yield to the loop, then carry on (paced submits first)
        due = queue.next_due()
        waits = [] if due is None else [due - now]
        # Only pools that become ready LATER (a rate token, the end of a throttle pause):
        # one ready now was no use to the message at the head, and waiting "0 s" for it
        # would spin. Slots freed and binds up wake the loop through events.
        waits += [
            t - mono
            for p in self._pools.values()
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

    # --- routing one message ----------------------------------------------------------

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
            why = chooser.never_reason(msg, pinned)
            reason = no_route_reason(why)
            self.metrics.no_route[reason] = self.metrics.no_route.get(reason, 0) + 1
            log.info("message %s: no route (%s)", msg.id, why)
            self.finals.decide(msg, MessageState.UNDELIVERABLE, 0, "")
            return None
        self.carriers.park(msg, waits_for)
        return None

    def _take(
        self, decision: RouteDecision, msg: Message, pinned: str | None, now: float, mono: float
    ) -> str:
        """The first carrier of ``decision`` (its choice, then its fallbacks) that can take
        ``msg`` now — ready and let through by its breaker — or "" to wait for capacity.
        A long message's parts stay on the carrier the first part took."""
        name = decision.carrier
        pool = self._pools.get(name)
        if pool is not None and pool.ready(mono) and self._health[name].try_acquire_trial(now):
            if msg.concat and pinned is None:
                self._pin(msg.concat.group, name)
            return name
        if pinned is not None:
            return ""  # its parts wait for their carrier
        for name in decision.fallbacks:
            pool = self._pools.get(name)
            if pool is not None and pool.ready(mono) and self._health[name].try_acquire_trial(now):
                if msg.concat:
                    self._pin(msg.concat.group, name)
                return name
        return ""

    def _pin(self, group: str, carrier: str) -> None:
        self._pinned[group] = carrier
        if len(self._pinned) > _MAX_PINNED:
            self._pinned.popitem(last=False)

    # --- sending and outcomes ---------------------------------------------------------

    def _send(self, carrier: str, msg: Message, mono: float) -> None:
        msg = msgspec.structs.replace(msg, attempts=msg.attempts + 1)
        started = time.monotonic()
        self.in_flight += 1
        metrics = self.metrics
        metrics.carrier(carrier).decisions += 1
        if msg.tried and msg.tried[-1] != carrier:
            key = (msg.tried[-1], carrier)
            metrics.failovers[key] = metrics.failovers.get(key, 0) + 1
        done = partial(self.outcome, msg, started)
        if self.durable:
            # Write-ahead: which carrier it goes to is committed before the submit leaves.
            before = partial(self._sending, msg.id, carrier)
            self._pools[carrier].send(msg, mono, done, before=before)
        else:
            self._pools[carrier].send(msg, mono, done)

    def _sending(self, message_id: str, carrier: str, go: Callable[[bool], None]) -> None:
        """Record that ``message_id`` is handed to ``carrier``; ``go(True)`` once committed
        (its submit_sm is written then), ``go(False)`` when it cannot be (requeued)."""
        try:
            self.store.set_sending(message_id, carrier, go)
        except Exception:
            log.exception("message %s: its send could not be recorded", message_id)
            go(False)

    def outcome(self, msg: Message, started: float, outcome: SubmitOutcome) -> None:
        """The carrier's answer to ``msg``'s submit (sent at ``started``, monotonic)."""
        self.in_flight -= 1
        self.wake_up()
        now = self.wall()
        answered = time.monotonic()
        latency = answered - started
        health = self._health.get(outcome.carrier)
        if isinstance(outcome, Accepted):
            if health is not None:
                health.record_submit(now, latency, "accepted")
            self.metrics.carrier(outcome.carrier).submit_latency.observe(latency)
            self.receipts.accepted(msg, outcome.carrier, outcome.carrier_message_id, now, answered)
            return
        if isinstance(outcome, Rejected) and not outcome.retryable:
            if health is not None:
                health.record_submit(now, latency, "rejected")
            self.metrics.carrier(outcome.carrier).submit_latency.observe(latency)
            self.finals.decide(msg, MessageState.REJECTED, outcome.status, outcome.carrier)
            return
        if isinstance(outcome, Failed) and outcome.reason == "not ready":
            # It never left us (no bind could take it): neither an attempt nor a failure
            # of the carrier's.
            self.queue.requeue(msgspec.structs.replace(msg, attempts=msg.attempts - 1))
            return
        kind = rejected_kind(outcome.status) if isinstance(outcome, Rejected) else "failed"
        if health is not None:
            health.record_submit(now, latency, kind)
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
            self.finals.decide(msg, state, status, outcome.carrier)
            return
        if msg.concat and self._pinned.get(msg.concat.group) == outcome.carrier:
            # Temporary trouble on the pinned carrier: try it again, parts stay together.
            retry = msgspec.structs.replace(retry, tried=msg.tried)
        self.queue.requeue(retry)
