"""A message's final state (router.finals): counted, summarised once, reported to the
account's sink, stored — and, with ``ack_after: store``, committed only once the client has
the receipt (or it is held), the carriers waiting on it answered only after the commit.

Built with a real SQLite store; the sink is the one fake (a port smsc implements).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from loops import Run
from router_parts import RETRY_LATER, ROK, T0, Answers, Sink, message, open_store

from router.finals import Finals
from router.metrics import RouterMetrics
from router.model import DeliveryReport
from router.stores.sqlite import SqliteStore
from smppcore.constants import MessageState


def finals(store: SqliteStore, sink: Sink, *, durable: bool) -> Finals:
    return Finals(
        store=store, sink=sink, metrics=RouterMetrics(["uk"]), durable=durable, wall=lambda: T0
    )


def receipt(state: MessageState = MessageState.DELIVERED, id: str = "m1") -> DeliveryReport:
    return DeliveryReport(
        message_id=id, state=state, done_at=T0, carrier="uk", carrier_message_id="C1"
    )


def test_a_decided_final_state_is_reported_and_stored_in_enqueue_mode(
    run: Run, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with open_store(tmp_path) as store:
            sink = Sink()
            f = finals(store, sink, durable=False)
            msg = message("m1")
            store.add(msg)
            f.decide(msg, MessageState.REJECTED, 0x1045, "uk")
            [(stored, report)] = sink.reports
            assert (report.message_id, report.state, report.carrier) == (
                "m1",
                MessageState.REJECTED,
                "uk",
            )
            assert report.error == 0x045  # the 3 digits a receipt's err: field carries
            assert stored.error == 0x1045
            assert report.done_at == T0
            await store.flush()
            got = await store.get("m1")
            assert got is not None
            assert (got.state, got.done_at) == (MessageState.REJECTED, T0)
            assert f.metrics.final[("acme", "REJECTED")] == 1

    with caplog.at_level(logging.INFO, logger="router.messages"):
        run(main())
    [line] = [r for r in caplog.records if r.name == "router.messages"]
    assert line.getMessage() == "message m1 REJECTED"
    assert line.__dict__["carrier"] == "uk"
    assert line.__dict__["account"] == "acme"


def test_durably_the_final_state_is_committed_only_once_the_client_has_its_receipt(
    run: Run, tmp_path: Path
) -> None:
    async def main() -> None:
        async with open_store(tmp_path) as store:
            sink = Sink(settle=None)
            f = finals(store, sink, durable=True)
            msg = message("m1")
            store.add(msg)
            f.decide(msg, MessageState.EXPIRED, 0, "")
            await store.flush()
            got = await store.get("m1")
            assert got is not None
            assert got.done_at is None
            [settled] = sink.pending
            settled(True)
            await store.flush()
            got = await store.get("m1")
            assert got is not None
            assert got.state == MessageState.EXPIRED
            assert got.done_at == T0

    run(main())


def test_a_carriers_final_receipt_is_answered_after_the_commit(run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with open_store(tmp_path) as store:
            sink = Sink(settle=None)
            f = finals(store, sink, durable=True)
            msg = message("m1")
            store.add(msg)
            answers = Answers()
            f.report(msg, receipt(), True, answers)
            assert "m1" in f.finishing
            assert answers.statuses == []  # the client has not answered yet
            sink.pending.pop()(True)
            assert await answers.wait_for(1) == [ROK]
            assert "m1" not in f.finishing
            got = await store.get("m1")
            assert got is not None
            assert (got.state, got.done_at) == (MessageState.DELIVERED, T0)

    run(main())


def test_a_receipt_neither_delivered_nor_held_is_asked_again(run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with open_store(tmp_path) as store:
            f = finals(store, Sink(settle=False), durable=True)
            msg = message("m1")
            store.add(msg)
            answers = Answers()
            f.report(msg, receipt(), True, answers)
            assert answers.statuses == [RETRY_LATER]
            await store.flush()
            got = await store.get("m1")
            assert got is not None
            assert got.done_at is None

    run(main())


def test_a_repeated_final_receipt_joins_the_first_ones_answer(run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with open_store(tmp_path) as store:
            sink = Sink(settle=None)
            f = finals(store, sink, durable=True)
            msg = message("m1")
            store.add(msg)
            first, again = Answers(), Answers()
            f.report(msg, receipt(), True, first)
            f.repeated("m1", receipt(), again)
            assert len(sink.reports) == 1  # the client gets one receipt
            sink.pending.pop()(True)
            assert await first.wait_for(1) == [ROK]
            assert await again.wait_for(1) == [ROK]
            assert f.metrics.events[("receipt_duplicate", "uk")] == 1

    run(main())


def test_a_decided_receipt_the_store_cannot_hold_is_counted_as_dropped(
    run: Run, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with open_store(tmp_path) as store:
            f = finals(store, Sink(settle=False), durable=True)
            msg = message("m1")
            store.add(msg)
            f.decide(msg, MessageState.EXPIRED, 0, "uk")
            await store.flush()
            got = await store.get("m1")
            assert got is not None
            assert got.state == MessageState.EXPIRED
            assert f.metrics.events[("receipt_dropped", "uk")] == 1

    with caplog.at_level(logging.ERROR, logger="router.finals"):
        run(main())
    assert any("could neither be delivered nor held" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("delivered", "status"), [(True, ROK), (False, RETRY_LATER)])
def test_an_intermediate_receipt_is_answered_once_the_client_has_it(
    run: Run, tmp_path: Path, delivered: bool, status: int
) -> None:
    async def main() -> None:
        async with open_store(tmp_path) as store:
            sink = Sink(settle=delivered)
            f = finals(store, sink, durable=True)
            msg = message("m1")
            store.add(msg)
            answers = Answers()
            f.report(msg, receipt(MessageState.ENROUTE), False, answers)
            assert answers.statuses == [status]
            [(stored, _)] = sink.reports
            assert stored.done_at is None
            assert not f.finishing
            assert f.metrics.final == {}  # not final: nothing counted

    run(main())
