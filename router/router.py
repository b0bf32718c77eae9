"""The router: intake → bounded priority queue → least-cost choice → carrier pools, and
receipts back. :class:`Router` implements :class:`router.ports.Intake` and calls a
:class:`router.ports.ReportSink` with every final outcome and MO (and, when given, a
:class:`router.ports.SubmitWatch` with each carrier's acceptance and each refusal).

It is the facade over the parts that each own one job, wired here:

- :mod:`router.intake`: accepting submits (queue and store), pacing, cancel and replace;
- :mod:`router.dispatch`: the dispatcher passes (queue → route → carrier), the submits'
  outcomes, failover and retries, parking what no carrier can take now;
- :mod:`router.carriers`: the carrier pools and their health, pause/resume/drain, live
  reconfiguration, and the watch that wakes parked messages;
- :mod:`router.receipts` (with :mod:`router.deadlines`): carriers' receipts matched to our
  ids, early receipts, store lookups, receipt deadlines;
- :mod:`router.finals`: a message's final state reported, committed, and the carriers
  waiting on it answered (the durability order of ``ack_after: store``);
- :mod:`router.mo`: mobile-originated messages to the carrier's account;
- :mod:`router.recovery`: what a restart picks up again from the store, and what a live
  node takes over from a node that died (:meth:`Router.take_over`);
- :mod:`router.handover`: a cluster's messages routed to carriers bound on other nodes,
  and those other nodes hand over to this one.

Durability (``ack_after: store``): which carrier a message is handed to is committed
before its submit_sm goes out; a carrier's receipt or MO is answered ESME_ROK only once
the client has it (or it is held in the store) and the final state is committed. Every
message accepted by a carrier has a receipt deadline (``receipt_timeout``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from functools import partial

import msgspec

from router.carriers import Carriers, CarrierState
from router.config import CarrierConfig, RouterConfig
from router.correlation import Correlator
from router.dispatch import Dispatcher
from router.finals import Finals
from router.handover import WAIT as HANDOVER_WAIT
from router.handover import Taking
from router.health import CarrierHealth
from router.intake import PacedIntake
from router.metrics import RouterMetrics
from router.mo import MobileOriginated
from router.model import DeliveryReport, Message
from router.ports import AcceptCallback, HandedOver, Handover, ReportSink, Store, SubmitWatch
from router.queue import MessageQueue
from router.rates import load_prices
from router.receipts import Receipts
from router.recovery import pick_up, recover
from router.routing import AccountPolicy, Explanation, RouteTable, explain
from router.upstream import Answer, CarrierPool, Respond
from smppcore.aio import Connection
from smppcore.constants import EsmClass
from smppcore.pdu import DeliverSm

__all__ = ["CarrierState", "QueueStats", "Router", "RouterStats"]

log = logging.getLogger(__name__)

_RECEIPT_BITS = int(EsmClass.DELIVERY_RECEIPT) | int(EsmClass.INTERMEDIATE_NOTIFICATION)
#: Seconds between housekeeping ticks: receipt deadlines, receipts parked for a mapping.
_TICK = 1.0


class RouterStats(msgspec.Struct, frozen=True):
    queued: int
    scheduled: int
    in_flight: int
    carriers: dict[str, int]
    parked: int = 0


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
        handover: Handover | None = None,
        watch: SubmitWatch | None = None,
    ) -> None:
        """``bind_slots(carrier)``: the carrier's bind slots this node holds (a cluster);
        None: all its ``binds``. ``handover``: a cluster's hand-over of messages between
        nodes (:mod:`router.handover`); None: alone. ``watch``: told of each carrier's
        acceptance and of each message refused before any carrier took it."""
        self.config = config
        self.store = store
        self.sink = sink
        self.wall = wall
        #: One source of randomness for the parts (the pools' reconnect jitter).
        self._rng = rng or random.Random()
        self.queue = MessageQueue(config.queue_max)
        #: counts and latency histograms, read by smsc/metrics.py at scrape time
        self.metrics = RouterMetrics(c.name for c in config.carriers)
        #: ``ack_after: store``: carriers' deliver_sm are answered once durable, and what
        #: is handed to a carrier is recorded before its submit goes out.
        self._durable = config.ack_after == "store"
        self.finals = Finals(
            store=store, sink=sink, metrics=self.metrics, durable=self._durable, wall=wall
        )
        self.carriers = Carriers(
            config,
            queue=self.queue,
            metrics=self.metrics,
            on_deliver=self._on_deliver,
            wake=self._wake_up,
            wall=wall,
            rng=self._rng,
            bind_slots=bind_slots,
        )
        self.receipts = Receipts(
            config,
            store=store,
            carriers=self.carriers,
            finals=self.finals,
            metrics=self.metrics,
            wall=wall,
        )
        self.mo = MobileOriginated(
            carriers=self.carriers.configs, sink=sink, metrics=self.metrics, wall=wall
        )
        self.intake = PacedIntake(
            config,
            queue=self.queue,
            store=store,
            carriers=self.carriers,
            finals=self.finals,
            metrics=self.metrics,
            wake=self._wake_up,
            wall=wall,
        )
        self.dispatcher = Dispatcher(
            config,
            queue=self.queue,
            store=store,
            carriers=self.carriers,
            intake=self.intake,
            receipts=self.receipts,
            finals=self.finals,
            metrics=self.metrics,
            policies=policies,
            prices=load_prices(config.rates),  # the carriers' rate cards (router/rates.py)
            rng=self._rng,
            wall=wall,
        )
        self.dispatcher.watch = watch
        self.queue.on_ready = self.dispatcher.wake_up
        self._tick: asyncio.TimerHandle | None = None
        self.taking: Taking | None = None
        if handover is not None:
            self.taking = Taking(
                handover,
                carriers=self.carriers,
                queue=self.queue,
                metrics=self.metrics,
                adopt=self.adopt,
            )
            self.dispatcher.taking = self.taking
        self._taking_task: asyncio.Task[None] | None = None

    # --- what others read ---------------------------------------------------------------

    @property
    def pools(self) -> dict[str, CarrierPool]:
        return self.carriers.pools

    @property
    def health(self) -> dict[str, CarrierHealth]:
        return self.carriers.health

    @property
    def paused(self) -> set[str]:
        """Carriers taken out of routing by the operator (pause, drain)."""
        return self.carriers.paused

    @property
    def drained(self) -> set[str]:
        """Paused carriers whose binds are stopped too."""
        return self.carriers.drained

    @property
    def table(self) -> RouteTable:
        return self.dispatcher.table

    @property
    def policies(self) -> dict[str, AccountPolicy]:
        return self.dispatcher.policies

    @property
    def correlator(self) -> Correlator[tuple[DeliveryReport, Respond | None]]:
        return self.receipts.correlator

    @property
    def paced(self) -> int:
        """Submits waiting for room (intake pacing)."""
        return self.intake.paced

    # --- lifecycle ------------------------------------------------------------------------

    def _set_running(self, running: bool) -> None:
        self.carriers.running = self.intake.running = self.dispatcher.running = running

    async def start(self) -> None:
        await self.carriers.start(self.wall())
        await recover(self.store, self.queue, self.receipts, self.metrics, self.wall())
        self._set_running(True)
        self._tick = asyncio.get_running_loop().call_later(_TICK, self._housekeeping)
        if self.taking is not None:
            self._taking_task = asyncio.create_task(self.taking.run(), name="router-handover")
        self.dispatcher.wake_up()

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop dispatching, let in-flight submits finish (bounded), unbind carriers, and
        finish matching the receipts already acknowledged to carriers (bounded too)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._set_running(False)
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        self.intake.release()  # queued (and stored) now: nothing accepted is dropped
        self.dispatcher.stop()
        if self._taking_task is not None and self.taking is not None:
            self.taking.stop()
            try:
                async with asyncio.timeout(max(0.0, deadline - loop.time()) + HANDOVER_WAIT):
                    await asyncio.shield(self._taking_task)
            except TimeoutError:  # Redis hangs: cancel it (the store closes its connections)
                self._taking_task.cancel()
            await asyncio.gather(self._taking_task, return_exceptions=True)
            self._taking_task = None
        if self.taking is not None:  # what is offered goes to Redis, or stays this node's
            await self.taking.port.close(max(0.0, deadline - loop.time()))
        await self.carriers.stop(timeout)
        # A carrier will not resend a receipt we answered: deliver or hold what is being
        # matched through the store (the store closes after the router) before giving up.
        await self.receipts.settle(max(0.0, deadline - loop.time()))
        await self.receipts.cancel()

    async def close_intake(self, timeout: float) -> None:
        """Answer every submit still waiting — paced, or (``ack_after: store``) for its
        durable write — within ``timeout`` seconds (see :meth:`PacedIntake.close`)."""
        await self.intake.close(timeout)

    async def settle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the receipts being matched through the store
        (receipts of messages no longer in memory: sent long ago, before a restart, or
        repeated); True when none is left."""
        return await self.receipts.settle(timeout)

    async def wait_carriers_bound(
        self, timeout: float, carriers: Iterable[str] | None = None
    ) -> None:
        """Return once every carrier (or each of ``carriers``) has all its configured binds
        up and submit-capable; TimeoutError after ``timeout`` seconds. Woken by bind state
        changes, never by polling."""
        await self.carriers.wait_bound(timeout, carriers)

    async def binds_changed(self, timeout: float) -> bool:
        """Wait for the next change in any carrier's binds; False once ``timeout`` passed."""
        return await self.carriers.changed(timeout)

    def _wake_up(self) -> None:
        self.dispatcher.wake_up()

    def _housekeeping(self) -> None:
        """Every ``_TICK`` seconds: receipts parked too long are unmatched; messages past
        their receipt deadline become final."""
        self._tick = asyncio.get_running_loop().call_later(_TICK, self._housekeeping)
        try:
            self.receipts.tick(self.wall())
        except Exception:  # a bug: log it, the next tick tries again
            log.exception("router housekeeping failed")

    # --- Intake -----------------------------------------------------------------------

    def submit(self, message: Message, done: AcceptCallback) -> None:
        self.intake.submit(message, done)

    def cancel(self, message_id: str) -> bool:
        return self.intake.cancel(message_id)

    def replace(self, message: Message) -> bool:
        return self.intake.replace(message)

    # --- a cluster: messages across nodes --------------------------------------------

    def set_elsewhere(self, slots: Mapping[str, int]) -> None:
        """The bind slots other live nodes hold, by carrier (after each heartbeat): a
        carrier bound only there is routed to through the hand-over."""
        self.carriers.set_elsewhere(slots)

    def adopt(self, handed: list[HandedOver]) -> None:
        """Messages other nodes handed over to this one (now this node's in the store):
        queued to be routed here (one already queued is left as it is)."""
        queue = self.queue
        for item in handed:
            msg = item.stored.message
            if msg.id not in queue:
                queue.requeue(msg)

    async def take_over(self, node_id: str) -> int:
        """Take over the unfinished messages of ``node_id``, a node that died (its
        heartbeat is older than the lease): those never sent are queued, those a carrier
        accepted await their receipt until ``receipt_timeout`` from now, those sent with
        no answer recorded are sent again (``resent``; see :mod:`router.recovery`). How
        many were taken (none when another node is taking them: the store's lock).
        StoreError when the store cannot do it now."""
        found = await self.store.take_over_messages(node_id)
        if not found:
            return 0
        picked = pick_up(
            found, self.queue, self.receipts, self.metrics, self.wall(), why=f"node {node_id} died"
        )
        log.warning("took over %d unfinished messages of node %s", picked, node_id)
        self.dispatcher.wake_up()
        return len(found)

    # --- receipts and MO from carriers ------------------------------------------------

    def _on_deliver(
        self, carrier: str, pdu: DeliverSm, conn: Connection, answer: Answer
    ) -> int | None:
        """A carrier's deliver_sm: the status to answer it with now, or None when it is
        answered later (``ack_after: store``: once its effect is durable)."""
        respond: Respond | None = None
        if self._durable:
            respond = partial(answer, conn, pdu.sequence_number)
        if not pdu.esm_class & _RECEIPT_BITS:
            return self.mo.deliver(carrier, pdu, respond)
        return self.receipts.deliver(carrier, pdu, respond)

    # --- explaining and stats ---------------------------------------------------------

    def explain(self, destination: str, account: str) -> Explanation:
        now = self.wall()
        views = self.carriers.views(now)
        return explain(
            destination,
            account,
            table=self.table,
            policy=self.policies.get(account, AccountPolicy()),
            health=views,
            now=now,
            rates=self.carriers.rates(),
            windows=self.carriers.windows(),
            settings=self.config.routing,
            prices=self.dispatcher.prices,
        )

    def stats(self) -> RouterStats:
        return RouterStats(
            queued=self.queue.ready_count,
            scheduled=self.queue.scheduled_count,
            in_flight=self.dispatcher.in_flight,
            carriers={name: pool.bound for name, pool in self.pools.items()},
            parked=self.queue.parked_count,
        )

    def carrier_states(self) -> list[CarrierState]:
        return self.carriers.states(self.wall())

    def queue_stats(self) -> QueueStats:
        oldest = self.queue.oldest_submitted()
        return QueueStats(
            depth=len(self.queue),
            ready=self.queue.ready_count,
            scheduled=self.queue.scheduled_count,
            by_priority=self.queue.by_priority(),
            oldest_age=None if oldest is None else max(0.0, self.wall() - oldest),
            in_flight=self.dispatcher.in_flight,
            paced=self.paced,
            parked=self.queue.parked_count,
        )

    # --- control plane (admin API, live reconfiguration) ------------------------------

    def pause(self, name: str) -> None:
        """No new messages go to ``name`` (KeyError: no such carrier); in flight finish."""
        self.carriers.pause(name)

    async def resume(self, name: str) -> None:
        """Undo :meth:`pause` or :meth:`drain` (a drained carrier binds again)."""
        await self.carriers.resume(name)

    async def drain(self, name: str, timeout: float) -> None:
        """Pause ``name``, wait (at most ``timeout``) for its submits in flight, unbind it."""
        await self.carriers.drain(name, timeout)

    def new_pool(self, config: CarrierConfig) -> CarrierPool:
        """A pool for ``config``, not started (TlsError: its TLS files cannot be used): what
        a reload prepares before it changes anything."""
        return self.carriers.new_pool(config)

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
        prices = load_prices(config.rates)  # ConfigError before anything changed
        retired, removed = self.carriers.reconfigure(config, pools)
        self.dispatcher.reconfigure(config, policies, removed, prices)
        self.intake.config = config
        self.config = config
        self.carriers.unpark_all()  # routes changed: what each message waits for too
        return retired

    async def retire(self, pools: Iterable[CarrierPool]) -> None:
        """Stop pools taken out by :meth:`reconfigure`: each waits (at most its carrier's
        response_timeout + 1 s) for its submits in flight, then unbinds. Queued messages
        were never tied to a carrier: they go over the current ones; unanswered submits
        come back (``Failed``) and are routed again. Receipts a removed carrier would send
        after the unbind are not received."""
        await self.carriers.retire(pools)
