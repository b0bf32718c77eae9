"""The dispatcher (router.dispatch): a pass takes ready messages from the queue, routes
each (least cost among the carriers that can take it now), sends it, and handles the
carrier's answer — accepted: its receipt awaited; refused for good: final as REJECTED;
refused for now, timed out, or dropped: tried again (another carrier first) within the
retry budget and its validity; no carrier can take it now: parked; none ever will:
UNDELIVERABLE.

Built with every real part (store, queue, carriers bound to :class:`MinimalMC`, intake,
receipts, finals); the sink is the one fake. A pass takes its clocks as parameters.
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

from router.model import Accepted, Concat, Failed, Message, Rejected
from smppcore.constants import MessageState


def test_a_message_goes_to_the_cheapest_carrier_and_its_receipt_finishes_it(
    run: Run, tmp_path: Path
) -> None:
    async def main() -> None:
        sink = Sink()
        async with MinimalMC(dict([UPSTREAM])) as mc:
            config = router_config(carrier("cheap", mc), carrier("dear", mc))
            async with running_parts(tmp_path, config, sink) as parts:
                parts.intake.submit(message("m1"), lambda status: None)
                await sink.wait_for(1)
                assert sink.states() == {"m1": MessageState.DELIVERED}
                assert mc.texts() == ["text of m1"]
                assert parts.metrics.carrier("cheap").decisions == 1
                assert parts.metrics.carrier("dear").decisions == 0
                assert parts.dispatcher.in_flight == 0

    run(main())


def test_in_store_mode_the_carrier_is_recorded_before_the_submit_leaves(
    run: Run, tmp_path: Path
) -> None:
    async def main() -> None:
        sink = Sink()
        async with MinimalMC(dict([UPSTREAM])) as mc:
            mc.hold = True  # submits recorded, not answered
            config = router_config(carrier("uk", mc), ack_after="store")
            async with running_parts(tmp_path, config, sink) as parts:
                parts.intake.submit(message("m1"), lambda status: None)
                await mc.wait_for(lambda: len(mc.submits) == 1)
                assert parts.dispatcher.in_flight == 1
                got = await parts.store.get("m1")
                assert got is not None
                assert (got.carrier, got.carrier_message_id) == ("uk", "")
                mc.release()
                await sink.wait_for(1)
                assert sink.states() == {"m1": MessageState.DELIVERED}

    run(main())


def test_a_message_whose_only_carrier_is_paused_is_parked_until_resumed(
    run: Run, tmp_path: Path
) -> None:
    async def main() -> None:
        sink = Sink()
        async with (
            MinimalMC(dict([UPSTREAM])) as mc,
            running_parts(tmp_path, router_config(carrier("uk", mc)), sink) as parts,
        ):
            parts.dispatcher.running = False  # this test runs the pass
            parts.carriers.pause("uk")
            parts.intake.submit(message("m1"), lambda status: None)
            parts.dispatcher.dispatch(time.time(), asyncio.get_running_loop().time())
            assert (parts.queue.parked_count, parts.queue.ready_count) == (1, 0)
            assert parts.metrics.events[("deferred", "")] == 1
            assert mc.submits == []
            parts.dispatcher.running = True
            await parts.carriers.resume("uk")  # wakes the lot, and the dispatcher
            await sink.wait_for(1)
            assert sink.states() == {"m1": MessageState.DELIVERED}

    run(main())


def test_a_message_nothing_routes_is_undeliverable(run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        sink = Sink()
        async with open_store(tmp_path) as store:
            parts = Parts(router_config(carrier("uk"), prefix="44"), store, sink, wall=T0)
            parts.queue.put(message("m1", destination="33612345678"), T0)
            parts.dispatcher.dispatch(T0, asyncio.get_running_loop().time())
            assert sink.states() == {"m1": MessageState.UNDELIVERABLE}
            assert sum(parts.metrics.no_route.values()) == 1

    run(main())


def test_a_pass_finishes_what_expired_in_the_queue(run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        sink = Sink()
        async with open_store(tmp_path) as store:
            parts = Parts(router_config(carrier("uk")), store, sink, wall=T0 + 2)
            parts.queue.put(message("m1", expires_at=T0 + 1), T0)
            parts.dispatcher.dispatch(T0 + 2, asyncio.get_running_loop().time())
            assert sink.states() == {"m1": MessageState.EXPIRED}
            assert len(parts.queue) == 0

    run(main())


# --- outcomes, handed in as the pools hand them -------------------------------------------


def sent(attempts: int = 1, **changes: object) -> Message:
    return msgspec.structs.replace(message("m1"), attempts=attempts, **changes)


def test_an_accepted_message_awaits_its_receipt(run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        sink = Sink()
        async with open_store(tmp_path) as store:
            parts = Parts(router_config(carrier("uk")), store, sink, wall=T0)
            parts.dispatcher.outcome(sent(), time.monotonic(), Accepted("uk", "C1"))
            assert "m1" in parts.receipts.sent
            assert len(parts.receipts.deadlines) == 1
            assert parts.receipts.correlator.lookup("uk", "C1", "as_is") == "m1"
            assert sink.reports == []
            assert parts.metrics.carrier("uk").submit_latency.count == 1

    run(main())


def test_a_temporary_refusal_tries_again_with_the_carrier_noted(run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with open_store(tmp_path) as store:
            parts = Parts(router_config(carrier("uk"), max_attempts=3), store, Sink(), wall=T0)
            parts.dispatcher.outcome(sent(1), time.monotonic(), Rejected("uk", 0x58, True))
            again = parts.queue.pop_ready(T0)
            assert again is not None
            assert (again.tried, again.attempts) == (("uk",), 1)
            assert parts.metrics.carrier("uk").retries == 1

    run(main())


@pytest.mark.parametrize(
    ("attempts", "expires_at", "state"),
    [(3, None, MessageState.UNDELIVERABLE), (1, T0, MessageState.EXPIRED)],
)
def test_past_its_retry_budget_or_validity_a_failed_message_is_final(
    run: Run, tmp_path: Path, attempts: int, expires_at: float | None, state: MessageState
) -> None:
    async def main() -> None:
        sink = Sink()
        async with open_store(tmp_path) as store:
            parts = Parts(router_config(carrier("uk"), max_attempts=3), store, sink, wall=T0)
            msg = sent(attempts, expires_at=expires_at)
            parts.dispatcher.outcome(msg, time.monotonic(), Rejected("uk", 0x58, True))
            [(_, report)] = sink.reports
            assert (report.state, report.error, report.carrier) == (state, 0x58, "uk")
            assert len(parts.queue) == 0

    run(main())


def test_a_permanent_refusal_is_final_as_rejected(run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        sink = Sink()
        async with open_store(tmp_path) as store:
            parts = Parts(router_config(carrier("uk")), store, sink, wall=T0)
            parts.dispatcher.outcome(sent(), time.monotonic(), Rejected("uk", 0x0B, False))
            [(_, report)] = sink.reports
            assert (report.state, report.error) == (MessageState.REJECTED, 0x0B)
            assert parts.metrics.carrier("uk").retries == 0

    run(main())


def test_a_submit_no_bind_could_take_is_not_an_attempt(run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with open_store(tmp_path) as store:
            parts = Parts(router_config(carrier("uk")), store, Sink(), wall=T0)
            parts.dispatcher.outcome(sent(2), time.monotonic(), Failed("uk", "not ready"))
            again = parts.queue.pop_ready(T0)
            assert again is not None
            assert (again.attempts, again.tried) == (1, ())
            assert parts.metrics.carrier("uk").retries == 0

    run(main())


def test_the_parts_of_a_long_message_stay_on_the_carrier_the_first_took(
    run: Run, tmp_path: Path
) -> None:
    async def main() -> None:
        sink = Sink()
        async with (
            MinimalMC(dict([UPSTREAM])) as mc,
            running_parts(
                tmp_path, router_config(carrier("cheap", mc), carrier("dear", mc)), sink
            ) as parts,
        ):
            parts.dispatcher.running = False  # this test runs the passes
            loop = asyncio.get_running_loop()
            first, second = (
                msgspec.structs.replace(message(f"p{seq}"), concat=Concat("g1", 2, seq))
                for seq in (1, 2)
            )
            parts.queue.put(first, time.time())
            parts.dispatcher.dispatch(time.time(), loop.time())
            parts.carriers.pause("cheap")  # after the first part left
            parts.queue.put(second, time.time())
            parts.dispatcher.dispatch(time.time(), loop.time())
            assert parts.queue.parked_count == 1  # waits for its carrier, not for "dear"
            parts.dispatcher.running = True
            await parts.carriers.resume("cheap")
            await sink.wait_for(2)
            assert sink.states() == {"p1": MessageState.DELIVERED, "p2": MessageState.DELIVERED}
            assert parts.metrics.carrier("cheap").decisions == 2
            assert parts.metrics.carrier("dear").decisions == 0

    run(main())
