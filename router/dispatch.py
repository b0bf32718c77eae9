"""The dispatcher: moves messages from the queue to carriers while they have window slots
and rate tokens, and handles each submit's outcome.

A pass runs as a loop callback, not a task: one is scheduled when something may be
sendable (:meth:`Dispatcher.wake_up`), or by a timer when only time is missing. It takes
ready messages from the queue, chooses a carrier for each (least cost among those healthy,
a long message's parts on the carrier the first part took: :mod:`router.pins`) and sends
it; a message no carrier can take now is parked (:mod:`router.carriers`), one nothing will
ever take is finished as UNDELIVERABLE.

Spill-over (``routing.spill``): when the first choice cannot take a message for want of
capacity (its windows full, its rate used up) and another eligible carrier could, ``now``
sends it there at once; ``wait`` holds it (and the queue behind it) for the first choice
until it has waited ``spill_wait`` seconds since it was due; ``never`` always holds it.
Each spill is counted by the first choice and why it could not take the message
(``window``, ``rate``, or ``breaker``: its half-open trial was taken, which spills at once
whatever the policy).

Outcomes arrive as future callbacks. A temporary refusal, a timeout or a dropped bind
sends the message to the next candidate (within the retry budget and its validity); a
permanent refusal is final and reported as a failure receipt; an acceptance hands the
message to :mod:`router.receipts` to await its receipt.

``ack_after: store``: which carrier a message is handed to is committed before its
submit_sm goes out (write-ahead).

A cluster: a message routed to a carrier whose binds only other nodes hold is handed over
to one of them (:mod:`router.handover`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping
from functools import partial

import msgspec

from router.carriers import Carriers
from router.config import RouterConfig
from router.finals import Finals
from router.handover import Taking
from router.health import HealthView, rejected_kind
from router.intake import PacedIntake
from router.metrics import RouterMetrics, no_route_reason
from router.model import (
    Accepted,
    Failed,
    Message,
    Refusal,
    Rejected,
    RouteDecision,
    SubmitOutcome,
)
from router.pins import Part, Pins, pin_key
from router.ports import Store, SubmitWatch
from router.queue import MessageQueue
from router.rates import PriceBook
from router.receipts import Receipts
from router.routing import AccountPolicy, Chooser, RouteTable
from smppcore.constants import MessageState

log = logging.getLogger(__name__)

#: Messages sent per dispatcher pass before it yields to the loop: a pass costs ~50 us a
#: message, and every connection, timer and the store writer wait for it to end.
_DISPATCH_BATCH = 256
#: Why the parts of a long message that failed end (``Refusal.reason``).
_LONG_FAILED = "long message failed"
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
        #: Long messages' pins (their groups → the carrier their parts go over).
        self.pins = Pins(config.routing)
        #: When the message this pass held for its first choice (``spill: wait``) may
        #: spill; read (and cleared) at the end of the pass.
        self._hold_until: float | None = None
        self.in_flight = 0
        """Submits sent and not answered yet."""
        self._pass_due = False
        self._pass_timer: asyncio.TimerHandle | None = None
        self.running = False
        #: A cluster: hands over what is routed to carriers bound only on other nodes.
        self.taking: Taking | None = None
        #: Told of every acceptance and every refusal (set by the owner; None: nobody).
        self.watch: SubmitWatch | None = None

    def reconfigure(
        self,
        config: RouterConfig,
        policies: Mapping[str, AccountPolicy],
        removed: list[str],
        prices: PriceBook | None,
    ) -> None:
        """Route with a reloaded ``config`` (routes, prices, retries) and ``policies``;
        the carriers ``removed`` keep no long message's parts."""
        self.pins.settings = config.routing
        for name in removed:
            self.pins.forget_carrier(name)
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
        pins = self.pins
        if len(pins):
            pins.expire(now)
            for group, pinned in pins.overdue(now):
                self._move(group, pinned, now)  # their wait is over: routed elsewhere
            for pinned in pins.take_orphaned():
                queue.unpark(pin_key(pinned))
        queue.release_due(now)
        queue.expire(now)
        for msg in queue.take_expired():
            self._finish(msg, MessageState.EXPIRED, 0, "", "expired")
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
            self._finish(msg, MessageState.EXPIRED, 0, "", "expired")
        if (
            sent >= _DISPATCH_BATCH
            or handled >= _HANDLE_BATCH
            or (intake.paced and not intake.crowded())
        ):
            self._hold_until = None
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
        hold, self._hold_until = self._hold_until, None
        if hold is not None:
            waits.append(hold - now)  # the held message may spill then
        if not waits and queue.ready_count:
            waits.append(0.5)
        pin_due = pins.next_deadline() if len(pins) else None
        if pin_due is not None:
            waits.append(pin_due - now)  # parts waiting for their carrier move then
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
        pinned: str | None = None
        tried: tuple[str, ...] | None = None
        if concat is not None:
            group = self.pins.get(concat.group)
            if group is not None:
                if group.failed:  # fail_all: a part still to come fails too
                    self._finish(msg, MessageState.UNDELIVERABLE, 0, "", _LONG_FAILED)
                    return None
                pinned = group.carrier
                if group.left:  # resend_all: never over the carriers it left
                    tried = (*msg.tried, *group.left)
        decision = chooser.choose(msg, pinned, tried)
        if type(decision) is RouteDecision:  # the usual case
            return self._take(decision, msg, pinned, now, mono)
        if pinned is not None:
            assert concat is not None
            if chooser.waits_for(msg, pinned) is not None and self.pins.blocked(msg, now):
                # Its carrier is unavailable: the part waits for it, a short while.
                self.pins.queued(msg, now)
                self.carriers.park(msg, pin_key(pinned))
                return None
            self._move(concat.group, pinned, now)
            return self._route(msg, now, mono, views, chooser)  # unpinned, or failed
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
            self._finish(msg, MessageState.UNDELIVERABLE, 0, "", "no route")
            return None
        self.carriers.park(msg, waits_for)
        return None

    def _take(
        self, decision: RouteDecision, msg: Message, pinned: str | None, now: float, mono: float
    ) -> str | None:
        """The first carrier of ``decision`` (its choice, then its fallbacks) that can take
        ``msg`` now — ready and let through by its breaker — or "" to wait for capacity.
        A long message's parts stay on the carrier the first part took. None: handed over
        to another node (a cluster: the choice is bound only there)."""
        first = decision.carrier
        taking = self.taking
        if taking is not None and self.carriers.remote(first):
            return None if taking.offer(first, msg) else ""
        pool = self._pools.get(first)
        if pool is not None and pool.ready(mono):
            if self._health[first].try_acquire_trial(now):
                if msg.concat and pinned is None:
                    self.pins.pin(msg, first, now)
                return first
            reason = "breaker"  # its half-open trial is taken: no use waiting
        else:
            reason = "window" if pool is None or pool.ready_at(mono) is None else "rate"
        if pinned is not None or not decision.fallbacks:
            return ""  # its parts wait for their carrier; or nothing to spill to
        if reason != "breaker" and not self._may_spill(msg, now):
            return ""
        for name in decision.fallbacks:
            pool = self._pools.get(name)
            if pool is not None and pool.ready(mono) and self._health[name].try_acquire_trial(now):
                if msg.concat:
                    self.pins.pin(msg, name, now)
                spills = self.metrics.spills
                spills[first, reason] = spills.get((first, reason), 0) + 1
                return name
        return ""

    def _may_spill(self, msg: Message, now: float) -> bool:
        """May ``msg`` go to a carrier other than its first choice, which has no capacity
        for it now (``routing.spill``)? With ``wait``, once it has waited ``spill_wait``
        seconds since it was due; until then the pass remembers when that is."""
        settings = self.config.routing
        if settings.spill == "now":
            return True
        if settings.spill == "never":
            return False
        due = msg.submitted_at
        if msg.schedule_at is not None and msg.schedule_at > due:
            due = msg.schedule_at
        until = due + settings.spill_wait
        if now >= until:
            return True
        if self._hold_until is None or until < self._hold_until:
            self._hold_until = until
        return False

    # --- long messages ----------------------------------------------------------------

    def _finish(
        self,
        msg: Message,
        state: MessageState,
        error: int,
        carrier: str,
        refused: str | None,
        carrier_message_id: str = "",
    ) -> None:
        """``msg`` is final here (no carrier receipt will come). ``refused``: why, when no
        carrier holds it (the watch hears of it); None: a carrier had accepted it, as
        ``carrier_message_id`` (reported with it: the sink knows it reached a carrier)."""
        if msg.concat is not None:
            self.pins.final(msg, self.wall())
        watch = self.watch
        if refused is not None and watch is not None:
            try:
                watch.submit_refused(msg, Refusal(state, carrier, error, refused))
            except Exception:
                log.exception("message %s: its refusal could not be announced", msg.id)
        self.finals.decide(msg, state, error, carrier, carrier_message_id)

    def _move(self, group: str, carrier: str, now: float) -> None:
        """``group``'s pinned ``carrier`` stayed unavailable past ``pin_wait`` (or will
        never take it): if it holds no part of it, the message simply goes elsewhere
        whole; else the carrier failed it (``long_message_failure``)."""
        g = self.pins.get(group)
        if g is None:
            return
        if not g.holds():
            self.pins.unpin(group, leave=False)
            self._count_long(carrier, "rerouted")
            log.info("long message %s: moved off unavailable carrier %s", group, carrier)
            self.queue.unpark(pin_key(carrier))  # its other parts follow the new pin
            return
        self._group_failed(group, carrier, now, None)

    def _group_failed(
        self,
        group: str,
        carrier: str,
        now: float,
        failing: tuple[Message, MessageState, int] | None,
    ) -> None:
        """``carrier``, holding parts of the long message ``group``, failed it for good
        (``failing``: the part it failed, with its final state and error; None: it stayed
        unavailable): ``long_message_failure`` decides what becomes of every part."""
        g = self.pins.get(group)
        if g is None:
            if failing is not None:
                self._finish(failing[0], failing[1], failing[2], carrier, _LONG_FAILED)
            return
        resend = self.config.routing.long_message_failure == "resend_all"
        if resend and failing is not None and self._has_next(failing[0], g.left, carrier, now):
            self._resend(group, carrier, now, failing[0])
            return
        if resend and failing is None:
            parts = [m for _, _, m in g.parts.values()]
            if parts and self._has_next(parts[0], g.left, carrier, now):
                self._resend(group, carrier, now, None)
                return
        self._count_long(carrier, "failed_all")
        log.info("long message %s: failed by %s, every part fails", group, carrier)
        g.failed = True
        for carrier_id, state, part in list(g.parts.values()):
            if state is Part.ACCEPTED:
                if self.receipts.withdraw(part.id, carrier):  # not final yet
                    failed = MessageState.UNDELIVERABLE
                    self._finish(part, failed, 0, carrier, None, carrier_id)
            elif state is Part.QUEUED:
                queued = self.queue.remove(part.id)
                if queued is not None:
                    self._finish(queued, MessageState.UNDELIVERABLE, 0, carrier, _LONG_FAILED)
        # Parts in flight are failed by their outcome; parts still to come when routed.
        if failing is not None:
            self._finish(*failing[:2], failing[2], carrier, _LONG_FAILED)

    def _has_next(self, msg: Message, left: tuple[str, ...], carrier: str, now: float) -> bool:
        """Could ``msg`` go over a carrier other than ``carrier`` and those ``left``?"""
        chooser = Chooser(
            self.table, self.carriers.views(now), self.policies,
            settings=self.config.routing, prices=self.prices, now=now,
        )  # fmt: skip
        fresh = msgspec.structs.replace(msg, tried=())
        decision = chooser.choose(fresh, None, (*left, carrier))
        return type(decision) is RouteDecision

    def _resend(self, group: str, carrier: str, now: float, failing: Message | None) -> None:
        """Send every part of ``group`` again over the next carrier: ``carrier`` is left
        behind (never pinned again for it), the parts it accepted are taken back."""
        g = self.pins.unpin(group, leave=True)
        assert g is not None
        self._count_long(carrier, "resent")
        log.info("long message %s: failed by %s, sent again over the next carrier", group, carrier)
        # Those final already (their receipt came) stay as they are: the client has it.
        again = [part for part in g.at_carrier() if self.receipts.withdraw(part.id, carrier)]
        if failing is not None:
            again.append(failing)
        for part in again:
            fresh = msgspec.structs.replace(part, attempts=0, tried=())
            self.pins.queued(fresh, now)
            self.queue.requeue(fresh)
        self.queue.unpark(pin_key(carrier))

    def _count_long(self, carrier: str, action: str) -> None:
        counts = self.metrics.long_messages
        counts[carrier, action] = counts.get((carrier, action), 0) + 1

    # --- sending and outcomes ---------------------------------------------------------

    def _send(self, carrier: str, msg: Message, mono: float) -> None:
        msg = msgspec.structs.replace(msg, attempts=msg.attempts + 1)
        started = time.monotonic()
        self.in_flight += 1
        metrics = self.metrics
        metrics.carrier(carrier).decisions += 1
        if msg.concat is not None:
            self.pins.sending(msg, self.wall())
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
        carrier = outcome.carrier
        health = self._health.get(carrier)
        concat = msg.concat
        group = self.pins.get(concat.group) if concat is not None else None
        # Its part of a long message pinned to this carrier (not one it has left).
        pinned = group is not None and not group.failed and group.carrier == carrier
        if isinstance(outcome, Accepted):
            if health is not None:
                health.record_submit(now, latency, "accepted")
            self.metrics.carrier(carrier).submit_latency.observe(latency)
            self.receipts.accepted(msg, carrier, outcome.carrier_message_id, now, answered)
            watch = self.watch
            if watch is not None:
                try:
                    watch.submit_accepted(msg, carrier, outcome.carrier_message_id)
                except Exception:
                    log.exception("message %s: its acceptance could not be announced", msg.id)
            if group is not None and (group.failed or carrier in group.left):
                self._left_behind(msg, carrier, group.failed, now, outcome.carrier_message_id)
            elif concat is not None:
                self.pins.accepted(msg, now, outcome.carrier_message_id)
            return
        if isinstance(outcome, Rejected) and not outcome.retryable:
            if health is not None:
                health.record_submit(now, latency, "rejected")
            self.metrics.carrier(carrier).submit_latency.observe(latency)
            if pinned:
                assert concat is not None
                failing = (msg, MessageState.REJECTED, outcome.status)
                self._group_failed(concat.group, carrier, now, failing)
                return
            if group is not None and not group.failed and carrier in group.left:
                # The message left this carrier meanwhile: this part goes with the rest.
                fresh = msgspec.structs.replace(msg, attempts=0, tried=())
                self.pins.queued(fresh, now)
                self.queue.requeue(fresh)
                return
            self._finish(msg, MessageState.REJECTED, outcome.status, carrier, "rejected")
            return
        if isinstance(outcome, Failed) and outcome.reason == "not ready":
            # It never left us (no bind could take it): neither an attempt nor a failure
            # of the carrier's.
            back = msgspec.structs.replace(msg, attempts=msg.attempts - 1)
            if concat is not None:
                self.pins.queued(back, now)
            self.queue.requeue(back)
            return
        kind = rejected_kind(outcome.status) if isinstance(outcome, Rejected) else "failed"
        if health is not None:
            health.record_submit(now, latency, kind)
        status = outcome.status if isinstance(outcome, Rejected) else 0
        counts = self.metrics.carrier(carrier)
        counts.submit_latency.observe(latency)
        counts.retries += 1
        retry = msgspec.structs.replace(msg, tried=(*msg.tried, carrier))
        expires = msg.expires_at
        if retry.attempts >= self.config.retry.max_attempts or (
            expires is not None and expires <= now
        ):
            state = (
                MessageState.EXPIRED
                if expires is not None and expires <= now
                else (MessageState.UNDELIVERABLE)
            )
            if pinned:
                assert concat is not None
                self._group_failed(concat.group, carrier, now, (msg, state, status))
                return
            why = "expired" if state == MessageState.EXPIRED else "retries exhausted"
            self._finish(msg, state, status, carrier, why)
            return
        if pinned:
            # Temporary trouble on the pinned carrier: try it again, parts stay together.
            retry = msgspec.structs.replace(retry, tried=msg.tried)
        if concat is not None:
            self.pins.queued(retry, now)
        self.queue.requeue(retry)

    def _left_behind(
        self, msg: Message, carrier: str, failed: bool, now: float, carrier_id: str
    ) -> None:
        """``carrier`` accepted a part of a long message (as ``carrier_id``) that has
        failed (``failed``) or moved to another carrier meanwhile: it fails too, or goes
        again with the rest."""
        if not self.receipts.withdraw(msg.id, carrier):
            self.pins.final(msg, now)  # its final receipt came already
            return
        if failed:
            self._finish(msg, MessageState.UNDELIVERABLE, 0, carrier, None, carrier_id)
            return
        fresh = msgspec.structs.replace(msg, attempts=0, tried=())
        self.pins.queued(fresh, now)
        self.queue.requeue(fresh)
