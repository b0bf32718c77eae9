"""The dispatcher's SubmitWatch (router.ports): told when a carrier accepts a submit, and
when a message ends before any carrier holds it — just before its final report; never
for a message a carrier had accepted. Built with the real parts (router_parts.Parts); the
sink and the watch are the fakes, recording into one log so that their order shows."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import msgspec
from loops import Run
from router_parts import T0, Parts, Sink, carrier, message, open_store, router_config

from router.model import (
    Accepted,
    Concat,
    DeliveryReport,
    Message,
    Refusal,
    Rejected,
    StoredMessage,
)
from router.ports import SettledCallback
from smppcore.constants import MessageState


class Log(Sink):
    """A sink that also logs its reports in :attr:`log`, beside the watch's calls."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[str, str, object]] = []

    def report(
        self, stored: StoredMessage, report: DeliveryReport, settled: SettledCallback | None = None
    ) -> None:
        self.log.append(("report", stored.message.id, report.state))
        super().report(stored, report, settled)


class Watch:
    def __init__(self, log: Log) -> None:
        self.log = log.log

    def submit_accepted(self, message: Message, carrier: str, carrier_message_id: str) -> None:
        self.log.append(("accepted", message.id, (carrier, carrier_message_id)))

    def submit_refused(self, message: Message, refusal: Refusal) -> None:
        self.log.append(("refused", message.id, refusal))


def watched(parts: Parts, sink: Log) -> None:
    parts.dispatcher.watch = Watch(sink)


def sent(msg_id: str = "m1", attempts: int = 1, **changes: object) -> Message:
    return msgspec.structs.replace(message(msg_id), attempts=attempts, **changes)


def test_an_acceptance_is_told_with_the_carriers_id(run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        sink = Log()
        async with open_store(tmp_path) as store:
            parts = Parts(router_config(carrier("uk")), store, sink, wall=T0)
            watched(parts, sink)
            parts.dispatcher.outcome(sent(), time.monotonic(), Accepted("uk", "C1"))
            assert sink.log == [("accepted", "m1", ("uk", "C1"))]

    run(main())


def test_a_refusal_for_good_is_told_before_its_final_report(run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        sink = Log()
        async with open_store(tmp_path) as store:
            parts = Parts(router_config(carrier("uk"), max_attempts=2), store, sink, wall=T0)
            watched(parts, sink)
            parts.dispatcher.outcome(sent("m1"), time.monotonic(), Rejected("uk", 0x0B, False))
            # a temporary refusal within the budget: tried again, nothing told
            parts.dispatcher.outcome(sent("m2"), time.monotonic(), Rejected("uk", 0x58, True))
            # ... and past it: refused, with the last carrier's status
            parts.dispatcher.outcome(
                sent("m3", attempts=2), time.monotonic(), Rejected("uk", 0x58, True)
            )
            assert sink.log == [
                ("refused", "m1", Refusal(MessageState.REJECTED, "uk", 0x0B, "rejected")),
                ("report", "m1", MessageState.REJECTED),
                (
                    "refused",
                    "m3",
                    Refusal(MessageState.UNDELIVERABLE, "uk", 0x58, "retries exhausted"),
                ),
                ("report", "m3", MessageState.UNDELIVERABLE),
            ]

    run(main())


def test_messages_that_expire_waiting_or_that_nothing_routes_are_refused_without_a_carrier(
    run: Run, tmp_path: Path
) -> None:
    async def main() -> None:
        sink = Log()
        async with open_store(tmp_path) as store:
            config = router_config(carrier("uk"), prefix="44")
            parts = Parts(config, store, sink, wall=T0 + 2)
            watched(parts, sink)
            parts.queue.put(message("m1", expires_at=T0 + 1), T0)
            parts.queue.put(message("m2", destination="33612345678"), T0)
            parts.dispatcher.dispatch(T0 + 2, asyncio.get_running_loop().time())
            assert sink.log == [
                ("refused", "m1", Refusal(MessageState.EXPIRED, "", 0, "expired")),
                ("report", "m1", MessageState.EXPIRED),
                ("refused", "m2", Refusal(MessageState.UNDELIVERABLE, "", 0, "no route")),
                ("report", "m2", MessageState.UNDELIVERABLE),
            ]

    run(main())


def test_a_message_a_carrier_accepted_is_never_refused_by_its_receipt_deadline(
    run: Run, tmp_path: Path
) -> None:
    async def main() -> None:
        sink = Log()
        async with open_store(tmp_path) as store:
            parts = Parts(router_config(carrier("uk")), store, sink, wall=T0)
            watched(parts, sink)
            parts.dispatcher.outcome(sent(), time.monotonic(), Accepted("uk", "C1"))
            parts.receipts.tick(T0 + 10 * 86_400)  # long past any receipt_timeout
            await sink.wait_for(1)
            assert [entry[0] for entry in sink.log] == ["accepted", "report"]

    run(main())


def test_a_receipt_deadline_reports_the_message_with_its_carriers_id(
    run: Run, tmp_path: Path
) -> None:
    """The sink tells a message a carrier accepted from one refused before any did by the
    carrier's id alone (Kannel's type 2 after a type 16, smsc/legacy_dlr.py): the report
    of an overdue receipt carries it."""

    async def main() -> None:
        sink = Log()
        async with open_store(tmp_path) as store:
            parts = Parts(router_config(carrier("uk")), store, sink, wall=T0)
            parts.dispatcher.outcome(sent(), time.monotonic(), Accepted("uk", "C1"))
            parts.receipts.tick(T0 + 10 * 86_400)
            await sink.wait_for(1)
            ((stored, report),) = sink.reports
            assert "C1" in (stored.carrier_message_id, report.carrier_message_id)

    run(main())


def test_a_part_withdrawn_when_its_long_message_fails_is_reported_with_its_carriers_id(
    run: Run, tmp_path: Path
) -> None:
    """Part 1 accepted by the pinned carrier (as C1), part 2 refused by it for good: the
    long message fails whole; part 1 is withdrawn and reported with C1 (it reached a
    carrier: no refusal was told for it), part 2 as refused."""

    async def main() -> None:
        sink = Log()
        async with open_store(tmp_path) as store:
            parts = Parts(router_config(carrier("uk")), store, sink, wall=T0)
            watched(parts, sink)
            one = sent("m1", concat=Concat("shop:1", 2, 1))
            two = sent("m1-2", concat=Concat("shop:1", 2, 2))
            parts.dispatcher.pins.pin(one, "uk", T0)
            parts.dispatcher.outcome(one, time.monotonic(), Accepted("uk", "C1"))
            parts.dispatcher.outcome(two, time.monotonic(), Rejected("uk", 0x0B, False))
            reported = {stored.message.id: stored for stored, _ in sink.reports}
            assert reported["m1"].carrier_message_id == "C1"
            assert reported["m1-2"].carrier_message_id == ""
            assert [e[0] for e in sink.log if e[1] == "m1"] == ["accepted", "report"]

    run(main())
