"""The carriers as the router holds them: one :class:`CarrierPool` (the binds) and one
:class:`CarrierHealth` each, the operator's hold on them (pause, drain, resume), live
reconfiguration (new pools, retired ones), and the watch over parked messages.

A message that no carrier can take now (every carrier of its route is down, its breaker
open, or paused) is parked in the queue under the set of carriers that could take it and
costs nothing while it waits: the lot is woken when one of those carriers can take messages
again (a bind up, resume, the breaker closing), or ONE message of it when the carrier's
breaker lets a trial through. Nothing rescans parked messages; their validity still runs.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterable, Mapping

import msgspec

from router.config import CarrierConfig, RouterConfig
from router.health import CarrierHealth, HealthView
from router.metrics import RouterMetrics
from router.model import Message
from router.queue import MessageQueue, ParkKey
from router.upstream import CarrierPool, DeliverCallback

#: When a carrier's breaker lets a trial through, its wake-up fires this long after, so
#: that the trial is let through and not missed by a hair.
_TRIAL_MARGIN = 0.001


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


class Carriers:
    """The pools and health of every carrier, by name. ``await start(now)``; ``await
    stop(timeout)``.

    ``on_deliver`` gets every deliver_sm a carrier sends (receipts and MO); ``wake`` is
    called when something may have become sendable (a bind came up). ``queue`` holds the
    parked messages this watches for. ``running`` (set by the owner) allows watch timers.

    ``pools``, ``health`` and ``configs`` are never replaced, only changed in place:
    others keep references to them. ``configs`` keeps a removed carrier's config, for the
    outcomes and receipts still in flight.
    """

    def __init__(
        self,
        config: RouterConfig,
        *,
        queue: MessageQueue,
        metrics: RouterMetrics,
        on_deliver: DeliverCallback,
        wake: Callable[[], None],
        wall: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        bind_slots: Callable[[str], int] | None = None,
    ) -> None:
        """``bind_slots(carrier)``: how many of a carrier's binds this node may open (the
        bind slots it holds in a cluster; see CarrierPool.allow); None: all of them."""
        self.queue = queue
        self._bind_slots = bind_slots
        #: A cluster: the bind slots other live nodes hold, by carrier (none: alone).
        self.elsewhere: dict[str, int] = {}
        self.metrics = metrics
        self.wall = wall
        self._on_deliver = on_deliver
        self._wake = wake
        self._rng = rng or random.Random()
        self.health_config = config.health
        self.configs: dict[str, CarrierConfig] = {c.name: c for c in config.carriers}
        self.health: dict[str, CarrierHealth] = {}
        self.pools: dict[str, CarrierPool] = {}
        #: Carriers taken out of routing by the operator (pause, drain); drained ones
        #: also have their binds stopped.
        self.paused: set[str] = set()
        self.drained: set[str] = set()
        self.binds_changed = asyncio.Event()
        #: carrier → the timer that looks again when its breaker lets a trial through
        #: (only while messages are parked waiting for it).
        self._watch_timers: dict[str, asyncio.TimerHandle] = {}
        self.running = False

    # --- lifecycle --------------------------------------------------------------------

    async def start(self, now: float) -> None:
        """Create every configured carrier's pool and health (at ``now``, wall time) and
        start binding."""
        for name, cfg in self.configs.items():
            self.health[name] = self._health(name, now)
            self.pools[name] = self._pool(cfg)
        for pool in self.pools.values():
            await pool.start()

    async def stop(self, timeout: float) -> None:
        """No more watching; every pool stops (in-flight submits answered within
        ``timeout``, then unbound)."""
        for timer in self._watch_timers.values():
            timer.cancel()
        self._watch_timers.clear()
        await asyncio.gather(
            *(pool.stop(timeout) for pool in self.pools.values()), return_exceptions=True
        )

    async def wait_bound(self, timeout: float, carriers: Iterable[str] | None = None) -> None:
        """Return once every carrier (or each of ``carriers``) has all the binds it may have
        (its configured binds, or the bind slots this node holds) up and submit-capable;
        TimeoutError after ``timeout`` seconds. Woken by bind state changes, never by
        polling."""
        names = list(self.pools) if carriers is None else list(carriers)
        pools = [self.pools[name] for name in names]
        async with asyncio.timeout(timeout):
            while not all(pool.bound >= pool.allowed for pool in pools):
                self.binds_changed.clear()
                await self.binds_changed.wait()

    async def changed(self, timeout: float) -> bool:
        """Wait for the next change in any carrier's binds; False once ``timeout`` passed."""
        self.binds_changed.clear()
        try:
            async with asyncio.timeout(timeout):
                await self.binds_changed.wait()
        except TimeoutError:
            return False
        return True

    # --- what routing sees ------------------------------------------------------------

    def any_bound(self) -> bool:
        """Some carrier has a submit-capable bind up."""
        return any(pool.any_bound() for pool in self.pools.values())

    def views(self, now: float) -> dict[str, HealthView]:
        """Every carrier's health at ``now``; a paused carrier shows as unavailable, so
        routing skips it (and messages only it could take wait, deferred)."""
        views = {name: h.view(now) for name, h in self.health.items()}
        if self.elsewhere:
            self._bound_elsewhere(views)
        for name in self.paused:
            view = views.get(name)
            if view is not None:
                views[name] = msgspec.structs.replace(
                    view, available=False, reasons=(*view.reasons, "paused by the operator")
                )
        return views

    def remote(self, name: str) -> bool:
        """A cluster: this node holds none of ``name``'s bind slots, other live nodes do
        (a message routed to it is handed over to one of them)."""
        if not self.elsewhere.get(name):
            return False
        pool = self.pools.get(name)
        return pool is not None and pool.allowed == 0

    def set_elsewhere(self, slots: Mapping[str, int]) -> None:
        """The bind slots other live nodes hold, by carrier (after a heartbeat). A change
        may make messages parked for a carrier sendable through another node."""
        fresh = {name: n for name, n in slots.items() if n > 0}
        if fresh != self.elsewhere:
            self.elsewhere = fresh
            self.unpark_all()
            self._wake()

    def _bound_elsewhere(self, views: dict[str, HealthView]) -> None:
        """Carriers bound only through other nodes show as available (their binds: the
        other nodes' slots), unless something else than the missing bind holds them."""
        for name, n in self.elsewhere.items():
            view = views.get(name)
            if view is not None and self.remote(name) and view.reasons == ("no bind up",):
                views[name] = msgspec.structs.replace(view, binds=n, available=True, reasons=())

    def rates(self) -> dict[str, float | None]:
        """Submits per second each carrier may be sent now; None: no limit."""
        return {name: pool.rate_limit for name, pool in self.pools.items()}

    def windows(self) -> dict[str, tuple[int, int]]:
        """Each carrier's submits in flight and window slots (its window × binds up)."""
        return {n: (p.in_flight, p.config.window * p.bound) for n, p in self.pools.items()}

    def states(self, now: float) -> list[CarrierState]:
        views = self.views(now)
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

    # --- the operator's control ---------------------------------------------------------

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
        self.watch(name, self.wall())

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
        self, config: RouterConfig, pools: Mapping[str, CarrierPool] | None = None
    ) -> tuple[list[CarrierPool], list[str]]:
        """The carriers of a reloaded ``config``, at once: ``pools`` (from :meth:`new_pool`)
        are those added or changed: each starts binding, unless its carrier is drained (it
        binds with its new config when resumed); a paused one stays paused. Carriers not in
        ``config`` are taken out. Returns the pools replaced or removed (for
        :meth:`retire`) and the names removed. Parked messages are not woken here: the
        caller does once routes changed too (:meth:`unpark_all`)."""
        names = {c.name for c in config.carriers}
        retired = [pool for name, pool in self.pools.items() if name not in names]
        removed = [n for n in self.pools if n not in names]
        for name in removed:
            del self.pools[name]
            self.health.pop(name, None)
            self.paused.discard(name)
            self.drained.discard(name)
            timer = self._watch_timers.pop(name, None)
            if timer is not None:
                timer.cancel()
            # ``self.configs`` keeps its config: outcomes and receipts in flight look it up.
        for name, pool in (pools or {}).items():
            old = self.pools.get(name)
            if old is None:
                self.health[name] = self._health(name, self.wall())
            else:
                retired.append(old)
            self.configs[name] = pool.config
            self.pools[name] = pool
            if name not in self.drained:
                pool.start_now()
            self.health[name].set_binds(pool.bound)
        for cfg in config.carriers:
            self.configs[cfg.name] = cfg
        self.health_config = config.health
        return retired, removed

    async def retire(self, pools: Iterable[CarrierPool]) -> None:
        """Stop pools taken out by :meth:`reconfigure`: each waits (at most its carrier's
        response_timeout + 1 s) for its submits in flight, then unbinds; then what waited
        for a retired carrier is routed again."""
        pools = list(pools)
        if pools:
            await asyncio.gather(
                *(pool.stop(pool.config.response_timeout + 1.0) for pool in pools),
                return_exceptions=True,
            )
        self.unpark_all()

    def _pool(self, config: CarrierConfig) -> CarrierPool:
        slots = None if self._bind_slots is None else self._bind_slots(config.name)
        return CarrierPool(
            config,
            on_deliver=self._on_deliver,
            on_state=self.on_state,
            rng=self._rng,
            bind_slots=slots,
        )

    def _health(self, name: str, now: float) -> CarrierHealth:
        return CarrierHealth(name, self.health_config, now, on_breaker=self._on_breaker)

    # --- bind state -------------------------------------------------------------------

    def on_state(self, carrier: str, bound: int) -> None:
        """A pool's binds changed (``bound`` submit-capable ones up)."""
        pool = self.pools.get(carrier)
        if pool is not None:
            bound = pool.bound  # a replaced pool still reports while it unbinds: not its count
        health = self.health.get(carrier)
        if health is not None:
            health.set_binds(bound)
        self._wake()
        self.binds_changed.set()
        if self.queue.parked_count:
            self.watch(carrier, self.wall())  # a bind up may wake what waits for it

    # --- parked messages --------------------------------------------------------------

    def park(self, msg: Message, key: ParkKey) -> None:
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

    def unpark(self, which: Callable[[ParkKey], bool]) -> None:
        """Wake every lot of parked messages whose key satisfies ``which`` (an operator's
        change: routes, carriers): they are routed again."""
        for key in [k for k in self.queue.lots() if which(k)]:
            self.queue.unpark(key)

    def unpark_all(self) -> None:
        self.unpark(lambda key: True)

    def _on_breaker(self, carrier: str, state: str) -> None:
        """An outcome moved ``carrier``'s breaker (opened, closed, re-opened)."""
        if self.queue.parked_count:
            self.watch(carrier, self.wall())

    def _watch_fired(self, carrier: str) -> None:
        self._watch_timers.pop(carrier, None)
        self.watch(carrier, self.wall())

    def _watch_if_unwatched(self, carrier: str) -> None:
        if carrier not in self._watch_timers:
            self.watch(carrier, self.wall())

    def watch(self, carrier: str, now: float) -> None:
        """Wake what is parked waiting for ``carrier`` as far as it can take it now: every
        lot it could serve when it is bound, not paused and its breaker closed; ONE message
        (the trial) when its breaker is half-open; else, with its breaker holding submits
        back, a timer for when it lets a trial through. A carrier without a bind, or paused,
        needs nothing: a bind coming up (:meth:`on_state`) or resume calls this again.

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
            at: float | None = now + self.health_config.breaker_open  # if that one never went
        else:
            at = health.trial_at(now)
        if at is not None and self.running:
            delay = max(0.0, at - now) + _TRIAL_MARGIN
            loop = asyncio.get_running_loop()
            self._watch_timers[carrier] = loop.call_later(delay, self._watch_fired, carrier)
