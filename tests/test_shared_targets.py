"""TargetLookup (smsc/shared_targets.py): in a cluster, a report whose message was sent
through another node's API goes on to the webhook sink once its target is read from the
shared records — a message's reports in the order they came (a submit's acceptance too),
a failed or slow lookup answered as a temporary error to the carrier, at most ``limit``
waiting. A message that came over SMPP is never looked up and waits for nothing; the
reads of a turn of the loop go in one lookup; what was read (even nothing) is not read
again."""

from __future__ import annotations

import asyncio

from loops import Run
from router_parts import Sink

from router.model import Address, DeliveryReport, Message, Refusal, StoredMessage
from router.ports import SettledCallback
from smppcore.constants import MessageState
from smsc.callbacks import NO_TARGET, VIA_API, Callbacks, Target
from smsc.shared_targets import TargetLookup

DEADLINE = 10.0
HOOK = Target("http://hooks.example/cb", "order-7")


def stored(message_id: str, via: str = VIA_API) -> StoredMessage:
    """A message the HTTP API created (``via``), or one that came over SMPP (via "")."""
    message = Message(
        id=message_id, account="acme", source=Address(1, 1, "SHOP"),
        destination=Address(1, 1, "447700900001"), via=via,
    )  # fmt: skip
    return StoredMessage(message=message)


def receipt(message_id: str, state: MessageState = MessageState.DELIVERED) -> DeliveryReport:
    return DeliveryReport(message_id, state)


class Downstream(Sink):
    """The webhook sink as TargetLookup sees it: reports, and the submits' outcomes (each
    recorded in :attr:`seen` in the order given, with the reports)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str]] = []

    def report(
        self,
        stored: StoredMessage,
        report: DeliveryReport,
        settled: SettledCallback | None = None,
    ) -> None:
        self.seen.append(("report", stored.message.id))
        super().report(stored, report, settled)

    def submit_accepted(self, message: Message, carrier: str, carrier_message_id: str) -> None:
        self.seen.append(("accepted", message.id))

    def submit_refused(self, message: Message, refusal: Refusal) -> None:
        self.seen.append(("refused", message.id))


class Records:
    """The shared records as the lookup sees them: each message's read waits for the test
    to answer it (``asked[id].set_result``), or fails (``set_exception``); :attr:`reads`
    the ids of each read (one round trip each)."""

    def __init__(self) -> None:
        self.asked: dict[str, asyncio.Future[Target | None]] = {}
        self.reads: list[list[str]] = []
        self.changed = asyncio.Event()

    async def target(self, message_ids: list[str]) -> list[Target | None]:
        self.reads.append(message_ids)
        loop = asyncio.get_running_loop()
        for message_id in message_ids:
            assert message_id not in self.asked  # read once
            self.asked[message_id] = loop.create_future()
        self.changed.set()
        return [await self.asked[message_id] for message_id in message_ids]

    async def until_asked(self, *ids: str) -> None:
        async with asyncio.timeout(DEADLINE):
            while not set(ids) <= self.asked.keys():
                self.changed.clear()
                await self.changed.wait()


class Outcomes:
    """The ``settled`` of the reports: each outcome, in order; and a wait for them."""

    def __init__(self) -> None:
        self.seen: list[bool] = []
        self._changed = asyncio.Event()

    def __call__(self, ok: bool) -> None:
        self.seen.append(ok)
        self._changed.set()

    async def wait_for(self, count: int) -> list[bool]:
        async with asyncio.timeout(DEADLINE):
            while len(self.seen) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.seen


def test_a_messages_reports_go_on_in_the_order_they_came_with_its_target_read(
    run: Run,
) -> None:
    async def main() -> None:
        sink, records, callbacks = Sink(), Records(), Callbacks()
        lookup = TargetLookup(sink, callbacks, records.target)
        callbacks.add("known", HOOK)
        lookup.report(stored("m1"), receipt("m1", MessageState.ENROUTE))
        lookup.report(stored("m1"), receipt("m1"))
        lookup.report(stored("known"), receipt("known"))  # its own target known: at once
        assert [s.message.id for s, _ in sink.reports] == ["known"]
        await records.until_asked("m1")
        records.asked["m1"].set_result(HOOK)  # (one read for both of m1's reports)
        await sink.wait_for(3)
        assert [(s.message.id, r.state) for s, r in sink.reports][1:] == [
            ("m1", MessageState.ENROUTE),
            ("m1", MessageState.DELIVERED),
        ]
        assert callbacks.get("m1") == HOOK
        lookup.report(stored("m1"), receipt("m1"))  # known now: at once
        assert len(sink.reports) == 4
        assert records.reads == [["m1"]]

    run(main())


def test_a_message_that_came_over_smpp_is_never_looked_up_and_waits_for_nothing(
    run: Run,
) -> None:
    async def main() -> None:
        sink, records, callbacks = Downstream(), Records(), Callbacks()
        lookup = TargetLookup(sink, callbacks, records.target, limit=1)
        outcomes = Outcomes()
        lookup.report(stored("api"), receipt("api"), outcomes)  # waits for its read
        lookup.submit_accepted(stored("smpp", via="").message, "sim", "c-1")
        lookup.report(stored("smpp", via=""), receipt("smpp", MessageState.ENROUTE), outcomes)
        lookup.report(stored("smpp", via=""), receipt("smpp"), outcomes)
        assert sink.seen == [("accepted", "smpp"), ("report", "smpp"), ("report", "smpp")]
        assert outcomes.seen == [True, True]  # (not refused: the limit is the API's one)
        await records.until_asked("api")
        records.asked["api"].set_result(HOOK)
        assert await outcomes.wait_for(3) == [True, True, True]
        assert records.reads == [["api"]]  # the SMPP message read nothing

    run(main())


def test_the_reads_of_a_turn_go_together_a_batch_at_a_time_bounded(run: Run) -> None:
    async def main() -> None:
        sink, records, callbacks = Sink(), Records(), Callbacks()
        lookup = TargetLookup(sink, callbacks, records.target, batch=2, concurrency=1)
        for n in range(5):
            lookup.report(stored(f"m{n}"), receipt(f"m{n}"))
        await records.until_asked("m0", "m1")
        assert records.reads == [["m0", "m1"]]  # one on its way at once
        for n in range(5):
            if n % 2 == 0 and n:
                await records.until_asked(f"m{n}")
            records.asked[f"m{n}"].set_result(HOOK)
        await sink.wait_for(5)
        assert records.reads == [["m0", "m1"], ["m2", "m3"], ["m4"]]
        assert [s.message.id for s, _ in sink.reports] == [f"m{n}" for n in range(5)]

    run(main())


def test_a_message_without_a_target_is_remembered_as_such_and_not_read_again(
    run: Run,
) -> None:
    async def main() -> None:
        sink, records, callbacks = Sink(), Records(), Callbacks()
        lookup = TargetLookup(sink, callbacks, records.target)
        lookup.report(stored("m1"), receipt("m1", MessageState.ENROUTE))
        await records.until_asked("m1")
        records.asked["m1"].set_result(None)  # no callback of its own (or no record)
        await sink.wait_for(1)
        assert callbacks.get("m1") == NO_TARGET
        lookup.report(stored("m1"), receipt("m1"))
        assert len(sink.reports) == 2
        assert records.reads == [["m1"]]

    run(main())


def test_a_failed_lookup_is_a_temporary_error_to_the_carrier_and_the_rest_go_on(
    run: Run,
) -> None:
    async def main() -> None:
        sink, records, callbacks = Sink(), Records(), Callbacks()
        lookup = TargetLookup(sink, callbacks, records.target)
        outcomes = Outcomes()
        lookup.report(stored("m1"), receipt("m1"), outcomes)
        await records.until_asked("m1")
        lookup.report(stored("m2"), receipt("m2"), outcomes)  # (read on its own)
        await records.until_asked("m2")
        records.asked["m2"].set_result(None)  # no target; read first: goes on at once
        assert await outcomes.wait_for(1) == [True]
        records.asked["m1"].set_exception(ConnectionError("redis away"))
        assert await outcomes.wait_for(2) == [True, False]
        assert [s.message.id for s, _ in sink.reports] == ["m2"]
        assert lookup.refused == 1
        assert callbacks.get("m1") is None  # not known: its receipt sent again reads again

    run(main())


def test_past_the_limit_a_report_is_refused_and_stop_refuses_those_still_waiting(
    run: Run,
) -> None:
    async def main() -> None:
        sink, records, callbacks = Sink(), Records(), Callbacks()
        lookup = TargetLookup(sink, callbacks, records.target, limit=2)
        outcomes = Outcomes()
        for n in range(3):
            lookup.report(stored(f"m{n}"), receipt(f"m{n}"), outcomes)
        assert outcomes.seen == [False]
        await records.until_asked("m0", "m1")
        await lookup.stop(0.01)
        assert outcomes.seen == [False, False, False]
        assert sink.reports == []

    run(main())


def test_a_slow_lookup_times_out(run: Run) -> None:
    async def main() -> None:
        sink, records, callbacks = Sink(), Records(), Callbacks()
        lookup = TargetLookup(sink, callbacks, records.target, timeout=0.01)
        outcomes = Outcomes()
        lookup.report(stored("m1"), receipt("m1"), outcomes)
        await records.until_asked("m1")
        assert await outcomes.wait_for(1) == [False]
        assert sink.reports == []

    run(main())


def test_a_submits_acceptance_waits_for_its_target_in_order_with_the_receipts(
    run: Run,
) -> None:
    async def main() -> None:
        sink, records, callbacks = Downstream(), Records(), Callbacks()
        lookup = TargetLookup(sink, callbacks, records.target)
        lookup.report(stored("m1"), receipt("m1"))
        lookup.submit_accepted(stored("m2").message, "sim", "c-2")
        lookup.report(stored("m2"), receipt("m2"))
        await records.until_asked("m1", "m2")
        records.asked["m2"].set_result(HOOK)
        records.asked["m1"].set_result(None)
        await sink.wait_for(2)
        assert sink.seen == [("report", "m1"), ("accepted", "m2"), ("report", "m2")]

    run(main())
