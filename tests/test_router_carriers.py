"""The carriers as the router holds them (router.carriers): pools that bind to a real
message centre, the operator's pause / drain / resume, live reconfiguration, and the watch
that wakes parked messages when a carrier can take them again — a bind coming up, a
resume, a breaker letting a trial through — never by rescanning.

Built with a real queue and real pools bound to :class:`MinimalMC` on loopback.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from loops import Run
from minimal_mc import DEADLINE, MinimalMC
from router_parts import UPSTREAM, carrier, message, metrics_for, router_config

from router.carriers import Carriers
from router.config import RouterConfig
from router.queue import MessageQueue


class Woken:
    """Counts the queue's wake-ups (``on_ready``: parked messages became ready) and the
    carriers' (``wake``: a bind changed); :meth:`until` waits for a condition on them."""

    def __init__(self) -> None:
        self.ready = 0
        self.binds = 0
        self._changed = asyncio.Event()

    def on_ready(self) -> None:
        self.ready += 1
        self._changed.set()

    def wake(self) -> None:
        self.binds += 1
        self._changed.set()

    async def until(self, predicate: object) -> None:
        assert callable(predicate)
        async with asyncio.timeout(DEADLINE):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()


@asynccontextmanager
async def carriers_for(config: RouterConfig) -> AsyncIterator[tuple[Carriers, Woken]]:
    woken = Woken()
    queue = MessageQueue(config.queue_max, on_ready=woken.on_ready)
    c = Carriers(
        config,
        queue=queue,
        metrics=metrics_for(config),
        on_deliver=lambda *_: None,  # no receipts in these tests
        wake=woken.wake,
    )
    c.running = True
    await c.start(time.time())
    try:
        yield c, woken
    finally:
        c.running = False
        await c.stop(DEADLINE)


def test_pools_bind_and_the_operator_sees_them(run: Run) -> None:
    async def main() -> None:
        async with (
            MinimalMC(dict([UPSTREAM])) as mc,
            carriers_for(router_config(carrier("uk", mc, binds=2))) as (c, woken),
        ):
            await c.wait_bound(DEADLINE)
            assert c.any_bound()
            assert woken.binds >= 2
            [state] = c.states(time.time())
            assert (state.name, state.binds, state.bound, state.paused, state.drained) == (
                "uk",
                2,
                2,
                False,
                False,
            )
            assert state.health.available
            assert c.health["uk"].view(time.time()).binds == 2

    run(main())


def test_a_paused_carrier_is_unavailable_to_routing(run: Run) -> None:
    async def main() -> None:
        async with (
            MinimalMC(dict([UPSTREAM])) as mc,
            carriers_for(router_config(carrier("uk", mc))) as (c, _),
        ):
            await c.wait_bound(DEADLINE)
            with pytest.raises(KeyError):
                c.pause("nowhere")
            c.pause("uk")
            view = c.views(time.time())["uk"]
            assert not view.available
            assert "paused by the operator" in view.reasons
            assert c.states(time.time())[0].paused
            await c.resume("uk")
            assert c.views(time.time())["uk"].available

    run(main())


def test_a_parked_lot_wakes_when_its_carrier_binds(run: Run) -> None:
    async def main() -> None:
        async with (
            MinimalMC(dict([UPSTREAM])) as mc,
            carriers_for(router_config(carrier("uk", mc))) as (c, woken),
        ):
            # Parked at once, before the pool's bind is up: nothing can take it yet.
            c.park(message("m1"), ("uk",))
            assert c.queue.parked_count == 1
            await woken.until(lambda: c.queue.ready_count == 1)
            assert c.queue.parked_count == 0
            assert c.pools["uk"].bound == 1
            assert c.metrics.events[("deferred", "")] == 1

    run(main())


def test_a_lot_parked_for_a_paused_carrier_waits_for_resume(run: Run) -> None:
    async def main() -> None:
        async with (
            MinimalMC(dict([UPSTREAM])) as mc,
            carriers_for(router_config(carrier("uk", mc))) as (c, woken),
        ):
            await c.wait_bound(DEADLINE)
            c.pause("uk")
            c.park(message("m1"), ("uk",))
            c.watch("uk", time.time())  # what a bind change would do: paused, it stays
            assert c.queue.parked_count == 1
            await c.resume("uk")
            assert (c.queue.parked_count, c.queue.ready_count) == (0, 1)
            assert woken.ready == 1

    run(main())


def test_an_open_breaker_lets_one_parked_message_through_when_a_trial_is_due(run: Run) -> None:
    async def main() -> None:
        async with MinimalMC(dict([UPSTREAM])) as mc:
            config = router_config(carrier("uk", mc), breaker_failures=1, breaker_open=0.05)
            async with carriers_for(config) as (c, woken):
                await c.wait_bound(DEADLINE)
                for i in range(3):
                    c.park(message(f"m{i}"), ("uk",))
                c.health["uk"].record_submit(time.time(), 0.01, "failed")  # the breaker opens
                assert c.health["uk"].view(time.time()).breaker == "open"
                await woken.until(lambda: c.queue.ready_count == 1)  # one trial, not the lot
                assert c.queue.parked_count == 2

    run(main())


def test_drain_unbinds_and_resume_binds_again(run: Run) -> None:
    async def main() -> None:
        async with (
            MinimalMC(dict([UPSTREAM])) as mc,
            carriers_for(router_config(carrier("uk", mc))) as (c, _),
        ):
            await c.wait_bound(DEADLINE)
            drained = c.pools["uk"]
            await c.drain("uk", DEADLINE)
            assert "uk" in c.drained
            assert "uk" in c.paused
            assert drained.bound == 0
            await c.resume("uk")
            assert c.pools["uk"] is not drained  # a fresh pool
            await c.wait_bound(DEADLINE)
            assert not c.drained
            assert not c.paused

    run(main())


def test_reconfigure_adds_and_removes_carriers_and_retires_their_pools(run: Run) -> None:
    async def main() -> None:
        async with (
            MinimalMC(dict([UPSTREAM])) as mc,
            carriers_for(router_config(carrier("uk", mc), carrier("fr", mc))) as (c, _woken),
        ):
            await c.wait_bound(DEADLINE)
            old_fr = c.pools["fr"]
            c.park(message("m1"), ("fr",))  # waits for fr, about to go
            new = router_config(carrier("uk", mc), carrier("de", mc))
            retired, removed = c.reconfigure(new, {"de": c.new_pool(carrier("de", mc))})
            assert removed == ["fr"]
            assert retired == [old_fr]
            assert set(c.pools) == set(c.health) == {"uk", "de"}
            assert "fr" in c.configs  # outcomes still in flight look it up
            await c.retire(retired)
            assert old_fr.bound == 0
            assert c.queue.ready_count == 1  # routed again, over the carriers there are
            await c.wait_bound(DEADLINE)
            assert c.pools["de"].bound == 1

    run(main())
