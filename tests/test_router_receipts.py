"""Carriers' receipts matched to our messages (router.receipts): in memory for what was
accepted lately, through the store for the rest (sent long ago, or before a restart);
intermediate receipts passed on; repeated and unknown ones answered and counted; and the
receipts that never come: past its deadline a message is final without one.

Built with a real SQLite store, real carriers (not bound: receipts are handed in as the
pools would hand them), real finals; the sink is the one fake. Time is a parameter.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
from loops import Run
from minimal_mc import DEADLINE, receipt_pdu
from router_parts import (
    RETRY_LATER,
    ROK,
    T0,
    Answers,
    Sink,
    carrier,
    message,
    metrics_for,
    open_store,
    router_config,
)

from router.carriers import Carriers
from router.config import RouterConfig
from router.finals import Finals
from router.queue import MessageQueue
from router.receipts import Receipts
from router.stores.sqlite import SqliteStore
from smppcore.constants import MessageState
from smppcore.pdu import DeliverSm


def config(ack_after: str = "enqueue", **settings: object) -> RouterConfig:
    return router_config(carrier("uk", **settings), ack_after=ack_after)


def receipts_for(store: SqliteStore, sink: Sink, cfg: RouterConfig, wall: float = T0) -> Receipts:
    metrics = metrics_for(cfg)
    carriers = Carriers(
        cfg,
        queue=MessageQueue(cfg.queue_max),
        metrics=metrics,
        on_deliver=lambda *_: None,  # never bound here
        wake=lambda: None,
        wall=lambda: wall,
    )
    durable = cfg.ack_after == "store"
    finals = Finals(store=store, sink=sink, metrics=metrics, durable=durable, wall=lambda: wall)
    return Receipts(
        cfg, store=store, carriers=carriers, finals=finals, metrics=metrics, wall=lambda: wall
    )


@asynccontextmanager
async def parts(
    tmp_path: Path, cfg: RouterConfig, sink: Sink
) -> AsyncIterator[tuple[SqliteStore, Receipts]]:
    async with open_store(tmp_path) as store:
        yield store, receipts_for(store, sink, cfg)


def dlr(carrier_id: str, state: MessageState = MessageState.DELIVERED) -> DeliverSm:
    return receipt_pdu(carrier_id, state=state)


def test_a_receipt_for_a_message_just_accepted_finishes_it(run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        sink = Sink()
        async with parts(tmp_path, config(), sink) as (store, r):
            msg = message("m1")
            store.add(msg)
            r.accepted(msg, "uk", "C1", T0, time.monotonic())
            assert len(r.deadlines) == 1
            assert r.deliver("uk", dlr("C1"), None) == ROK  # enqueue: answered at once
            [(stored, report)] = sink.reports
            assert (report.message_id, report.state, report.carrier_message_id) == (
                "m1",
                MessageState.DELIVERED,
                "C1",
            )
            assert stored.done_at == T0
            assert len(r.deadlines) == 0
            assert "m1" not in r.sent
            assert r.correlator.cached == 0  # final: its mapping left memory
            assert r.metrics.receipts[("uk", "DELIVERED")] == 1
            assert r.metrics.final[("acme", "DELIVERED")] == 1

    run(main())


def test_a_receipt_read_before_its_submit_response_is_matched(run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        sink = Sink()
        async with parts(tmp_path, config(), sink) as (store, r):
            msg = message("m1")
            store.add(msg)
            # The carrier's receipt came in the same read as its submit_sm_resp, whose
            # outcome is handled after it.
            r.deliver("uk", dlr("C1"), None)
            r.accepted(msg, "uk", "C1", T0, time.monotonic())
            await sink.wait_for(1)
            assert sink.states() == {"m1": MessageState.DELIVERED}
            assert await r.settle(DEADLINE)
            assert r.metrics.events.get(("receipt_unmatched", "uk")) is None

    run(main())


def test_an_intermediate_receipt_is_passed_on_and_keeps_the_deadline(
    run: Run, tmp_path: Path
) -> None:
    async def main() -> None:
        sink = Sink()
        async with parts(tmp_path, config(), sink) as (store, r):
            msg = message("m1")
            store.add(msg)
            r.accepted(msg, "uk", "C1", T0, time.monotonic())
            r.deliver("uk", dlr("C1", MessageState.ENROUTE), None)
            assert sink.states() == {"m1": MessageState.ENROUTE}
            assert sink.reports[0][0].done_at is None
            assert len(r.deadlines) == 1
            assert "m1" in r.sent
            r.deliver("uk", dlr("C1", MessageState.UNDELIVERABLE), None)
            assert sink.states() == {"m1": MessageState.UNDELIVERABLE}
            assert len(r.deadlines) == 0

    run(main())


def test_after_a_restart_a_receipt_is_matched_through_the_store_and_answered_when_durable(
    run: Run, tmp_path: Path
) -> None:
    async def main() -> None:
        cfg = config("store", submit_id="hex", receipt_id="decimal")
        async with open_store(tmp_path) as store:
            before = receipts_for(store, Sink(), cfg)
            msg = message("m1")
            store.add(msg)
            before.accepted(msg, "uk", "00FF", T0, time.monotonic())
            await store.flush()
        sink = Sink()
        async with parts(tmp_path, cfg, sink) as (store, r):  # nothing in memory
            answers = Answers()
            assert r.deliver("uk", dlr("255"), answers) is None  # answered once durable
            assert await answers.wait_for(1) == [ROK]
            assert sink.states() == {"m1": MessageState.DELIVERED}
            got = await store.get("m1")
            assert got is not None
            assert got.done_at == T0

    run(main())


def test_a_repeated_receipt_of_a_final_message_is_answered_not_reported(
    run: Run, tmp_path: Path
) -> None:
    async def main() -> None:
        sink = Sink()
        async with parts(tmp_path, config("store"), sink) as (store, r):
            msg = message("m1")
            store.add(msg)
            r.accepted(msg, "uk", "C1", T0, time.monotonic())
            first, again = Answers(), Answers()
            r.deliver("uk", dlr("C1"), first)
            assert await first.wait_for(1) == [ROK]
            r.deliver("uk", dlr("C1"), again)  # our answer was lost: the carrier repeats
            assert await again.wait_for(1) == [ROK]
            assert len(sink.reports) == 1
            assert r.metrics.events[("receipt_duplicate", "uk")] == 1

    run(main())


def test_a_receipt_that_matches_nothing_is_counted_and_answered(run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        sink = Sink()
        async with parts(tmp_path, config("store"), sink) as (_, r):
            answers = Answers()
            r.deliver("uk", dlr("nobody"), answers)
            assert await answers.wait_for(1) == [ROK]  # sending it again would not help
            assert sink.reports == []
            assert r.metrics.events[("receipt_unmatched", "uk")] == 1

    run(main())


def test_a_receipt_the_store_cannot_look_up_is_asked_again(run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        sink = Sink()
        async with parts(tmp_path, config("store"), sink) as (store, r):
            await store.close()
            answers = Answers()
            r.deliver("uk", dlr("C9"), answers)
            assert await answers.wait_for(1) == [RETRY_LATER]
            assert r.metrics.events[("receipt_store_timeout", "uk")] == 1

    run(main())


def test_an_unreadable_receipt_is_counted(run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with parts(tmp_path, config(), Sink()) as (_, r):
            pdu = msgspec.structs.replace(dlr("C1"), short_message=b"", tlvs=())
            assert r.deliver("uk", pdu, None) == ROK
            assert r.metrics.events[("receipt_unreadable", "uk")] == 1

    run(main())


def test_past_its_deadline_a_message_is_final_as_the_carrier_says(run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        sink = Sink()
        cfg = config("store", receipt_timeout=60.0, receipt_timeout_state="UNDELIVERABLE")
        async with parts(tmp_path, cfg, sink) as (_, r):
            msg = message("m1")
            r.store.add(msg)
            r.accepted(msg, "uk", "C1", T0, time.monotonic())
            r.tick(T0 + 59)
            assert sink.reports == []
            r.tick(T0 + 60)
            [(_, report)] = sink.reports
            assert (report.state, report.done_at) == (MessageState.UNDELIVERABLE, T0 + 60)
            assert r.metrics.events[("receipt_timeout", "uk")] == 1
            late = Answers()
            r.deliver("uk", dlr("C1"), late)  # too late: a duplicate, answered
            assert await late.wait_for(1) == [ROK]
            assert len(sink.reports) == 1
            assert r.metrics.events[("receipt_duplicate", "uk")] == 1

    run(main())


def test_a_message_whose_validity_ends_first_is_final_as_expired(run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        sink = Sink()
        async with parts(tmp_path, config(receipt_timeout=60.0), sink) as (store, r):
            msg = message("m1", expires_at=T0 + 5)
            store.add(msg)
            r.accepted(msg, "uk", "C1", T0, time.monotonic())
            r.tick(T0 + 5)
            assert sink.states() == {"m1": MessageState.EXPIRED}

    run(main())


def test_an_overdue_message_no_longer_in_memory_is_read_from_the_store(
    run: Run, tmp_path: Path
) -> None:
    async def main() -> None:
        sink = Sink()
        async with parts(tmp_path, config(receipt_timeout=60.0), sink) as (store, r):
            msg = message("m1")
            store.add(msg)
            store.set_sent("m1", "uk", "C1")
            r.await_receipt(msg, "uk", T0)  # recovered after a restart: not in memory
            r.tick(T0 + 60)
            assert await r.settle(DEADLINE)
            [(stored, report)] = sink.reports
            assert (report.state, report.carrier_message_id) == (MessageState.UNKNOWN, "C1")
            assert stored.message == msg

    run(main())
