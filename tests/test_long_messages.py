"""Long messages (issue 15): every part of a concatenated message goes over one carrier,
and the pin that keeps them together lasts no longer than the message — released once
every part is accepted or final, or after ``pin_idle``; a part never waits for an
unavailable pinned carrier past ``pin_wait``; and a message its carrier fails for good
is failed part by part (``fail_all``) or sent again whole over the next carrier
(``resend_all``).

The pins are pure bookkeeping (router/pins.py), tested with time as a parameter; the
dispatcher's handling is tested with its real parts (router_parts), outcomes handed in as
the pools hand them, and passes run with their clocks as parameters.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import msgspec
import pytest
from loops import Run
from minimal_mc import MinimalMC
from router_parts import (
    T0,
    UPSTREAM,
    Parts,
    Sink,
    carrier,
    message,
    open_store,
    router_config,
    running_parts,
)

from router.config import CarrierPrice, Route, RouterConfig, RoutingConfig
from router.health import HealthView
from router.model import Accepted, Concat, DeliveryReport, Message, Rejected
from router.pins import Pins
from router.routing import AccountPolicy, RouteTable, explain, format_explanation
from smppcore.constants import MessageState

SETTINGS = RoutingConfig(pin_wait=5.0, pin_idle=60.0, max_pins=1000)


def part(
    seq: int, total: int = 3, group: str = "acme:Shop:447700900123:u7", **kw: object
) -> Message:
    msg = message(f"{group[-2:]}p{seq}")
    return msgspec.structs.replace(msg, concat=Concat(group, total, seq), **kw)


# --- the pins, pure ---------------------------------------------------------------------


def test_a_pin_goes_once_every_part_is_accepted_or_final() -> None:
    pins = Pins(SETTINGS)
    p1, p2, p3 = part(1), part(2), part(3)
    pins.pin(p1, "cheap", T0)
    for p in (p1, p2, p3):
        pins.sending(p, T0)
    pins.accepted(p1, T0 + 1)
    pins.accepted(p2, T0 + 1)
    assert pins.carrier("acme:Shop:447700900123:u7") == "cheap"  # part 3 still out
    pins.final(p3, T0 + 2)  # refused, say
    assert pins.carrier("acme:Shop:447700900123:u7") is None
    assert len(pins) == 0


def test_the_next_message_with_the_same_reference_finds_no_old_pin() -> None:
    """UDH references are 8 bits: a client's 257th long message to a number reuses the
    first one's. Once the first is settled, the second is routed afresh."""
    pins = Pins(SETTINGS)
    for seq in (1, 2):
        p = part(seq, total=2)
        if seq == 1:
            pins.pin(p, "dear", T0)
        pins.sending(p, T0)
        pins.accepted(p, T0)
    later = part(1, total=2)
    assert pins.carrier(later.concat.group) is None  # type: ignore[union-attr]


def test_a_pin_whose_parts_stop_coming_goes_after_pin_idle() -> None:
    pins = Pins(SETTINGS)
    p1 = part(1)
    pins.pin(p1, "cheap", T0)
    pins.sending(p1, T0)
    pins.accepted(p1, T0)  # parts 2 and 3 never come
    assert pins.expire(T0 + 59) == 0
    assert pins.carrier(p1.concat.group) == "cheap"  # type: ignore[union-attr]
    assert pins.expire(T0 + 60) == 1
    assert pins.carrier(p1.concat.group) is None  # type: ignore[union-attr]


def test_pins_are_bounded_the_least_recently_used_going_first() -> None:
    pins = Pins(msgspec.structs.replace(SETTINGS, max_pins=2))
    a, b, c = (part(1, group=f"acme:Shop:4477:u{ref}") for ref in (11, 12, 13))
    pins.pin(a, "cheap", T0)
    pins.pin(b, "cheap", T0 + 1)
    pins.pin(a, "cheap", T0 + 2)  # a used again: b is now the oldest
    pins.pin(c, "cheap", T0 + 3)
    assert len(pins) == 2
    assert pins.get("acme:Shop:4477:u12") is None
    assert pins.get("acme:Shop:4477:u11") is not None


def test_pins_are_scoped_by_account() -> None:
    """The group names the account (server.py): two accounts' messages with the same
    source, destination and reference are pinned apart."""
    pins = Pins(SETTINGS)
    mine = part(1, group="acme:Shop:447700900123:u7")
    theirs = part(1, group="other:Shop:447700900123:u7")
    pins.pin(mine, "cheap", T0)
    assert pins.carrier(theirs.concat.group) is None  # type: ignore[union-attr]


def test_a_part_waits_for_its_unavailable_carrier_pin_wait_at_most() -> None:
    pins = Pins(SETTINGS)
    p1, p2 = part(1), part(2)
    pins.pin(p1, "cheap", T0)
    assert pins.blocked(p2, T0 + 1)  # first found unavailable at T0 + 1
    assert pins.next_deadline() == T0 + 6
    assert pins.overdue(T0 + 5.9) == []
    assert pins.blocked(p2, T0 + 5.9)
    assert pins.overdue(T0 + 6) == [("acme:Shop:447700900123:u7", "cheap")]
    assert not pins.blocked(p2, T0 + 6)
    pins.sending(p2, T0 + 6.5)  # it could go after all: no longer blocked
    assert pins.next_deadline() is None


def test_parts_waiting_for_a_carrier_are_woken_when_the_bound_drops_their_group() -> None:
    pins = Pins(msgspec.structs.replace(SETTINGS, max_pins=1))
    waiting = part(2)
    pins.pin(part(1), "cheap", T0)
    assert pins.blocked(waiting, T0)
    pins.pin(part(1, group="acme:Shop:4477:u99"), "dear", T0 + 1)  # the bound: one group
    assert pins.carrier(waiting.concat.group) is None  # type: ignore[union-attr]
    assert pins.take_orphaned() == {"cheap"}
    assert pins.take_orphaned() == set()
    assert pins.next_deadline() is None


# --- the dispatcher ---------------------------------------------------------------------


def with_routing(config: RouterConfig, **settings: object) -> RouterConfig:
    return msgspec.structs.replace(config, routing=RoutingConfig(explore=0, **settings))  # type: ignore[arg-type]


def test_fail_all_a_part_refused_for_good_fails_every_part_with_a_receipt_each(
    run: Run, tmp_path: Path
) -> None:
    async def main() -> None:
        sink = Sink()
        async with open_store(tmp_path) as store:
            config = with_routing(router_config(carrier("uk")), long_message_failure="fail_all")
            parts = Parts(config, store, sink, wall=T0)
            d = parts.dispatcher
            p1, p2, p3 = part(1, attempts=1), part(2, attempts=1), part(3)
            d.pins.pin(p1, "uk", T0)
            for p in (p1, p2):
                d.pins.sending(p, T0)
            d.outcome(p1, time.monotonic(), Accepted("uk", "C1"))
            d.pins.queued(p3, T0)
            parts.queue.put(p3, T0)  # part 3 waits its turn
            d.outcome(p2, time.monotonic(), Rejected("uk", 0x45, False))
            assert sink.states() == {
                p1.id: MessageState.UNDELIVERABLE,  # accepted, taken back
                p2.id: MessageState.REJECTED,
                p3.id: MessageState.UNDELIVERABLE,
            }
            assert len(parts.queue) == 0
            assert parts.metrics.long_messages == {("uk", "failed_all"): 1}
            assert p1.id not in parts.receipts.sent
            assert len(parts.receipts.deadlines) == 0

    run(main())


def test_fail_all_a_part_still_to_come_fails_when_it_comes(run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        sink = Sink()
        async with open_store(tmp_path) as store:
            config = with_routing(router_config(carrier("uk")), long_message_failure="fail_all")
            parts = Parts(config, store, sink, wall=T0)
            d = parts.dispatcher
            p1 = part(1, attempts=1)
            d.pins.pin(p1, "uk", T0)
            d.pins.sending(p1, T0)
            d.outcome(p1, time.monotonic(), Rejected("uk", 0x45, False))
            parts.queue.put(part(2), T0)
            d.dispatch(T0, asyncio.get_running_loop().time())
            assert sink.states()[part(2).id] == MessageState.UNDELIVERABLE
            assert parts.metrics.carrier("uk").decisions == 0

    run(main())


def test_retries_exhausted_on_the_pinned_carrier_fail_the_whole_message(
    run: Run, tmp_path: Path
) -> None:
    async def main() -> None:
        sink = Sink()
        async with open_store(tmp_path) as store:
            config = with_routing(router_config(carrier("uk"), max_attempts=2))
            parts = Parts(config, store, sink, wall=T0)
            d = parts.dispatcher
            p1, p2 = part(1, total=2, attempts=1), part(2, total=2, attempts=2)
            d.pins.pin(p1, "uk", T0)
            for p in (p1, p2):
                d.pins.sending(p, T0)
            d.outcome(p1, time.monotonic(), Accepted("uk", "C1"))
            d.outcome(p2, time.monotonic(), Rejected("uk", 0x58, True))  # its last try
            assert sink.states() == {
                p1.id: MessageState.UNDELIVERABLE,
                p2.id: MessageState.UNDELIVERABLE,
            }
            assert parts.metrics.long_messages == {("uk", "failed_all"): 1}

    run(main())


def test_resend_all_sends_every_part_again_over_the_next_carrier(run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        sink = Sink()
        async with MinimalMC(dict([UPSTREAM]), auto_receipt=False) as mc:
            config = with_routing(
                router_config(carrier("cheap", mc), carrier("dear", mc)),
                long_message_failure="resend_all",
            )
            async with running_parts(tmp_path, config, sink) as parts:
                parts.dispatcher.running = False  # this test runs the passes
                d = parts.dispatcher
                p1, p2, p3 = (part(seq, attempts=1) for seq in (1, 2, 3))
                d.pins.pin(p1, "cheap", time.time())
                for p in (p1, p2, p3):
                    d.pins.sending(p, time.time())
                d.outcome(p1, time.monotonic(), Accepted("cheap", "C1"))
                d.outcome(p2, time.monotonic(), Rejected("cheap", 0x45, False))
                assert sink.reports == []  # nothing failed: they go again
                assert parts.queue.ready_count == 2
                assert parts.metrics.long_messages == {("cheap", "resent"): 1}
                # Part 3 was in flight: cheap takes it, but it goes with the rest.
                d.outcome(p3, time.monotonic(), Accepted("cheap", "C3"))
                assert parts.queue.ready_count == 3
                d.dispatch(time.time(), asyncio.get_running_loop().time())
                await mc.wait_for(lambda: len(mc.message_ids) == 3)
                assert parts.metrics.carrier("dear").decisions == 3
                assert parts.metrics.carrier("cheap").decisions == 0  # never pinned again
                group = d.pins.get(p1.concat.group)  # type: ignore[union-attr]
                assert group is None or group.carrier == "dear"

    run(main())


def test_resend_all_with_no_next_carrier_fails_every_part(run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        sink = Sink()
        async with open_store(tmp_path) as store:
            config = with_routing(router_config(carrier("uk")), long_message_failure="resend_all")
            parts = Parts(config, store, sink, wall=T0)
            d = parts.dispatcher
            p1, p2 = part(1, total=2, attempts=1), part(2, total=2, attempts=1)
            d.pins.pin(p1, "uk", T0)
            for p in (p1, p2):
                d.pins.sending(p, T0)
            d.outcome(p1, time.monotonic(), Accepted("uk", "C1"))
            d.outcome(p2, time.monotonic(), Rejected("uk", 0x45, False))
            assert sink.states() == {
                p1.id: MessageState.UNDELIVERABLE,
                p2.id: MessageState.REJECTED,
            }
            assert parts.metrics.long_messages == {("uk", "failed_all"): 1}

    run(main())


def test_parts_pinned_to_a_paused_carrier_holding_none_move_after_pin_wait(
    run: Run, tmp_path: Path
) -> None:
    """The pinned carrier is paused before any part reached it: the parts wait for it
    ``pin_wait`` (parked), then the message goes whole over the other carrier."""

    async def main() -> None:
        sink = Sink()
        async with MinimalMC(dict([UPSTREAM])) as mc:
            config = with_routing(
                router_config(carrier("cheap", mc), carrier("dear", mc)), pin_wait=5.0
            )
            async with running_parts(tmp_path, config, sink) as parts:
                d = parts.dispatcher
                d.running = False  # this test runs the passes
                mono = asyncio.get_running_loop().time
                now = time.time()
                p1, p2, p3 = part(1), part(2), part(3)
                d.pins.pin(p1, "cheap", now)
                parts.carriers.pause("cheap")
                for p in (p1, p2, p3):
                    parts.queue.put(p, now)
                d.dispatch(now, mono())
                assert parts.queue.parked_count == 3  # they wait for their carrier
                d.dispatch(now + 4.9, mono())
                assert parts.queue.parked_count == 3
                d.dispatch(now + 5.0, mono())
                await sink.wait_for(3)
                assert set(sink.states().values()) == {MessageState.DELIVERED}
                assert parts.metrics.carrier("dear").decisions == 3
                assert parts.metrics.carrier("cheap").decisions == 0
                assert parts.metrics.long_messages == {("cheap", "rerouted"): 1}
                assert len(d.pins) == 0  # every part final: the pin went

    run(main())


def test_parts_pinned_to_a_paused_carrier_that_holds_one_fail_after_pin_wait(
    run: Run, tmp_path: Path
) -> None:
    async def main() -> None:
        sink = Sink()
        async with MinimalMC(dict([UPSTREAM]), auto_receipt=False) as mc:
            config = with_routing(
                router_config(carrier("cheap", mc), carrier("dear", mc)),
                pin_wait=5.0,
                long_message_failure="fail_all",
            )
            async with running_parts(tmp_path, config, sink) as parts:
                d = parts.dispatcher
                d.running = False
                mono = asyncio.get_running_loop().time
                now = time.time()
                p1, p2 = part(1, total=2, attempts=1), part(2, total=2)
                d.pins.pin(p1, "cheap", now)  # part 1 went over cheap, which took it
                d.pins.sending(p1, now)
                d.outcome(p1, time.monotonic(), Accepted("cheap", "C1"))
                parts.carriers.pause("cheap")
                parts.queue.put(p2, now)
                d.dispatch(now + 1, mono())
                assert parts.queue.parked_count == 1
                d.dispatch(now + 6, mono())
                assert sink.states() == {
                    p1.id: MessageState.UNDELIVERABLE,
                    p2.id: MessageState.UNDELIVERABLE,
                }
                assert parts.metrics.long_messages == {("cheap", "failed_all"): 1}
                assert parts.metrics.carrier("dear").decisions == 0

    run(main())


# --- spill-over -------------------------------------------------------------------------


def spill_config(mc: MinimalMC, spill: str, spill_wait: float = 1.0) -> RouterConfig:
    """cheap (one bind, a window of one) before dear."""
    config = router_config(carrier("cheap", mc, window=1), carrier("dear", mc))
    return with_routing(config, spill=spill, spill_wait=spill_wait)


@pytest.mark.parametrize(
    ("spill", "later", "cheap", "dear"),
    [
        ("now", 0.0, 1, 1),  # the second goes to dear at once
        ("wait", 0.5, 1, 0),  # it waits for cheap...
        ("wait", 1.0, 1, 1),  # ...spill_wait at most
        ("never", 3600.0, 1, 0),  # it waits for cheap, however long
    ],
)
def test_when_the_cheapest_windows_are_full_the_spill_policy_decides(
    run: Run, tmp_path: Path, spill: str, later: float, cheap: int, dear: int
) -> None:
    async def main() -> None:
        async with MinimalMC(dict([UPSTREAM])) as mc:
            mc.hold = True  # submits recorded, not answered: cheap's window stays full
            async with running_parts(tmp_path, spill_config(mc, spill), Sink()) as parts:
                d = parts.dispatcher
                d.running = False  # this test runs the passes
                mono = asyncio.get_running_loop().time
                now = time.time()
                for i in (1, 2):
                    parts.queue.put(message(f"m{i}", submitted_at=now), now)
                d.dispatch(now, mono())
                if later:
                    d.dispatch(now + later, mono())
                assert parts.metrics.carrier("cheap").decisions == cheap
                assert parts.metrics.carrier("dear").decisions == dear
                assert parts.metrics.spills == ({("cheap", "window"): 1} if dear else {})
                assert parts.queue.ready_count == 1 - dear  # held at the head of the queue
                await mc.wait_for(lambda: len(mc.submits) == cheap + dear)
                mc.hold = False
                mc.release()

    run(main())


def test_a_held_message_has_the_pass_come_back_when_it_may_spill(run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with MinimalMC(dict([UPSTREAM])) as mc:
            mc.hold = True
            async with running_parts(tmp_path, spill_config(mc, "wait", 1.0), Sink()) as parts:
                d = parts.dispatcher
                d.running = False
                now = time.time()
                for i in (1, 2):
                    parts.queue.put(message(f"m{i}", submitted_at=now), now)
                delay = d.dispatch(now + 0.25, asyncio.get_running_loop().time())
                assert delay is not None
                assert 0.7 <= delay <= 0.76  # at now + 1.0, its spill_wait since it was due
                await mc.wait_for(lambda: len(mc.submits) == 1)
                mc.hold = False
                mc.release()

    run(main())


def test_a_wait_whose_parts_were_cancelled_still_ends(run: Run, tmp_path: Path) -> None:
    """The parts waiting for their carrier were cancelled (cancel_sm): the wait ends on
    time all the same, and the dispatcher has nothing more to come back for."""

    async def main() -> None:
        sink = Sink()
        async with MinimalMC(dict([UPSTREAM])) as mc:
            config = with_routing(
                router_config(carrier("cheap", mc), carrier("dear", mc)), pin_wait=5.0
            )
            async with running_parts(tmp_path, config, sink) as parts:
                d = parts.dispatcher
                d.running = False
                mono = asyncio.get_running_loop().time
                now = time.time()
                p1, p2 = part(1, total=2), part(2, total=2)
                d.pins.pin(p1, "cheap", now)
                parts.carriers.pause("cheap")
                parts.queue.put(p2, now)
                d.dispatch(now, mono())
                assert parts.queue.remove(p2.id) is not None  # cancelled while it waited
                assert d.dispatch(now + 5.0, mono()) is None
                assert d.pins.next_deadline() is None
                assert parts.metrics.long_messages == {("cheap", "rerouted"): 1}

    run(main())


def test_a_receipt_from_the_carrier_a_part_was_taken_back_from_is_ignored(
    run: Run, tmp_path: Path
) -> None:
    async def main() -> None:
        sink = Sink()
        async with open_store(tmp_path) as store:
            parts = Parts(router_config(carrier("uk")), store, sink, wall=T0)
            p1 = part(1, attempts=1)
            parts.dispatcher.outcome(p1, time.monotonic(), Accepted("uk", "C1"))
            assert parts.receipts.withdraw(p1.id, "uk")  # awaited still: taken back
            late = DeliveryReport(message_id=p1.id, state=MessageState.DELIVERED, carrier="uk")
            parts.receipts.receipt(p1, late, None)
            assert sink.reports == []
            assert parts.metrics.events[("receipt_withdrawn", "uk")] == 1
            assert not parts.receipts.withdraw(p1.id, "uk")  # nothing awaited any more

    run(main())


# --- explain ----------------------------------------------------------------------------


def test_explain_says_how_spill_over_and_failed_long_messages_are_handled() -> None:
    routes = [Route(prefix="44", carriers=(CarrierPrice("cheap", "1"), CarrierPrice("dear", "2")))]
    settings = RoutingConfig(spill="wait", spill_wait=0.05, long_message_failure="resend_all")
    expl = explain(
        "447700900123",
        "acme",
        table=RouteTable(routes),
        policy=AccountPolicy(),
        health={n: HealthView(carrier=n) for n in ("cheap", "dear")},
        now=T0,
        settings=settings,
    )
    assert (expl.spill, expl.spill_wait, expl.long_message_failure) == (
        "wait",
        0.05,
        "resend_all",
    )
    lines = format_explanation(expl).splitlines()
    assert lines[-3] == "when cheap has no capacity: wait up to 50 ms for it, then the next"
    assert lines[-2] == "a long message its carrier fails: resend_all"
    assert lines[-1] == "choice: cheap at 1; then dear"
