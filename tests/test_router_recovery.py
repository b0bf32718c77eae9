"""After a restart (router.recovery): what the store holds unfinished is picked up —
never handed to a carrier: queued; handed to one with no answer recorded: sent again and
counted as ``resent``; accepted by one: its receipt awaited (a deadline from now); final
ones: left alone.

Built with a real SQLite store, queue and receipts.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from loops import Run
from router_parts import T0, Sink, carrier, message, metrics_for, open_store, router_config

from router.carriers import Carriers
from router.finals import Finals
from router.model import DeliveryReport
from router.queue import MessageQueue
from router.receipts import Receipts
from router.recovery import recover
from smppcore.constants import MessageState


def test_unfinished_messages_are_queued_resent_or_awaited(
    run: Run, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = router_config(carrier("uk", receipt_timeout=60.0), ack_after="store")

    async def main() -> None:
        async with open_store(tmp_path) as store:
            for id in ("new", "handed", "accepted", "done"):
                store.add(message(id))
            store.set_sending("handed", "uk")
            store.set_sent("accepted", "uk", "C1")
            store.set_sent("done", "uk", "C2")
            store.set_final("done", DeliveryReport("done", MessageState.DELIVERED, done_at=T0))
        async with open_store(tmp_path) as store:  # the restart
            queue = MessageQueue(cfg.queue_max)
            metrics = metrics_for(cfg)
            carriers = Carriers(
                cfg, queue=queue, metrics=metrics, on_deliver=lambda *_: None, wake=lambda: None
            )
            finals = Finals(store=store, sink=Sink(), metrics=metrics, durable=True)
            receipts = Receipts(cfg, store=store, carriers=carriers, finals=finals, metrics=metrics)
            await recover(store, queue, receipts, metrics, T0)
            queued = sorted(m.id for m in iter(lambda: queue.pop_ready(T0), None))
            assert queued == ["handed", "new"]
            assert metrics.events[("resent", "uk")] == 1
            assert len(receipts.deadlines) == 1
            assert receipts.deadlines.due(T0 + 59) == []
            assert receipts.deadlines.due(T0 + 60) == [("accepted", "uk", False)]

    with caplog.at_level(logging.INFO, logger="router.recovery"):
        run(main())
    said = [r.getMessage() for r in caplog.records if r.name == "router.recovery"]
    assert "recovered 1 accepted messages not yet sent upstream" in said
    assert "recovered 1 messages handed to uk with no answer recorded: sent again" in said
